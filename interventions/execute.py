"""``iv.run`` / ``iv.capture``: one intervention (or a list) on loaded models, through a Session."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .backends import DEFAULT_BACKEND
from .errors import InterventionError
from .models.loaded import LoadedModel
from .session import Session
from .spec import Site


@dataclass
class Result:
    logits: torch.Tensor | None = None          # the acting model's logits over the prompt, (batch, seq, vocab)
    captures: dict = field(default_factory=dict)  # Site -> (batch, n_positions, d)
    attention_mask: dict = field(default_factory=dict)  # role -> (batch, seq): real (1) vs padding (0)
    new_tokens: torch.Tensor | None = None      # generated ids, when asked to generate
    texts: list[str] | None = None
    maps: list = field(default_factory=list)    # the maps a splice went through (fit, fingerprint)
    compute: list = field(default_factory=list)  # per prompt: tokens, FLOPs, wall time
    notes: list = field(default_factory=list)    # per prompt: what the interventions recorded (a handoff's trace)

    @property
    def linear_map(self):
        return next((m for m in self.maps if hasattr(m, "weight")), None)


def _as_roles(models, prompts) -> tuple[dict, dict]:
    if isinstance(models, LoadedModel):
        models = {"A": models, "B": models}
    if isinstance(prompts, (str, list, tuple)):
        prompts = {role: prompts for role in models}
    return models, {role: [p] if isinstance(p, str) else list(p) for role, p in prompts.items()}


def run(spec, models, prompts, backend=DEFAULT_BACKEND, max_new_tokens: int | None = None,
        control: str = "none", **generation) -> Result:
    """Execute ``spec`` (or a list of specs).

    ``models`` maps roles ("A", "B") to loaded models and ``prompts`` maps roles to prompt lists;
    one model, or one prompt list, serves every role. A source role gives one prompt per target
    prompt, or a single prompt that every target row shares. Without ``max_new_tokens`` the result
    holds the acting model's logits; with it, the acting model also generates (greedy, or sampled
    with ``do_sample=True, temperature=..., seed=...``).
    """
    specs = list(spec) if isinstance(spec, (list, tuple)) else [spec]
    models, prompts = _as_roles(models, prompts)
    session = Session(models, backend)
    acting = list(dict.fromkeys(r for s in specs for r in s.roles()))
    editing = list(dict.fromkeys(r for s in specs if s.changes_model for r in s.roles()))
    if len(editing) > 1:
        raise InterventionError(f"these specs act on several models ({editing}); run one acting model at a time")
    result = Result()
    for role in acting:
        if role in editing and max_new_tokens:
            if any(not s.changes_model and role in s.roles() for s in specs):
                raise InterventionError(f"capture from the generating model {role!r} in a separate run without "
                                        "max_new_tokens (a capture reads the prompt's forward pass)")
            out = session.generate(role, prompts, specs, max_new_tokens, control, **generation)
            result.new_tokens, result.texts, result.notes = out.ids, out.texts, out.notes
        else:
            out = session.forward(role, prompts, specs, control)
            result.captures.update(out.captures)
            result.attention_mask[role] = out.attention_mask
            if role in editing:
                result.logits = out.logits
        if role in editing:
            result.compute, result.maps = out.compute, out.maps
    return result


def capture(models, prompts, sites: list[Site], backend=DEFAULT_BACKEND, stop_early: bool = True) -> dict:
    """Activations at ``sites``: {site: (batch, n_positions, d)}, one forward per model role,
    stopped after the last site's block when ``stop_early``."""
    models, prompts = _as_roles(models, prompts)
    session = Session(models, backend)
    out: dict = {}
    for role in dict.fromkeys(site.model for site in sites):
        mine = [s for s in sites if s.model == role]
        out.update(session.capture(role, prompts, mine, stop_early=stop_early).captures)
    return out

"""Run a declarative spec on loaded models: the public entry point for one intervention."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .alignment import LinearMap, fit_linear_map, graft, width_mismatch
from .backends import DEFAULT_BACKEND, Backend, get_backend
from .combine import get_combine
from .errors import MissingRoleError
from .models.loaded import LoadedModel
from .sites import Edit, resolve_site
from .spec import Capture, Site, Spec, Splice, Steer


@dataclass
class Result:
    logits: torch.Tensor | None = None          # target model logits over the prompt
    captures: dict[Site, torch.Tensor] = field(default_factory=dict)
    new_tokens: torch.Tensor | None = None      # generated ids, when asked to generate
    texts: list[str] | None = None
    linear_map: LinearMap | None = None         # the fitted map, when the splice used one


def _role(models: dict[str, LoadedModel], role: str) -> LoadedModel:
    if role not in models:
        raise MissingRoleError(f"the spec names model role {role!r}, but only {sorted(models)} were given")
    return models[role]


def _as_roles(models, prompts) -> tuple[dict, dict]:
    if isinstance(models, LoadedModel):
        models = {"A": models, "B": models}
    if isinstance(prompts, (str, list)):
        prompts = {role: prompts for role in models}
    prompts = {role: [p] if isinstance(p, str) else list(p) for role, p in prompts.items()}
    return models, prompts


def capture(models, prompts, sites: list[Site], backend: str | Backend = DEFAULT_BACKEND,
            stop_early: bool = True) -> dict[Site, torch.Tensor]:
    """Activations at ``sites`` (batch, n_pos, d), one forward per model role."""
    models, prompts = _as_roles(models, prompts)
    backend = get_backend(backend)
    out: dict[Site, torch.Tensor] = {}
    for role in dict.fromkeys(site.model for site in sites):
        model = _role(models, role)
        batch = model.encode(prompts[role])
        mine = [s for s in sites if s.model == role]
        resolved = [resolve_site(s, model, batch["attention_mask"]) for s in mine]
        result = backend.forward(model, batch, captures=resolved, stop_after_captures=stop_early)
        out.update(zip(mine, result.captures))
    return out


def splice_map(splice: Splice, source: LoadedModel, target: LoadedModel) -> LinearMap:
    return fit_linear_map(source, splice.source.layer, target, splice.target.layer,
                          splice.align.n_sentences, splice.align.seed)


def splice_edit(splice: Splice, source_acts: torch.Tensor, source: LoadedModel, target: LoadedModel,
                target_mask: torch.Tensor, linear_map: LinearMap | None = None) -> Edit:
    """The edit that grafts ``source_acts`` (batch, n_pos, d_source) into the target site."""
    site = resolve_site(splice.target, target, target_mask)
    combine = get_combine(splice.combine)
    acts = source_acts
    if splice.align.kind == "linear":
        acts = (linear_map or splice_map(splice, source, target))(acts)
    elif acts.shape[-1] != target.d_model and splice.align.kind != "trailing":
        raise width_mismatch(acts.shape[-1], target.d_model)

    def fn(target_acts: torch.Tensor) -> torch.Tensor:
        # at decode steps (every_step) the newest token takes the last source vector
        return graft(combine, target_acts, acts if target_acts.shape[1] == acts.shape[1] else acts[:, -1:])

    return Edit(site, fn, every_step=splice.apply == "every_step")


def steer_edit(steer: Steer, model: LoadedModel, mask: torch.Tensor) -> Edit:
    vector = torch.tensor(steer.vector, dtype=torch.float32)
    if vector.shape[-1] != model.d_model:
        raise width_mismatch(vector.shape[-1], model.d_model)
    return Edit(resolve_site(steer.target, model, mask), lambda acts: acts + steer.scale * vector.to(acts.dtype),
                every_step=steer.apply == "every_step")


def run(spec: Spec, models, prompts, backend: str | Backend = DEFAULT_BACKEND,
        max_new_tokens: int | None = None, linear_map: LinearMap | None = None) -> Result:
    """Execute ``spec``. ``models``/``prompts`` map roles ("A", "B") to models/prompts; one model
    or one prompt list is used for every role. With ``max_new_tokens`` the target also generates."""
    models, prompts = _as_roles(models, prompts)
    backend = get_backend(backend)
    if isinstance(spec, Capture):
        return Result(captures=capture(models, prompts, list(spec.sites), backend, stop_early=False))
    target_site = spec.target
    target = _role(models, target_site.model)
    batch = target.encode(prompts[target_site.model])
    result = Result()
    if isinstance(spec, Splice):
        source = _role(models, spec.source.model)
        source_acts = capture(models, prompts, [spec.source], backend)[spec.source]
        if spec.align.kind == "linear" and linear_map is None:
            linear_map = splice_map(spec, source, target)
        edit = splice_edit(spec, source_acts, source, target, batch["attention_mask"], linear_map)
        result.linear_map = linear_map
    elif isinstance(spec, Steer):
        edit = steer_edit(spec, target, batch["attention_mask"])
    else:
        raise TypeError(f"not a spec: {spec!r}")
    if max_new_tokens:
        result.new_tokens = backend.generate(target, batch, [edit], max_new_tokens)
        result.texts = target.tokenizer.batch_decode(result.new_tokens, skip_special_tokens=True)
    else:
        result.logits = backend.forward(target, batch, edits=[edit]).logits
    return result

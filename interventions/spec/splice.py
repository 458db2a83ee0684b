"""``Splice``: graft a state of one model into another's residual stream (activation communication)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..alignment import graft
from ..combine import build_combine, check_combine_args
from ..merges import MergeContext
from ..sites import Edit, describe_site, require_finite
from ..errors import SpecFormatError
from .base import APPLY_MODES, Align, Site, SpecKind, check_choice, register_kind


@register_kind("splice")
@dataclass(frozen=True)
class Splice(SpecKind):
    """Combine the source site's activation into the target site: ``combine(target, source)``.

    The source is captured at run time from the source role's prompts (one per target prompt, or
    a single one shared by all), mapped by ``align`` when the spaces differ. Or, instead of a source
    site, ``message`` names per-row vectors handed over beside the prompts (``prompts[message]``: one
    (n_target_positions, d_model) tensor per row), already in the target's residual space: how an
    image encoder's mapped latents reach block j. A merge with parameters
    (``interventions.merges``) takes them in ``combine_args``, e.g. ``{"scale": 0.5}``; merges that
    read the source model's statistics need a source site.
    NaN or inf in the message, the target's state or the result stops the run, naming the site.
    """

    source: Site | None = None
    target: Site = field(default_factory=Site)
    combine: str = "replace"
    align: Align = field(default_factory=Align)
    apply: str = "prefill"      # prefill: once on the prompt (as in AC); every_step: also each new token
    combine_args: dict = field(default_factory=dict)
    message: str = ""           # per-row vectors given as prompts[message], instead of a source site

    def __post_init__(self) -> None:
        if (self.source is None) == (not self.message):
            raise SpecFormatError("splice: give a source site, or message (the name of per-row vectors passed "
                                  "beside the prompts), not both")
        if self.combine_args is None:
            object.__setattr__(self, "combine_args", {})
        check_combine_args(self.combine, self.combine_args)  # fail early, naming the known functions
        object.__setattr__(self, "combine_args", dict(self.combine_args))  # the caller's dict stays theirs
        check_choice(self.apply, APPLY_MODES, "apply mode")

    def roles(self) -> set[str]:
        return {self.target.model}

    def reads(self) -> set[str]:
        return {self.source.model} if self.source is not None else set()

    def sent(self, program) -> torch.Tensor:
        """The (rows, n_pos, d) state this splice sends, control applied, mapped into the target's space."""
        if self.message:
            return require_finite(program.stacked(program.given_message(self.message, embedding=False),
                                                  f"splice.message {self.message!r}"), f"prompts[{self.message!r}]")
        acts = program.stacked(program.message(self.source), "splice.source")
        source = program.session.model(self.source.model)
        require_finite(acts, f"the message read at {describe_site(self.source, source)}")
        acts = program.aligned(acts, self.align, self.source, self.target.layer)
        return require_finite(acts, f"the message from {describe_site(self.source, source)} after align "
                                    f"{self.align.kind!r}")

    def compile(self, program) -> None:
        acts = self.sent(program)
        context = MergeContext.of(self, program) if self.source is not None else None
        combine = build_combine(self.combine, self.combine_args, context)
        where = describe_site(self.target, program.model)
        site = program.resolve(self.target)
        slots = program.mask.shape[1] if site.positions is None else site.positions.shape[1]
        if acts.shape[1] not in (1, slots):   # one vector broadcasts; more must match position for position
            what = f"prompts[{self.message!r}]" if self.message else "the source site"
            raise SpecFormatError(f"splice: {what} sends {acts.shape[1]} vectors per row to {slots} target "
                                  f"positions at {where}; give the target as many positions (e.g. position: "
                                  f"[{-acts.shape[1]}, ..., -1]), or send one vector")

        def fn(target_acts):
            require_finite(target_acts, f"the target's state at {where}")
            # at decode steps (every_step) the newest token takes the last source vector
            merged = graft(combine, target_acts, acts if target_acts.shape[1] == acts.shape[1] else acts[:, -1:])
            return require_finite(merged, f"the state combine {self.combine!r} produced at {where}")

        program.add_edit(Edit(site, fn, every_step=self.apply == "every_step"))

"""``Splice``: graft a state of one model into another's residual stream (activation communication)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..alignment import graft
from ..combine import get_combine
from ..sites import Edit
from .base import APPLY_MODES, Align, Site, SpecKind, check_choice, register_kind


@register_kind("splice")
@dataclass(frozen=True)
class Splice(SpecKind):
    """Combine the source site's activation into the target site: ``combine(target, source)``.

    The source is captured at run time from the source role's prompts (one per target prompt, or
    a single one shared by all), mapped by ``align`` when the spaces differ.
    """

    source: Site
    target: Site
    combine: str = "replace"
    align: Align = field(default_factory=Align)
    apply: str = "prefill"      # prefill: once on the prompt (as in AC); every_step: also each new token

    def __post_init__(self) -> None:
        get_combine(self.combine)  # fail early, naming the known functions
        check_choice(self.apply, APPLY_MODES, "apply mode")

    def roles(self) -> set[str]:
        return {self.target.model}

    def reads(self) -> set[str]:
        return {self.source.model}

    def compile(self, program) -> None:
        acts = program.stacked(program.message(self.source), "splice.source")
        acts = program.aligned(acts, self.align, self.source, self.target.layer)
        combine = get_combine(self.combine)

        def fn(target_acts):
            # at decode steps (every_step) the newest token takes the last source vector
            return graft(combine, target_acts, acts if target_acts.shape[1] == acts.shape[1] else acts[:, -1:])

        program.add_edit(Edit(program.resolve(self.target), fn, every_step=self.apply == "every_step"))

"""``Steer``: add ``scale * vector`` at a site."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import SpecFormatError
from ..sites import Edit
from .base import APPLY_MODES, Site, SpecKind, check_choice, register_kind


@register_kind("steer")
@dataclass(frozen=True)
class Steer(SpecKind):
    target: Site
    vector: tuple[float, ...]     # d_model floats (a tensor of shape (d,) or (1, d) is accepted)
    scale: float = 1.0
    apply: str = "every_step"

    def __post_init__(self) -> None:
        vector = torch.as_tensor(self.vector, dtype=torch.float32)
        if vector.ndim == 2 and vector.shape[0] == 1:
            vector = vector[0]
        if vector.ndim != 1:
            raise SpecFormatError(f"steer.vector: expected d_model floats, got shape {tuple(vector.shape)}")
        object.__setattr__(self, "vector", tuple(vector.tolist()))
        check_choice(self.apply, APPLY_MODES, "apply mode")

    def roles(self) -> set[str]:
        return {self.target.model}

    def compile(self, program) -> None:
        vector = program.check_width(torch.tensor(self.vector), "steer.vector")
        program.add_edit(Edit(program.resolve(self.target),
                              lambda acts: acts + self.scale * vector.to(acts.device, acts.dtype),
                              every_step=self.apply == "every_step"))

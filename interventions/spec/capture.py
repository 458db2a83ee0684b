"""``Capture``: read activations at sites (each site names its model role)."""

from __future__ import annotations

from dataclasses import dataclass

from .base import Site, SpecKind, register_kind


@register_kind("capture")
@dataclass(frozen=True)
class Capture(SpecKind):
    sites: tuple[Site, ...]

    changes_model = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "sites", tuple(self.sites))

    def roles(self) -> set[str]:
        return {site.model for site in self.sites}

    def compile(self, program) -> None:
        for site in self.sites:
            if site.model == program.role:
                program.add_capture(site)

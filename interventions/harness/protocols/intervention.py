"""``intervention``: any spec file as a protocol. ``{kind: intervention, spec: path/to/splice.yaml}``

The acting role (the spec's target, usually B) answers its usual prompt with the spec applied;
every other role of the pair reads its sender prompt (``sender``: raw or chat), so a splice or
soft tokens whose source is A take A's state on the item's private context (or question).
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import ValidationInfo, field_validator

from ...errors import SpecFormatError
from ...spec import load_spec, to_dict
from ..prompts import answer_prompt
from .ac import Control, control_suffix, sender_texts
from .base import Context, Protocol, answer, register_protocol, vector_control


@lru_cache(maxsize=None)
def _load(path: str, mtime: float):
    return load_spec(path)


def spec_of(path: str):
    resolved = Path(path).resolve()
    if not resolved.exists():
        raise SpecFormatError(f"intervention spec file {path} does not exist")
    return _load(str(resolved), resolved.stat().st_mtime)


@register_protocol("intervention")
class Intervention(Protocol):
    """Any spec file, applied while the acting role answers; other roles read their sender prompts."""

    spec: str                                  # path of a spec file (relative to the experiment file)
    sender: Literal["raw", "chat"] = "raw"
    control: Control = "none"

    @field_validator("spec")
    @classmethod
    def _loads(cls, value, info: ValidationInfo):
        base = (info.context or {}).get("base_dir")
        if base is not None and not Path(value).is_absolute() and not Path(value).exists():
            value = os.path.relpath(Path(base) / value)
        spec = spec_of(value)
        if len(spec.roles()) != 1:
            raise ValueError(f"the spec acts on {sorted(spec.roles())}; an intervention protocol needs one acting role")
        return value

    @property
    def loaded(self):
        return spec_of(self.spec)

    def needed_roles(self):
        return tuple(sorted(self.loaded.roles() | self.loaded.reads()))

    @property
    def name(self) -> str:
        return f"intervention_{Path(self.spec).stem}{control_suffix(self.control)}"

    @property
    def family(self) -> str:
        return self.name

    def identity(self) -> dict:
        return {**self.as_dict(), "spec": Path(self.spec).name, "spec_content": to_dict(self.loaded)}

    def run(self, ctx: Context, items):
        spec = self.loaded
        (role,) = spec.roles()
        sources = ctx.sources(items, self.control)
        prompts = {r: sender_texts(ctx, sources, self.sender, role=r)[0] for r in spec.reads() - {role}}
        prompts[role] = [answer_prompt(ctx.model(role), ctx.task, it) for it in items]
        return answer(ctx, role, prompts, items, [spec], vector_control(self.control))

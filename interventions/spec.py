"""Intervention specs as data: frozen, typed, JSON/YAML round-trip, schema-versioned.

Layer convention: ``layer=l`` means block ``l`` (0-based); with stream ``resid_post`` that
is the output of block l. Negative layers count from the end; a float in [0, 1] is a
relative depth, so one spec transfers across model sizes. Negative positions count from
the end of the prompt (-1 = last prompt token).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

from .combine import get_combine
from .errors import SpecFormatError, UnknownSiteError, suggest

SCHEMA_VERSION = 1
STREAMS = ("resid_pre", "attn_out", "mlp_out", "resid_post")
APPLY_MODES = ("prefill", "every_step")
ALIGN_KINDS = ("none", "trailing", "linear")
Position = Union[int, tuple, str]


def _check_choice(value: str, allowed: tuple[str, ...], what: str, error=SpecFormatError) -> None:
    if value not in allowed:
        raise error(f"unknown {what} {value!r}.{suggest(value, allowed)} Known: {', '.join(allowed)}.")


@dataclass(frozen=True)
class Site:
    """One place in one model: role, block, token position(s), stream."""

    model: str = "B"
    layer: int | float = -1
    position: Position = -1          # int, tuple of ints, or "all"
    stream: str = "resid_post"

    def __post_init__(self) -> None:
        if self.stream.startswith("hook_"):  # accept TransformerLens spelling
            object.__setattr__(self, "stream", self.stream[len("hook_"):])
        _check_choice(self.stream, STREAMS, "stream", UnknownSiteError)
        if isinstance(self.position, list):
            object.__setattr__(self, "position", tuple(self.position))
        if isinstance(self.position, str) and self.position not in ("all", "last"):
            raise SpecFormatError(f"position {self.position!r}: use an int, a list of ints, 'last' or 'all'")
        if self.position == "last":
            object.__setattr__(self, "position", -1)
        if not isinstance(self.layer, (int, float)) or isinstance(self.layer, bool):
            raise SpecFormatError(f"layer must be an int or a float depth, got {self.layer!r}")

    def hook_name(self, block: int) -> str:
        """TransformerLens hook point for this site at a resolved block index."""
        return f"blocks.{block}.hook_{self.stream}"


@dataclass(frozen=True)
class Align:
    """How to bridge a width (or space) mismatch between source and target."""

    kind: str = "none"          # none: error on mismatch; trailing: AC's rule; linear: fitted map
    n_sentences: int = 3000     # corpus size for the linear map
    seed: int = 0

    def __post_init__(self) -> None:
        _check_choice(self.kind, ALIGN_KINDS, "align kind")


@dataclass(frozen=True)
class Capture:
    sites: tuple[Site, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "sites", tuple(self.sites))


@dataclass(frozen=True)
class Splice:
    """Graft the source site's activation into the target site via a combine function."""

    source: Site
    target: Site
    combine: str = "replace"
    align: Align = field(default_factory=Align)
    apply: str = "prefill"      # prefill: once on the prompt (as in AC); every_step: also each new token

    def __post_init__(self) -> None:
        get_combine(self.combine)  # fail early, naming the known functions
        _check_choice(self.apply, APPLY_MODES, "apply mode")


@dataclass(frozen=True)
class Steer:
    """Add ``scale * vector`` at the target site."""

    target: Site
    vector: tuple[float, ...]
    scale: float = 1.0
    apply: str = "every_step"

    def __post_init__(self) -> None:
        object.__setattr__(self, "vector", tuple(float(v) for v in self.vector))
        _check_choice(self.apply, APPLY_MODES, "apply mode")


Spec = Union[Capture, Splice, Steer]
KINDS: dict[str, type] = {"capture": Capture, "splice": Splice, "steer": Steer}
_NESTED = {"source": Site, "target": Site, "align": Align}


def to_dict(spec: Spec) -> dict:
    kind = {v: k for k, v in KINDS.items()}[type(spec)]
    body = dataclasses.asdict(spec)
    return {"schema_version": SCHEMA_VERSION, "kind": kind, **body}


def _build(cls: type, data: Any, where: str):
    if not isinstance(data, dict):
        raise SpecFormatError(f"{where}: expected a mapping for {cls.__name__}, got {type(data).__name__}")
    names = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in names:
            raise SpecFormatError(f"{where}.{key}: unknown field for {cls.__name__}.{suggest(key, names)} "
                                  f"Fields: {', '.join(names)}.")
    values = {}
    for key, value in data.items():
        if key in _NESTED and cls is not Site:
            value = _build(_NESTED[key], value, f"{where}.{key}")
        elif key == "sites":
            if not isinstance(value, (list, tuple)):
                raise SpecFormatError(f"{where}.sites: expected a list of sites")
            value = tuple(_build(Site, v, f"{where}.sites[{i}]") for i, v in enumerate(value))
        values[key] = value
    try:
        return cls(**values)
    except SpecFormatError as error:
        raise SpecFormatError(f"{where}: {error}") from None
    except TypeError as error:
        raise SpecFormatError(f"{where}: {error}") from None


def from_dict(data: dict) -> Spec:
    if not isinstance(data, dict):
        raise SpecFormatError("spec: expected a mapping at the top level")
    data = dict(data)
    version = data.pop("schema_version", None)
    if version != SCHEMA_VERSION:
        raise SpecFormatError(f"spec.schema_version: expected {SCHEMA_VERSION}, got {version!r}")
    kind = data.pop("kind", None)
    if kind not in KINDS:
        raise SpecFormatError(f"spec.kind: expected one of {', '.join(KINDS)}, got {kind!r}.")
    return _build(KINDS[kind], data, "spec")


def to_json(spec: Spec) -> str:
    return json.dumps(to_dict(spec), indent=2)


def to_yaml(spec: Spec) -> str:
    import yaml
    return yaml.safe_dump(_plain(to_dict(spec)), sort_keys=False)


def _plain(value):
    """Tuples to lists, so YAML stays plain."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def from_text(text: str) -> Spec:
    import yaml  # YAML is a superset of JSON
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise SpecFormatError(f"spec file is not valid YAML/JSON: {error}") from None
    return from_dict(data)


def load_spec(path: str | Path) -> Spec:
    return from_text(Path(path).read_text())


def save_spec(spec: Spec, path: str | Path) -> None:
    path = Path(path)
    path.write_text(to_json(spec) if path.suffix == ".json" else to_yaml(spec))

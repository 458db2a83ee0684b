"""Specs are data: frozen, typed, JSON/YAML round trips, schema-versioned, kinds from a registry.

Layer convention: ``layer=l`` means block ``l`` (0-based); with stream ``resid_post`` that is the
output of block l. Negative layers count from the end. A relative depth is a string ``"50%"`` or
a float in [0, 1], so one spec transfers across model sizes (``1.0`` is the last block, ``1`` is
block 1). Negative positions count from the end of the prompt (-1 = last prompt token).

A spec kind is a frozen dataclass registered with ``@register_kind("name")`` that implements
``compile(program)``: it adds edits, captures or input changes to the program of one request (see
``interventions.program``). ``phase`` orders kinds within a request: inputs are rewritten
before edits resolve their positions against them.
"""

from __future__ import annotations

import dataclasses
import json
import typing
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Union

from ..errors import SpecFormatError, UnknownSiteError, suggest
from ..models.families import STREAMS
from ..registry import Registry

SCHEMA_VERSION = 1
APPLY_MODES = ("prefill", "every_step")
Position = Union[int, tuple, str]
Layer = Union[int, float, str]


def check_choice(value: str, allowed, what: str, error=SpecFormatError) -> None:
    if value not in allowed:
        raise error(f"unknown {what} {value!r}.{suggest(str(value), list(allowed))} Known: {', '.join(allowed)}.")


def check_layer(layer) -> None:
    if isinstance(layer, str):
        if not (layer.endswith("%") and layer[:-1].replace(".", "", 1).isdigit()):
            raise SpecFormatError(f"layer {layer!r}: use an int block, or a relative depth like '50%' or 0.5")
    elif not isinstance(layer, (int, float)) or isinstance(layer, bool):
        raise SpecFormatError(f"layer must be an int block or a relative depth ('50%' or 0.5), got {layer!r}")
    elif isinstance(layer, float) and layer == 1.0:
        warnings.warn("layer=1.0 is a relative depth: the last block. Write layer=1 for block 1, "
                      "or '100%' to say depth explicitly.", stacklevel=4)


@dataclass(frozen=True)
class Site:
    """One place in one model: role, block, token position(s), stream.

    Defaults: role "B", the last block, the last prompt token, the block output (resid_post).
    """

    model: str = "B"
    layer: Layer = -1
    position: Position = -1          # int, tuple of ints, "last" or "all"
    stream: str = "resid_post"

    def __post_init__(self) -> None:
        if self.stream.startswith("hook_"):  # accept TransformerLens spelling
            object.__setattr__(self, "stream", self.stream[len("hook_"):])
        check_choice(self.stream, STREAMS, "stream", UnknownSiteError)
        if isinstance(self.position, list):
            object.__setattr__(self, "position", tuple(self.position))
        if isinstance(self.position, str) and self.position not in ("all", "last"):
            raise SpecFormatError(f"position {self.position!r}: use an int, a list of ints, 'last' or 'all'")
        if self.position == "last":
            object.__setattr__(self, "position", -1)
        check_layer(self.layer)


@dataclass(frozen=True)
class Align:
    """How to bridge two spaces: a registered map kind (``interventions.alignment.MAPS``).

    ``none`` refuses a width mismatch, ``trailing`` applies AC's rule; ``linear``, ``procrustes``,
    ``cca`` and ``relative`` are fitted over ``n_sentences`` corpus sentences (``seed`` picks them
    and the held-out split). ``components``: principal directions (procrustes) or canonical pairs
    (cca) to keep, None for as many as the data spans. ``anchors``: anchor sentences (relative).
    """

    kind: str = "none"
    n_sentences: int = 3000
    seed: int = 0
    components: int | None = None
    anchors: int = 300

    def __post_init__(self) -> None:
        from ..alignment import MAPS
        MAPS.get(self.kind)  # fail early, naming the known maps
        for name, least in (("n_sentences", 1), ("components", 1), ("anchors", 2)):
            value = getattr(self, name)
            if value is None and name == "components":
                continue
            if not isinstance(value, int) or isinstance(value, bool) or value < least:
                raise SpecFormatError(f"align.{name}: expected a whole number >= {least}, got {value!r}")


class SpecKind:
    """Base of every registered spec kind (a frozen dataclass)."""

    kind: ClassVar[str] = ""
    phase: ClassVar[int] = 1     # 0: rewrites the inputs; 1: edits and captures
    changes_model: ClassVar[bool] = True   # False for kinds that only read (captures)

    def roles(self) -> set[str]:
        """Model roles this spec acts on (not the ones it only reads from)."""
        raise NotImplementedError

    def reads(self) -> set[str]:
        """Model roles this spec reads states from (a splice's source, say)."""
        return set()

    def compile(self, program) -> None:
        raise NotImplementedError


KINDS: Registry[type] = Registry("spec kind", SpecFormatError,
                                 "Add one with @interventions.register_kind(name) on a frozen dataclass.")


def register_kind(name: str):
    def decorate(cls):
        cls.kind = name
        KINDS.register(name, cls)
        return cls
    return decorate


def to_dict(spec) -> dict:
    return {"schema_version": SCHEMA_VERSION, "kind": spec.kind, **dataclasses.asdict(spec)}


def _dataclass_in(hint) -> tuple[type | None, bool]:
    """(dataclass, is_sequence) that a field annotation holds, e.g. Site | None or tuple[Site, ...]."""
    if dataclasses.is_dataclass(hint):
        return hint, False
    args = [a for a in typing.get_args(hint) if a is not type(None) and a is not Ellipsis]
    if typing.get_origin(hint) in (tuple, list) and args and dataclasses.is_dataclass(args[0]):
        return args[0], True
    if len(args) == 1 and dataclasses.is_dataclass(args[0]):
        return args[0], False
    return None, False


def _build(cls: type, data: Any, where: str):
    if not isinstance(data, dict):
        raise SpecFormatError(f"{where}: expected a mapping for {cls.__name__}, got {type(data).__name__}")
    names = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in names:
            raise SpecFormatError(f"{where}.{key}: unknown field for {cls.__name__}.{suggest(key, names)} "
                                  f"Fields: {', '.join(names)}.")
    hints = typing.get_type_hints(cls)
    values = {}
    for key, value in data.items():
        nested, many = _dataclass_in(hints[key])
        if nested is not None and value is not None:
            if many:
                if not isinstance(value, (list, tuple)):
                    raise SpecFormatError(f"{where}.{key}: expected a list of {nested.__name__}")
                value = tuple(_build(nested, v, f"{where}.{key}[{i}]") for i, v in enumerate(value))
            elif not isinstance(value, nested):
                value = _build(nested, value, f"{where}.{key}")
        values[key] = value
    try:
        return cls(**values)
    except SpecFormatError as error:
        raise SpecFormatError(f"{where}: {error}") from None
    except (TypeError, ValueError) as error:
        raise SpecFormatError(f"{where}: {error}") from None


def from_dict(data: dict):
    if not isinstance(data, dict):
        raise SpecFormatError("spec: expected a mapping at the top level")
    data = dict(data)
    version = data.pop("schema_version", None)
    if version != SCHEMA_VERSION:
        raise SpecFormatError(f"spec.schema_version: expected {SCHEMA_VERSION}, got {version!r}")
    kind = data.pop("kind", None)
    if kind not in KINDS:
        raise SpecFormatError(f"spec.kind: expected one of {', '.join(KINDS)}, got {kind!r}.")
    return _build(KINDS.get(kind), data, "spec")


def to_json(spec) -> str:
    return json.dumps(to_dict(spec), indent=2)


def to_yaml(spec) -> str:
    import yaml
    return yaml.safe_dump(_plain(to_dict(spec)), sort_keys=False)


def _plain(value):
    """Tuples to lists, so YAML stays plain."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def from_text(text: str):
    import yaml  # YAML is a superset of JSON
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise SpecFormatError(f"spec file is not valid YAML/JSON: {error}") from None
    return from_dict(data)


def load_spec(path: str | Path):
    path = Path(path)
    if not path.exists():
        raise SpecFormatError(f"spec file {path} does not exist")
    return from_text(path.read_text())


def save_spec(spec, path: str | Path) -> None:
    path = Path(path)
    path.write_text(to_json(spec) if path.suffix == ".json" else to_yaml(spec))


__all__ = ["APPLY_MODES", "Align", "KINDS", "Layer", "Position", "SCHEMA_VERSION", "Site", "SpecKind",
           "check_choice", "check_layer", "from_dict", "from_text", "load_spec", "register_kind", "save_spec",
           "to_dict", "to_json", "to_yaml"]

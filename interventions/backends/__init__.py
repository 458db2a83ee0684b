"""Backends that execute resolved captures and edits: TransformerLens, nnsight, plain torch hooks."""

from __future__ import annotations

import importlib

from ..errors import UnknownBackendError, suggest
from .base import Backend, ForwardOutput

# imported on first use: TransformerLens and nnsight take seconds to import
_CLASSES = {
    "transformer_lens": ("transformer_lens", "TransformerLensBackend"),
    "nnsight": ("nnsight", "NnsightBackend"),
    "torch": ("torch_hooks", "TorchHooksBackend"),
}
BACKENDS = tuple(_CLASSES)
DEFAULT_BACKEND = "transformer_lens"
_INSTANCES: dict[str, Backend] = {}


def get_backend(name: str | Backend) -> Backend:
    if isinstance(name, Backend):
        return name
    if name not in _CLASSES:
        raise UnknownBackendError(f"unknown backend {name!r}.{suggest(name, BACKENDS)} Known: {', '.join(BACKENDS)}.")
    if name not in _INSTANCES:
        module, cls = _CLASSES[name]
        _INSTANCES[name] = getattr(importlib.import_module(f"{__name__}.{module}"), cls)()
    return _INSTANCES[name]


__all__ = ["BACKENDS", "Backend", "DEFAULT_BACKEND", "ForwardOutput", "get_backend"]

"""Backends that execute resolved captures and edits: TransformerLens, nnsight, plain torch hooks."""

from __future__ import annotations

import importlib

from ..errors import UnknownBackendError
from ..registry import Registry
from .base import Backend, ForwardOutput

# factories, so TransformerLens and nnsight (seconds to import) are imported on first use
BACKEND_FACTORIES: Registry = Registry("backend", UnknownBackendError)
for _name, (_module, _cls) in {"transformer_lens": ("transformer_lens", "TransformerLensBackend"),
                               "nnsight": ("nnsight", "NnsightBackend"),
                               "torch": ("torch_hooks", "TorchHooksBackend")}.items():
    BACKEND_FACTORIES.register(
        _name, lambda m=_module, c=_cls: getattr(importlib.import_module(f"{__name__}.{m}"), c)(), origin=__file__)
BACKENDS = tuple(BACKEND_FACTORIES.names())
DEFAULT_BACKEND = "transformer_lens"
_INSTANCES: dict[str, Backend] = {}


def get_backend(name: str | Backend) -> Backend:
    if isinstance(name, Backend):
        return name
    factory = BACKEND_FACTORIES.get(name)
    if name not in _INSTANCES:
        _INSTANCES[name] = factory()
    return _INSTANCES[name]


__all__ = ["BACKENDS", "BACKEND_FACTORIES", "Backend", "DEFAULT_BACKEND", "ForwardOutput", "get_backend"]

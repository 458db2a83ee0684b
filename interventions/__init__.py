"""Latent communication between language models.

Interventions are data (``Site``, ``Capture``, ``Splice``, ``Steer``, ``SoftTokens``, ``KVTransfer``, ``Handoff``); a ``Session``
executes any list of them on loaded models with the TransformerLens, nnsight or torch backend,
and ``run`` is its one-call form.
"""

import os

# Offline first: nothing reaches a hub unless the user sets HF_HUB_OFFLINE=0 for a hub model.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from .alignment import MAPS, LinearMap, fit_linear_map, register_map
from .backends import BACKENDS, get_backend
from .combine import COMBINES, Merge, register_combine
from .controls import CONTROLS, register_control
from .errors import (CarrierMissingError, DuplicateNameError, InterventionError, LayerOutOfRangeError,
                     MissingRoleError, PluginError, PositionOutOfRangeError, SpecFormatError, UnknownBackendError,
                     UnknownCombineError, UnknownModelError, UnknownSiteError, VocabularyMismatchError,
                     WeightHashMismatchError, WidthMismatchError)
from .execute import Result, capture, run
from .models import DEFAULT_MODEL, ZOO, LoadedModel, load_model, model_table, wrap_model
from .models.families import FAMILIES, Family, register_family
from .registry import Registry
from .session import Session, Step, greedy
from .spec import (KINDS, SCHEMA_VERSION, Align, Capture, Handoff, KVTransfer, Site, SoftTokens, SpecKind, Splice,
                   Steer, Trigger, from_dict, from_text, load_spec, register_kind, register_trigger, save_spec, to_dict,
                   to_json, to_yaml)

load = load_model


def __getattr__(name):
    # the harness imports tasks and pydantic models: loaded only when asked for
    if name in ("register_protocol", "protocol", "Protocol", "register_task"):
        from . import harness
        return getattr(harness, name)
    raise AttributeError(f"module 'interventions' has no attribute {name!r}")


__all__ = [
    "Align", "BACKENDS", "COMBINES", "CONTROLS", "Capture", "CarrierMissingError", "DEFAULT_MODEL",
    "DuplicateNameError", "FAMILIES", "Family", "Handoff", "InterventionError", "KINDS", "KVTransfer",
    "LayerOutOfRangeError",
    "LinearMap",
    "LoadedModel", "MAPS", "Merge", "MissingRoleError", "PluginError", "PositionOutOfRangeError", "Protocol",
    "Registry", "Result", "SCHEMA_VERSION", "Session", "Site", "SoftTokens", "SpecFormatError", "SpecKind", "Splice",
    "Steer", "Step", "Trigger", "UnknownBackendError", "UnknownCombineError", "UnknownModelError", "UnknownSiteError", "VocabularyMismatchError",
    "WeightHashMismatchError", "WidthMismatchError", "ZOO", "capture", "fit_linear_map", "from_dict", "from_text",
    "get_backend", "greedy", "load", "load_model", "load_spec", "model_table", "protocol", "register_combine",
    "register_control", "register_family", "register_kind", "register_map", "register_protocol", "register_task",
    "register_trigger",
    "run", "save_spec", "to_dict", "to_json", "to_yaml", "wrap_model",
]

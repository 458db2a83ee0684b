"""Latent communication between language models.

Interventions are data (``Site``, ``Capture``, ``Splice``, ``Steer``); ``run`` executes one on
loaded models with the TransformerLens or nnsight backend.
"""

import os

# Offline first: nothing reaches a hub unless the user sets HF_HUB_OFFLINE=0 for a hub model.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from .alignment import LinearMap, fit_linear_map
from .backends import BACKENDS, get_backend
from .combine import COMBINES, register_combine
from .errors import (CarrierMissingError, InterventionError, LayerOutOfRangeError, MissingRoleError,
                     PositionOutOfRangeError, SpecFormatError, UnknownBackendError, UnknownCombineError,
                     UnknownModelError, UnknownSiteError, WeightHashMismatchError, WidthMismatchError)
from .execute import Result, capture, run
from .models import DEFAULT_MODEL, ZOO, LoadedModel, load_model, model_table, wrap_model
from .spec import (SCHEMA_VERSION, Align, Capture, Site, Splice, Steer, from_dict, from_text, load_spec, save_spec,
                   to_dict, to_json, to_yaml)

load = load_model

__all__ = [
    "Align", "BACKENDS", "COMBINES", "Capture", "CarrierMissingError", "DEFAULT_MODEL", "InterventionError",
    "LayerOutOfRangeError", "LinearMap", "LoadedModel", "MissingRoleError", "PositionOutOfRangeError",
    "Result", "SCHEMA_VERSION", "Site", "SpecFormatError", "Splice", "Steer", "UnknownBackendError",
    "UnknownCombineError", "UnknownModelError", "UnknownSiteError", "WeightHashMismatchError",
    "WidthMismatchError", "ZOO", "capture", "fit_linear_map", "from_dict", "get_backend", "load",
    "load_model", "load_spec", "model_table", "register_combine", "run", "save_spec", "to_dict",
    "to_json", "to_yaml", "wrap_model", "from_text",
]

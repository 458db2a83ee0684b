"""Intervention specs as data. One module per kind; each registers itself in ``KINDS``, and every
module in this package is imported here, so a new kind is one new file."""

from ..discover import import_all
from .base import (APPLY_MODES, KINDS, SCHEMA_VERSION, Align, Site, SpecKind, from_dict, from_text, load_spec,
                   register_kind, save_spec, to_dict, to_json, to_yaml)
from .capture import Capture
from .handoff import Handoff
from .kv_transfer import KVTransfer, KVTransferError
from .soft_tokens import SoftTokens
from .splice import Splice
from .steer import Steer
from .trigger import Trigger, register_trigger

import_all(__name__, __path__)

__all__ = ["APPLY_MODES", "Align", "Capture", "Handoff", "KINDS", "KVTransfer", "KVTransferError", "SCHEMA_VERSION", "Site",
           "SoftTokens", "SpecKind", "Splice", "Steer", "Trigger", "from_dict", "from_text", "load_spec", "register_kind",
           "register_trigger", "save_spec", "to_dict", "to_json", "to_yaml"]

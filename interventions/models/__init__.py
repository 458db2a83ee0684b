"""Model zoo: named models, loading, the dequantize-once cache and model facts."""

from .cache import CACHE_ENV, cache_root
from .load import load_model, model_identity, model_table, state_dict_sha256, wrap_model
from .loaded import LoadedModel
from .zoo import DEFAULT_MODEL, ZOO, zoo_entry

__all__ = ["CACHE_ENV", "DEFAULT_MODEL", "LoadedModel", "ZOO", "cache_root", "load_model", "model_identity",
           "model_table", "state_dict_sha256", "wrap_model", "zoo_entry"]

"""Load a model by zoo name, Hugging Face id or local directory."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from ..verified import note
from .cache import ensure_cached, entry_cache_dir, loaded_sha256, read_marker
from .loaded import LoadedModel
from .placement import Placement, placement, weights_identity
from .zoo import ZOO

_LOADED: dict[tuple[str, str, str], LoadedModel] = {}


def load_model(name: str, dtype=None, reuse: bool = True, device=None) -> LoadedModel:
    """Load ``name``: a zoo name (``smollm2-135m``), a local directory, or a hub id.

    ``device``: cpu (default), cuda, cuda:N, mps, or auto (spread over the GPUs, then the CPU);
    ``dtype``: fp32 (default), bf16 or fp16. The weights are loaded straight onto the device.
    Loaded models are kept per process (``reuse=False`` forces a fresh copy).
    """
    where = placement(device, dtype)
    key = (name, where.device, where.dtype_name)
    if reuse and key in _LOADED:
        return _LOADED[key]
    if name in ZOO:
        model = _from_cache(name, where)
    elif Path(name).is_dir():
        model = _from_directory(name, Path(name), where, None, f"local directory {name}")
    elif "/" in name:
        model = _from_directory(name, name, where, None, f"hub {name}")
    else:
        ZOO.get(name)  # raises, suggesting close names
    model.placement_note = where.note
    if reuse:
        _LOADED[key] = model
    return model


def model_identity(name: str, device=None, dtype=None) -> str:
    """``load_model(name, dtype, device=device).identity`` (what a work key says of the model), without
    loading a zoo model: its verified cache's marker names the weights."""
    where = placement(device, dtype)
    loaded = _LOADED.get((name, where.device, where.dtype_name))
    if loaded is not None:
        return loaded.identity
    if name in ZOO:
        return weights_identity(ensure_cached(ZOO[name])[1]["sha256"], where.dtype_name)
    return load_model(name, dtype, device=device).identity


def _from_cache(name: str, placed: Placement) -> LoadedModel:
    """A zoo model from its verified cache; a cache that cannot be read is rebuilt once."""
    entry = ZOO[name]
    directory, marker = ensure_cached(entry)
    try:
        model = _from_directory(name, directory, placed, marker["sha256"], f"{entry.gguf_name} (cached)")
    except Exception as error:  # noqa: BLE001  e.g. a file damaged between the check and the read
        note(f"loading the cache of {name} failed ({type(error).__name__}: {error}); rebuilding it")
        directory, marker = ensure_cached(entry, rebuild=True)
        model = _from_directory(name, directory, placed, marker["sha256"], f"{entry.gguf_name} (cached)")
    model.loaded_sha256 = loaded_sha256(marker)
    return model


def _from_directory(name: str, where, placed: Placement, sha256: str | None, source: str) -> LoadedModel:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hf = AutoModelForCausalLM.from_pretrained(where, dtype=placed.dtype,  # trust_remote_code stays off
                                              **({"device_map": placed.device_map} if placed.device_map else {}))
    hf.eval()
    tokenizer = AutoTokenizer.from_pretrained(where)
    return wrap_model(name, hf, tokenizer, sha256=sha256, source=source)


def wrap_model(name: str, hf, tokenizer, sha256: str | None = None, source: str = "in memory") -> LoadedModel:
    """Make a LoadedModel from an already built transformers model (e.g. a tiny test model)."""
    config = hf.config
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    return LoadedModel(
        name=name, hf=hf.eval(), tokenizer=tokenizer, family=text_config.model_type,
        n_layers=text_config.num_hidden_layers, d_model=text_config.hidden_size,
        vocab_size=text_config.vocab_size, weight_sha256=sha256 or state_dict_sha256(hf), source=source,
    )


def state_dict_sha256(model) -> str:
    """Hash of the parameters themselves, for models that do not come from a verified file."""
    digest = hashlib.sha256()
    for key, tensor in sorted(model.state_dict().items()):
        digest.update(key.encode())
        digest.update(tensor.detach().to(torch.float32).contiguous().cpu().numpy().tobytes())
    return digest.hexdigest()


def model_table() -> list[dict]:
    """One row per zoo model: installed? cached? (for `interventions models`)."""
    rows = []
    for entry in ZOO.values():
        marker = read_marker(entry_cache_dir(entry))
        rows.append({"name": entry.name, "family": entry.family, "hub_id": entry.hub_id,
                     "installed": entry.installed(), "cached": bool(marker),
                     "optional": entry.optional, "install": entry.install, "notes": entry.notes,
                     "cache_dir": str(entry_cache_dir(entry))})
    return rows


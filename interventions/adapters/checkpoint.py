"""A trained adapter on disk: its weights, config and the models it was trained for (one verified
cache file, ``interventions.verified``), and a JSON beside it for people (config, hyper-parameters,
training curve). Cached under ``<cache>/adapters/<fingerprint>.pt``; the fingerprint hashes the
sender's and receiver's weights, the task, the training items and every hyper-parameter, so a
changed ingredient trains a new adapter instead of reusing a stale one."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ..errors import InterventionError
from ..models.cache import cache_root
from ..models.loaded import LoadedModel
from ..verified import load_tensors, save_tensors
from .module import AdapterConfig, LatentAdapter


class AdapterMismatchError(InterventionError, ValueError):
    pass


def fingerprint(sender: LoadedModel, receiver: LoadedModel, task: str, recipe: dict) -> str:
    """Hash of (A weights, B weights, task, recipe: training items, hyper-parameters)."""
    blob = json.dumps({"sender": sender.weight_sha256, "receiver": receiver.weight_sha256, "task": task,
                       "recipe": recipe}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def adapter_path(key: str) -> Path:
    return cache_root() / "adapters" / f"{key}.pt"


def _identity(model: LoadedModel) -> dict:
    return {"name": model.name, "sha256": model.weight_sha256}


def save_adapter(adapter: LatentAdapter, path: Path, sender: LoadedModel, receiver: LoadedModel,
                 record: dict) -> None:
    """Weights, config and the pair (verified file), then ``record`` (curve, recipe) as JSON beside it."""
    path = Path(path)
    state = {name: value.detach().cpu() for name, value in adapter.state_dict().items()}
    save_tensors({"state": state, "config": adapter.config.to_dict(), "sender": _identity(sender),
                  "receiver": _identity(receiver)}, path)
    summary = {"config": adapter.config.to_dict(), "sender": _identity(sender), "receiver": _identity(receiver),
               **record}
    path.with_suffix(".json").write_text(json.dumps(summary, indent=2, default=str))


def load_adapter(path: Path, sender: LoadedModel, receiver: LoadedModel) -> LatentAdapter | None:
    """The adapter saved at ``path`` (None if absent or failing verification), refused with one
    line when it was trained for other models than ``sender`` -> ``receiver``."""
    saved = load_tensors(Path(path), "adapter checkpoint")
    if saved is None:
        return None
    for role, model in (("sender", sender), ("receiver", receiver)):
        trained = saved[role]
        if trained["sha256"] != model.weight_sha256:
            raise AdapterMismatchError(
                f"adapter {Path(path).name} was trained for {role} {trained['name']} (weights "
                f"{trained['sha256'][:12]}), not {model.name} (weights {model.weight_sha256[:12]}); "
                "leave checkpoint unset to train one for this pair")
    adapter = LatentAdapter(AdapterConfig(**saved["config"]))
    adapter.load_state_dict(saved["state"])
    return adapter.eval()

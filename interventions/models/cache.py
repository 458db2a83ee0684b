"""Dequantize a GGUF once and keep it as fp32 safetensors.

transformers dequantizes GGUF weights on every load (15-60 s here); a safetensors
copy loads in a fraction of a second. The cache dir is keyed by the GGUF's sha256,
so a changed file can never be served from a stale cache. The marker records every cached
file's own sha256 (``interventions.verified``): a file that changed since conversion, or that
cannot be read, is rebuilt from the verified GGUF, and rows record the hash of what was loaded.
``convert_once`` is that convert-verify-rebuild cycle for any source (image encoders use it too).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from ..verified import note, problem, record, replace_json
from .carriers import verify_sha256
from .zoo import ZooEntry

CACHE_ENV = "INTERVENTIONS_CACHE"
MARKER = "interventions-cache.json"


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "interventions")


def entry_cache_dir(entry: ZooEntry) -> Path:
    return cache_root() / f"{entry.name}-{entry.sha256[:12]}"


def read_marker(directory: Path) -> dict | None:
    marker = directory / MARKER
    if not marker.exists():
        return None
    try:
        data = json.loads(marker.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return {}  # unreadable: fails verification and is rebuilt
    return data if isinstance(data, dict) else {}


def cache_problem(directory: Path, marker: dict | None, full: bool | None = None) -> str | None:
    """Why the cached files no longer match the marker's records (None: they do)."""
    if marker is None:
        return "not converted yet"
    if "files" not in marker or "sha256" not in marker:
        return "written by an older version without file hashes"
    for name, recorded in marker["files"].items():
        why = problem(directory / name, recorded, full)
        if why:
            return f"{name}: {why}"
    return None


def loaded_sha256(marker: dict) -> str:
    """One hash for the weight files actually loaded (the safetensors, as verified)."""
    digests = [f"{name}:{rec['sha256']}" for name, rec in sorted(marker["files"].items())
               if name.endswith(".safetensors")]
    return hashlib.sha256("\n".join(digests).encode()).hexdigest()


def ensure_cached(entry: ZooEntry, rebuild: bool = False) -> tuple[Path, dict]:
    """Return (safetensors dir, marker), converting the GGUF on first use and rebuilding a
    cache whose files fail verification (or when ``rebuild``)."""
    directory = entry_cache_dir(entry)

    def write(staging: Path) -> dict:
        work = cache_root() / "work"
        gguf = entry.gguf_path(work)
        digest = verify_sha256(gguf, entry.sha256)
        print(f"[interventions] first use of {entry.name}: dequantizing {gguf.name} once "
              f"into {directory} (later loads take well under a second)")
        model, tokenizer = dequantize(entry, gguf)
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        if gguf.parent == work:  # an assembled copy; the carrier still has the parts
            gguf.unlink(missing_ok=True)
        return {"model": entry.name, "gguf": entry.gguf_name, "sha256": digest, "hub_id": entry.hub_id}

    return convert_once(directory, write, entry.name, "the verified GGUF", rebuild)


def convert_once(directory: Path, write, what: str, source: str, rebuild: bool = False) -> tuple[Path, dict]:
    """(directory, marker) of a verified conversion cache: ``write(staging)`` fills a staging directory and
    returns the marker's fields; it runs on first use, when a cached file fails verification, or on
    ``rebuild``. The marker adds every file's record and the conversion time."""
    marker = read_marker(directory)
    before = json.dumps(marker, indent=2)
    why = "rebuild requested" if rebuild else cache_problem(directory, marker)
    if why is None:
        if json.dumps(marker, indent=2) != before:  # a touched but intact file: keep later checks cheap
            replace_json(directory / MARKER, marker, indent=2)
        return directory, marker
    with conversion_lock(directory):
        marker = read_marker(directory)  # another process may have converted it while we waited
        if not rebuild and cache_problem(directory, marker) is None:
            return directory, marker
        if marker is not None:
            note(f"the cache of {what} failed verification ({why}); rebuilding it from {source}")
        start = time.perf_counter()
        staging = directory.with_name(directory.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        marker = {**write(staging), "seconds_to_convert": round(time.perf_counter() - start, 1),
                  "files": {p.name: record(p) for p in sorted(staging.iterdir()) if p.is_file()}}
        (staging / MARKER).write_text(json.dumps(marker, indent=2))
        shutil.rmtree(directory, ignore_errors=True)
        staging.replace(directory)  # atomic: a killed conversion leaves no half cache
    return directory, marker


@contextmanager
def conversion_lock(directory: Path):
    """One process converts a model at a time; the others wait and then use its result."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    with open(directory.with_name(directory.name + ".lock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def dequantize(entry: ZooEntry, gguf: Path):
    """(fp32 transformers model, tokenizer) from a GGUF file."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # A GGUF-loaded model refuses save_pretrained while its quantizer marker is set.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.architectures = [entry.architecture]
    return model, tokenizer

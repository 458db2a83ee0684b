"""Dequantize a GGUF once and keep it as fp32 safetensors.

transformers dequantizes GGUF weights on every load (15-60 s here); a safetensors
copy loads in a fraction of a second. The cache dir is keyed by the GGUF's sha256,
so a changed file can never be served from a stale cache.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import torch

from .carriers import verify_sha256
from .zoo import ZooEntry

CACHE_ENV = "INTERVENTIONS_CACHE"
MARKER = "interventions-cache.json"


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "interventions")


def entry_cache_dir(entry: ZooEntry) -> Path:
    tag = entry.sha256[:12] if entry.sha256 else "unverified"
    return cache_root() / f"{entry.name}-{tag}"


def read_marker(directory: Path) -> dict | None:
    marker = directory / MARKER
    if not marker.exists():
        return None
    return json.loads(marker.read_text())


def ensure_cached(entry: ZooEntry) -> tuple[Path, dict]:
    """Return (safetensors dir, marker), converting the GGUF on first use."""
    directory = entry_cache_dir(entry)
    marker = read_marker(directory)
    if marker is not None:
        return directory, marker
    work = cache_root() / "work"
    gguf = entry.gguf_path(work)
    digest = verify_sha256(gguf, entry.sha256)
    marker = _convert(entry, gguf, directory, digest)
    if gguf.parent == work:  # an assembled copy; the carrier still has the parts
        gguf.unlink(missing_ok=True)
    return directory, marker


def _convert(entry: ZooEntry, gguf: Path, directory: Path, digest: str) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"[interventions] first use of {entry.name}: dequantizing {gguf.name} once "
          f"into {directory} (later loads take well under a second)")
    start = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # A GGUF-loaded model refuses save_pretrained while its quantizer marker is set.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.architectures = [entry.architecture]
    staging = directory.with_name(directory.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    marker = {"model": entry.name, "gguf": entry.gguf_name, "sha256": digest,
              "hub_id": entry.hub_id, "seconds_to_convert": round(time.perf_counter() - start, 1)}
    (staging / MARKER).write_text(json.dumps(marker, indent=2))
    shutil.rmtree(directory, ignore_errors=True)
    staging.replace(directory)  # atomic: a killed conversion leaves no half cache
    return marker

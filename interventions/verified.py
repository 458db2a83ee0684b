"""Cache files trusted only while they are provably the bytes we wrote.

Every cache file (a converted model's safetensors, cached activations, fitted maps, corpus
statistics) gets a record of its sha256, size and modification time when it is written. A warm load
compares size and mtime, which costs a ``stat``; when either changed, or when verification is
forced (``verify=True``, or ``INTERVENTIONS_VERIFY=1``, which ``--verify`` sets), the full hash
is recomputed. A file that fails is rebuilt by its owner, never loaded. Tensors are read with
``torch.load(weights_only=True)``: a cache file can never run code.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

from .models.carriers import sha256_file

VERIFY_ENV = "INTERVENTIONS_VERIFY"
SIDECAR = ".check.json"


def verify_forced() -> bool:
    return os.environ.get(VERIFY_ENV, "") not in ("", "0")


def record(path: Path) -> dict:
    stat = Path(path).stat()
    return {"sha256": sha256_file(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def problem(path: Path, recorded: dict, full: bool | None = None) -> str | None:
    """Why ``path`` no longer matches ``recorded`` (None if it does). Hashes only when needed."""
    path = Path(path)
    if not path.is_file():
        return "missing"
    stat = path.stat()
    if stat.st_size != recorded.get("size"):
        return f"size {stat.st_size} bytes, recorded {recorded.get('size')}"
    if (full or verify_forced()) or stat.st_mtime_ns != recorded.get("mtime_ns"):
        if sha256_file(path) != recorded.get("sha256"):
            return "sha256 differs from the one recorded when it was written"
        recorded["mtime_ns"] = stat.st_mtime_ns  # same bytes, touched: the next check is cheap again
    return None


def note(message: str) -> None:
    print(f"[interventions] {message}", file=sys.stderr)


def save_tensors(obj, path: Path) -> None:
    """``torch.save`` (tensors, numbers, strings, containers only) with a checksum sidecar."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = _staging(path)
    torch.save(obj, staging)
    staging.replace(path)  # atomic: a killed save leaves no half file
    _write_record(path, record(path))


def load_tensors(path: Path, what: str = "cache file"):
    """What ``save_tensors`` wrote, or None (after saying why) if it is absent, unverified,
    changed or unreadable; the caller then recomputes it."""
    path = Path(path)
    if not path.exists():
        return None
    sidecar = _sidecar(path)
    why = None
    if not sidecar.exists():
        why = "no checksum record: written by an older version"
    else:
        try:
            recorded = json.loads(sidecar.read_text())
        except (OSError, ValueError) as error:
            recorded, why = {}, f"checksum record unreadable: {type(error).__name__}"
        why = why or problem(path, recorded)
        if why is None:
            try:
                obj = torch.load(path, weights_only=True)
            except Exception as error:  # noqa: BLE001  any unreadable file is rebuilt, never trusted
                why = f"unreadable: {type(error).__name__}"
            else:
                _write_record(path, recorded)
                return obj
    note(f"{what} {path.name} failed verification ({why}); recomputing it")
    path.unlink(missing_ok=True)
    sidecar.unlink(missing_ok=True)
    return None


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + SIDECAR)


def _staging(path: Path) -> Path:
    return path.with_name(f"{path.name}.{os.getpid()}.partial")  # two writers never share a staging file


def _write_record(path: Path, recorded: dict) -> None:
    replace_json(_sidecar(path), recorded)


def replace_json(path: Path, data, indent: int | None = None) -> None:
    """Write a JSON record in one step: processes sharing a cache (Ray workers) read records while
    another rewrites them, and a half-written record reads as none, which forces a rebuild."""
    staging = _staging(path)
    staging.write_text(json.dumps(data, indent=indent))
    staging.replace(path)

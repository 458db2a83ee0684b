"""Append-only JSONL results: one complete line per work item, written atomically per batch."""

from __future__ import annotations

import json
import os
from pathlib import Path


def read_rows(path: Path) -> list[dict]:
    """Every complete row; a torn last line (a kill mid-write) is ignored and later rewritten."""
    if not path.exists():
        return []
    rows = []
    with open(path) as handle:
        for line in handle:
            if not line.endswith("\n"):
                break
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                break
    return rows


def repair(path: Path) -> None:
    """Drop a torn trailing line so appends start on a clean line."""
    if not path.exists():
        return
    data = path.read_bytes()
    cut = data.rfind(b"\n") + 1
    if cut != len(data):
        with open(path, "r+b") as handle:
            handle.truncate(cut)


def append_rows(path: Path, rows: list[dict]) -> None:
    if not rows:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = "".join(json.dumps(row, default=str) + "\n" for row in rows)
    with open(path, "a") as handle:  # one write of whole lines, then fsync
        handle.write(payload)
        handle.flush()
        os.fsync(handle.fileno())

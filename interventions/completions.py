"""Sampled completions kept on disk, so that a resumed run, or a later protocol or experiment with the
same sender, reads a completion again instead of sampling it again.

A completion depends on the weights (and precision), the device, the backend, the prompt, the
number of new tokens, the temperature and the row's seed; one file per model, device and backend
holds one JSON line per completion, keyed by a hash of the rest. Lines are only appended, a batch
at a time, so a run killed mid-write loses at most that batch's unwritten lines; a line it cut is
skipped (and sampled again) when read.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from .compute import Compute
from .models.cache import cache_root
from .verified import note

_STORES: dict[Path, CompletionStore] = {}


def completion_key(prompt: str, max_new_tokens: int, temperature: float, seed: int) -> str:
    return hashlib.sha256(json.dumps([prompt, max_new_tokens, temperature, seed]).encode()).hexdigest()[:32]


class CompletionStore:
    def __init__(self, path: Path):
        self.path = Path(path)
        self._kept: dict[str, tuple[str, Compute]] = {}
        if self.path.exists():
            self._read()

    @classmethod
    def of(cls, model, backend: str) -> CompletionStore:
        """The store of ``model``'s completions on its device under ``backend`` (one per process)."""
        name = f"{model.name.replace('/', '_')}-{model.tag}-{model.device.type}-{backend}.jsonl"
        path = cache_root() / "completions" / name
        if path not in _STORES:
            _STORES[path] = cls(path)
        return _STORES[path]

    def _read(self) -> None:
        skipped = 0
        for line in self.path.read_text().splitlines():
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                self._kept[row["key"]] = (row["text"], Compute.from_dict(row["compute"]))
            except (ValueError, KeyError, TypeError):
                skipped += 1
        if skipped:
            note(f"{self.path.name}: {skipped} unreadable line(s) skipped; those completions are sampled again")

    def get(self, key: str) -> tuple[str, Compute] | None:
        return self._kept.get(key)

    def put(self, sampled: dict[str, tuple[str, Compute]]) -> None:
        """Keep a batch's completions, by key: in memory, and appended to the file in one write."""
        self._kept.update(sampled)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lines = "".join(json.dumps({"key": key, "text": text, "compute": compute.to_dict()}) + "\n"
                       for key, (text, compute) in sampled.items())
        with open(self.path, "a+b") as f:   # one write of whole lines: a concurrent writer appends its own
            f.seek(0, 2)
            if f.tell():   # after a killed write, start on a line of our own
                f.seek(-1, 2)
                if f.read(1) != b"\n":
                    lines = "\n" + lines
            f.write(lines.encode())

"""Append-only JSONL results: one complete line per work item, written atomically per batch.

Reads never trust the file: a line that is not a JSON row with a key is skipped and counted (its
line number kept), a key seen before is dropped (the first copy wins), and a torn last line (a
kill mid-write) is ignored until the writer truncates it. Every reader gets one row per key.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InterventionError


class OutputDirError(InterventionError, OSError):
    """An ``--out`` that is a file, or a directory that cannot be written."""


@dataclass
class ResultsFile:
    rows: list[dict] = field(default_factory=list)      # one per key, first copy, in file order
    bad_lines: list[int] = field(default_factory=list)  # 1-based numbers of unreadable lines
    duplicates: list[int] = field(default_factory=list)  # line numbers of repeated keys (dropped)
    torn: bool = False                                  # the last line has no newline yet

    def problems(self) -> str:
        """One line saying what was skipped, or '' when the file is clean."""
        parts = []
        if self.bad_lines:
            parts.append(f"skipped {_count(self.bad_lines, 'unreadable line')} ({_lines(self.bad_lines)})")
        if self.duplicates:
            parts.append(f"dropped {_count(self.duplicates, 'duplicate row')} ({_lines(self.duplicates)})")
        if self.torn:
            parts.append("ignored a torn last line")
        return "; ".join(parts)


def _count(things: list, noun: str) -> str:
    return f"{len(things)} {noun}{'' if len(things) == 1 else 's'}"


def _lines(numbers: list[int], shown: int = 5) -> str:
    head = ", ".join(map(str, numbers[:shown]))
    return f"line{'' if len(numbers) == 1 else 's'} {head}" + (f", … {len(numbers) - shown} more" if len(numbers) > shown else "")


def read_results(path: Path) -> ResultsFile:
    out = ResultsFile()
    if not Path(path).exists():
        return out
    seen = set()
    with open(path, encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.endswith("\n"):
                out.torn = True
                break
            if not line.strip():
                continue
            row = _row_of(line)
            if row is None:
                out.bad_lines.append(number)
            elif row["key"] in seen:
                out.duplicates.append(number)
            else:
                seen.add(row["key"])
                out.rows.append(row)
    return out


def _row_of(line: str) -> dict | None:
    """The row a complete line holds, or None if it is not a JSON object with a string key."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError:
        return None
    return row if isinstance(row, dict) and isinstance(row.get("key"), str) else None


def read_rows(path: Path) -> list[dict]:
    """Every readable row, one per key (see ``read_results`` for what was skipped)."""
    return read_results(path).rows


def rewrite_clean(path: Path, drop_keys: set[str] = frozenset(), replace: dict[str, dict] | None = None) -> None:
    """Rewrite ``path`` with the first copy of each key not in ``drop_keys`` (the row ``replace`` holds
    for its key instead, when it holds one); every other line (unreadable, duplicate, dropped, torn)
    is appended to ``results.rejected``."""
    kept, rejected, seen = [], [], set()
    for line in Path(path).read_text(encoding="utf-8", errors="replace").splitlines(keepends=True):
        row = _row_of(line) if line.endswith("\n") else None  # a torn tail is rejected too
        key = row["key"] if row else None
        if key is not None and key not in seen and key not in drop_keys:
            seen.add(key)
            kept.append(json.dumps(replace[key], default=str) + "\n" if key in (replace or {}) else line)
        elif line.strip():
            rejected.append(line if line.endswith("\n") else line + "\n")
    if rejected:  # no empty file beside a folder with nothing to reject
        with open(Path(path).with_suffix(".rejected"), "a", encoding="utf-8") as handle:
            handle.writelines(rejected)
    staging = Path(path).with_suffix(".rewrite")
    staging.write_text("".join(kept), encoding="utf-8")
    staging.replace(path)  # atomic: a kill leaves the old file or the new one


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


def writable_dir(out_dir: Path) -> Path:
    """``out_dir``, created if needed; a clear error if it is a file or cannot be written."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputDirError(f"--out {out_dir} is a file; give a directory for the results")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as error:
        raise OutputDirError(f"--out {out_dir} is not a writable directory ({error.strerror or error})") from None
    return out_dir

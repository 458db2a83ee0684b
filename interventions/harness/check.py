"""``interventions check OUT``: is a results folder sound?

It reads ``results.jsonl`` the way the runner and the report do and lists what they skip:
unreadable lines, duplicate keys, a torn last line. Then, row by row, it recomputes each work key
from what the row says it is (protocol spec, model hashes, task, item, seed): a key that no longer
matches means the protocol's definition changed since the row was written, so a resume would redo
it. Rows of zoo models are checked against the zoo's weight hash and the verified cache's hash
of the weights actually loaded. A row that records how its answer was parsed (a "choose one of"
task) is parsed again by its task: when the task's parser has changed since, the row is re-scorable.
``fix=True`` rewrites the file without the lines it flags (kept in ``results.rejected``), so a resume
recomputes exactly those work items, and re-scores the re-scorable rows in place, since their answers
stand. A debate's votes stay as they were cast: only its final answer is parsed again.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InterventionError
from ..models.cache import cache_problem, entry_cache_dir, loaded_sha256, read_marker
from ..compute import Compute
from ..models.zoo import ZOO
from .tasks import get_task
from .protocols import PROTOCOLS
from .protocols.base import scored
from .runner import RESULTS_FILE
from .units import row_weights, work_key
from .lock import results_lock
from .store import read_results, rewrite_clean


@dataclass
class CheckReport:
    path: Path
    n_rows: int = 0
    bad_lines: list[int] = field(default_factory=list)
    duplicates: list[int] = field(default_factory=list)
    torn: bool = False
    stale: dict[str, list[str]] = field(default_factory=dict)   # reason -> keys of rows that no longer match
    unchecked: Counter = field(default_factory=Counter)          # reason -> rows that could not be checked
    rescored: dict[str, dict] = field(default_factory=dict)     # key -> the row as its task scores it now
    rescored_scores: int = 0                                     # how many of those changed score
    fixed: bool = False                                          # the flagged rows were dropped or re-scored

    @property
    def clean(self) -> bool:
        return not (self.bad_lines or self.duplicates or self.torn or self.stale or self.rescored)

    def lines(self) -> list[str]:
        out = [f"{self.path}: {self.n_rows} rows"]
        if self.bad_lines:
            out.append(f"  {len(self.bad_lines)} unreadable line(s): {', '.join(map(str, self.bad_lines[:20]))}")
        if self.duplicates:
            out.append(f"  {len(self.duplicates)} duplicate row(s) (a key written before): lines "
                       f"{', '.join(map(str, self.duplicates[:20]))}")
        if self.torn:
            out.append("  a torn last line (a run was killed mid-write; the next run truncates it)")
        for reason, keys in self.stale.items():
            out.append(f"  {len(keys)} row(s) {reason}")
        if self.rescored:
            out.append(f"  {len(self.rescored)} row(s) whose answer their task now parses otherwise "
                       f"({self.rescored_scores} with another score)")
        for reason, count in self.unchecked.items():
            out.append(f"  {count} row(s) not checked: {reason}")
        if self.fixed:
            moved = len(self.bad_lines) + len(self.duplicates) + self.torn + sum(map(len, self.stale.values()))
            out.append(f"  fixed: {moved} line(s) moved to results.rejected (a resume recomputes their work "
                       f"items), {len(self.rescored)} row(s) re-scored")
        else:
            out.append("  clean" if self.clean else "  run `interventions check OUT --fix` to drop the flagged "
                       "lines (a resume then recomputes those work items) and re-score the re-parsed rows")
        return out


def _zoo_hashes(name: str) -> tuple[str, str | None] | None:
    """(published weight hash, hash of the verified cached weights or None) for a zoo model."""
    if name not in ZOO:
        return None
    entry = ZOO[name]
    directory = entry_cache_dir(entry)
    marker = read_marker(directory)
    cached = loaded_sha256(marker) if marker and cache_problem(directory, marker) is None else None
    return entry.sha256, cached


def _row_problem(row: dict, zoo: dict) -> str | None:
    spec = row.get("protocol_spec") or {}
    try:
        protocol = PROTOCOLS.get(spec.get("kind")).model_validate({k: v for k, v in spec.items() if k != "kind"})
    except Exception as error:  # noqa: BLE001  unknown kind (a plugin not loaded) or changed fields
        raise _Unchecked(f"protocol {spec.get('kind')!r} cannot be rebuilt ({type(error).__name__}); "
                         "pass its plugin with --plugin") from None
    if work_key(protocol, row_weights(row), row["task"], row["item_id"], row["seed"], row.get("sampling")) != row["key"]:
        return "whose protocol definition changed since they were written (their work key no longer matches)"
    for m in row["models"].values():
        hashes = zoo.setdefault(m["name"], _zoo_hashes(m["name"]))
        if hashes is None:
            continue
        published, cached = hashes
        if published and m["sha256"] != published:
            return f"made with other weights than the zoo's {m['name']} (weight hash differs)"
        if cached and m.get("loaded_sha256") not in (None, cached):
            return f"made from a cached {m['name']} whose files differ from the verified cache (corrupt then?)"
    return None


class _Unchecked(Exception):
    pass


def _task_items(name: str) -> tuple | str:
    """(the task, its items by id), or why the task cannot be rebuilt here."""
    try:
        task = get_task(name)
        return task, {item.id: item for item in task.all_items()}
    except Exception as error:  # noqa: BLE001  a plugin task not loaded, its data not installed
        return f"task {name!r} cannot be rebuilt to parse its answers ({type(error).__name__})"


def _reparsed(row: dict, tasks: dict) -> dict | None:
    """The row as its task scores its stored answer now, or None when nothing changed."""
    parsed = (row.get("extra") or {}).get("parsed")
    if parsed is None:
        return None
    if row["task"] not in tasks:  # built once per task, a failure too
        tasks[row["task"]] = _task_items(row["task"])
    if isinstance(tasks[row["task"]], str):
        raise _Unchecked(tasks[row["task"]])
    task, items = tasks[row["task"]]
    item = items.get(row["item_id"])
    if item is None or str(item.answer) != str(row.get("gold")):
        raise _Unchecked(f"task {row['task']!r} built here has other items than its rows (built with options?)")
    now = scored(task, item, row["prediction"], Compute())   # as the runner scored it
    if now.extra.get("parsed") == parsed and now.score == row["score"]:
        return None
    return {**row, "score": now.score, "extra": {**row["extra"], "parsed": now.extra.get("parsed")}}


def check_results(out_dir: Path, fix: bool = False) -> CheckReport:
    path = Path(out_dir) / RESULTS_FILE
    if not path.exists():
        raise InterventionError(f"no {RESULTS_FILE} in {out_dir}")
    found = read_results(path)
    report = CheckReport(path, len(found.rows), found.bad_lines, found.duplicates, found.torn)
    zoo: dict = {}
    tasks: dict = {}
    for row in found.rows:
        try:
            reason = _row_problem(row, zoo)
            if not reason and (again := _reparsed(row, tasks)):
                report.rescored[row["key"]] = again
                report.rescored_scores += again["score"] != row["score"]
        except _Unchecked as why:
            report.unchecked[str(why)] += 1
            continue
        except (KeyError, TypeError):
            reason = "missing fields a result row has (not written by this runner?)"
        if reason:
            report.stale.setdefault(reason, []).append(row["key"])
    if fix and not report.clean:
        with results_lock(out_dir):  # never rewrite under a running writer
            rewrite_clean(path, {key for keys in report.stale.values() for key in keys}, report.rescored)
        report.fixed = True
    return report

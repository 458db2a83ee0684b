"""``interventions check OUT``: is a results folder sound?

It reads ``results.jsonl`` the way the runner and the report do and lists what they skip:
unreadable lines, duplicate keys, a torn last line. Then, row by row, it recomputes each work key
from what the row says it is (protocol spec, model hashes, task, item, seed, sampling, token
budget): a key that no longer matches means the protocol's definition changed since the row was
written, so a resume would redo it. Rows of zoo models are checked against the zoo's weight hash
and the verified cache's hash of the weights actually loaded. A row that records how its answer was
parsed (a "choose one of" task) is parsed again by its task: when the task's parser has changed
since, the row is re-scorable. A generated answer whose row does not say its token budget (written
before rows recorded ``max_new_tokens``) is unbudgeted: a resume keys work by that budget and would
not find it.
``fix=True`` rewrites the file without the lines it flags (kept in ``results.rejected``), so a resume
recomputes exactly those work items, re-scores the re-scorable rows in place, since their answers
stand, and stamps unbudgeted rows with the ``max_new_tokens`` of the experiment they name (the budget
every resume gave them before) under the key that budget gives. A debate's votes stay as they were
cast: only its final answer is parsed again.
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
from .experiment import Experiment, load_experiment
from .units import row_key, row_weights
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
    unbudgeted: dict[str, dict] = field(default_factory=dict)   # key -> the row stamped with its token budget
    fixed: bool = False                                          # the flagged rows were dropped or re-scored

    @property
    def clean(self) -> bool:
        return not (self.bad_lines or self.duplicates or self.torn or self.stale or self.rescored or self.unbudgeted)

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
        if self.unbudgeted:
            budgets = sorted({row["max_new_tokens"] for row in self.unbudgeted.values()})
            out.append(f"  {len(self.unbudgeted)} generated answer(s) whose row does not say its token budget "
                       f"(written before rows did); their experiment's max_new_tokens: {budgets}")
        for reason, count in self.unchecked.items():
            out.append(f"  {count} row(s) not checked: {reason}")
        if self.fixed:
            moved = len(self.bad_lines) + len(self.duplicates) + self.torn + sum(map(len, self.stale.values()))
            out.append(f"  fixed: {moved} line(s) moved to results.rejected (a resume recomputes their work "
                       f"items), {len(self.rescored)} row(s) re-scored, {len(self.unbudgeted)} stamped with "
                       "their token budget")
        else:
            out.append("  clean" if self.clean else "  run `interventions check OUT --fix` to drop the flagged "
                       "lines (a resume then recomputes those work items), re-score the re-parsed rows and "
                       "stamp the unbudgeted ones")
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


def _protocol(row: dict):
    """The protocol a row's spec describes, rebuilt as the runner builds it."""
    spec = row.get("protocol_spec") or {}
    try:
        return PROTOCOLS.get(spec.get("kind")).model_validate({k: v for k, v in spec.items() if k != "kind"})
    except Exception as error:  # noqa: BLE001  unknown kind (a plugin not loaded) or changed fields
        raise _Unchecked(f"protocol {spec.get('kind')!r} cannot be rebuilt ({type(error).__name__}); "
                         "pass its plugin with --plugin") from None


def _row_problem(row: dict, zoo: dict) -> str | None:
    if row_key(_protocol(row), row_weights(row), row) != row["key"]:
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


def _rekeyed(stamped: dict[str, dict]) -> dict[str, dict]:
    """The stamped rows, their ``reused_from`` following the key their source row now has."""
    new_key = {old: row["key"] for old, row in stamped.items()}
    return {old: {**row, "reused_from": new_key.get(row["reused_from"], row["reused_from"])} if "reused_from" in row
            else row for old, row in stamped.items()}


class _Unchecked(Exception):
    pass


def _task_items(name: str) -> tuple | str:
    """(the task, its items by id), or why the task cannot be rebuilt here."""
    try:
        task = get_task(name)
        return task, {item.id: item for item in task.all_items()}
    except Exception as error:  # noqa: BLE001  a plugin task not loaded, its data not installed
        return f"task {name!r} cannot be rebuilt to parse its answers ({type(error).__name__})"


def _task_of(row: dict, tasks: dict) -> tuple:
    """(the row's task, its items by id), built once per task (a failure too)."""
    if row["task"] not in tasks:
        tasks[row["task"]] = _task_items(row["task"])
    if isinstance(tasks[row["task"]], str):
        raise _Unchecked(tasks[row["task"]])
    return tasks[row["task"]]


def _reparsed(row: dict, tasks: dict) -> dict | None:
    """The row as its task scores its stored answer now, or None when nothing changed."""
    parsed = (row.get("extra") or {}).get("parsed")
    if parsed is None:
        return None
    task, items = _task_of(row, tasks)
    item = items.get(row["item_id"])
    if item is None or str(item.answer) != str(row.get("gold")):
        raise _Unchecked(f"task {row['task']!r} built here has other items than its rows (built with options?)")
    now = scored(task, item, row["prediction"], Compute())   # as the runner scored it
    if now.extra.get("parsed") == parsed and now.score == row["score"]:
        return None
    return {**row, "score": now.score, "extra": {**row["extra"], "parsed": now.extra.get("parsed")}}


def _budget(name: str, experiments: dict) -> int:
    """The ``max_new_tokens`` of the experiment named ``name`` (given, or found in the catalog)."""
    if name not in experiments:
        try:
            experiments[name] = load_experiment(name).max_new_tokens
        except InterventionError:
            experiments[name] = None
    if experiments[name] is None:
        raise _Unchecked(f"generated answers of experiment {name!r} whose rows do not say their token budget: "
                         "name its YAML (`interventions check <its YAML>`) to say which")
    return experiments[name]


def _stamped(row: dict, tasks: dict, experiments: dict) -> dict | None:
    """A generated answer's row that does not say its token budget, stamped with its experiment's and
    keyed as a resume looks for it; None for any other row."""
    if "max_new_tokens" in row or row.get("score_norm") is not None or not _task_of(row, tasks)[0].generated:
        return None   # (a scored choice has score_norm: no task needs building for it)
    after = "sampling" if "sampling" in row else "seed"   # where the runner writes it
    out = {}
    for name, value in row.items():
        out[name] = value
        if name == after:
            out["max_new_tokens"] = _budget(row["experiment"], experiments)
    return {**out, "key": row_key(_protocol(row), row_weights(row), out)}


def check_results(out_dir: Path, fix: bool = False, experiment: Experiment | None = None) -> CheckReport:
    """What is wrong with a results folder (see the module's docstring); ``experiment`` is the one that
    writes it, when known (else each row's experiment is looked up by name)."""
    path = Path(out_dir) / RESULTS_FILE
    if not path.exists():
        raise InterventionError(f"no {RESULTS_FILE} in {out_dir}")
    found = read_results(path)
    report = CheckReport(path, len(found.rows), found.bad_lines, found.duplicates, found.torn)
    zoo: dict = {}
    tasks: dict = {}
    experiments = {experiment.name: experiment.max_new_tokens} if experiment else {}
    for row in found.rows:
        try:
            reason = _row_problem(row, zoo)
            if not reason and (again := _reparsed(row, tasks)):
                report.rescored[row["key"]] = again
                report.rescored_scores += again["score"] != row["score"]
            if not reason and (stamped := _stamped(report.rescored.get(row["key"], row), tasks, experiments)):
                report.unbudgeted[row["key"]] = stamped
        except _Unchecked as why:
            report.unchecked[str(why)] += 1
            continue
        except (KeyError, TypeError):
            reason = "missing fields a result row has (not written by this runner?)"
        if reason:
            report.stale.setdefault(reason, []).append(row["key"])
    if fix and not report.clean:
        with results_lock(out_dir):  # never rewrite under a running writer
            rewrite_clean(path, {key for keys in report.stale.values() for key in keys},
                          {**report.rescored, **_rekeyed(report.unbudgeted)})
        report.fixed = True
    return report

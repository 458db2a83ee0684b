"""Run an experiment as independent work items keyed by a content hash; resumable.

A work item is (model pair, task, item, protocol, seed). Its key hashes the protocol spec,
the models' weight hashes, the task, the item id and the seed, so re-running skips finished
items, and a killed run loses at most the batches in flight. One run writes a results folder at a
time (``lock.py``); tasks and the output folder are checked before any model loads.

Pending items are planned as ``WorkUnit``s, one batch of one (pair, task, protocol) each, and one
``UnitRunner.run_unit`` turns a unit into rows, whether it runs here or on a Ray worker
(``distributed.py``); only this process appends rows.
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from ..errors import InterventionError, MissingRoleError
from ..models import load_model
from ..models.placement import placement
from ..session import Session
from .experiment import Experiment, load_experiment
from .lock import results_lock
from .protocols import Context, Protocol
from .store import append_rows, read_results, repair
from .tasks import get_task

RESULTS_FILE = "results.jsonl"


def work_key(protocol: Protocol, weights: dict[str, str], task: str, item_id: str, seed: int) -> str:
    """The content hash of one work item; ``weights`` maps each role to its model's weight hash."""
    blob = json.dumps({"protocol": protocol.identity(), "models": weights,
                       "task": task, "item": item_id, "seed": seed}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def weights(models: dict) -> dict[str, str]:
    return {role: m.identity for role, m in models.items()}


def default_out(experiment: Experiment) -> Path:
    return Path("results") / experiment.name


class RunInterrupted(InterventionError):
    """Ctrl-C during a run: what was saved (the command line adds how to go on)."""

    exit_code = 130

    def __init__(self, saved: int, done: int, total: int, out_dir: Path):
        self.saved, self.done, self.total, self.out_dir = saved, done, total, out_dir
        super().__init__(f"interrupted: {saved} new row(s) saved this run, {done} of {total} work items "
                         f"done in {out_dir / RESULTS_FILE}")


def _check_roles(experiment: Experiment) -> None:
    for pair in experiment.pairs:
        for protocol in experiment.protocols:
            missing = set(protocol.needed_roles()) - set(pair)
            if missing:
                raise MissingRoleError(f"protocol {protocol.name} needs model roles {sorted(protocol.needed_roles())}; "
                                       f"the pair {pair} gives {sorted(pair)} (needs two models: add "
                                       f"{sorted(missing)})")


def run_experiment(experiment: Experiment, out_dir: Path | None = None, limit: int | None = None,
                   seed: int | None = None, backend: str | None = None, progress: bool = True,
                   wait: bool = False, device: str | None = None, dtype: str | None = None,
                   ray: str | None = None, workers: int | None = None) -> list[dict]:
    """Run every missing work item into ``out_dir/results.jsonl``; return all rows (one per key).

    ``device`` and ``dtype`` override the experiment's. Bad input fails before any model loads. Another
    run holding ``out_dir`` is refused (or waited for, with ``wait``). Ctrl-C raises ``RunInterrupted`` once the rows finished so far are saved.
    ``ray`` sends the work units to a Ray cluster at that address ("local": a local instance),
    ``workers`` worker processes; only this process writes rows, either way.
    """
    if limit is not None and limit < 1:
        raise InterventionError(f"--limit must be at least 1 item per task, got {limit}")
    out_dir = Path(out_dir) if out_dir else default_out(experiment)
    seed = experiment.seed if seed is None else seed
    backend = backend or experiment.backend
    experiment = experiment.model_copy(update={"device": device or experiment.device,
                                               "dtype": dtype or experiment.dtype})
    placement(experiment.device, experiment.dtype)   # a device that is not here fails before any load
    _check_roles(experiment)
    runner = UnitRunner(experiment, backend, seed, limit)
    execute = _executor(ray, workers)
    with results_lock(out_dir, wait):
        path = out_dir / RESULTS_FILE
        repair(path)
        found = read_results(path)
        if found.problems():
            print(f"[interventions] {path}: {found.problems()}; `interventions check {out_dir}` lists them",
                  file=sys.stderr)
        done = {row["key"] for row in found.rows}
        units = plan(runner, done)
        pending = sum(len(unit) for unit in units)
        total, saved = len(done) + pending, 0
        try:
            with tqdm(total=pending, desc=experiment.name, unit="item",
                      disable=not progress) as bar:  # closed however the run ends, so messages print after it
                for unit, rows in execute(runner, units):
                    _check_keys(unit, rows)
                    rows = [row for row in rows if row["key"] not in done]  # never write a key twice
                    done.update(row["key"] for row in rows)
                    append_rows(path, rows)
                    saved += len(rows)
                    bar.set_postfix_str(runner.label(unit))
                    bar.update(len(unit))
        except KeyboardInterrupt:
            raise RunInterrupted(saved, len(done), total, out_dir) from None
        return read_results(path).rows


def _executor(ray: str | None, workers: int | None):
    """The function that runs units and yields (unit, rows) as each finishes: here, or on Ray."""
    if ray is None:
        if workers is not None:
            raise InterventionError("--workers sets the Ray worker count; add --ray (or leave out --workers)")
        return run_serially
    from .distributed import ray_executor

    return ray_executor(ray, workers)  # checks the install and the address before any model loads


def run_serially(runner: UnitRunner, units: list[WorkUnit]):
    """The units one after another in this process, in plan order."""
    for unit in units:
        yield unit, runner.run_unit(unit)


class WorkerMismatchError(InterventionError):
    """A worker computed rows for other work items than the ones it was sent."""


def _check_keys(unit: WorkUnit, rows: list[dict]) -> None:
    """A worker whose models, tasks or code differ from the driver's would write rows no resume ever
    finds; refuse them instead."""
    got = tuple(row["key"] for row in rows)
    if got != unit.keys:
        raise WorkerMismatchError(
            f"a worker returned rows for other work items than it was sent ({len(set(got) - set(unit.keys))} of "
            f"{len(got)} keys differ): its models, task data or package differ from this machine's; install the "
            "same versions on every worker")


def load_pair(experiment: Experiment, pair: dict[str, str]) -> dict:
    """The loaded models of one pair, role -> model, placed as the experiment says: the one place a run
    loads models, here or on a worker."""
    return {role: load_model(name, device=experiment.device, dtype=experiment.dtype) for role, name in pair.items()}


@dataclass(frozen=True)
class WorkUnit:
    """One batch of pending items of one (pair, task, protocol): what runs at once, in this process or on a
    Ray worker. It names the pair, task and protocol by position in the experiment, so it pickles as a few
    numbers and strings, never models."""

    pair: int
    task: int
    protocol: int
    item_ids: tuple[str, ...]
    keys: tuple[str, ...]   # each item's work key, as planned

    def __len__(self) -> int:
        return len(self.item_ids)


class UnitRunner:
    """Runs the work units of one experiment. Each model is loaded once per process (``load_pair``); one
    ``Session`` serves the current pair (its states, maps and completions serve every task) and one
    ``Context`` the current (pair, task), so units in plan order reuse the sender and KV caches."""

    def __init__(self, experiment: Experiment, backend: str, seed: int, limit: int | None):
        self.experiment, self.backend, self.seed, self.limit = experiment, backend, seed, limit
        self.tasks = [get_task(entry.name, **entry.options) for entry in experiment.tasks]
        self._items: dict[int, list] = {}
        self._session_key, self._session = None, None
        self._ctx_key, self._ctx = None, None

    def models(self, pair: int) -> dict:
        return load_pair(self.experiment, self.experiment.pairs[pair])

    def items(self, task: int) -> list:
        """All items of a task in this run (also the partners of mismatched controls)."""
        if task not in self._items:
            entry = self.experiment.tasks[task]
            n = entry.n if self.limit is None else min(entry.n or self.limit, self.limit)
            self._items[task] = self.tasks[task].items(n, self.seed)
        return self._items[task]

    def label(self, unit: WorkUnit) -> str:
        return f"{self.tasks[unit.task].name} {self.experiment.protocols[unit.protocol].name}"

    def context(self, pair: int, task: int) -> Context:
        if pair != self._session_key:
            self._session_key, self._session = pair, Session(self.models(pair), self.backend)
        if (pair, task) != self._ctx_key:
            self._ctx_key = (pair, task)
            self._ctx = Context(self._session, self.tasks[task], self.experiment.max_new_tokens, self.seed,
                                self.items(task))
        return self._ctx

    def run_unit(self, unit: WorkUnit) -> list[dict]:
        """The rows of one unit, in its item order."""
        by_id = {item.id: item for item in self.items(unit.task)}
        missing = [i for i in unit.item_ids if i not in by_id]
        if missing:
            raise WorkerMismatchError(f"items {missing[:3]} of task {self.tasks[unit.task].name} are not in this "
                                      "process's copy of the task: install the same data packages everywhere")
        batch = [by_id[i] for i in unit.item_ids]
        protocol, ctx = self.experiment.protocols[unit.protocol], self.context(unit.pair, unit.task)
        outcomes = protocol.run(ctx, batch)
        return [_row(self.experiment, self.experiment.pairs[unit.pair], ctx.session.models, ctx.task, protocol, it,
                     outcome, self.seed) for it, outcome in zip(batch, outcomes)]


def plan(runner: UnitRunner, done: set[str]) -> list[WorkUnit]:
    """Every unfinished work item, in batches of ``batch_size``, grouped by pair, task and protocol."""
    experiment, units = runner.experiment, []
    for p, pair in enumerate(experiment.pairs):
        hashes = weights(runner.models(p))
        for t, (entry, task) in enumerate(zip(experiment.tasks, runner.tasks)):
            items = runner.items(t)
            for k, protocol in enumerate(experiment.protocols):
                limited_to = experiment.protocol_tasks.get(protocol)
                if not protocol.applies_to(task, pair) or (limited_to and entry.name not in limited_to):
                    continue
                keyed = [(it.id, work_key(protocol, hashes, task.name, it.id, runner.seed)) for it in items]
                pending = [(i, key) for i, key in keyed if key not in done]
                for start in range(0, len(pending), experiment.batch_size):
                    batch = pending[start:start + experiment.batch_size]
                    units.append(WorkUnit(p, t, k, tuple(i for i, _ in batch), tuple(key for _, key in batch)))
    return units


def _row(experiment, pair, models, task, protocol, item, outcome, seed) -> dict:
    params = protocol.params()
    if task.chance(item) is not None:
        params["chance"] = task.chance(item)
    return {
        "key": work_key(protocol, weights(models), task.name, item.id, seed),
        "experiment": experiment.name, "task": task.name, "task_source": task.source, "item_id": item.id,
        "protocol": protocol.name, "protocol_spec": protocol.as_dict(),
        **({"interventions": outcome.interventions} if outcome.interventions else {}),
        "models": {role: model_record(m) for role, m in models.items()},
        "seed": seed, "score": outcome.score, "score_norm": outcome.score_norm,
        "prediction": outcome.prediction, "gold": item.answer, "compute": outcome.compute.to_dict(),
        "params": params, **({"extra": outcome.extra} if outcome.extra else {}),
    }


def model_record(model) -> dict:
    """What a row says of one model: which weights (verified hashes), where and in what precision it ran."""
    return {"name": model.name, "sha256": model.weight_sha256,
            "loaded_sha256": model.loaded_sha256 or model.weight_sha256,
            "device": str(model.device), "dtype": model.dtype_name,
            **({"placement_note": model.placement_note} if model.placement_note else {})}


def report(experiment: Experiment, out_dir: Path | None = None) -> dict:
    from .report import write_report

    out_dir = Path(out_dir) if out_dir else default_out(experiment)
    found = read_results(out_dir / RESULTS_FILE)
    if not found.rows:
        raise InterventionError(f"no results in {out_dir / RESULTS_FILE}"
                                + (f" ({found.problems()})" if found.problems() else "")
                                + f"; run `interventions run {experiment.path or experiment.name} --out {out_dir}` first")
    return write_report(found.rows, out_dir, f"{experiment.name}: {experiment.description}".strip(": "),
                        notes_md=experiment.notes, baseline_protocol=experiment.baseline,
                        data_note=found.problems(), reference=experiment.reference)


def run_experiment_cli(args) -> None:
    experiment = load_experiment(args.experiment)
    rows = run_experiment(experiment, args.out, args.limit, args.seed, args.backend, wait=args.wait,
                          device=args.device, dtype=args.dtype,
                          ray=getattr(args, "ray", None), workers=getattr(args, "workers", None))
    report(experiment, args.out)
    out = Path(args.out) if args.out else default_out(experiment)
    print(f"\n{len(rows)} rows in {out / RESULTS_FILE}; report in {out / 'summary.md'}\n")
    text = (out / "summary.md").read_text()
    print(text.split("## Plots")[0])


def report_cli(args) -> None:
    experiment = load_experiment(args.experiment)
    for path in report(experiment, args.out)["files"]:
        print(path)

"""Run an experiment as independent work items keyed by a content hash; resumable.

A work item is (model pair, task, item, protocol, seed), keyed by a content hash (``units.py``), so
re-running skips finished items, and a killed run loses at most the batches in flight. A one-model
protocol's rows are copied between pairs that share that model, not recomputed (``units.plan``). One run writes a results folder at a
time (``lock.py``); tasks and the output folder are checked before any model loads.

Pending items are planned as ``WorkUnit``s, one batch of one (pair, task, protocol) each, and one
``UnitRunner.run_unit`` (``units.py``) turns a unit into rows, whether it runs here or on a Ray
worker (``distributed.py``); only this process appends rows.
"""

from __future__ import annotations

import sys
from pathlib import Path

from tqdm.auto import tqdm

from ..errors import InterventionError, MissingRoleError
from ..models.placement import placement
from .experiment import Experiment, load_experiment
from .lock import results_lock
from .remaining import format_remaining, remaining
from .store import append_rows, read_results, repair
from .units import UnitRunner, WorkUnit, check_keys, plan

RESULTS_FILE = "results.jsonl"


def default_out(experiment: Experiment) -> Path:
    return Path("results") / experiment.name


def results_folder(source: str) -> Path:
    """A results folder named as itself, or by the name or YAML path of the experiment that writes it."""
    path = Path(source)
    return path if path.is_dir() else default_out(load_experiment(source))


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
                   ray: str | None = None, workers: int | None = None, batch_size: int | None = None) -> list[dict]:
    """Run every missing work item into ``out_dir/results.jsonl``; return all rows (one per key).

    ``device``, ``dtype`` and ``batch_size`` override the experiment's (a GPU takes bigger batches; work
    keys do not depend on the batch size, so rows of either size resume each other). Bad input fails
    before any model loads. Another run holding ``out_dir`` is refused (or waited for, with ``wait``).
    Ctrl-C raises ``RunInterrupted`` once the rows finished so far are saved.
    ``ray`` sends the work units to a Ray cluster at that address ("local": a local instance),
    ``workers`` worker processes; only this process writes rows, either way.
    """
    out_dir = Path(out_dir) if out_dir else default_out(experiment)
    runner = _runner(experiment, limit, seed, backend, device, dtype, batch_size)
    experiment = runner.experiment
    execute = _executor(ray, workers)
    with results_lock(out_dir, wait):
        path = out_dir / RESULTS_FILE
        repair(path)
        found = read_results(path)
        if found.problems():
            print(f"[interventions] {path}: {found.problems()}; `interventions check {out_dir}` lists them",
                  file=sys.stderr)
        finished = finished_rows(runner, found.rows, out_dir)
        total, saved = len(finished), 0
        try:
            while True:  # a second round copies the items computed for a twin pair in the first
                left = plan(runner, finished)
                units, copies = left.units, [runner.copied(copy) for copy in left.copies]
                append_rows(path, copies)
                finished.update((row["key"], row) for row in copies)
                total, saved = total + len(copies), saved + len(copies)
                if copies and progress:
                    print(f"[interventions] {len(copies)} row(s) copied from pairs that share the models their "
                          "protocols need (each says reused_from)", file=sys.stderr)
                if not units:
                    break
                pending = sum(len(unit) for unit in units)
                total += pending
                with tqdm(total=pending, desc=experiment.name, unit="item",
                          disable=not progress) as bar:  # closed however the run ends, so messages print after it
                    for unit, rows in execute(runner, units):
                        check_keys(unit, rows)
                        rows = [row for row in rows if row["key"] not in finished]  # never write a key twice
                        finished.update((row["key"], row) for row in rows)
                        append_rows(path, rows)
                        saved += len(rows)
                        bar.set_postfix_str(runner.label(unit))
                        bar.update(len(unit))
        except KeyboardInterrupt:
            raise RunInterrupted(saved, len(finished), total, out_dir) from None
        return read_results(path).rows


class UnbudgetedRowsError(InterventionError):
    """Generated answers written before rows recorded their token budget: a resume would redo them."""


def finished_rows(runner: UnitRunner, rows: list[dict], out_dir: Path) -> dict[str, dict]:
    """The finished rows by work key; refuses generated answers that do not say their token budget,
    which a run would silently compute again."""
    generated = {task.name for task in runner.tasks if task.generated}
    unbudgeted = sum(row["task"] in generated and "max_new_tokens" not in row for row in rows)
    if unbudgeted:
        raise UnbudgetedRowsError(
            f"{unbudgeted} generated answer(s) in {out_dir / RESULTS_FILE} were written before rows recorded their "
            f"token budget, so a run would compute them again; `interventions check {out_dir} --fix` stamps them "
            "with their experiment's max_new_tokens (their answers stand)")
    return {row["key"]: row for row in rows}


def _runner(experiment: Experiment, limit: int | None, seed: int | None, backend: str | None,
            device: str | None, dtype: str | None, batch_size: int | None = None) -> UnitRunner:
    """The experiment's runner under these overrides; bad input fails here, before any model loads."""
    for option, value in (("--limit", limit), ("--batch-size", batch_size)):
        if value is not None and value < 1:
            raise InterventionError(f"{option} must be at least 1, got {value}")
    experiment = experiment.model_copy(update={"device": device or experiment.device,
                                               "dtype": dtype or experiment.dtype,
                                               "batch_size": batch_size or experiment.batch_size})
    placement(experiment.device, experiment.dtype)   # a device that is not here fails before any load
    _check_roles(experiment)
    return UnitRunner(experiment, backend or experiment.backend, experiment.seed if seed is None else seed, limit)


def plan_experiment(experiment: Experiment, out_dir: Path | None = None, limit: int | None = None,
                    seed: int | None = None, device: str | None = None, dtype: str | None = None) -> str:
    """What a run with these options has left, as a table (``remaining.py``); reads the results folder
    without locking it and loads no zoo model."""
    path = (Path(out_dir) if out_dir else default_out(experiment)) / RESULTS_FILE
    runner = _runner(experiment, limit, seed, None, device, dtype)
    rows, done = remaining(runner, finished_rows(runner, read_results(path).rows, path.parent))
    return format_remaining(rows, done)


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
    part = experiment.only(_names(args.tasks), _names(args.pairs), _names(args.protocols))
    if getattr(args, "plan", False):
        print(plan_experiment(part, args.out, args.limit, args.seed, args.device, args.dtype))
        return
    rows = run_experiment(part, args.out, args.limit, args.seed, args.backend, wait=args.wait,
                          device=args.device, dtype=args.dtype, batch_size=getattr(args, "batch_size", None),
                          ray=getattr(args, "ray", None), workers=getattr(args, "workers", None))
    report(experiment, args.out)
    out = Path(args.out) if args.out else default_out(experiment)
    print(f"\n{len(rows)} rows in {out / RESULTS_FILE}; report in {out / 'summary.md'}\n")
    text = (out / "summary.md").read_text()
    print(text.split("## Plots")[0])


def _names(option: str | None) -> list[str] | None:
    return [name.strip() for name in option.split(",") if name.strip()] if option else None


def report_cli(args) -> None:
    experiment = load_experiment(args.experiment)
    for path in report(experiment, args.out)["files"]:
        print(path)

"""Run an experiment as independent work items keyed by a content hash; resumable.

A work item is (model pair, task, item, protocol, seed). Its key hashes the protocol spec,
the models' weight hashes, the task, the item id and the seed, so re-running skips finished
items, and a killed run loses at most the batch in flight. One run writes a results folder at a
time (``lock.py``); tasks and the output folder are checked before any model loads.
"""

from __future__ import annotations

import hashlib
import json
import sys
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
                   wait: bool = False, device: str | None = None, dtype: str | None = None) -> list[dict]:
    """Run every missing work item into ``out_dir/results.jsonl``; return all rows (one per key).

    ``device`` and ``dtype`` override the experiment's. Bad input fails before any model loads. Another run holding ``out_dir`` is refused (or waited
    for, with ``wait``). Ctrl-C raises ``RunInterrupted`` once the rows finished so far are saved.
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
    tasks = [(entry, get_task(entry.name, **entry.options)) for entry in experiment.tasks]
    with results_lock(out_dir, wait):
        path = out_dir / RESULTS_FILE
        repair(path)
        found = read_results(path)
        if found.problems():
            print(f"[interventions] {path}: {found.problems()}; `interventions check {out_dir}` lists them",
                  file=sys.stderr)
        done = {row["key"] for row in found.rows}
        plan = _plan(experiment, tasks, done, limit, seed)
        total = len(done) + sum(len(p[-1]) for p in plan)
        saved = 0
        try:
            for rows in _execute(experiment, plan, backend, seed, progress):
                rows = [row for row in rows if row["key"] not in done]  # never write a key twice
                done.update(row["key"] for row in rows)
                append_rows(path, rows)
                saved += len(rows)
        except KeyboardInterrupt:
            raise RunInterrupted(saved, len(done), total, out_dir) from None
        return read_results(path).rows


def load_pair(experiment: Experiment, pair: dict[str, str]) -> dict:
    """The pair's models, placed as the experiment says."""
    return {role: load_model(name, device=experiment.device, dtype=experiment.dtype) for role, name in pair.items()}


def _plan(experiment, tasks, done, limit, seed) -> list:
    """(pair, models, task, all items, protocol, pending items) for every unfinished work item."""
    plan = []
    for pair in experiment.pairs:
        models = load_pair(experiment, pair)
        for entry, task in tasks:
            n = entry.n if limit is None else min(entry.n or limit, limit)
            items = task.items(n, seed)
            for protocol in experiment.protocols:
                limited_to = experiment.protocol_tasks.get(protocol)
                if not protocol.applies_to(task, pair) or (limited_to and entry.name not in limited_to):
                    continue
                pending = [it for it in items
                           if work_key(protocol, weights(models), task.name, it.id, seed) not in done]
                if pending:
                    plan.append((pair, models, task, items, protocol, pending))
    return plan


def _execute(experiment, plan, backend, seed, progress):
    """Yield the rows of each finished batch."""
    session_key, session = None, None   # one session per pair: its states, maps and completions serve every task
    ctx_key, ctx = None, None
    with tqdm(total=sum(len(p[-1]) for p in plan), desc=f"{experiment.name}", unit="item",
              disable=not progress) as bar:  # closed however the run ends, so messages print after it
        for pair, models, task, items, protocol, pending in plan:
            pair_key = tuple(sorted(pair.items()))
            if pair_key != session_key:
                session_key, session = pair_key, Session(models, backend)
            if (pair_key, task.name) != ctx_key:
                ctx_key = (pair_key, task.name)
                ctx = Context(session, task, experiment.max_new_tokens, seed, items)
            for start in range(0, len(pending), experiment.batch_size):
                batch = pending[start:start + experiment.batch_size]
                bar.set_postfix_str(f"{task.name} {protocol.name}")
                outcomes = protocol.run(ctx, batch)
                yield [_row(experiment, pair, models, task, protocol, it, outcome, seed)
                       for it, outcome in zip(batch, outcomes)]
                bar.update(len(batch))


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
                          device=args.device, dtype=args.dtype)
    report(experiment, args.out)
    out = Path(args.out) if args.out else default_out(experiment)
    print(f"\n{len(rows)} rows in {out / RESULTS_FILE}; report in {out / 'summary.md'}\n")
    text = (out / "summary.md").read_text()
    print(text.split("## Plots")[0])


def report_cli(args) -> None:
    experiment = load_experiment(args.experiment)
    for path in report(experiment, args.out)["files"]:
        print(path)

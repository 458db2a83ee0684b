"""Run an experiment as independent work items keyed by a content hash; resumable.

A work item is (model pair, task, item, protocol, seed). Its key hashes the protocol spec,
the models' weight hashes, the task, the item id and the seed, so re-running skips finished
items, and a killed run loses at most the batch in flight.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from tqdm.auto import tqdm

from ..errors import MissingRoleError
from ..models import load_model
from ..session import Session
from .experiment import Experiment, load_experiment
from .protocols import Context, Protocol
from .store import append_rows, read_rows, repair
from .tasks import get_task

RESULTS_FILE = "results.jsonl"


def work_key(protocol: Protocol, models: dict, task: str, item_id: str, seed: int) -> str:
    blob = json.dumps({"protocol": protocol.identity(), "models": {r: m.weight_sha256 for r, m in models.items()},
                       "task": task, "item": item_id, "seed": seed}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def default_out(experiment: Experiment) -> Path:
    return Path("results") / experiment.name


def run_experiment(experiment: Experiment, out_dir: Path | None = None, limit: int | None = None,
                   seed: int | None = None, backend: str | None = None, progress: bool = True) -> list[dict]:
    out_dir = Path(out_dir) if out_dir else default_out(experiment)
    seed = experiment.seed if seed is None else seed
    backend = backend or experiment.backend
    path = out_dir / RESULTS_FILE
    repair(path)
    done = {row["key"] for row in read_rows(path)}
    plan = []   # (pair, models, task, all items, protocol, pending items)
    for pair in experiment.pairs:
        for protocol in experiment.protocols:
            missing = set(protocol.needed_roles()) - set(pair)
            if missing:
                raise MissingRoleError(f"protocol {protocol.name} needs model roles {sorted(protocol.needed_roles())}; "
                                       f"the pair {pair} gives {sorted(pair)} (needs two models: add "
                                       f"{sorted(missing)})")
        models = {role: load_model(name) for role, name in pair.items()}
        for entry in experiment.tasks:
            task = get_task(entry.name, **entry.options)
            n = entry.n if limit is None else min(entry.n or limit, limit)
            items = task.items(n, seed)
            for protocol in experiment.protocols:
                limited_to = experiment.protocol_tasks.get(protocol)
                if not protocol.applies_to(task, pair) or (limited_to and entry.name not in limited_to):
                    continue
                pending = [it for it in items
                           if work_key(protocol, models, task.name, it.id, seed) not in done]
                if pending:
                    plan.append((pair, models, task, items, protocol, pending))
    total = sum(len(p[-1]) for p in plan)
    bar = tqdm(total=total, desc=f"{experiment.name}", unit="item", disable=not progress)
    session_key, session = None, None   # one session per pair: its states, maps and completions serve every task
    ctx_key, ctx = None, None
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
            rows = [_row(experiment, pair, models, task, protocol, it, outcome, seed)
                    for it, outcome in zip(batch, outcomes)]
            rows = [row for row in rows if row["key"] not in done]  # never write a key twice
            done.update(row["key"] for row in rows)
            append_rows(path, rows)
            bar.update(len(batch))
    bar.close()
    return read_rows(path)


def _row(experiment, pair, models, task, protocol, item, outcome, seed) -> dict:
    params = protocol.params()
    if task.scoring == "choice_loglik" and item.choices:
        params["chance"] = 1 / len(item.choices)
    return {
        "key": work_key(protocol, models, task.name, item.id, seed),
        "experiment": experiment.name, "task": task.name, "task_source": task.source, "item_id": item.id,
        "protocol": protocol.name, "protocol_spec": protocol.as_dict(),
        **({"interventions": outcome.interventions} if outcome.interventions else {}),
        "models": {role: {"name": m.name, "sha256": m.weight_sha256} for role, m in models.items()},
        "seed": seed, "score": outcome.score, "score_norm": outcome.score_norm,
        "prediction": outcome.prediction, "gold": item.answer, "compute": outcome.compute.to_dict(),
        "params": params, **({"extra": outcome.extra} if outcome.extra else {}),
    }


def report(experiment: Experiment, out_dir: Path | None = None) -> dict:
    from .report import write_report

    out_dir = Path(out_dir) if out_dir else default_out(experiment)
    rows = read_rows(out_dir / RESULTS_FILE)
    if not rows:
        raise FileNotFoundError(f"no results in {out_dir / RESULTS_FILE}; run `interventions run {experiment.name}` first")
    return write_report(rows, out_dir, f"{experiment.name}: {experiment.description}".strip(": "),
                        notes_md=experiment.notes, baseline_protocol=experiment.baseline)


def run_experiment_cli(args) -> None:
    experiment = load_experiment(args.experiment)
    rows = run_experiment(experiment, args.out, args.limit, args.seed, args.backend)
    report(experiment, args.out)
    out = Path(args.out) if args.out else default_out(experiment)
    print(f"\n{len(rows)} rows in {out / RESULTS_FILE}; report in {out / 'summary.md'}\n")
    text = (out / "summary.md").read_text()
    print(text.split("## Plots")[0])


def report_cli(args) -> None:
    experiment = load_experiment(args.experiment)
    for path in report(experiment, args.out)["files"]:
        print(path)

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

from ..backends import get_backend
from ..errors import MissingRoleError
from ..models import load_model
from .experiment import Experiment, load_experiment
from .protocols import Context, Protocol, run_protocol
from .store import append_rows, read_rows, repair
from .tasks import get_task

RESULTS_FILE = "results.jsonl"


def work_key(protocol: Protocol, models: dict, task: str, item_id: str, seed: int) -> str:
    blob = json.dumps({"protocol": protocol.to_dict(), "models": {r: m.weight_sha256 for r, m in models.items()},
                       "task": task, "item": item_id, "seed": seed}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def applicable(protocol: Protocol, task, pair: dict) -> bool:
    """Skyline and message need private information to pass on; on shared-question tasks
    they would duplicate 'silent'. With A = B, 'single_A' would duplicate 'single_B'."""
    if protocol.kind in ("skyline", "nl_message"):
        return task.info_split == "private_context"
    if protocol.kind == "single" and protocol.role == "A":
        return pair["A"] != pair["B"]
    return True


def default_out(experiment: Experiment) -> Path:
    return Path("results") / experiment.name


def run_experiment(experiment: Experiment, out_dir: Path | None = None, limit: int | None = None,
                   seed: int | None = None, backend: str | None = None, progress: bool = True) -> list[dict]:
    out_dir = Path(out_dir) if out_dir else default_out(experiment)
    seed = experiment.seed if seed is None else seed
    backend_obj = get_backend(backend or experiment.backend)
    path = out_dir / RESULTS_FILE
    repair(path)
    done = {row["key"] for row in read_rows(path)}
    plan = []   # (pair, models, task, protocol, pending items)
    for pair in experiment.pairs:
        for protocol in experiment.protocols:
            if protocol.needs_two_models and not {"A", "B"} <= set(pair):
                raise MissingRoleError(f"protocol {protocol.name} needs two models (roles A and B); "
                                       f"the pair {pair} gives {sorted(pair)}")
        models = {role: load_model(name) for role, name in pair.items()}
        for entry in experiment.tasks:
            task = get_task(entry.name, **entry.options)
            n = entry.n if limit is None else min(entry.n or limit, limit)
            items = task.items(n, seed)
            for protocol in experiment.protocols:
                limited_to = experiment.protocol_tasks.get(protocol)
                if not applicable(protocol, task, pair) or (limited_to and entry.name not in limited_to):
                    continue
                pending = [it for it in items
                           if work_key(protocol, models, task.name, it.id, seed) not in done]
                if pending:
                    plan.append((pair, models, task, protocol, pending))
    total = sum(len(p[-1]) for p in plan)
    bar = tqdm(total=total, desc=f"{experiment.name}", unit="item", disable=not progress)
    ctx_key, ctx = None, None
    for pair, models, task, protocol, pending in plan:
        key = (tuple(sorted(pair.items())), task.name)
        if key != ctx_key:  # one context per (pair, task): its sender cache and fitted maps
            ctx_key, ctx = key, Context(models, task, backend_obj, experiment.max_new_tokens)
        for start in range(0, len(pending), experiment.batch_size):
            batch = pending[start:start + experiment.batch_size]
            bar.set_postfix_str(f"{task.name} {protocol.name}")
            outcomes = run_protocol(protocol, ctx, batch)
            rows = [_row(experiment, pair, models, task, protocol, it, outcome, seed)
                    for it, outcome in zip(batch, outcomes)]
            rows = [row for row in rows if row["key"] not in done]  # never write a key twice
            done.update(row["key"] for row in rows)
            append_rows(path, rows)
            bar.update(len(batch))
    bar.close()
    return read_rows(path)


def _row(experiment, pair, models, task, protocol, item, outcome, seed) -> dict:
    params = {"k": protocol.k, "j": protocol.j, "family": f"ac_{protocol.combine}" if protocol.kind == "ac" else None}
    if task.scoring == "choice_loglik" and item.choices:
        params["chance"] = 1 / len(item.choices)
    return {
        "key": work_key(protocol, models, task.name, item.id, seed),
        "experiment": experiment.name, "task": task.name, "task_source": task.source, "item_id": item.id,
        "protocol": protocol.name, "protocol_spec": protocol.to_dict(),
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

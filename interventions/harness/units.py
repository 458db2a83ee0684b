"""Work units: one batch of one (pair, task, protocol), its rows, and the content hash that keys them.

A work item is (model pair, task, item, protocol, seed, and the sampling seed when the experiment
samples). Its key hashes the protocol spec, the models' weight hashes (and precision, when not fp32),
the task, the item id, the seed, the sampling (greedy keys are unchanged by it) and, where answers are
generated, the most tokens an answer may take: raising ``max_new_tokens`` recomputes those answers. A
``UnitRunner`` turns a unit into rows the same way in the runner's own process and on a Ray worker.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field

from ..errors import InterventionError
from ..models import load_model, model_identity
from ..models.placement import weights_identity
from ..session import Session
from .experiment import Experiment, pair_name
from .prompts import prompt_size
from .protocols import Context, Protocol
from .tasks import get_task


def work_key(protocol: Protocol, weights: dict[str, str], task: str, item_id: str, seed: int,
             sampled: dict | None = None, budget: int | None = None) -> str:
    """The content hash of one work item; ``weights`` maps each role to its model's weight hash,
    ``sampled`` is the sampling it generates with (None: greedy) and ``budget`` the most tokens its
    answer may take (None: the answer is a scored choice)."""
    blob = json.dumps({"protocol": protocol.identity(), "models": weights, "task": task, "item": item_id,
                       "seed": seed, **({"sampling": sampled} if sampled else {}),
                       **({"max_new_tokens": budget} if budget else {})}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def answer_budget(experiment: Experiment, task) -> int | None:
    """The most tokens an answer to ``task`` may take, part of its work key; None for scored choices."""
    return experiment.max_new_tokens if task.generated else None


def row_key(protocol: Protocol, weights: dict[str, str], row: dict) -> str:
    """The work key of what ``row`` says it is, for the models ``weights`` names."""
    return work_key(protocol, weights, row["task"], row["item_id"], row["seed"], row.get("sampling"),
                    row.get("max_new_tokens"))


def weights(models: dict) -> dict[str, str]:
    return {role: m.identity for role, m in models.items()}


class WorkerMismatchError(InterventionError):
    """A worker computed rows for other work items than the ones it was sent."""


def check_keys(unit: WorkUnit, rows: list[dict]) -> None:
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
    sample: int | None = None   # the sampling seed (None: greedy)

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
        self._weights: dict[int, dict[str, str]] = {}
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

    def weights(self, pair: int) -> dict[str, str]:
        """Each role's weight identity (what work keys hash), without loading a zoo model."""
        if pair not in self._weights:
            ex = self.experiment
            self._weights[pair] = {role: model_identity(name, ex.device, ex.dtype)
                                   for role, name in ex.pairs[pair].items()}
        return self._weights[pair]

    def copied(self, copy: Copy) -> dict:
        """The row a planned copy writes: its source's, re-keyed, with this pair's model records."""
        return reused(copy.source, copy.key, self.models(copy.pair))

    def label(self, unit: WorkUnit) -> str:
        return f"{self.tasks[unit.task].name} {self.experiment.protocols[unit.protocol].name}"

    def generation(self, sample: int | None) -> dict:
        """How answers are generated under one sampling seed: {} for greedy."""
        return self.experiment.sampling.generation(sample) if sample is not None else {}

    def context(self, pair: int, task: int, sample: int | None = None) -> Context:
        if pair != self._session_key:
            self._session_key, self._session = pair, Session(self.models(pair), self.backend)
        if (pair, task, sample) != self._ctx_key:
            self._ctx_key = (pair, task, sample)
            self._ctx = Context(self._session, self.tasks[task], self.experiment.max_new_tokens, self.seed,
                                self.items(task), self.generation(sample))
        return self._ctx

    def run_unit(self, unit: WorkUnit) -> list[dict]:
        """The rows of one unit, in its item order."""
        by_id = {item.id: item for item in self.items(unit.task)}
        missing = [i for i in unit.item_ids if i not in by_id]
        if missing:
            raise WorkerMismatchError(f"items {missing[:3]} of task {self.tasks[unit.task].name} are not in this "
                                      "process's copy of the task: install the same data packages everywhere")
        batch = [by_id[i] for i in unit.item_ids]
        protocol, ctx = self.experiment.protocols[unit.protocol], self.context(unit.pair, unit.task, unit.sample)
        outcomes = protocol.run(ctx, batch)
        return [_row(self.experiment, self.experiment.pairs[unit.pair], ctx.session.models, ctx.task, protocol, it,
                     outcome, self.seed, ctx.generation) for it, outcome in zip(batch, outcomes)]


@dataclass(frozen=True)
class Copy:
    """A finished row of another pair that shares the models its protocol needs, to write under ``key``."""

    pair: int
    task: int
    protocol: int
    key: str
    source: dict


@dataclass
class Plan:
    """What a run has left: ``units`` to compute, ``copies`` to write from other pairs' rows, and per
    (pair, task, protocol) the items ``done`` and those ``waiting`` for a twin pair's computation (copied
    by the next plan)."""

    units: list[WorkUnit] = field(default_factory=list)
    copies: list[Copy] = field(default_factory=list)
    done: Counter = field(default_factory=Counter)
    waiting: Counter = field(default_factory=Counter)


def plan(runner: UnitRunner, finished: dict[str, dict]) -> Plan:
    """Every unfinished work item, in batches of ``batch_size`` (items of like length together: a batch runs
    at its longest prompt's length), grouped by pair, task and protocol, and the rows copied instead
    of computed. A protocol whose answer needs only some of a pair's models
    (``single_B``, ``silent``) answers alike in every pair that shares them: an item finished in one
    such pair (of this run or an earlier one) is copied to the others (re-keyed, marked
    ``reused_from``), and one pending in several is computed once and copied by the next plan.
    Planning loads no zoo model (``UnitRunner.weights``)."""
    experiment, out = runner.experiment, Plan()
    shared, scheduled = shared_rows(experiment, finished), set()
    for p, pair in enumerate(experiment.pairs):
        hashes = runner.weights(p)
        for t, (entry, task) in enumerate(zip(experiment.tasks, runner.tasks)):
            items = sorted(runner.items(t), key=prompt_size)   # like lengths batch together
            for k, protocol in enumerate(experiment.protocols):
                tasks, pairs = experiment.protocol_tasks.get(protocol), experiment.protocol_pairs.get(protocol)
                if (not protocol.applies_to(task, pair) or (tasks and entry.name not in tasks)
                        or (pairs and pair_name(pair) not in pairs)):
                    continue
                needs = {role: hashes[role] for role in protocol.needed_roles()}
                budget = answer_budget(experiment, task)
                # a choice task's log-likelihoods do not sample: once is enough
                for sample in experiment.samples() if task.generated else [None]:
                    sampled = runner.generation(sample)
                    pending = []
                    for it in items:
                        key = work_key(protocol, hashes, task.name, it.id, runner.seed, sampled, budget)
                        if key in finished:
                            out.done[p, t, k] += 1
                            continue
                        same = work_key(protocol, needs, task.name, it.id, runner.seed, sampled, budget)
                        if same in shared:
                            out.copies.append(Copy(p, t, k, key, shared[same]))
                        elif same in scheduled:   # computed for another pair, copied by the next plan
                            out.waiting[p, t, k] += 1
                        else:
                            scheduled.add(same)
                            pending.append((it.id, key))
                    for start in range(0, len(pending), experiment.batch_size):
                        batch = pending[start:start + experiment.batch_size]
                        out.units.append(WorkUnit(p, t, k, tuple(i for i, _ in batch),
                                                  tuple(key for _, key in batch), sample))
    return out


def shared_rows(experiment: Experiment, finished: dict[str, dict]) -> dict[str, dict]:
    """The finished rows of the experiment's protocols, keyed by the work key over the models each
    protocol needs alone (the key of any pair that shares them)."""
    by_name = {p.name: (p, json.loads(json.dumps(p.as_dict()))) for p in experiment.protocols}  # spec as rows hold it
    out = {}
    for row in finished.values():
        protocol, spec = by_name.get(row["protocol"], (None, None))
        if protocol is None or row.get("protocol_spec") != spec:
            continue
        weights = row_weights(row)
        needs = {role: weights[role] for role in protocol.needed_roles()}
        out.setdefault(row_key(protocol, needs, row), row)
    return out


def row_weights(row: dict) -> dict[str, str]:
    """``weights`` of the models a row records: what its work key hashes."""
    return {role: weights_identity(m["sha256"], m.get("dtype", "fp32")) for role, m in row["models"].items()}


def reused(source: dict, key: str, models: dict) -> dict:
    """``source``'s row for another pair that shares the models its protocol needs."""
    return {**source, "key": key, "models": {role: model_record(m) for role, m in models.items()},
            "reused_from": source.get("reused_from", source["key"])}


def _row(experiment, pair, models, task, protocol, item, outcome, seed, sampled: dict | None = None) -> dict:
    params, budget = protocol.params(), answer_budget(experiment, task)
    if task.chance(item) is not None:
        params["chance"] = task.chance(item)
    return {
        "key": work_key(protocol, weights(models), task.name, item.id, seed, sampled, budget),
        "experiment": experiment.name, "task": task.name, "task_source": task.source, "item_id": item.id,
        "protocol": protocol.name, "protocol_spec": protocol.as_dict(),
        **({"interventions": outcome.interventions} if outcome.interventions else {}),
        "models": {role: model_record(m) for role, m in models.items()},
        "seed": seed, **({"sampling": sampled} if sampled else {}), **({"max_new_tokens": budget} if budget else {}),
        "score": outcome.score, "score_norm": outcome.score_norm,
        "prediction": outcome.prediction, "gold": item.answer, "compute": outcome.compute.to_dict(),
        "params": params, **({"extra": outcome.extra} if outcome.extra else {}),
    }


def model_record(model) -> dict:
    """What a row says of one model: which weights (verified hashes), where and in what precision it ran."""
    return {"name": model.name, "sha256": model.weight_sha256,
            "loaded_sha256": model.loaded_sha256 or model.weight_sha256,
            "device": str(model.device), "dtype": model.dtype_name,
            **({"placement_note": model.placement_note} if model.placement_note else {})}

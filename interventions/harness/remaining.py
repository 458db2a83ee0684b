"""What a run has left (``interventions run --plan``): per (task, pair, protocol) the work items done, to
copy from another pair and to compute, with a time estimate from the rows already finished.

Planning loads no zoo model and takes no lock, so it can be asked while a run is writing the folder.
"""

from __future__ import annotations

from collections import defaultdict
from statistics import fmean

from .experiment import pair_name
from .units import UnitRunner, plan


def remaining(runner: UnitRunner, finished: dict[str, dict]) -> tuple[list[dict], int]:
    """One row per (task, pair, protocol) with work left: ``done``, ``copy`` (rows another pair already
    computed, or will compute first), ``run`` and ``seconds`` (None where no finished row can tell);
    and how many of the selection's work items are done."""
    ex, left = runner.experiment, plan(runner, finished)
    run, copy = defaultdict(int), defaultdict(int, left.waiting)
    for unit in left.units:
        run[unit.pair, unit.task, unit.protocol] += len(unit)
    for c in left.copies:
        copy[c.pair, c.task, c.protocol] += 1
    pace = seconds_per_item(finished.values())
    out = []
    for group in sorted(set(run) | set(copy)):
        p, t, k = group
        names = tuple(sorted(ex.pairs[p].items()))
        protocol, task = ex.protocols[k].name, runner.tasks[t].name
        by_loglik = runner.tasks[t].scoring == "choice_loglik"
        per_item = pace.get((protocol, names, task), pace.get((protocol, names, by_loglik)))
        out.append({"task": task, "pair": pair_name(ex.pairs[p]), "protocol": protocol,
                    "done": left.done[group], "copy": copy[group], "run": run[group],
                    "seconds": None if per_item is None or not run[group] else per_item * run[group]})
    return out, sum(left.done.values())


def seconds_per_item(rows) -> dict[tuple, float]:
    """Mean wall time of a row, by (protocol, models, task) and by (protocol, models, scored by
    log-likelihood): the pace of the same protocol on the same models, on this task or, failing that,
    on other tasks answered the same way (a generated answer takes far longer than a scored choice)."""
    times = defaultdict(list)
    for row in rows:
        wall = row.get("compute", {}).get("wall_s")
        if wall is None or row.get("reused_from"):   # a copy took no time of its own
            continue
        names = tuple(sorted((role, m["name"]) for role, m in row["models"].items()))
        times[row["protocol"], names, row["task"]].append(wall)
        times[row["protocol"], names, row.get("score_norm") is not None].append(wall)  # only choices have acc_norm
    return {key: fmean(walls) for key, walls in times.items()}


def format_remaining(rows: list[dict], done: int) -> str:
    if not rows:
        return f"nothing left: all {done} work items are done"
    head = ("task", "pair", "protocol", "done", "copy", "run", "≈ time")
    table = [head] + [(r["task"], r["pair"], r["protocol"], str(r["done"]), str(r["copy"]), str(r["run"]),
                       _duration(r["seconds"]) if r["run"] else "") for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(head))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in table]
    known = [r["seconds"] for r in rows if r["seconds"] is not None]
    unknown = sum(1 for r in rows if r["run"] and r["seconds"] is None)
    total = (f"{sum(r['run'] for r in rows)} work items to compute, {sum(r['copy'] for r in rows)} to copy, "
             f"{done} done; about {_duration(sum(known))} of it estimated from finished rows of the same "
             "protocol and models on this machine")
    if unknown:
        total += f", {unknown} group(s) ('?') with no such rows yet"
    return "\n".join(lines + ["", total])


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    minutes = round(seconds / 60)
    return f"{seconds:.0f} s" if minutes < 1 else f"{minutes} min" if minutes < 60 else f"{minutes / 60:.1f} h"

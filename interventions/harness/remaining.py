"""What a run has left (``interventions run --plan``): per (task, pair, protocol) the work items done, to
copy from another pair and to compute, with a time estimate from the rows already finished.

Planning loads no zoo model and takes no lock, so it can be asked while a run is writing the folder.
"""

from __future__ import annotations

from collections import defaultdict
from statistics import fmean, median

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
    pace = Pace(finished.values())
    out = []
    for group in sorted(set(run) | set(copy)):
        p, t, k = group
        names = tuple(sorted(ex.pairs[p].items()))
        protocol, task = ex.protocols[k].name, runner.tasks[t].name
        per_item = pace.per_item(protocol, names, task, runner.tasks[t].scoring == "choice_loglik")
        out.append({"task": task, "pair": pair_name(ex.pairs[p]), "protocol": protocol,
                    "done": left.done[group], "copy": copy[group], "run": run[group],
                    "seconds": None if per_item is None or not run[group] else per_item * run[group]})
    return out, sum(left.done.values())


class Pace:
    """This machine's mean wall time per row, from finished rows (a copy took no time of its own)."""

    def __init__(self, rows):
        times, self.by_loglik = defaultdict(list), {}
        for row in rows:
            wall = row.get("compute", {}).get("wall_s")
            if wall is None or row.get("reused_from"):
                continue
            names = tuple(sorted((role, m["name"]) for role, m in row["models"].items()))
            times[row["protocol"], names, row["task"]].append(wall)
            self.by_loglik[row["task"]] = row.get("score_norm") is not None   # only choices have acc_norm
        self.seconds = {key: fmean(walls) for key, walls in times.items()}

    def per_item(self, protocol: str, names: tuple, task: str, by_loglik: bool) -> float | None:
        """Seconds per item of ``protocol`` on these models: its pace on ``task`` or, failing that,
        its pace on other tasks answered the same way (a generated answer takes far longer than a
        scored choice), each scaled by how much slower ``task`` ran than that one for the protocols
        run on both (longer prompts, more choices); unscaled where no protocol ran on both."""
        if (protocol, names, task) in self.seconds:
            return self.seconds[protocol, names, task]
        guesses = [seconds * self._ratio(names, task, other) for (p, n, other), seconds in self.seconds.items()
                   if p == protocol and n == names and self.by_loglik[other] == by_loglik]
        return fmean(guesses) if guesses else None

    def _ratio(self, names: tuple, task: str, other: str) -> float:
        """Median over protocols run on both tasks with these models of (pace on task) / (pace on other)."""
        ratios = [self.seconds[p, n, task] / seconds for (p, n, t), seconds in self.seconds.items()
                  if n == names and t == other and (p, n, task) in self.seconds]
        return median(ratios) if ratios else 1.0


def format_remaining(rows: list[dict], done: int) -> str:
    if not rows:
        return f"nothing left: all {done} work items are done"
    head = ("task", "pair", "protocol", "done", "copy", "run", "≈ time")
    table = [head] + [(r["task"], r["pair"], r["protocol"], str(r["done"]), str(r["copy"]), str(r["run"]),
                       _duration(r["seconds"]) if r["run"] else "") for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(head))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in table]
    known = [r["seconds"] for r in rows if r["run"] and r["seconds"] is not None]
    unknown = sum(1 for r in rows if r["run"] and r["seconds"] is None)
    total = f"{sum(r['run'] for r in rows)} work items to compute, {sum(r['copy'] for r in rows)} to copy, {done} done"
    if known:
        total += (f"; about {_duration(sum(known))} of it estimated from finished rows of the same protocol and models "
                  "on this machine")
        if unknown:
            total += f", {unknown} group(s) ('?') with no such rows yet"
    elif unknown:   # nothing to time it by: say so rather than "about 0 s"
        total += (f"; no time estimate: none of the {unknown} group(s) to compute has finished rows of the same "
                  "protocol and models on this machine yet")
    return "\n".join(lines + ["", total])


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    minutes = round(seconds / 60)
    return f"{seconds:.0f} s" if minutes < 1 else f"{minutes} min" if minutes < 60 else f"{minutes / 60:.1f} h"

"""Choosing a sweep's cell on held-out items: the best (k, j) found on the items it is reported on
is biased upward, so the cell is chosen on one half of the items and reported on the other.

The halves are fixed by a hash of each item id, so they do not depend on the run's order or seed
and every sweep of a task uses the same split.
"""

from __future__ import annotations

import hashlib

from .rows import DELTA_COLUMNS, delta_cells, for_pair, grouped, mean_of, model_pair, paired, per_item, with_holm


def selection_half(item_id: str) -> bool:
    """True for the items a sweep's cell is chosen on; the others report it."""
    return hashlib.sha256(str(item_id).encode()).digest()[0] % 2 == 0


def _sweep_family(row: dict) -> str | None:
    params = row.get("params") or {}
    return params.get("family") if params.get("sweep") else None


def heldout_choices(rows: list[dict], baseline: dict, n_boot: int = 10000, seed: int = 0) -> list[dict]:
    """Per task, model pair and swept family: the cell best on the selection half, its accuracy on the
    report half against ``baseline[task]`` there (paired, exact test; Holm within the task), and the
    cell that would have been picked on the report half itself, for how much picking on test items flatters."""
    out = []
    for (task, pair, family), grp in grouped([r for r in rows if _sweep_family(r)],
                                             lambda r: (r["task"], model_pair(r), _sweep_family(r))).items():
        cells = grouped(grp, lambda r: r["protocol"])
        if len(cells) < 2:
            continue
        scores = {cell: per_item(crows) for cell, crows in cells.items()}

        def best(half):
            return max(cells, key=lambda c: mean_of([v for i, v in scores[c].items() if selection_half(i) == half]) or 0)

        chosen, optimistic = best(True), best(False)
        report_rows = [r for r in cells[chosen] if not selection_half(r["item_id"])]
        base_rows = [r for r in rows if r["task"] == task and r["protocol"] == baseline.get(task)
                     and not selection_half(r["item_id"])]
        res = paired(report_rows, for_pair(base_rows, pair), n_boot, seed) if report_rows else None
        if res is None:
            continue
        res["baseline_acc"] = res.pop("other_acc")
        n_select = sum(selection_half(i) for i in scores[chosen])
        out.append({"task": task, "model_pair": pair, "family": family, "cells": len(cells), "chosen": chosen,
                    "n_select": n_select, "optimistic": optimistic,
                    "optimistic_acc": mean_of([v for i, v in scores[optimistic].items() if not selection_half(i)]),
                    "baseline": baseline.get(task), **res})
    return with_holm(out)


def heldout_md(choices: list[dict]) -> list[str]:
    if not choices:
        return []
    lines = ["## Sweep cells chosen on held-out items", "",
             "Each swept family's cell is chosen on half of the items (fixed by a hash of the item id) and "
             "reported on the other half, against the baseline on that half. *Picked on report* is the cell "
             "that looks best on the reported items themselves, and its accuracy there: the gap is how much "
             "choosing on test items flatters.", "",
             "| task | models | family | cells | chosen (on n) | picked on report (acc) | baseline | n report | acc | "
             "baseline acc | " + DELTA_COLUMNS, "|" + "---|" * 15]
    for d in choices:
        lines.append(f"| {d['task']} | {d['model_pair']} | {d['family']} | {d['cells']} | {d['chosen']} "
                     f"({d['n_select']}) | {d['optimistic']} ({d['optimistic_acc']:.3f}) | {d['baseline']} | "
                     f"{d['n_shared']} | {d['acc']:.3f} | {d['baseline_acc']:.3f} | {delta_cells(d)} |")
    return lines + [""]

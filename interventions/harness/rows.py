"""Helpers over result rows that the report and the analysis share: grouping, labels, paired comparisons."""

from __future__ import annotations

import math
import re
from collections import defaultdict

from .stats import paired_bootstrap_diff


def model_pair(row: dict) -> str:
    """Readable model identity of a row, e.g. "A=llama-1b, B=llama-3b" (roles sorted)."""
    models = row.get("models") or {}
    return ", ".join(f"{role}={(m or {}).get('name', '?')}" for role, m in sorted(models.items()))


def mean_of(values):
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return sum(values) / len(values) if values else None


def grouped(rows, key):
    """Ordered grouping (first-seen order), so tables follow the order the rows were produced in."""
    out: dict = {}
    for r in rows:
        out.setdefault(key(r), []).append(r)
    return out


def paired(rows: list[dict], other_rows: list[dict], n_boot: int, seed: int) -> dict | None:
    """Mean score of ``rows`` minus ``other_rows`` on the items both have (bootstrap CI), or None."""
    mine, other = per_item(rows), per_item(other_rows)
    shared = [i for i in mine if i in other]
    if not shared:
        return None
    res = paired_bootstrap_diff([mine[i] for i in shared], [other[i] for i in shared], n_boot=n_boot, seed=seed)
    return {"n_shared": len(shared), "acc": mean_of([mine[i] for i in shared]),
            "other_acc": mean_of([other[i] for i in shared]), **res}


def per_item(rows) -> dict:
    by_item = defaultdict(list)
    for r in rows:
        by_item[str(r["item_id"])].append(float(r["score"]))
    return {i: sum(v) / len(v) for i, v in by_item.items()}


def slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(s)).strip("_") or "x"

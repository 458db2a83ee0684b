"""Helpers over result rows that the report and the analysis share: grouping, labels, paired comparisons."""

from __future__ import annotations

import math
import re
from collections import defaultdict

from .stats import holm, paired_bootstrap_diff, sign_test


def model_pair(row: dict) -> str:
    """Readable model identity of a row, e.g. "A=llama-1b, B=llama-3b" (roles sorted), with a precision
    other than fp32 named ("B=llama-3b (bf16)"): rows run in two precisions are two pairs to the report,
    never one item's repeats averaged together."""
    def label(m: dict) -> str:
        dtype = m.get("dtype", "fp32")
        return m.get("name", "?") + ("" if dtype == "fp32" else f" ({dtype})")

    models = row.get("models") or {}
    return ", ".join(f"{role}={label(m or {})}" for role, m in sorted(models.items()))


def kind_of(row: dict) -> str:
    """The protocol kind a row was produced by ("ac", "nl_debate", ...)."""
    return (row.get("protocol_spec") or {}).get("kind", "")


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
    a, b = [mine[i] for i in shared], [other[i] for i in shared]
    res = paired_bootstrap_diff(a, b, n_boot=n_boot, seed=seed)
    return {"n_shared": len(shared), "acc": mean_of(a), "other_acc": mean_of(b), **res, **sign_test(a, b)}


def for_pair(rows: list[dict], pair: str) -> list[dict]:
    """A baseline's rows with this model pair when it has them, else those whose every model is one
    of the pair's (a single-model baseline against a two-model protocol); never another pair's rows,
    which may hold another model in the same role."""
    same = [r for r in rows if model_pair(r) == pair]
    wanted = set(pair.split(", "))
    return same or [r for r in rows if set(model_pair(r).split(", ")) <= wanted]


def with_holm(diffs: list[dict], family=lambda d: d["task"]) -> list[dict]:
    """Add ``p_holm`` to each comparison: Holm over the exact p-values of its family (by default every
    comparison of its task, so a sweep's cells are corrected together)."""
    for group in grouped(diffs, family).values():
        for d, adjusted in zip(group, holm([d["p_exact"] for d in group])):
            d["p_holm"] = adjusted
    return diffs


TESTS_MD = ("Δ has a paired bootstrap 95% CI and p; W/L counts the items each side wins, and p exact is the "
            "exact sign test on them (exact McNemar on 0/1 scores). p Holm corrects p exact over every "
            "comparison of the task in the table, so a sweep's cells are tested together.")
DELTA_COLUMNS = "Δ [95% CI] | p | W/L | p exact | p Holm |"


def delta_cells(d: dict) -> str:
    """The cells under ``DELTA_COLUMNS`` for one comparison (``paired`` then ``with_holm``)."""
    return (f"{d['diff']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}] | {d['p_value_two_sided']:.4f} | "
            f"{d['wins']}/{d['losses']} | {d['p_exact']:.4f} | {d['p_holm']:.4f}")


def versus_md(heading: str, intro: str, columns: tuple[str, ...], diffs: list[dict],
              other: str, other_acc: str) -> list[str]:
    """A table of comparisons against one other protocol each: task, models, protocol, the other
    (``d[other]``), n, both accuracies (``d[other_acc]`` the other's), then ``DELTA_COLUMNS``."""
    if not diffs:
        return []
    lines = [heading, "", intro + " " + TESTS_MD, "",
             "| task | models | " + " | ".join(columns) + " | " + DELTA_COLUMNS, "|" + "---|" * 12]
    for d in diffs:
        lines.append(f"| {d['task']} | {d['model_pair']} | {d['protocol']} | {d[other]} | {d['n_shared']} | "
                     f"{d['acc']:.3f} | {d[other_acc]:.3f} | {delta_cells(d)} |")
    return lines + [""]


def number_cell(x, spec=".3f") -> str:
    """A table cell: the number formatted, or – when there is none."""
    return "–" if x is None else format(x, spec)


def per_item(rows) -> dict:
    by_item = defaultdict(list)
    for r in rows:
        by_item[str(r["item_id"])].append(float(r["score"]))
    return {i: sum(v) / len(v) for i, v in by_item.items()}


def slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(s)).strip("_") or "x"

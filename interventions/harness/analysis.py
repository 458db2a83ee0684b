"""Report sections a new combine needs: against the best existing one, and the cost of leaving the manifold.

``reference_differences``: per (task, model pair), every protocol against the best of a reference
set (e.g. AC sum, mean and replace), paired on shared items. Picking the reference with the best
accuracy on the same items favours the reference, so a merge that beats it has cleared a higher bar.

``manifold_profiles``: per protocol, the medians of those diagnostics beside the share of answers
that end at once: which intervention leaves B's manifold, and how far.

``manifold_correlations``: over rows that record manifold diagnostics (``interventions.diagnostics``),
the Spearman rank correlation between how far the intervened state lies from B's natural states
and the row's score, with an item-resampling bootstrap interval (rows of one item move together,
since they share its difficulty).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from .rows import grouped, mean_of, model_pair, number_cell, paired, slug, versus_md, with_holm

DIAGNOSTICS = ("mahalanobis_percentile", "norm_ratio", "kl")


def reference_differences(rows: list[dict], reference: list[str], n_boot: int = 10000, seed: int = 0) -> list[dict]:
    out = []
    for (task, pair), grp in grouped(rows, lambda r: (r["task"], model_pair(r))).items():
        by_protocol = grouped(grp, lambda r: r["protocol"])
        candidates = {p: rs for p, rs in by_protocol.items() if p in reference}
        if not candidates:
            continue
        best = max(candidates, key=lambda p: np.mean([r["score"] for r in candidates[p]]))
        for protocol, prows in by_protocol.items():
            if protocol == best:
                continue
            res = paired(prows, candidates[best], n_boot, seed)
            if res:
                res["reference_acc"] = res.pop("other_acc")
                out.append({"task": task, "model_pair": pair, "protocol": protocol, "reference": best, **res})
    return with_holm(out)


def _ranks(x: np.ndarray) -> np.ndarray:
    """Average ranks (ties share their mean rank), as Spearman needs for 0/1 scores."""
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x))
    sorted_x = x[order]
    start = 0
    for stop in range(1, len(x) + 1):
        if stop == len(x) or sorted_x[stop] != sorted_x[start]:
            ranks[order[start:stop]] = (start + stop - 1) / 2
            start = stop
    return ranks


def spearman(x, y) -> float:
    rx, ry = _ranks(np.asarray(x, float)), _ranks(np.asarray(y, float))
    if rx.std() == 0 or ry.std() == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


def spearman_interval(x, y, items, n_boot: int = 2000, seed: int = 0) -> dict:
    """Spearman's rho with a 95% bootstrap interval that resamples items (with all their rows)."""
    x, y, items = np.asarray(x, float), np.asarray(y, float), np.asarray(items)
    groups = list(grouped(range(len(items)), lambda i: items[i]).values())
    rng = np.random.default_rng(seed)
    boots = []
    for _ in range(n_boot):
        idx = np.concatenate([groups[g] for g in rng.integers(0, len(groups), len(groups))])
        value = spearman(x[idx], y[idx])
        if value == value:
            boots.append(value)
    low, high = np.quantile(boots, [0.025, 0.975]) if boots else (float("nan"), float("nan"))
    return {"rho": spearman(x, y), "low": float(low), "high": float(high), "n_rows": int(len(x)),
            "n_items": len(groups)}


def _diagnosed(rows):
    return [r for r in rows if isinstance((r.get("extra") or {}).get("diagnostics"), dict)]


def manifold_correlations(rows: list[dict], seed: int = 0) -> list[dict]:
    """Per task and model pair, then over everything: rho(diagnostic, score) with intervals."""
    rows = _diagnosed(rows)
    out = []
    scopes = list(grouped(rows, lambda r: (r["task"], model_pair(r))).items())
    if len(scopes) > 1:
        scopes.append((("all tasks", "all pairs"), rows))
    for (task, pair), grp in scopes:
        for name in DIAGNOSTICS:
            pts = [(r["extra"]["diagnostics"][name], r["score"], f"{r['task']}/{model_pair(r)}/{r['item_id']}")
                   for r in grp if r["extra"]["diagnostics"].get(name) is not None]
            if len(pts) < 10:
                continue
            x, y, items = zip(*pts)
            entry = {"task": task, "model_pair": pair, "diagnostic": name, **spearman_interval(x, y, items, seed=seed)}
            if len(set(x)) == 1 or len(set(y)) == 1:   # no ranks to correlate: say which side is constant
                entry["undefined"] = f"every row's {name} is {x[0]:g}" if len(set(x)) == 1 else \
                    f"every row scores {y[0]:g}"
            out.append(entry)
    return out


# what the profile table shows, per protocol: the median of each measure over its diagnosed rows
PROFILE_MEDIANS = ("kl", "mahalanobis", "clean_mahalanobis", "mahalanobis_percentile", "norm_ratio")


def manifold_profiles(rows: list[dict]) -> list[dict]:
    """Per task, model pair and protocol with diagnosed rows: what the intervention does to B, as
    medians, beside the share of answers that end at once (an empty generation) and the message's
    most frequent logit-lens top token. Which protocol leaves the manifold, and how that shows."""
    out = []
    for (task, pair, protocol), grp in grouped(_diagnosed(rows),
                                               lambda r: (r["task"], model_pair(r), r["protocol"])).items():
        measured = [r["extra"]["diagnostics"] for r in grp]
        entry = {"task": task, "model_pair": pair, "protocol": protocol, "n_rows": len(grp),
                 "acc": mean_of([r["score"] for r in grp]),
                 # generated answers only: a scored choice (it has score_norm) is never empty
                 "empty": mean_of([float(r["prediction"].strip() == "") for r in grp
                                   if r.get("score_norm") is None and isinstance(r.get("prediction"), str)])}
        for name in PROFILE_MEDIANS:
            values = [d[name] for d in measured if d.get(name) is not None]
            entry[name] = float(np.median(values)) if values else None
        tops = Counter(d["message_top_tokens"][0] for d in measured if d.get("message_top_tokens"))
        if tops:
            token, count = tops.most_common(1)[0]
            entry["message_top_token"], entry["message_top_token_share"] = token, count / len(grp)
        out.append(entry)
    return out


def manifold_profile_md(profiles: list[dict]) -> list[str]:
    if not profiles:
        return []
    lines = ["## What each intervention does to B (medians over its rows)", "",
             "*empty*: share of generated answers that end at their first token; `kl`: KL(clean ‖ intervened) at the "
             "answer position, in nats; *merged* and *own*: Mahalanobis distance from B's mean of the merged "
             "state and of B's own state at that site without the intervention (B's natural states are the "
             "last tokens of corpus sentences, so a prompt that ends elsewhere is far from them already); "
             "*pct*: the merged state's Mahalanobis percentile among them; *message says*: the sent vector's "
             "most frequent top token under B's logit lens, with the share of rows where it is top (– when "
             "the message is not in B's space).", "",
             "| task | models | protocol | rows | acc | empty | kl | merged | own | pct | norm ratio | "
             "message says |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for p in profiles:
        says = "–"
        if "message_top_token" in p:   # repr shows a newline token; a bar would split the table's cell
            says = f"`{p['message_top_token']!r}` ({p['message_top_token_share']:.0%})".replace("|", "\\|")
        lines.append(f"| {p['task']} | {p['model_pair']} | {p['protocol']} | {p['n_rows']} | {number_cell(p['acc'], '.3f')} | "
                     f"{number_cell(p['empty'], '.2f')} | {number_cell(p['kl'], '.3g')} | {number_cell(p['mahalanobis'], '.3g')} | "
                     f"{number_cell(p['clean_mahalanobis'], '.3g')} | {number_cell(p['mahalanobis_percentile'], '.0f')} | "
                     f"{number_cell(p['norm_ratio'], '.2f')} | {says} |")
    return lines + [""]


def reference_md(diffs: list[dict]) -> list[str]:
    return versus_md("## Against the best reference (protocol − best of the reference set, shared items)",
                     "The reference is picked per task and model pair by its accuracy on these same items, "
                     "which favours it.", ("protocol", "reference", "n", "acc", "reference acc"), diffs,
                     "reference", "reference_acc")


def manifold_md(correlations: list[dict]) -> list[str]:
    if not correlations:
        return []
    lines = ["## Distance from B's manifold and accuracy (Spearman ρ over rows, item-bootstrap 95% CI)", "",
             "`mahalanobis_percentile`: percent of B's natural held-out states at most as far from B's mean as "
             "the intervened state (100 = farther than any natural state); `norm_ratio`: its norm over B's "
             "median natural norm; `kl`: KL(clean ‖ intervened) of B's next-token distribution. A negative ρ "
             "means rows farther off the manifold score lower.", "",
             "| task | models | diagnostic | rows | items | ρ [95% CI] |", "|---|---|---|---|---|---|"]
    for c in correlations:
        rho = f"– ({c['undefined']})" if c.get("undefined") else f"{c['rho']:+.3f} [{c['low']:+.3f}, {c['high']:+.3f}]"
        lines.append(f"| {c['task']} | {c['model_pair']} | {c['diagnostic']} | {c['n_rows']} | {c['n_items']} | {rho} |")
    return lines + [""]


def plot_accuracy_vs_distance(plt, rows: list[dict], out_dir: Path) -> list[Path]:
    """Per task: one point per (protocol, model pair): accuracy against median distance percentile."""
    paths = []
    for task, trows in grouped(_diagnosed(rows), lambda r: r["task"]).items():
        fig, ax = plt.subplots(figsize=(6.5, 4.5))
        for i, (pair, prows) in enumerate(grouped(trows, model_pair).items()):
            points = []
            for protocol, grp in grouped(prows, lambda r: r["protocol"]).items():
                dist = np.median([r["extra"]["diagnostics"]["mahalanobis_percentile"] for r in grp])
                points.append((dist, np.mean([r["score"] for r in grp]), protocol))
            xs, ys, _ = zip(*points)
            ax.scatter(xs, ys, color=f"C{i}", label=pair, alpha=0.8)
        ax.set_xlabel("median Mahalanobis percentile among B's natural states")
        ax.set_ylabel("accuracy")
        ax.set_title(f"{task}: accuracy against distance from B's manifold")
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = Path(out_dir) / f"acc_vs_distance_{slug(task)}.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        paths.append(path)
    return paths

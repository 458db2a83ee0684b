"""The report's part for cascades (``reverse_cascade`` and ``cascade`` rows): the compute split between
L (role A) and S (role B), where the triggers fired, and three plots: accuracy against the handoff
point n, accuracy against FLOPs with the frontier, and L's entropy traces with the firing points."""

from __future__ import annotations

import math
from pathlib import Path

from .rows import grouped, kind_of, mean_of, model_pair, slug
from .stats import wilson_interval

KINDS = ("reverse_cascade", "cascade")


def cascade_rows(rows: list[dict]) -> list[dict]:
    return [r for r in rows if kind_of(r) in KINDS or r["protocol"] in ("single_A", "single_B")]


def _handed(row: dict) -> int | None:
    return ((row.get("extra") or {}).get("handoff") or {}).get("handed_tokens")


def cascade_md(rows: list[dict]) -> list[str]:
    """Per (pair, task, protocol): accuracy, FLOPs per item from L and from S, and for handoffs the
    mean handoff point, how often the trigger's own rule fired, and how often L had already finished."""
    rows = cascade_rows(rows)
    if not any(kind_of(r) in KINDS for r in rows):
        return []
    md = ["## Cascades: compute split and handoff points", "",
          "L is role A, S role B. FLOPs are per item (mean); *handed* is the mean number of L's tokens S "
          "received; *fired* the share of items where the trigger's own rule fired (the rest fell back to "
          "max_tokens or had no handoff); *L done* the share where L had ended its answer first, so L's "
          "answer stands; *escalated* (classic cascade) the share S passed to L.", "",
          "| pair | task | protocol | n | acc | L FLOPs | S FLOPs | handed | fired | L done | escalated |",
          "|---|---|---|---|---|---|---|---|---|---|---|"]
    for (pair, task, protocol), group in grouped(rows, lambda r: (model_pair(r), r["task"], r["protocol"])).items():
        flops = lambda role: mean_of([(r["compute"].get("role_flops") or {}).get(role, 0.0) for r in group])  # noqa: E731
        notes = [(r.get("extra") or {}).get("handoff") for r in group]
        notes = [n for n in notes if n]
        share = lambda values: f"{mean_of(values):.2f}" if values else "–"  # noqa: E731
        escalated = [float(r["extra"]["escalated"]) for r in group if "escalated" in (r.get("extra") or {})]
        md.append(f"| {pair} | {task} | {protocol} | {len(group)} | {mean_of([r['score'] for r in group]):.3f} | "
                  f"{flops('A'):.2e} | {flops('B'):.2e} | "
                  f"{share([n['handed_tokens'] for n in notes]) if notes else '–'} | "
                  f"{share([float(n['trigger']['fired']) for n in notes])} | "
                  f"{share([float(n['lead_finished'] and n['handed_tokens'] == n['lead_tokens']) for n in notes])} | "
                  f"{share(escalated)} |")
    return md + [""]


def _accuracy(group: list[dict]) -> tuple[float, float, float]:
    scores = [float(r["score"]) for r in group]
    low, high = wilson_interval(sum(scores), len(scores))
    return sum(scores) / len(scores), low, high


def _fixed_n(row: dict):
    spec = row.get("protocol_spec") or {}
    return spec.get("n", "all") if spec.get("trigger", "fixed") == "fixed" else None


def plot_accuracy_vs_n(plt, rows, out_dir: Path) -> list[Path]:
    """Per pair and task: accuracy of every fixed-n handoff against n ("all" last), one line per carry,
    with L alone and S alone as horizontal lines."""
    paths = []
    for (pair, task), group in grouped(cascade_rows(rows), lambda r: (model_pair(r), r["task"])).items():
        fixed = [r for r in group if kind_of(r) == "reverse_cascade" and _fixed_n(r) is not None
                 and (r.get("protocol_spec") or {}).get("control", "none") == "none"]
        if not fixed:
            continue
        ns = sorted({_fixed_n(r) for r in fixed}, key=lambda n: math.inf if n == "all" else n)
        fig, ax = plt.subplots(figsize=(6.5, 4.2))
        for i, (carry, lines) in enumerate(grouped(fixed, lambda r: r["protocol_spec"].get("carry", "text")).items()):
            by_n = grouped(lines, _fixed_n)
            xs = [ns.index(n) for n in ns if n in by_n]
            stats = [_accuracy(by_n[n]) for n in ns if n in by_n]
            ax.errorbar(xs, [s[0] for s in stats], yerr=[[s[0] - s[1] for s in stats], [s[2] - s[0] for s in stats]],
                        marker="o", capsize=3, label=f"{carry} handoff", color=f"C{i}")
        for role, style in (("single_A", "--"), ("single_B", ":")):
            alone = [r for r in group if r["protocol"] == role]
            if alone:
                ax.axhline(_accuracy(alone)[0], ls=style, color="gray",
                           label=f"{'L' if role == 'single_A' else 'S'} alone ({_accuracy(alone)[0]:.2f})")
        ax.set_xticks(range(len(ns)))
        ax.set_xticklabels([str(n) for n in ns])
        ax.set_xlabel("n: L's tokens before the handoff")
        ax.set_ylabel("accuracy (Wilson 95% CI)")
        ax.set_ylim(0, 1.05)
        ax.set_title(f"{task}: accuracy against n\n{pair}", fontsize=9)
        ax.legend(fontsize=7)
        paths.append(save_figure(plt, fig, out_dir / f"cascade_n_{slug(task)}_{slug(pair)}.png"))
    return paths


def frontier(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points no other point beats on both accuracy (higher) and FLOPs (lower), by FLOPs."""
    best, out = -math.inf, []
    for flops, acc in sorted(points, key=lambda p: (p[0], -p[1])):
        if acc > best:
            out.append((flops, acc))
            best = acc
    return out


def plot_frontier(plt, rows, out_dir: Path) -> list[Path]:
    """Per pair and task: every cascade setting's accuracy against its mean FLOPs per item, coloured by
    family (fixed-n handoffs per carry, each entropy trigger, the classic cascade, L and S alone), and
    the accuracy-FLOPs frontier over all of them."""
    paths = []
    for (pair, task), group in grouped(cascade_rows(rows), lambda r: (model_pair(r), r["task"])).items():
        if not any(kind_of(r) in KINDS for r in group):
            continue
        fig, ax = plt.subplots(figsize=(7.5, 4.5))
        points = []
        families = grouped(group, lambda r: (r.get("params") or {}).get("family") or r["protocol"])
        for i, (family, members) in enumerate(families.items()):
            settings = grouped(members, lambda r: r["protocol"])
            xs = [mean_of([r["compute"]["flops"] for r in s]) for s in settings.values()]
            ys = [_accuracy(s)[0] for s in settings.values()]
            points += list(zip(xs, ys))
            ax.scatter(xs, ys, label=family, color=f"C{i % 10}", marker="os^vD<>PX*"[i % 10], s=28)
        edge = frontier(points)
        ax.plot([p[0] for p in edge], [p[1] for p in edge], color="black", lw=1, alpha=0.6, label="frontier")
        ax.set_xscale("log")
        ax.set_ylim(0, 1.05)
        ax.set_xlabel("mean FLOPs per item, L and S (log scale)")
        ax.set_ylabel("accuracy")
        ax.set_title(f"{task}: accuracy against compute\n{pair}", fontsize=9)
        ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        paths.append(save_figure(plt, fig, out_dir / f"cascade_frontier_{slug(task)}_{slug(pair)}.png"))
    return paths


def plot_entropy_traces(plt, rows, out_dir: Path, n_items: int = 4) -> list[Path]:
    """Per task: L's entropy trace on its first ``n_items`` items, with a mark where each entropy
    trigger handed off (filled: its rule fired; hollow: it fell back)."""
    paths = []
    triggered = [r for r in rows if kind_of(r) == "reverse_cascade" and _fixed_n(r) is None
                 and (r.get("extra") or {}).get("handoff")]
    for task, group in grouped(triggered, lambda r: r["task"]).items():
        items = list(dict.fromkeys(r["item_id"] for r in group))[:n_items]
        fig, axes = plt.subplots(len(items), 1, figsize=(8, 1.9 * len(items) + 0.6), squeeze=False)
        for ax, item in zip(axes[:, 0], items):
            mine = [r for r in group if r["item_id"] == item]
            trace = mine[0]["extra"]["handoff"]["entropy"]
            ax.plot(range(len(trace)), trace, color="gray", lw=1)
            for i, (protocol, members) in enumerate(grouped(mine, lambda r: r["protocol"]).items()):
                firing = members[0]["extra"]["handoff"]["trigger"]
                if firing["at"] is None or firing["at"] >= len(trace):
                    continue
                ax.scatter([firing["at"]], [trace[firing["at"]]], s=40, zorder=3, color=f"C{i % 10}",
                           facecolors=f"C{i % 10}" if firing["fired"] else "none",
                           label=protocol.replace("reverse_cascade_", ""))
            ax.set_ylabel("nats", fontsize=8)
            ax.set_ylim(bottom=0)
            ax.set_title(str(item), fontsize=8)
            ax.legend(fontsize=6, loc="upper right")
        axes[-1, 0].set_xlabel("L's step (the token chosen from a distribution of this entropy)")
        fig.suptitle(f"{task}: L's next-token entropy and where the triggers handed off", fontsize=9)
        paths.append(save_figure(plt, fig, out_dir / f"cascade_entropy_{slug(task)}.png"))
    return paths


def save_figure(plt, fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def cascade_plots(plt, rows, out_dir: Path) -> list[Path]:
    if not any(kind_of(r) in KINDS for r in rows):
        return []
    return plot_accuracy_vs_n(plt, rows, out_dir) + plot_frontier(plt, rows, out_dir) + \
        plot_entropy_traces(plt, rows, out_dir)

"""Summaries, paired comparisons, markdown tables and plots from per-(protocol, item) result rows."""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path

from .cascade_report import cascade_md, cascade_plots
from .selection import heldout_choices, heldout_md
from .debate_report import debate_agreement, debate_agreement_md
from .versus_text import accuracy_versus_text, accuracy_versus_text_md, compute_ratios, compute_ratios_md
from .analysis import (manifold_correlations, manifold_md, manifold_profile_md, manifold_profiles,
                       plot_accuracy_vs_distance, reference_differences, reference_md)
from .rows import (DELTA_COLUMNS, TESTS_MD, delta_cells, for_pair, grouped, mean_of, model_pair, number_cell, paired,
                   per_item, slug, with_holm)
from .stats import smallest_significant_difference, wilson_interval


# ---------------------------------------------------------------- grouping helpers

def _common_params(rows) -> dict:
    """Params shared by every row of a group (k, j, family, chance, ...)."""
    first = dict((rows[0].get("params") or {}))
    return {k: v for k, v in first.items() if all((r.get("params") or {}).get(k) == v for r in rows[1:])}


# ---------------------------------------------------------------- summaries

def summarize(rows: list[dict]) -> list[dict]:
    """One entry per (task, protocol, model pair): accuracy with Wilson CI and mean cost per item.

    Rows of one item under several sampling seeds are averaged first: n counts items, the interval is
    over items, and ``samples`` says how many rows each item averages."""
    out = []
    for (task, protocol, pair), grp in grouped(rows, lambda r: (r["task"], r["protocol"], model_pair(r))).items():
        scores = list(per_item(grp).values())
        n = len(scores)
        low, high = wilson_interval(sum(scores), n)
        comps = [r.get("compute") or {} for r in grp]
        roles = sorted({role for c in comps for role in (c.get("tokens") or {})})
        tokens_by_role = {role: mean_of([(c.get("tokens") or {}).get(role, 0) for c in comps]) for role in roles}
        norms = [r.get("score_norm") for r in grp if r.get("score_norm") is not None]
        parsed = [(r.get("extra") or {}).get("parsed") for r in grp]
        picks = [p.get("pick") for p in parsed if p and "rule" in p]
        out.append({
            "task": task, "protocol": protocol, "model_pair": pair,
            "models": {role: (m or {}).get("name") for role, m in (grp[0].get("models") or {}).items()},
            "n": n, "samples": len(grp) / n, "acc": sum(scores) / n, "ci_low": low, "ci_high": high,
            "acc_norm": mean_of(norms), "n_norm": len(norms),
            "chance": mean_of([(r.get("params") or {}).get("chance") for r in grp]),
            "no_choice_rate": mean_of([float(pick is None) for pick in picks]),
            "flops_per_item": mean_of([c.get("flops") for c in comps]),
            "flops_no_cache_per_item": mean_of([c.get("flops_no_cache") for c in comps]),
            "tokens_per_item": sum(tokens_by_role.values()) if roles else None,
            "tokens_per_item_by_role": tokens_by_role,
            "wall_s_per_item": mean_of([c.get("wall_s") for c in comps]),
            "params": _common_params(grp),
        })
    return out


def paired_differences(rows: list[dict], baseline_protocol: str | dict | None, n_boot: int = 10000,
                       seed: int = 0) -> list[dict]:
    """Per task: each (protocol, model pair) minus the baseline on the item ids both have.

    ``baseline_protocol`` is one name, a {task: name} dict, or None (first protocol seen per task).
    The baseline's rows with the same model pair are used when they exist, else all its rows in the
    task (a single-model baseline vs a two-model protocol). Repeated rows of one item (seeds) are
    averaged per item before pairing, so the bootstrap resamples items, not seeds.
    """
    out = []
    for task, trows in grouped(rows, lambda r: r["task"]).items():
        base_name = _baseline_for(task, trows, baseline_protocol)
        base_rows = [r for r in trows if r["protocol"] == base_name]
        if not base_rows:
            continue
        for (protocol, pair), grp in grouped(trows, lambda r: (r["protocol"], model_pair(r))).items():
            if protocol == base_name:
                continue  # the baseline against itself (its rows of this pair are the baseline's)
            res = paired(grp, for_pair(base_rows, pair), n_boot, seed)
            if res:
                res["baseline_acc"] = res.pop("other_acc")
                out.append({"task": task, "protocol": protocol, "model_pair": pair, "baseline": base_name, **res})
    return with_holm(out)


def control_differences(rows: list[dict], n_boot: int = 10000, seed: int = 0) -> list[dict]:
    """Per task and model pair: each channel minus each of its controls (the same protocol spec
    with ``control`` set), on shared items. A channel carries information only if it beats them."""
    def channel(r):
        spec = dict(r.get("protocol_spec") or {})
        control = spec.pop("control", None)
        return json.dumps(spec, sort_keys=True), control

    out = []
    for (task, pair), grp in grouped(rows, lambda r: (r["task"], model_pair(r))).items():
        by_channel = defaultdict(dict)
        for r in grp:
            spec, control = channel(r)
            if control is not None:
                by_channel[spec].setdefault(control, []).append(r)
        for variants in by_channel.values():
            if "none" not in variants or len(variants) < 2:
                continue
            for control, crows in variants.items():
                res = paired(variants["none"], crows, n_boot, seed) if control != "none" else None
                if res:
                    res["control_acc"] = res.pop("other_acc")
                    out.append({"task": task, "model_pair": pair, "protocol": variants["none"][0]["protocol"],
                                "control": control, "control_protocol": crows[0]["protocol"], **res})
    return with_holm(out)


def _baseline_for(task, trows, baseline_protocol):
    if isinstance(baseline_protocol, dict):
        return baseline_protocol.get(task)
    return baseline_protocol if baseline_protocol is not None else trows[0]["protocol"]


# ---------------------------------------------------------------- markdown

def _summary_md(summary) -> list[str]:
    lines = []
    for task, entries in grouped(summary, lambda s: s["task"]).items():
        many_pairs = len({e["model_pair"] for e in entries}) > 1  # show models only when they differ
        lines += [f"## {task}", "", _chance_line(entries), "", _power_line(max(e["n"] for e in entries)), ""]
        choosing = any(e.get("no_choice_rate") is not None for e in entries)   # a "choose one of" task
        head = ["protocol"] + (["models"] if many_pairs else []) + [
            "n", "acc [95% CI]", "acc_norm"] + (["no valid choice"] if choosing else []) + [
            "FLOPs/item", "FLOPs/item no cache", "tokens/item", "wall s/item"]
        if choosing:
            lines += ["A pick counts only when the answer names exactly one of the choices; *no valid choice* is "
                      "the share of answers that named none or several.", ""]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for e in entries:
            cells = [e["protocol"]] + ([e["model_pair"]] if many_pairs else []) + [
                str(e["n"]) if e["samples"] == 1 else f"{e['n']} × {e['samples']:g} samples", f"{e['acc']:.3f} [{e['ci_low']:.3f}, {e['ci_high']:.3f}]", number_cell(e["acc_norm"])] + (
                [number_cell(e.get("no_choice_rate"))] if choosing else []) + [
                number_cell(e["flops_per_item"], ".2e"), number_cell(e["flops_no_cache_per_item"], ".2e"),
                number_cell(e["tokens_per_item"], ".1f"),
                number_cell(e["wall_s_per_item"], ".3f")]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def _power_line(n: int) -> str:
    floor = smallest_significant_difference(n)
    if floor is None:
        return f"Power: {n} items are too few for any paired difference to reach p < 0.05 (exact sign test)."
    return (f"Power: on {n} items no paired difference below {floor:.3f} can reach p < 0.05 (exact sign test: "
            f"it takes {round(floor * n)} discordant items, all one way); a true difference needs more than "
            "that to be detected reliably, so smaller differences below are not evidence either way.")


def _chance_line(entries) -> str:
    chance = next((e["chance"] for e in entries if e.get("chance") is not None), None)
    if chance is None:
        return "Chance: – (the rows record no choices: free-form answers have no fixed guessing rate)."
    return f"Chance: {chance:.3f} (a uniform guess among each item's choices)."


def _paired_md(diffs) -> list[str]:
    lines = ["## Paired differences (protocol − baseline, shared items)", ""]
    if not diffs:
        return lines + ["No protocol shares items with a baseline.", ""]
    lines += [TESTS_MD, "",
              "| task | protocol | models | baseline | n shared | acc | baseline acc | " + DELTA_COLUMNS,
              "|" + "---|" * 12]
    for d in diffs:
        lines.append(f"| {d['task']} | {d['protocol']} | {d['model_pair']} | {d['baseline']} | {d['n_shared']} | "
                     f"{d['acc']:.3f} | {d['baseline_acc']:.3f} | {delta_cells(d)} |")
    return lines + [""]


def _controls_md(diffs) -> list[str]:
    if not diffs:
        return []
    lines = ["## Channels against their controls (channel − control, shared items)", "",
             "A control keeps everything but the message: `random` is a seeded vector of the message's norm, "
             "`zero` sends nothing, `mismatched` sends the message of another item of the task. " + TESTS_MD, "",
             "| task | channel | models | control | n shared | channel acc | control acc | " + DELTA_COLUMNS,
             "|" + "---|" * 12]
    for d in diffs:
        lines.append(f"| {d['task']} | {d['protocol']} | {d['model_pair']} | {d['control']} | {d['n_shared']} | "
                     f"{d['acc']:.3f} | "
                     f"{d['control_acc']:.3f} | {delta_cells(d)} |")
    return lines + [""]


# ---------------------------------------------------------------- plots

def _family(row: dict) -> str:
    """params["family"] (the protocol without its swept values), else the protocol name."""
    fam = (row.get("params") or {}).get("family")
    return str(fam) if fam else row["protocol"]


def _axes(params: dict) -> tuple[str, str] | None:
    """The two swept fields of a protocol (its ``sweep``), when it has a value for both."""
    axes = params.get("sweep") or []
    if len(axes) == 2 and all(params.get(a) is not None for a in axes):
        return axes[0], axes[1]
    return None


def _collapse_sweeps(entries: list[dict]) -> list[dict]:
    """Keep one point per (k, j) sweep in the bar and compute plots: its best setting, labelled
    as picked after the fact (the heatmap shows the whole sweep)."""
    sweeps = defaultdict(list)
    for e in entries:
        params = e.get("params") or {}
        if _axes(params):
            sweeps[(e["model_pair"], params.get("family") or _family(e))].append(e)
    out = []
    for e in entries:
        params = e.get("params") or {}
        group = sweeps.get((e["model_pair"], params.get("family") or _family(e)), [])
        if len(group) < 3:
            out.append(e)
        elif e is max(group, key=lambda g: g["acc"]):
            out.append({**e, "protocol": f"{e['protocol']} (best of {len(group)}-point sweep)"})
    return out


def _plot_accuracy(plt, task, entries, out_dir) -> Path:
    """Accuracy of each protocol with its Wilson interval; several model pairs stand side by side
    under their protocol, one colour each, so a protocol reads across models at a glance."""
    entries = _collapse_sweeps(entries)
    protocols = list(dict.fromkeys(e["protocol"] for e in entries))
    pairs = list(dict.fromkeys(e["model_pair"] for e in entries))
    width = 0.8 / len(pairs)
    fig, ax = plt.subplots(figsize=(max(5.0, (0.5 + 0.3 * len(pairs)) * len(protocols) + 2), 4.5))
    for i, pair in enumerate(pairs):
        mine = {e["protocol"]: e for e in entries if e["model_pair"] == pair}
        xs = [x + (i - (len(pairs) - 1) / 2) * width for x, p in enumerate(protocols) if p in mine]
        bars = [mine[p] for p in protocols if p in mine]
        accs = [e["acc"] for e in bars]
        yerr = [[a - e["ci_low"] for a, e in zip(accs, bars)], [e["ci_high"] - a for a, e in zip(accs, bars)]]
        ax.bar(xs, accs, width, yerr=yerr, capsize=3, color=f"C{i % 10}", alpha=0.8,
               label=pair if len(pairs) > 1 else None)
    chance = next((e["params"].get("chance") for e in entries if e["params"].get("chance") is not None), None)
    if chance is not None:
        ax.axhline(float(chance), ls="--", color="gray", label=f"chance ({float(chance):.2f})")
    if chance is not None or len(pairs) > 1:
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.set_xticks(range(len(protocols)))
    ax.set_xticklabels(protocols, rotation=35, ha="right", fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("accuracy (Wilson 95% CI)")
    ax.set_xlabel("protocol")
    ns = sorted({e["n"] for e in entries})
    ax.set_title(f"{task}: accuracy by protocol (n={ns[0]})" if len(ns) == 1 else f"{task}: accuracy by protocol")
    fig.tight_layout()
    path = out_dir / f"accuracy_{slug(task)}.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _plot_accuracy_grids(plt, summary, out_dir) -> list[Path]:
    """Per model pair with three or more tasks: accuracy of every protocol on every task, one heatmap,
    so a channel's profile across tasks (question kinds, say) reads at a glance."""
    paths = []
    for pair, entries in grouped(summary, lambda s: s["model_pair"]).items():
        tasks = list(dict.fromkeys(e["task"] for e in entries))
        protocols = list(dict.fromkeys(e["protocol"] for e in entries))
        if len(tasks) < 3:
            continue
        cell = {(e["protocol"], e["task"]): e["acc"] for e in entries}
        values = [[cell.get((p, t), math.nan) for t in tasks] for p in protocols]
        fig, ax = plt.subplots(figsize=(1.0 * len(tasks) + 3.5, 0.38 * len(protocols) + 1.8))
        image = ax.imshow(values, cmap="viridis", vmin=0, vmax=1, aspect="auto")
        for i, row in enumerate(values):
            for j, value in enumerate(row):
                if not math.isnan(value):
                    ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7,
                            color="white" if value < 0.6 else "black")
        ax.set_xticks(range(len(tasks)))
        ax.set_xticklabels(tasks, rotation=35, ha="right", fontsize=8)
        ax.set_yticks(range(len(protocols)))
        ax.set_yticklabels(protocols, fontsize=8)
        fig.colorbar(image, ax=ax, label="accuracy")
        ax.set_title(f"accuracy by protocol and task\n{pair}", fontsize=9)   # long pair names: own line
        fig.tight_layout()
        path = out_dir / f"accuracy_grid_{slug(pair)}.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        paths.append(path)
    return paths


def _plot_acc_vs_flops(plt, summary, out_dir) -> Path | None:
    tasks = grouped([s for s in summary if s["flops_per_item"]], lambda s: s["task"])
    if not tasks:
        return None  # log-x needs positive FLOPs
    fig, axes = plt.subplots(1, len(tasks), figsize=(8.5 * len(tasks), 4.5), squeeze=False)
    markers = "osD^v<>PX*hp"
    for ax, (task, entries) in zip(axes[0], tasks.items()):
        entries = _collapse_sweeps(entries)
        for i, e in enumerate(entries):
            label = e["protocol"] + (f" ({e['model_pair']})" if len({x["model_pair"] for x in entries}) > 1 else "")
            ax.errorbar(e["flops_per_item"], e["acc"], yerr=[[e["acc"] - e["ci_low"]], [e["ci_high"] - e["acc"]]],
                        fmt=markers[i % len(markers)], capsize=3, label=label, color=f"C{i % 10}")
        ax.set_xscale("log")
        ax.set_ylim(0, 1.05)
        ax.set_xlabel("mean FLOPs per item (log scale)")
        ax.set_ylabel("accuracy")
        ax.set_title(f"{task}: accuracy vs compute")
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # outside: k/j grids give many entries
    fig.tight_layout()
    path = out_dir / "acc_vs_flops.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


AXIS_LABELS = {"k": "k (sender A layer)", "j": "j (receiver B layer)"}


def _axis_label(axis: str, values) -> str:
    label = AXIS_LABELS.get(axis, axis)
    if all(isinstance(v, float) and 0 <= v < 1 for v in values):   # fractions of the depth (a Site's float layer)
        label = label.replace(" layer)", " relative depth)")
    return label


def _sortable(value):
    return (0, value, "") if isinstance(value, (int, float)) else (1, 0, str(value))


def _plot_sweep_heatmaps(plt, rows, out_dir, baselines: dict | None = None, choices=()) -> list[Path]:
    """One (k, j) map per task, family and pair; the title gives the baseline's accuracy for the pair,
    and a box marks the cell chosen on held-out items (``choices``)."""
    import numpy as np
    from matplotlib.patches import Rectangle

    chosen = {(c["task"], c["model_pair"], c["family"]): c["chosen"] for c in choices}

    swept = [r for r in rows if _axes(r.get("params") or {})]
    paths = []
    for (task, fam), grp in grouped(swept, lambda r: (r["task"], _family(r))).items():
        pairs = grouped(grp, model_pair)
        y_axis, x_axis = _axes(grp[0]["params"])
        for pair, prow in pairs.items():  # one heatmap per model pair; suffix only when there are several
            ks = sorted({r["params"][y_axis] for r in prow}, key=_sortable)
            js = sorted({r["params"][x_axis] for r in prow}, key=_sortable)
            if len(ks) * len(js) < 2:  # a single setting is a bar in the accuracy plot, not a map
                continue
            cells = defaultdict(list)
            for r in prow:
                cells[(r["params"][y_axis], r["params"][x_axis])].append(float(r["score"]))
            grid = np.full((len(ks), len(js)), np.nan)
            for (k, j), v in cells.items():
                grid[ks.index(k), js.index(j)] = sum(v) / len(v)
            fig, ax = plt.subplots(figsize=(max(4.5, 0.6 * len(js) + 3), max(3.5, 0.5 * len(ks) + 2)))
            im = ax.imshow(np.ma.masked_invalid(grid), origin="lower", cmap="viridis", vmin=0, vmax=1, aspect="auto")
            for (k, j), v in cells.items():
                val = sum(v) / len(v)
                ax.text(js.index(j), ks.index(k), f"{val:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if val < 0.6 else "black")
            ax.set_xticks(range(len(js)), [str(j) for j in js])
            ax.set_yticks(range(len(ks)), [str(k) for k in ks])
            ax.set_xlabel(_axis_label(x_axis, js))
            ax.set_ylabel(_axis_label(y_axis, ks))
            picked = [r for r in prow if r["protocol"] == chosen.get((task, pair, fam))]
            if picked:
                cell = (js.index(picked[0]["params"][x_axis]) - 0.5, ks.index(picked[0]["params"][y_axis]) - 0.5)
                ax.add_patch(Rectangle(cell, 1, 1, fill=False, edgecolor="red", linewidth=2))
            baseline = (baselines or {}).get(task)
            base_acc = mean_of(per_item(for_pair([r for r in rows if r["task"] == task and r["protocol"] == baseline],
                                                 pair)).values()) if baseline else None
            ax.set_title(f"{task}: {fam} mean score over ({y_axis}, {x_axis})" + (f"\n{pair}" if len(pairs) > 1 else "")
                         + (f"\n{baseline}: {base_acc:.2f}" if base_acc is not None else "")
                         + ("; box: chosen on held-out items" if picked else ""), fontsize=9)
            fig.colorbar(im, ax=ax, label="mean score")
            fig.tight_layout()
            suffix = f"_{slug(pair)}" if len(pairs) > 1 else ""
            path = out_dir / f"{y_axis}{x_axis}_heatmap_{slug(task)}_{slug(fam)}{suffix}.png"
            fig.savefig(path, dpi=120)
            plt.close(fig)
            paths.append(path)
    return paths


# ---------------------------------------------------------------- entry point

def _json_safe(x):
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {str(k): _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    return x


def write_report(rows: list[dict], out_dir, title: str, notes_md: str = "",
                 baseline_protocol: str | dict | None = None, data_note: str = "",
                 reference: list[str] | None = None) -> dict:
    """Write summary.json, summary.md and PNG plots into ``out_dir``; return {"summary", "paired", "files"}."""
    import matplotlib
    matplotlib.use("Agg")  # headless: never needs a display
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = summarize(rows)
    diffs = paired_differences(rows, baseline_protocol)
    controls = control_differences(rows)
    versus_reference = reference_differences(rows, reference) if reference else []
    profiles = manifold_profiles(rows)
    correlations = manifold_correlations(rows)
    choices = heldout_choices(rows, {d["task"]: d["baseline"] for d in diffs})
    versus_text = accuracy_versus_text(rows)
    ratios = compute_ratios(rows)
    debates = debate_agreement(rows)

    plots = [_plot_accuracy(plt, task, entries, out_dir)
             for task, entries in grouped(summary, lambda s: s["task"]).items()]
    plots.append(_plot_acc_vs_flops(plt, summary, out_dir))
    plots += _plot_accuracy_grids(plt, summary, out_dir)
    plots += _plot_sweep_heatmaps(plt, rows, out_dir, {d["task"]: d["baseline"] for d in diffs}, choices)
    plots += plot_accuracy_vs_distance(plt, rows, out_dir)
    plots += cascade_plots(plt, rows, out_dir)
    plots = [p for p in plots if p is not None]

    md = [f"# {title}", "", f"{len(rows)} result rows. Accuracy is the mean score; CIs are Wilson 95%. "
          "FLOPs are analytic: *FLOPs/item* counts Kaplan-style with a KV cache, *no cache* "
          "counts as Ramesh & Li 2025 do (Hoffmann et al. 2022, every generated token re-running its prefix; "
          "– for rows written before it was recorded). Tokens are summed over model roles.", ""]
    if data_note:  # the reader skipped lines of results.jsonl: say so where the numbers are
        md += [f"**Reading results.jsonl:** {data_note}; `interventions check` lists them.", ""]
    md += _summary_md(summary) + _paired_md(diffs) + heldout_md(choices) + _controls_md(controls)
    md += debate_agreement_md(debates) + accuracy_versus_text_md(versus_text) + compute_ratios_md(ratios)
    md += reference_md(versus_reference)
    md += manifold_profile_md(profiles) + manifold_md(correlations) + cascade_md(rows)
    md += ["## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots] + [""]
    if notes_md:
        md += [notes_md]
    (out_dir / "summary.md").write_text("\n".join(md) + "\n")

    payload = {"title": title, "n_rows": len(rows), **({"data_note": data_note} if data_note else {}),
               "summary": summary, "paired_differences": diffs,
               "control_differences": controls, **({"heldout_choices": choices} if choices else {}),
               **({"debate_agreement": debates} if debates else {}),
               **({"accuracy_versus_text": versus_text} if versus_text else {}),
               **({"compute_versus_text": ratios} if ratios else {}),
               **({"reference_differences": versus_reference} if versus_reference else {}),
               **({"manifold_profiles": profiles} if profiles else {}),
               **({"manifold_correlations": correlations} if correlations else {}),
               "plots": [p.name for p in plots]}
    (out_dir / "summary.json").write_text(json.dumps(_json_safe(payload), indent=2, default=str))
    files = [out_dir / "summary.json", out_dir / "summary.md", *plots]
    return {"summary": summary, "paired": diffs, "controls": controls, "files": files}

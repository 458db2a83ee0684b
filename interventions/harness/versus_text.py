"""A latent channel against natural-language communication: what it scores and what it costs.

Ramesh & Li 2025 claim activation communication beats text (NL debate on reasoning, an NL message
in the coordination games) at "< 1/4 the compute", counted as Hoffmann et al. without a KV cache.
``accuracy_versus_text`` tests the first half on shared items (exact sign test, Holm per task);
every row carries the paper's count (``flops_no_cache``) beside the toolkit's KV-cached one, so
``compute_ratios`` gives the ratio under both and checks the claim under each.
"""

from __future__ import annotations

from .rows import grouped, kind_of, mean_of, model_pair, paired, versus_md, with_holm

COUNTS = (("flops", "KV-cached"), ("flops_no_cache", "no cache (paper)"))
CHANNELS, TEXTS = ("ac",), ("nl_debate", "nl_message")


def _control(row: dict) -> bool:
    return (row.get("protocol_spec") or {}).get("control", "none") != "none"


def _by_family(rows: list[dict]) -> dict[str, list[dict]]:
    """Channel rows by protocol, a swept family's cells together ("ac_replace (9 cells)"): its cells
    cost nearly the same, and one line each would bury the table."""
    families = grouped(rows, lambda r: (r.get("params") or {}).get("family") or r["protocol"])
    out = {}
    for family, frows in families.items():
        cells = grouped(frows, lambda r: r["protocol"])
        out.update({f"{family} ({len(cells)} cells)": frows} if len(cells) > 1 else cells)
    return out


def _channels_and_texts(rows: list[dict]):
    """Per (task, model pair): its channel rows (controls left out: a control is not a channel of
    its own) and its text protocols' rows by name."""
    for (task, pair), grp in grouped(rows, lambda r: (r["task"], model_pair(r))).items():
        by_protocol = grouped(grp, lambda r: r["protocol"])
        texts = {p: prs for p, prs in by_protocol.items() if kind_of(prs[0]) in TEXTS}
        channels = [r for r in grp if kind_of(r) in CHANNELS and not _control(r)]
        if texts and channels:
            yield task, pair, channels, texts


def accuracy_versus_text(rows: list[dict], n_boot: int = 10000, seed: int = 0) -> list[dict]:
    """Per task and model pair: each channel protocol minus each text protocol on shared items."""
    out = []
    for task, pair, channels, texts in _channels_and_texts(rows):
        for protocol, prows in grouped(channels, lambda r: r["protocol"]).items():
            for text, trows in texts.items():
                res = paired(prows, trows, n_boot, seed)
                if res:
                    res["text_acc"] = res.pop("other_acc")
                    out.append({"task": task, "model_pair": pair, "protocol": protocol, "versus": text, **res})
    return with_holm(out)


def accuracy_versus_text_md(diffs: list[dict]) -> list[str]:
    return versus_md("## Accuracy against natural-language communication (channel − text, shared items)",
                     "Each channel against each text protocol (NL debate, NL message) on the same task and models.",
                     ("channel", "versus", "n shared", "channel acc", "text acc"), diffs, "versus", "text_acc")


def compute_ratios(rows: list[dict]) -> list[dict]:
    """Per task and model pair: each channel protocol's mean FLOPs over each text protocol's, both counts
    (a control costs what its channel does, so it is left out)."""
    out = []
    for task, pair, channels, texts in _channels_and_texts(rows):
        for label, prows in _by_family(channels).items():
            for text, trows in texts.items():
                entry = {"task": task, "model_pair": pair, "protocol": label, "versus": text}
                for key, _ in COUNTS:
                    mine = mean_of([(r.get("compute") or {}).get(key) for r in prows])
                    theirs = mean_of([(r.get("compute") or {}).get(key) for r in trows])
                    entry[key] = mine / theirs if mine is not None and theirs else None
                out.append(entry)
    return out


def compute_ratios_md(ratios: list[dict]) -> list[str]:
    if not ratios:
        return []
    lines = ["## Compute against natural-language communication", "",
             "Mean FLOPs per item of each channel over each text protocol's (NL debate, NL message) on the same "
             "task and models, under the "
             "toolkit's KV-cached count and the paper's count (Hoffmann et al., no cache); *< 1/4* says whether "
             "the paper's claim holds under each.", "",
             "| task | models | channel | versus | " + " | ".join(f"ratio, {label} | < 1/4" for _, label in COUNTS) + " |",
             "|" + "---|" * (4 + 2 * len(COUNTS))]
    for r in ratios:
        cells = []
        for key, _ in COUNTS:
            value = r[key]
            cells += ["–", "–"] if value is None else [f"{value:.3f}", "yes" if value < 0.25 else "no"]
        lines.append(f"| {r['task']} | {r['model_pair']} | {r['protocol']} | {r['versus']} | " + " | ".join(cells) + " |")
    return lines + [""]

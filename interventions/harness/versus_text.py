"""What a latent channel costs against natural-language communication, under both FLOP counts.

Ramesh & Li 2025 report activation communication at "< 1/4 the compute" of text (NL debate on
reasoning, an NL message in the coordination games), counted as
Hoffmann et al. without a KV cache. Every row carries that count (``flops_no_cache``) beside the
toolkit's KV-cached one, so the ratio is given under both and the claim is checked under each.
"""

from __future__ import annotations

from .rows import grouped, kind_of, mean_of, model_pair

COUNTS = (("flops", "KV-cached"), ("flops_no_cache", "no cache (paper)"))


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


def compute_ratios(rows: list[dict], channel_kinds=("ac",), text_kinds=("nl_debate", "nl_message")) -> list[dict]:
    """Per task and model pair: each channel protocol's mean FLOPs over each text protocol's, both counts
    (a control costs what its channel does, so it is left out)."""
    out = []
    for (task, pair), grp in grouped(rows, lambda r: (r["task"], model_pair(r))).items():
        by_protocol = grouped(grp, lambda r: r["protocol"])
        texts = [p for p, prs in by_protocol.items() if kind_of(prs[0]) in text_kinds]
        channels = [r for r in grp if kind_of(r) in channel_kinds and not _control(r)]
        for label, prows in _by_family(channels).items():
            for text in texts:
                entry = {"task": task, "model_pair": pair, "protocol": label, "versus": text}
                for key, _ in COUNTS:
                    mine = mean_of([(r.get("compute") or {}).get(key) for r in prows])
                    theirs = mean_of([(r.get("compute") or {}).get(key) for r in by_protocol[text]])
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

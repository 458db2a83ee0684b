"""Summaries, paired differences and report files from hand-made result rows."""

import json

import pytest

from interventions.harness.report import _plot_accuracy, paired_differences, summarize, write_report
from interventions.harness.stats import wilson_interval

MODELS = {"A": {"name": "tiny-a", "sha256": "aa"}, "B": {"name": "tiny-b", "sha256": "bb"}}


def row(protocol, item, score, task="t1", flops=100.0, tokens=(3, 4), wall=0.5, norm=None, **params):
    return {"key": f"{task}/{protocol}/{item}", "experiment": "exp", "task": task, "item_id": str(item),
            "protocol": protocol, "protocol_spec": {}, "models": MODELS, "seed": 0, "score": score,
            "score_norm": norm, "prediction": "x", "gold": "y",
            "compute": {"tokens": {"A": tokens[0], "B": tokens[1]}, "flops": flops, "wall_s": wall},
            "params": {"k": None, "j": None, "chance": 0.25, **params}}


def make_rows(with_kj=False):
    rows = []
    for i in range(20):  # baseline right on 5/20, "better" right on the same 5 plus 10 more
        rows.append(row("B_alone", i, 1.0 if i < 5 else 0.0, flops=100.0, tokens=(0, 10), norm=0.5))
        rows.append(row("nl_debate", i, 1.0 if i < 15 else 0.0, flops=1000.0, tokens=(10, 20), wall=2.0))
    if with_kj:
        for k in (1, 2):
            for j in (1, 2, 3):
                for i in range(4):
                    rows.append(row(f"ac_replace_k{k}_j{j}", i, float(i < k + j - 1), flops=50.0,
                                    k=k, j=j, family="ac_replace", sweep=["k", "j"]))
    return rows


def test_summary_numbers():
    s = {e["protocol"]: e for e in summarize(make_rows())}
    base, nl = s["B_alone"], s["nl_debate"]
    assert base["n"] == 20 and base["acc"] == pytest.approx(0.25)
    assert (base["ci_low"], base["ci_high"]) == pytest.approx(wilson_interval(5, 20))
    assert base["acc_norm"] == pytest.approx(0.5) and nl["acc_norm"] is None
    assert nl["acc"] == pytest.approx(0.75)
    assert nl["flops_per_item"] == 1000.0 and nl["tokens_per_item"] == 30 and nl["wall_s_per_item"] == 2.0
    assert nl["tokens_per_item_by_role"] == {"A": 10, "B": 20}
    assert base["model_pair"] == "A=tiny-a, B=tiny-b" and base["params"]["chance"] == 0.25


def test_summary_splits_tasks_and_fractional_scores():
    rows = [row("p", 0, 0.5, task="t1"), row("p", 1, 1.0, task="t1"), row("p", 0, 0.0, task="t2")]
    s = {(e["task"], e["protocol"]): e for e in summarize(rows)}
    assert s[("t1", "p")]["acc"] == pytest.approx(0.75) and s[("t1", "p")]["n"] == 2
    assert s[("t2", "p")]["acc"] == 0.0


def test_paired_difference_sign():
    diffs = paired_differences(make_rows(), "B_alone", n_boot=2000)
    assert len(diffs) == 1  # the baseline is not compared with itself
    d = diffs[0]
    assert d["protocol"] == "nl_debate" and d["n_shared"] == 20
    assert d["diff"] == pytest.approx(0.5) and d["low"] > 0
    rev = paired_differences(make_rows(), "nl_debate", n_boot=2000)[0]
    assert rev["diff"] == pytest.approx(-0.5) and rev["high"] < 0


def test_paired_uses_only_shared_items():
    rows = make_rows() + [row("partial", i, 1.0) for i in range(5, 10)]  # items 5..9 only
    d = {x["protocol"]: x for x in paired_differences(rows, "B_alone", n_boot=500)}["partial"]
    assert d["n_shared"] == 5 and d["diff"] == pytest.approx(1.0)


def test_paired_compares_a_pair_only_with_its_own_models_baseline():
    """A pair whose baseline rows have not landed yet is not compared with another pair's baseline,
    whose B is another model (SmolLM2 -> Gemma-3's "B alone" is Gemma-3, not Qwen); a baseline
    recorded with only the pair's B model still serves it."""
    def with_models(r, **names):
        return {**r, "models": {role: {"name": name} for role, name in names.items()}}

    gemma = [with_models(row("B_alone", i, 0.0), A="smollm2", B="gemma3") for i in range(10)]
    qwen = [with_models(row("ac", i, 1.0), A="qwen-0.5b", B="qwen-1.5b") for i in range(10)]
    assert paired_differences(gemma + qwen, "B_alone", n_boot=200) == []
    alone = [with_models(row("B_alone", i, float(i < 4)), B="qwen-1.5b") for i in range(10)]
    (d,) = paired_differences(gemma + alone + qwen, "B_alone", n_boot=200)
    assert d["model_pair"] == "A=qwen-0.5b, B=qwen-1.5b" and d["baseline_acc"] == pytest.approx(0.4)


def test_rows_in_another_precision_are_another_pair_not_more_repeats():
    """The same item and protocol run in fp32 and in bf16 (say, a bf16 GPU run beside CPU rows) has two
    rows with two work keys; averaging them as one item's repeats would blend two measurements."""
    bf16 = {role: {**m, "dtype": "bf16"} for role, m in MODELS.items()}
    rows = [row("B_alone", i, 1.0) for i in range(4)] + [{**row("B_alone", i, 0.0), "models": bf16} for i in range(4)]
    by_pair = {s["model_pair"]: (s["n"], s["acc"]) for s in summarize(rows)}
    assert by_pair == {"A=tiny-a, B=tiny-b": (4, 1.0), "A=tiny-a (bf16), B=tiny-b (bf16)": (4, 0.0)}


def test_write_report_files(tmp_path):
    out = write_report(make_rows(), tmp_path, "Tiny report", notes_md="## Notes\nLead's interpretation.",
                       baseline_protocol="B_alone")
    names = {p.name for p in tmp_path.iterdir()}
    assert {"summary.json", "summary.md", "accuracy_t1.png", "acc_vs_flops.png"} <= names
    assert not any(n.startswith("kj_heatmap") for n in names)
    md = (tmp_path / "summary.md").read_text()
    assert md.startswith("# Tiny report")
    assert "| B_alone | 20 | 0.250 [" in md and "nl_debate" in md and "+0.500" in md
    assert md.rstrip().endswith("Lead's interpretation.")
    data = json.loads((tmp_path / "summary.json").read_text())
    assert len(data["summary"]) == 2 and data["paired_differences"][0]["baseline"] == "B_alone"
    assert all(p.stat().st_size > 1000 for p in out["files"] if p.suffix == ".png")


def test_heatmap_only_with_kj(tmp_path):
    write_report(make_rows(with_kj=True), tmp_path, "With k/j", baseline_protocol="B_alone")
    heat = sorted(p.name for p in tmp_path.glob("kj_heatmap_*.png"))
    assert heat == ["kj_heatmap_t1_ac_replace.png"]
    s = {e["protocol"]: e for e in summarize(make_rows(with_kj=True))}
    assert s["ac_replace_k2_j3"]["acc"] == pytest.approx(1.0) and s["ac_replace_k1_j1"]["acc"] == pytest.approx(0.25)


def test_accuracy_grid_for_three_or_more_tasks(tmp_path):
    rows = [row(p, i, float(i % 2 == 0 or p == "b"), task=t) for t in ("t1", "t2", "t3") for p in ("a", "b")
            for i in range(4)]
    write_report(rows, tmp_path, "grid")
    grids = sorted(p.name for p in tmp_path.glob("accuracy_grid_*.png"))
    assert len(grids) == 1 and f"![{grids[0][:-4]}]" in (tmp_path / "summary.md").read_text()
    write_report([r for r in rows if r["task"] != "t3"], tmp_path / "two", "two tasks")
    assert not list((tmp_path / "two").glob("accuracy_grid_*.png"))


def test_paired_tables_carry_the_exact_test_holm_and_a_power_note(tmp_path):
    rows = make_rows() + [row("four_up", i, 1.0 if i < 9 else 0.0) for i in range(20)]   # 4 wins, 0 losses
    diffs = {d["protocol"]: d for d in paired_differences(rows, "B_alone", n_boot=500)}
    four = diffs["four_up"]
    assert (four["wins"], four["losses"], four["ties"]) == (4, 0, 16)
    assert four["p_exact"] == pytest.approx(0.125)
    # Holm over the task's two comparisons: nl_debate (10 wins, p = 2/1024) and four_up
    assert diffs["nl_debate"]["p_holm"] == pytest.approx(2 * 2 / 1024)
    assert four["p_holm"] == pytest.approx(0.125)
    write_report(rows, tmp_path, "t", baseline_protocol="B_alone")
    md = (tmp_path / "summary.md").read_text()
    assert "| 4/0 | 0.1250 | 0.1250 |" in md and "| 10/0 | 0.0020 | 0.0039 |" in md
    assert "on 20 items no paired difference below 0.300 can reach p < 0.05" in md


def test_a_sweep_cell_is_chosen_on_held_out_items(tmp_path):
    from interventions.harness.selection import heldout_choices, selection_half

    ids = [str(i) for i in range(40)]
    select = {i for i in ids if selection_half(i)}
    assert 10 < len(select) < 30                       # the hash splits roughly in half
    rows = [row("B_alone", i, 0.0) for i in ids]
    # cell "lucky" is right only on the report half; "steady" on the selection half and a third of the report half
    report = [i for i in ids if i not in select]
    rows += [row("lucky", i, float(i in report), family="ac", sweep=["k"]) for i in ids]
    rows += [row("steady", i, float(i in select or i in report[::3]), family="ac", sweep=["k"]) for i in ids]
    (choice,) = heldout_choices(rows, {"t1": "B_alone"}, n_boot=200)
    assert choice["chosen"] == "steady" and choice["optimistic"] == "lucky"
    assert choice["n_shared"] == len(report) and choice["acc"] == pytest.approx(len(report[::3]) / len(report))
    assert choice["optimistic_acc"] == 1.0 and choice["wins"] == len(report[::3])
    write_report(rows, tmp_path, "t", baseline_protocol="B_alone")
    assert "## Sweep cells chosen on held-out items" in (tmp_path / "summary.md").read_text()


def test_channel_compute_against_debate_under_both_counts(tmp_path):
    from interventions.harness.versus_text import compute_ratios

    rows = []
    for i in range(4):
        ac = row("ac_sum", i, 1.0, flops=30.0)
        ac["protocol_spec"], ac["compute"]["flops_no_cache"] = {"kind": "ac"}, 20.0
        debate = row("nl_debate_r2", i, 1.0, flops=100.0)
        debate["protocol_spec"], debate["compute"]["flops_no_cache"] = {"kind": "nl_debate"}, 100.0
        control = row("ac_sum_ctl-random", i, 0.0, flops=30.0)
        control["protocol_spec"] = {"kind": "ac", "control": "random"}
        message = row("nl_message", i, 1.0, flops=60.0)
        message["protocol_spec"], message["compute"]["flops_no_cache"] = {"kind": "nl_message"}, 40.0
        rows += [ac, debate, control, message, row("B_alone", i, 0.0)]
    ratio, to_message = compute_ratios(rows)   # the control is not a channel of its own
    assert (ratio["protocol"], ratio["versus"]) == ("ac_sum", "nl_debate_r2")
    assert ratio["flops"] == pytest.approx(0.3) and ratio["flops_no_cache"] == pytest.approx(0.2)
    assert to_message["versus"] == "nl_message" and to_message["flops_no_cache"] == pytest.approx(0.5)
    write_report(rows, tmp_path, "t", baseline_protocol="B_alone")
    md = (tmp_path / "summary.md").read_text()
    assert "| t1 | A=tiny-a, B=tiny-b | ac_sum | nl_debate_r2 | 0.300 | no | 0.200 | yes |" in md


def test_channel_accuracy_against_debate_is_an_exact_paired_test(tmp_path):
    from scipy.stats import binomtest

    from interventions.harness.versus_text import accuracy_versus_text

    def scored(protocol, kind, i, score, **spec):
        r = row(protocol, i, score)
        r["protocol_spec"] = {"kind": kind, **spec}
        return r

    rows = []
    for i in range(30):   # the channel wins items 0-6, loses item 7, ties the rest (right on 8-19)
        rows += [scored("ac_replace", "ac", i, float(i < 7 or 8 <= i < 20)),
                 scored("nl_debate_r2", "nl_debate", i, float(7 <= i < 20)),
                 scored("ac_replace_ctl-random", "ac", i, 0.0, control="random"),
                 scored("single_B", "single", i, 1.0)]
    (d,) = accuracy_versus_text(rows)   # neither the control nor the single model is a channel
    assert (d["protocol"], d["versus"], d["n_shared"]) == ("ac_replace", "nl_debate_r2", 30)
    assert (d["acc"], d["text_acc"]) == pytest.approx((19 / 30, 13 / 30))
    assert (d["wins"], d["losses"]) == (7, 1)
    assert d["p_exact"] == pytest.approx(binomtest(7, 8, 0.5).pvalue) == pytest.approx(d["p_holm"])
    write_report(rows, tmp_path, "t", baseline_protocol="single_B")
    md = (tmp_path / "summary.md").read_text()
    assert "| t1 | A=tiny-a, B=tiny-b | ac_replace | nl_debate_r2 | 30 | 0.633 | 0.433 | +0.200" in md


def test_debate_agreement_names_whose_answer_the_debate_returns(tmp_path):
    from interventions.harness.debate_report import debate_agreement

    def answered(protocol, kind, i, prediction, **spec):
        r = row(protocol, i, 0.0)
        r["protocol_spec"], r["prediction"] = {"kind": kind, **spec}, prediction
        return r

    rows = []
    for i, (a, b, final, agree) in enumerate([("x", "y", "y", False), ("x", "x", "x", True), ("z", "y", "z", False),
                                              ("x", "y", "y", True)]):
        rows += [answered("single_A", "single", i, a, role="A"), answered("single_B", "single", i, b, role="B")]
        debate = answered("nl_debate_r2", "nl_debate", i, final)
        debate["extra"] = {"agree": agree}
        rows.append(debate)
    (entry,) = debate_agreement(rows)
    assert entry["n"] == 4 and entry["agree"] == pytest.approx(0.5)
    assert entry["same_as_A"] == pytest.approx(2 / 4) and entry["same_as_B"] == pytest.approx(3 / 4)
    write_report(rows, tmp_path, "t", baseline_protocol="single_B")
    assert "| t1 | A=tiny-a, B=tiny-b | nl_debate_r2 | 4 | 0.50 | 0.50 | 0.75 |" in (tmp_path / "summary.md").read_text()


def test_debate_agreement_compares_generated_answers_as_the_debate_votes():
    """Sampled texts almost never match verbatim: a number is compared as a number, a pick as its option."""
    from interventions.harness.debate_report import debate_agreement

    def answered(task, protocol, kind, prediction, parsed=None, **spec):
        r = row(protocol, 0, 0.0, task=task)
        r["protocol_spec"], r["prediction"] = {"kind": kind, **spec}, prediction
        r["extra"] = {"parsed": parsed} if parsed else {}
        return r

    pick = lambda letter: {"rule": "one", "pick": letter}  # noqa: E731
    rows = [answered("gsm8k", "single_A", "single", "So she pays 18 dollars.", role="A"),
            answered("gsm8k", "single_B", "single", "17", role="B"),
            answered("gsm8k", "nl_debate_r2", "nl_debate", "The answer is 18.00"),
            answered("mmlu_gen/formal_logic", "single_A", "single", "(C) is valid", pick("C"), role="A"),
            answered("mmlu_gen/formal_logic", "single_B", "single", "B", pick("B"), role="B"),
            answered("mmlu_gen/formal_logic", "nl_debate_r2", "nl_debate", "The answer is B.", pick("B"))]
    entries = {e["task"]: e for e in debate_agreement(rows)}
    assert (entries["gsm8k"]["same_as_A"], entries["gsm8k"]["same_as_B"]) == (1.0, 0.0)
    assert (entries["mmlu_gen/formal_logic"]["same_as_A"], entries["mmlu_gen/formal_logic"]["same_as_B"]) == (0.0, 1.0)


def test_a_sweeps_cells_share_one_line_of_the_compute_table():
    from interventions.harness.versus_text import compute_ratios

    rows = []
    for i in range(3):
        for k, flops in ((1, 20.0), (2, 40.0)):
            cell = row(f"ac_replace_k{k}", i, 1.0, flops=flops, k=k, family="ac_replace", sweep=["k"])
            cell["protocol_spec"] = {"kind": "ac"}
            rows.append(cell)
        debate = row("nl_debate_r2", i, 1.0, flops=100.0)
        debate["protocol_spec"] = {"kind": "nl_debate"}
        rows.append(debate)
    (ratio,) = compute_ratios(rows)
    assert ratio["protocol"] == "ac_replace (2 cells)" and ratio["flops"] == pytest.approx(0.3)


def test_accuracy_plot_sets_each_pairs_bar_under_its_protocol(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    axes = []

    class KeepOpen:  # pyplot, but the figure stays open for the test to read
        def subplots(self, *args, **kwargs):
            fig, ax = plt.subplots(*args, **kwargs)
            axes.append(ax)
            return fig, ax

        def close(self, fig):
            pass

    def entry(protocol, pair, acc):
        return {"protocol": protocol, "model_pair": pair, "acc": acc, "ci_low": acc - 0.1, "ci_high": acc + 0.1,
                "n": 10, "params": {}}

    _plot_accuracy(KeepOpen(), "t", [entry("single_B", "P1", 0.5), entry("ac", "P1", 0.6), entry("ac", "P2", 0.7)],
                   tmp_path)
    ax = axes[0]
    assert [(round(p.get_x() + p.get_width() / 2, 2), p.get_height()) for p in ax.patches] == [
        (-0.2, 0.5), (0.8, 0.6), (1.2, 0.7)]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["P1", "P2"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["single_B", "ac"]
    plt.close("all")

"""Report sections for merges: the best-reference comparison and the manifold-distance correlation."""

from __future__ import annotations

import numpy as np
import pytest

from interventions.harness.analysis import manifold_correlations, reference_differences, spearman, spearman_interval


def _row(protocol, item, score, distance=None, task="t"):
    row = {"task": task, "protocol": protocol, "item_id": item, "score": score,
           "models": {"A": {"name": "a"}, "B": {"name": "b"}}}
    if distance is not None:
        row["extra"] = {"diagnostics": {"mahalanobis_percentile": distance, "norm_ratio": 1.0, "kl": distance / 100}}
    return row


def test_spearman_matches_a_hand_computation_with_ties():
    # x ranks: 1, 2, 3, 4 ; y = (0, 0, 1, 1) has average ranks (1.5, 1.5, 3.5, 3.5)
    rx, ry = np.array([1, 2, 3, 4.0]), np.array([1.5, 1.5, 3.5, 3.5])
    expected = np.corrcoef(rx, ry)[0, 1]
    assert spearman([10, 20, 30, 40], [0, 0, 1, 1]) == pytest.approx(expected)
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 1, 1], [0, 1, 0]) != spearman([1, 1, 1], [0, 1, 0])  # NaN: no variance


def test_spearman_interval_resamples_items_and_covers_the_estimate():
    rng = np.random.default_rng(0)
    x = rng.normal(size=200)
    y = (x + rng.normal(scale=0.5, size=200) < 0).astype(float)   # farther -> lower score
    res = spearman_interval(x, y, [i // 2 for i in range(200)], n_boot=300)
    assert res["n_items"] == 100 and res["low"] <= res["rho"] <= res["high"] < 0


def test_reference_is_the_best_of_the_set_and_others_are_paired_against_it():
    rows = [_row("sum", i, float(i < 2)) for i in range(10)] + [_row("replace", i, float(i < 6)) for i in range(10)]
    rows += [_row("merge", i, float(i < 7)) for i in range(10)]
    diffs = {d["protocol"]: d for d in reference_differences(rows, ["sum", "replace"], n_boot=200)}
    assert set(diffs) == {"sum", "merge"} and diffs["merge"]["reference"] == "replace"
    assert diffs["merge"]["diff"] == pytest.approx(0.1) and diffs["sum"]["diff"] == pytest.approx(-0.4)


def test_manifold_correlation_finds_a_planted_negative_relation():
    rows = [_row(p, i, float(d < 50), distance=d) for p in ("a", "b") for i, d in enumerate(range(0, 100, 5))]
    by = {c["diagnostic"]: c for c in manifold_correlations(rows)}
    assert by["mahalanobis_percentile"]["rho"] < -0.8 and by["mahalanobis_percentile"]["n_items"] == 20


def test_manifold_correlation_with_a_constant_column_says_which_instead_of_nan():
    from interventions.harness.analysis import manifold_md

    rows = [_row("a", i, float(i % 2), distance=100) for i in range(12)]
    by = {c["diagnostic"]: c for c in manifold_correlations(rows)}
    assert by["mahalanobis_percentile"]["undefined"] == "every row's mahalanobis_percentile is 100"
    table = "\n".join(manifold_md(list(by.values())))
    assert "nan" not in table and "every row's mahalanobis_percentile is 100" in table


def test_manifold_profile_gives_each_protocols_medians_empty_share_and_message_token():
    from interventions.harness.analysis import manifold_profile_md, manifold_profiles

    def diagnosed(protocol, item, kl, merged, prediction, top=None):
        row = _row(protocol, item, float(prediction == "B"))
        row["prediction"] = prediction
        row["extra"] = {"diagnostics": {"kl": kl, "mahalanobis": merged, "clean_mahalanobis": 140.0,
                                        "mahalanobis_percentile": 50.0, "norm_ratio": 1.0,
                                        **({"message_top_tokens": [top, "x"]} if top else {})}}
        return row

    # replace: KL 9, 10, 11 -> median 10; two of three answers empty; '.\n' top twice, '|' once
    rows = [diagnosed("replace", 0, 9.0, 50.0, "", ".\n"), diagnosed("replace", 1, 11.0, 60.0, " ", ".\n"),
            diagnosed("replace", 2, 10.0, 70.0, "B", "|")]
    rows += [diagnosed("sum", i, 0.1 * (i + 1), 100.0, "B") for i in range(4)]   # no message tokens
    rows.append(_row("single_B", 0, 1.0))                                         # no diagnostics: left out
    choice = diagnosed("loglik", 0, 1.0, 50.0, "")   # a scored choice: no generation to end early
    choice["score_norm"] = 0.0
    rows.append(choice)
    by = {p["protocol"]: p for p in manifold_profiles(rows)}
    assert set(by) == {"replace", "sum", "loglik"} and by["loglik"]["empty"] is None
    assert by["replace"]["kl"] == 10.0 and by["replace"]["mahalanobis"] == 60.0
    assert by["replace"]["empty"] == pytest.approx(2 / 3) and by["replace"]["acc"] == pytest.approx(1 / 3)
    assert by["replace"]["message_top_token"] == ".\n" and by["replace"]["message_top_token_share"] == pytest.approx(2 / 3)
    assert by["sum"]["kl"] == pytest.approx(0.25) and by["sum"]["empty"] == 0.0 and "message_top_token" not in by["sum"]
    table = "\n".join(manifold_profile_md(list(by.values())))
    assert "| replace | 3 | 0.333 | 0.67 | 10 | 60 | 140 | 50 | 1.00 | `'.\\n'` (67%) |" in table
    assert "| sum | 4 | 1.000 | 0.00 | 0.25 | 100 | 140 | 50 | 1.00 | – |" in table

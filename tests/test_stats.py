"""Wilson interval and paired bootstrap."""

import math

import pytest

from interventions.harness.stats import (holm, paired_bootstrap_diff, sign_test, smallest_significant_difference,
                                       wilson_interval)


def test_wilson_published_value():
    # 8/10: the standard textbook Wilson 95% interval is (0.490, 0.943)
    low, high = wilson_interval(8, 10)
    assert (round(low, 3), round(high, 3)) == (0.490, 0.943)


def test_wilson_hand_computation():
    s, n, z = 37, 120, 1.96
    p = s / n
    center = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    assert wilson_interval(s, n) == pytest.approx((center - half, center + half))


def test_wilson_symmetric_and_bounds():
    low, high = wilson_interval(3, 10)
    low2, high2 = wilson_interval(7, 10)
    assert low == pytest.approx(1 - high2) and high == pytest.approx(1 - low2)
    assert wilson_interval(5, 10)[0] == pytest.approx(1 - wilson_interval(5, 10)[1])
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == 1.0
    assert 0 < wilson_interval(0, 10)[1] < 0.35


def test_wilson_n_zero_and_fractional():
    assert wilson_interval(0, 0) == (0.0, 1.0)
    low, high = wilson_interval(4.5, 10)
    assert low < 0.45 < high
    with pytest.raises(ValueError):
        wilson_interval(11, 10)


def test_bootstrap_identical_lists():
    a = [1, 0, 1, 1, 0, 0, 1, 0, 1, 1]
    r = paired_bootstrap_diff(a, list(a), n_boot=2000)
    assert r["diff"] == 0.0
    assert r["low"] <= 0.0 <= r["high"]
    assert r["p_value_two_sided"] == pytest.approx(1.0)


def test_bootstrap_clearly_better_excludes_zero():
    b = [1] * 20 + [0] * 80
    a = [1] * 20 + [1] * 60 + [0] * 20   # a is right on 60 more of the same items
    r = paired_bootstrap_diff(a, b, n_boot=5000)
    assert r["diff"] == pytest.approx(0.6)
    assert r["low"] > 0 and r["high"] <= 1
    assert r["p_value_two_sided"] < 0.01
    r2 = paired_bootstrap_diff(b, a, n_boot=5000)
    assert r2["diff"] == pytest.approx(-0.6) and r2["high"] < 0


def test_bootstrap_deterministic_by_seed():
    a = [0.1, 0.5, 0.9, 0.3, 0.7, 0.2]
    b = [0.2, 0.4, 0.5, 0.3, 0.1, 0.6]
    assert paired_bootstrap_diff(a, b, seed=3) == paired_bootstrap_diff(a, b, seed=3)
    assert paired_bootstrap_diff(a, b, seed=3)["low"] != paired_bootstrap_diff(a, b, seed=4)["low"]


def test_bootstrap_rejects_unpaired():
    with pytest.raises(ValueError):
        paired_bootstrap_diff([1, 0], [1])
    with pytest.raises(ValueError):
        paired_bootstrap_diff([], [])


# ---------------------------------------------------------------- exact tests, Holm, power

def _planted(wins, losses, ties_both, ties_neither):
    """Paired 0/1 scores with a planted 2x2 table: a-only right, b-only right, both, neither."""
    a = [1] * wins + [0] * losses + [1] * ties_both + [0] * ties_neither
    b = [0] * wins + [1] * losses + [1] * ties_both + [0] * ties_neither
    return a, b


@pytest.mark.parametrize("table", [(4, 0, 30, 16), (9, 2, 20, 19), (0, 0, 5, 5), (7, 7, 1, 1), (1, 12, 0, 0),
                                   (40, 25, 100, 35), (3, 1, 0, 0)])
def test_sign_test_is_exact_mcnemar_against_scipy(table):
    from scipy.stats import binomtest

    a, b = _planted(*table)
    res = sign_test(a, b)
    wins, losses = table[:2]
    assert (res["wins"], res["losses"], res["ties"]) == (wins, losses, sum(table[2:]))
    want = binomtest(wins, wins + losses, 0.5).pvalue if wins + losses else 1.0
    assert res["p_exact"] == pytest.approx(want, rel=1e-12)


def test_sign_test_published_cases():
    # the audit's numbers: 4 discordant items against 0 give p = 0.125; 9 wins and 2 losses give 0.065
    assert sign_test(*_planted(4, 0, 40, 6))["p_exact"] == pytest.approx(0.125)
    assert sign_test(*_planted(9, 2, 30, 9))["p_exact"] == pytest.approx(0.0654296875)
    # fractional per-item scores (seeds averaged) count by sign, ties dropped
    res = sign_test([0.5, 1.0, 0.0, 0.25], [0.25, 1.0, 0.5, 0.25])
    assert (res["wins"], res["losses"], res["ties"]) == (1, 1, 2) and res["p_exact"] == 1.0
    with pytest.raises(ValueError, match="paired"):
        sign_test([1, 0], [1])


def test_holm_hand_computation():
    p = [0.01, 0.04, 0.03, 0.005]
    # sorted: 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 = 0.04 -> running max 0.06
    assert holm(p) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    assert holm([0.02]) == [0.02] and holm([]) == []
    # never smaller than the raw p, never smaller than Bonferroni's for the smallest
    raw = [0.001, 0.2, 0.049, 0.012, 0.3]
    adj = holm(raw)
    assert all(x >= r for x, r in zip(adj, raw)) and min(adj) == pytest.approx(min(raw) * len(raw))


def test_smallest_significant_difference():
    # at n = 50 no difference below 0.12 can be significant (6 discordant items, all one way)
    assert smallest_significant_difference(50) == pytest.approx(0.12)
    assert sign_test(*_planted(6, 0, 0, 44))["p_exact"] <= 0.05 < sign_test(*_planted(5, 0, 0, 45))["p_exact"]
    assert smallest_significant_difference(300) == pytest.approx(0.02)
    assert smallest_significant_difference(5) is None
    assert smallest_significant_difference(100, alpha=0.01) == pytest.approx(0.08)   # 2/2**8 <= 0.01 < 2/2**7

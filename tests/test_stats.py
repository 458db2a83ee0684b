"""Wilson interval and paired bootstrap."""

import math

import pytest

from interventions.harness.stats import paired_bootstrap_diff, wilson_interval


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

"""Small, dependency-light statistics for comparing protocols on the same items."""

from __future__ import annotations

import math

import numpy as np


def wilson_interval(successes: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (95% for z=1.96).

    Wilson rather than the normal approximation because it stays inside [0, 1] and behaves at
    p=0 / p=1 and small n, which is common for per-task accuracies. ``successes`` may be
    fractional (sum of partial-credit scores). n=0 carries no information: (0, 1).
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if n == 0:
        return 0.0, 1.0
    if not 0 <= successes <= n:
        raise ValueError(f"successes must lie in [0, n={n}], got {successes}")
    p = successes / n
    z2 = z * z
    denom = 1.0 + z2 / n
    center = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
    return max(0.0, center - half), min(1.0, center + half)


def paired_bootstrap_diff(a: list[float], b: list[float], n_boot: int = 10000, seed: int = 0,
                          alpha: float = 0.05) -> dict:
    """Mean difference a-b over the same items, with a paired percentile bootstrap CI.

    Items are resampled (not a and b independently) so per-item difficulty cancels, which is
    what makes small accuracy gaps on a shared item set detectable. The two-sided p-value
    uses the null-shifted bootstrap distribution: how often a resampled diff lands at least
    |diff| away from the observed diff, with the usual +1 correction so p is never 0.
    """
    da = np.asarray(a, dtype=np.float64)
    db = np.asarray(b, dtype=np.float64)
    if da.shape != db.shape or da.ndim != 1:
        raise ValueError(f"a and b must be 1-D and the same length (paired), got {da.shape} and {db.shape}")
    n = da.shape[0]
    if n == 0:
        raise ValueError("paired_bootstrap_diff needs at least one paired item")
    d = da - db
    diff = float(d.mean())

    rng = np.random.default_rng(seed)
    # Chunk the (n_boot, n) index matrix so large item sets don't allocate gigabytes.
    chunk = max(1, min(n_boot, 4_000_000 // n))
    boots = np.empty(n_boot, dtype=np.float64)
    for start in range(0, n_boot, chunk):
        stop = min(n_boot, start + chunk)
        idx = rng.integers(0, n, size=(stop - start, n))
        boots[start:stop] = d[idx].mean(axis=1)

    low, high = np.quantile(boots, [alpha / 2, 1 - alpha / 2])
    # Small tolerance so float noise in identical means doesn't count as "less extreme".
    extreme = np.abs(boots - diff) >= abs(diff) - 1e-12
    p = (1 + int(extreme.sum())) / (n_boot + 1)
    return {"diff": diff, "low": float(low), "high": float(high), "p_value_two_sided": min(1.0, p),
            "n": int(n), "n_boot": int(n_boot)}


def sign_test(a: list[float], b: list[float]) -> dict:
    """Exact two-sided sign test of paired per-item scores a and b.

    Items where a scores higher are wins, lower are losses; ties say nothing about which is better.
    Under the null each untied item is a fair coin, so p = P(|Binomial(m, 1/2) - m/2| >= |wins - m/2|)
    with m = wins + losses. On 0/1 scores this is the exact McNemar test (the binomial test on the
    discordant pairs); unlike the bootstrap it stays valid for the handful of discordant items a
    small evaluation has. Integer arithmetic, so it is exact for any m.
    """
    if len(a) != len(b):
        raise ValueError(f"a and b must be paired (the same length), got {len(a)} and {len(b)}")
    wins = sum(x > y for x, y in zip(a, b))
    losses = sum(x < y for x, y in zip(a, b))
    m = wins + losses
    tail = sum(math.comb(m, i) for i in range(min(wins, losses) + 1))
    p = min(1.0, 2 * tail / 2 ** m) if m else 1.0
    return {"wins": wins, "losses": losses, "ties": len(a) - m, "p_exact": p}


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the input order.

    The i-th smallest p is multiplied by (m - i) (i from 0) and the running maximum is kept, so a
    family of m comparisons (the cells of a sweep) keeps its chance of any false positive at alpha
    when each adjusted p is compared with alpha.
    """
    order = sorted(range(len(p_values)), key=lambda i: p_values[i])
    adjusted, running = [1.0] * len(p_values), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


def smallest_significant_difference(n: int, alpha: float = 0.05) -> float | None:
    """The smallest paired accuracy difference that can reach p <= alpha on n items at all.

    The most extreme outcome for d discordant items is all d going one way, with exact p = 2 / 2**d;
    it needs d >= log2(2 / alpha) (6 items at alpha = 0.05), and d items move accuracy by d / n.
    A smaller difference cannot be significant whatever the data; None when n is too small for any.
    Detecting a true difference with reasonable power takes a larger one.
    """
    needed = math.ceil(math.log2(2 / alpha) - 1e-12)
    return needed / n if 0 < needed <= n else None

"""Corpus statistics: Ledoit–Wolf as defined, Mahalanobis as by hand, percentiles, refusals, caching."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from interventions import statistics
from interventions.errors import StatisticsError
from interventions.statistics import fit_layer_stats, fit_regression, layer_stats, ledoit_wolf
from tiny_models import tiny_model


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("INTERVENTIONS_CACHE", str(tmp_path))
    monkeypatch.setattr(statistics, "_memo", {})


def correlated(n: int, d: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    mixing = torch.randn(d, d, generator=g, dtype=torch.float64)
    return torch.randn(n, d, generator=g, dtype=torch.float64) @ mixing + 3.0


def test_ledoit_wolf_matches_its_definition():
    x = correlated(7, 4).numpy()
    n, d = x.shape
    c = x - x.mean(0)
    s = c.T @ c / n
    mu = np.trace(s) / d
    gap = np.sum((s - mu * np.eye(d)) ** 2)
    spread = sum(np.sum((np.outer(row, row) - s) ** 2) for row in c) / n ** 2   # one outer product per sample
    shrink = min(spread, gap) / gap
    covariance, shrinkage = ledoit_wolf(torch.from_numpy(x))
    assert shrinkage == pytest.approx(shrink)
    assert np.allclose(covariance.numpy(), (1 - shrink) * s + shrink * mu * np.eye(d))
    assert 0 < shrinkage < 1


def test_shrinkage_is_strong_with_few_samples_and_weak_with_many():
    g = torch.Generator().manual_seed(1)
    _, few = ledoit_wolf(torch.randn(20, 50, generator=g, dtype=torch.float64))
    _, many = ledoit_wolf(correlated(5000, 5))
    assert few > 0.5 and many < 0.01


def test_mahalanobis_equals_a_hand_computation():
    stats = fit_layer_stats(correlated(400, 6), seed=0)
    probe = correlated(3, 6, seed=9)
    inverse = np.linalg.inv(stats.covariance.numpy())
    by_hand = [np.sqrt((p - stats.mean.numpy()) @ inverse @ (p - stats.mean.numpy())) for p in probe.numpy()]
    assert np.allclose(stats.mahalanobis(probe).numpy(), by_hand)
    assert stats.mahalanobis(probe[None]).shape == (1, 3)   # any leading shape


def test_percentiles_place_states_among_natural_ones():
    states = correlated(1000, 5)
    stats = fit_layer_stats(states, seed=0)
    assert stats.n_heldout == 100 and stats.n_train == 900 and len(stats.heldout_distances) == 100
    median_state = states[0] / states[0].norm() * stats.median_norm
    assert float(stats.norm_percentile(median_state)) == pytest.approx(50, abs=0.2)
    assert float(stats.norm_percentile(states[0] * 1e3)) == 100
    assert float(stats.distance_percentile(stats.mean)) == 0          # the mean is nearer than any state
    assert float(stats.distance_percentile(stats.mean + 1e3 * stats.components[:, -1])) == 100


def test_principal_subspace_is_orthonormal_and_sorted():
    stats = fit_layer_stats(correlated(500, 6), seed=0)
    basis = stats.basis(3)
    assert torch.allclose(basis.T @ basis, torch.eye(3, dtype=torch.float64), atol=1e-10)
    assert bool((stats.variances[:-1] >= stats.variances[1:]).all())


def test_refusals_say_what_to_change():
    with pytest.raises(StatisticsError,
                       match=r"10-wide states need more training sentences.*got 9; fit on at least 14"):
        fit_layer_stats(correlated(10, 10))
    nan = correlated(100, 4)
    nan[3, 1] = float("nan")
    with pytest.raises(StatisticsError, match="NaN or inf"):
        fit_layer_stats(nan)
    with pytest.raises(StatisticsError, match="do not vary"):
        fit_layer_stats(torch.ones(50, 4))
    flat = correlated(200, 3) @ torch.randn(3, 8, dtype=torch.float64)   # rank 3 in 8 dimensions
    stats = fit_layer_stats(flat)
    assert stats.rank == 3 and torch.isfinite(stats.mahalanobis(flat)).all()   # shrinkage keeps it invertible
    with pytest.raises(StatisticsError, match="span only 3 directions; use rank <= 3"):
        stats.basis(4)


def test_regression_recovers_a_planted_map():
    x = correlated(600, 5)
    weight = torch.randn(5, 3, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    fitted = fit_regression(x, x @ weight - 2.0, seed=0)
    assert fitted.r2_heldout > 0.999999 and fitted.ridge == min(statistics.RIDGE_GRID)
    assert torch.allclose(fitted.predict(x[:4]), x[:4] @ weight - 2.0, atol=1e-5)


def test_layer_stats_are_cached_on_disk_and_loaded_as_plain_tensors(tmp_path, monkeypatch):
    model = tiny_model("llama")
    first = layer_stats(model, 2, n_sentences=200)
    assert layer_stats(model, "50%", n_sentences=200) is first          # memoised in-process, by block
    assert [p.name for p in (tmp_path / "statistics").glob("*.pt")] == [f"layer-{first.fingerprint}.pt"]
    monkeypatch.setattr(statistics, "_memo", {})
    monkeypatch.setattr(statistics, "fit_layer_stats", lambda *a, **k: pytest.fail("refitted despite the cache"))
    again = layer_stats(model, 2, n_sentences=200)
    assert again is not first and torch.equal(again.covariance, first.covariance)
    assert torch.equal(again.heldout_distances, first.heldout_distances) and again.shrinkage == first.shrinkage

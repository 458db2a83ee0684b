"""The fitted linear map: exact where the relation is exact, honest R² where it is not, cached."""

from __future__ import annotations

import pytest
import torch

import interventions as iv
from interventions.alignment import _r2, _ridge_solve
from tiny_models import tiny_model


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("INTERVENTIONS_CACHE", str(tmp_path))


def test_same_model_same_layer_map_is_near_identity():
    model = tiny_model("llama")
    fitted = iv.fit_linear_map(model, 2, model, 2, n_sentences=200)
    assert fitted.r2_heldout > 0.999
    assert torch.allclose(fitted.weight, torch.eye(model.d_model), atol=0.05)


def test_cross_width_map_is_cached_and_reports_r2(tmp_path):
    a, b = tiny_model("llama"), tiny_model("qwen2", width=48)
    fitted = iv.fit_linear_map(a, 1, b, 2, n_sentences=200)
    assert fitted.weight.shape == (64, 48) and fitted.r2_heldout < 1.0
    assert list(tmp_path.glob("maps/*.pt"))
    assert torch.equal(iv.fit_linear_map(a, 1, b, 2, n_sentences=200).weight, fitted.weight)


def test_ridge_solve_recovers_a_known_map():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(500, 8, generator=g, dtype=torch.float64)
    true_w = torch.randn(8, 3, generator=g, dtype=torch.float64)
    y = x @ true_w + 2.0
    weight, bias = _ridge_solve(x, y, 1e-8)
    assert torch.allclose(weight, true_w, atol=1e-5) and torch.allclose(bias, torch.full((3,), 2.0, dtype=torch.float64), atol=1e-5)
    assert _r2(weight, bias, x, y) == pytest.approx(1.0)


def test_linear_splice_runs_across_widths():
    a, b = tiny_model("llama"), tiny_model("qwen2", width=48)
    spec = iv.Splice(source=iv.Site("A", 1), target=iv.Site("B", 2), combine="sum",
                     align=iv.Align("linear", n_sentences=200))
    result = iv.run(spec, {"A": a, "B": b}, "w3 w4 w5", backend="torch")
    plain = b.hf(**b.encode("w3 w4 w5")).logits
    assert result.logits.shape == plain.shape and not torch.allclose(result.logits, plain)
    assert result.linear_map.weight.shape == (64, 48)

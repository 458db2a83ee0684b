"""Manifold diagnostics: KL, distances and norms of the merged state, the message's logit lens,
and their rows in the ac protocol (recorded, not charged)."""

from __future__ import annotations

import json

import pytest
import torch

import interventions as iv
from interventions import statistics
from interventions.diagnostics import kl_divergence, splice_diagnostics, top_tokens
from interventions.harness.experiment import load_experiment
from interventions.harness.protocols import ac
from interventions.harness.runner import run_experiment
from interventions.statistics import layer_stats
from tiny_models import tiny_model

PROMPTS = {"A": ["w3 w4 w5", "w6 w7"], "B": ["w8 w9", "w10 w11 w12"]}


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("INTERVENTIONS_CACHE", str(tmp_path))
    monkeypatch.setattr(statistics, "_memo", {})


@pytest.fixture(scope="module")
def model():
    return tiny_model("llama")


def splice(combine="replace", **args):
    return iv.Splice(source=iv.Site("A", 1), target=iv.Site("B", 2), combine=combine, combine_args=args,
                     align=iv.Align(n_sentences=200))


def test_kl_of_equal_distributions_is_zero_and_matches_its_definition():
    p, q = torch.randn(3, 10), torch.randn(3, 10)
    assert torch.allclose(kl_divergence(p, p), torch.zeros(3, dtype=torch.float64))
    lp, lq = torch.log_softmax(p.double(), -1), torch.log_softmax(q.double(), -1)
    assert torch.allclose(kl_divergence(p, q), (lp.exp() * (lp - lq)).sum(-1))


def test_a_no_op_merge_has_zero_kl_and_a_real_one_does_not(model):
    session = iv.Session(model, "torch")
    quiet = splice_diagnostics(session, PROMPTS, splice("orthogonal", scale=0.0))
    loud = splice_diagnostics(session, PROMPTS, splice("replace"))
    assert [row["kl"] for row in quiet] == pytest.approx([0.0, 0.0], abs=1e-6)
    assert all(row["kl"] > 1e-4 for row in loud)
    for row in quiet:   # the merged state is B's own
        assert row["mahalanobis"] == pytest.approx(row["clean_mahalanobis"], rel=1e-5)
        assert row["norm_ratio"] == pytest.approx(row["clean_norm_ratio"], rel=1e-5)


def test_distances_and_norms_are_those_of_the_merged_state(model):
    session = iv.Session(model, "torch")
    rows = splice_diagnostics(session, PROMPTS, splice("replace"))
    source = iv.Site("A", 1)
    sent = iv.capture(model, PROMPTS, [source], backend="torch")[source][:, -1]   # what replace puts there
    stats = layer_stats(model, 2, n_sentences=200)
    assert [r["mahalanobis"] for r in rows] == pytest.approx(stats.mahalanobis(sent).tolist(), rel=1e-5)
    assert [r["norm_ratio"] for r in rows] == pytest.approx((sent.norm(dim=-1) / stats.median_norm).tolist(), rel=1e-5)
    assert [r["norm_percentile"] for r in rows] == pytest.approx(stats.norm_percentile(sent).tolist())
    assert [r["mahalanobis_percentile"] for r in rows] == pytest.approx(stats.distance_percentile(sent).tolist())
    assert rows[0]["message_top_tokens"] == top_tokens(model, sent[:1])[0]
    own = iv.capture(model, PROMPTS, [iv.Site("B", 2)], backend="torch")[iv.Site("B", 2)][:, -1]
    assert [r["clean_mahalanobis"] for r in rows] == pytest.approx(stats.mahalanobis(own).tolist(), rel=1e-5)


def test_manifold_measures_are_skipped_with_a_reason_off_resid_post(model):
    off = iv.Splice(source=iv.Site("A", 1, stream="mlp_out"), target=iv.Site("B", 2, stream="mlp_out"), combine="sum")
    rows = splice_diagnostics(iv.Session(model, "torch"), PROMPTS, off)
    assert "resid_post" in rows[0]["manifold"] and "mahalanobis" not in rows[0] and rows[0]["kl"] > 0


def test_logit_lens_of_an_unembedding_row_is_its_token(model):
    unembedding = model.hf.get_output_embeddings().weight.detach()
    tokens = [5, 17, 42, 90]
    top = top_tokens(model, unembedding[tokens], k=1)
    assert [row[0] for row in top] == [f"w{t}" for t in tokens]


def test_ac_rows_record_diagnostics_without_charging_them(tmp_path, tiny_dir, monkeypatch):
    # statistics from 200 corpus sentences rather than ac's 3000: the same code, a fast test
    monkeypatch.setattr(ac, "Align", lambda kind: iv.Align(kind, n_sentences=200))

    def rows(diagnostics: bool):
        path = tmp_path / f"e{diagnostics}.yaml"
        path.write_text(json.dumps({
            "name": "diag", "max_new_tokens": 3, "batch_size": 4, "pairs": [{"A": str(tiny_dir), "B": str(tiny_dir)}],
            "tasks": [{"name": "countries", "n": 4}],
            "protocols": [{"kind": "ac", "combine": "orthogonal", "k": 1, "j": 2, "scale": [0.0, 2.0],
                           "diagnostics": diagnostics}]}))
        return run_experiment(load_experiment(str(path)), tmp_path / f"out{diagnostics}", progress=False)

    measured, plain = rows(True), rows(False)
    assert all("diagnostics" not in r.get("extra", {}) for r in plain)
    for with_, without in zip(measured, plain):
        assert with_["prediction"] == without["prediction"]
        assert with_["compute"]["flops"] == without["compute"]["flops"]
        assert with_["compute"]["tokens"] == without["compute"]["tokens"]
        diagnostics = with_["extra"]["diagnostics"]
        assert {"kl", "mahalanobis", "mahalanobis_percentile", "norm_ratio", "norm_percentile", "clean_mahalanobis",
                "clean_norm_ratio", "message_top_tokens"} <= set(diagnostics)
        assert (diagnostics["kl"] < 1e-5) == (with_["protocol"] == "ac_orthogonal_k1_j2_scale0")

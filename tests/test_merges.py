"""Redundancy-aware merges: their geometry and arithmetic on pure tensors, their parameters in specs
and in the ac protocol, and NaN stopping a splice at the site that produced it."""

from __future__ import annotations

from dataclasses import dataclass, replace

import pytest
import torch

import interventions as iv
from interventions import statistics
from interventions.combine import COMBINES, check_combine_args
from interventions.controls import CONTROLS
from interventions.errors import NonFiniteStateError, SpecFormatError, StatisticsError
from interventions.harness.experiment import ExperimentFormatError, expand_protocol
from interventions.harness.protocols.ac import AC
from interventions.merges import (MergeContext, Orthogonal, OrthogonalSubspace, Residual, ScaledAdd, Ties,
                                  remove_subspace, reject, ties)
from interventions.statistics import fit_layer_stats, fit_regression
from tiny_models import tiny_model


@dataclass
class Fitted:
    """A merge context holding statistics fitted on synthetic states (what a splice's context fetches)."""

    stats: statistics.LayerStats | None = None
    fitted: statistics.Regression | None = None

    def target_stats(self, merge):
        return self.stats

    def regression(self, merge):
        return self.fitted


def vectors(*shape, seed=0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def natural_states(n=600, d=8, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g) @ torch.randn(d, d, generator=g) + 2.0


def merge_splice(name: str, args: dict) -> iv.Splice:
    return iv.Splice(source=iv.Site("A", 1), target=iv.Site("B", 2), combine=name, combine_args=args,
                     align=iv.Align(n_sentences=200))


@pytest.fixture(scope="module")
def model():
    return tiny_model("llama")


def test_orthogonal_keeps_only_what_b_lacks_and_projecting_twice_changes_nothing():
    a, b = vectors(3, 2, 16, seed=1), vectors(3, 2, 16, seed=2)
    added = (Orthogonal(scale=2.0).bind(Fitted())(b, a) - b) / 2.0
    assert torch.allclose((added * b).sum(-1), torch.zeros(3, 2), atol=1e-5)
    assert torch.allclose(added, reject(a, b))
    assert torch.allclose(reject(reject(a, b), b), reject(a, b), atol=1e-6)
    assert torch.equal(reject(a, torch.zeros_like(b)), a)          # nothing to project out


def test_orthogonal_subspace_removes_every_principal_direction():
    stats = fit_layer_stats(natural_states(), seed=0)
    basis = stats.basis(3).float()
    a, b = vectors(4, 1, 8, seed=3), vectors(4, 1, 8, seed=4)
    kept = OrthogonalSubspace(rank=3, scale=0.5).bind(Fitted(stats))(b, a) - b
    assert torch.allclose(kept @ basis, torch.zeros(4, 1, 3), atol=1e-5)
    assert torch.allclose(kept / 0.5, remove_subspace(a, basis), atol=1e-6)
    assert torch.allclose(remove_subspace(remove_subspace(a, basis), basis), remove_subspace(a, basis), atol=1e-5)
    assert not torch.allclose(kept, torch.zeros_like(kept))        # the rest of a survives


def test_residual_removes_a_planted_linear_dependence():
    b_states = natural_states(d=6).double()
    weight = torch.randn(6, 6, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    regression = fit_regression(b_states, b_states @ weight + 1.5, seed=0)
    merge = Residual(scale=1.0).bind(Fitted(fitted=regression))
    b = natural_states(5, 6, seed=7).double()[:, None]
    extra = vectors(5, 1, 6, seed=8).double()
    assert torch.allclose(merge(b, b @ weight + 1.5), b, atol=1e-5)                 # all of a is predictable
    assert torch.allclose(merge(b, b @ weight + 1.5 + extra), b + extra, atol=1e-5)  # only the rest goes in


def test_ties_on_planted_sign_conflicts():
    reference = torch.ones(6)
    delta_a = torch.tensor([3.0, -2.0, 0.5, 1.0, -4.0, 0.1])
    delta_b = torch.tensor([-1.5, 1.0, 2.0, 0.2, -3.0, 0.3])
    # top 50%: a keeps [3, -2, ., ., -4, .], b keeps [-1.5, ., 2, ., -3, .]; summed signs [+, -, +, 0, -, 0];
    # agreeing values averaged: [3, -2, 2, 0, (-4 - 3) / 2, 0]
    merged = torch.tensor([3.0, -2.0, 2.0, 0.0, -3.5, 0.0])
    assert torch.allclose(ties([delta_a, delta_b], top_p=50), merged)
    stats = replace(fit_layer_stats(natural_states(d=6)), mean=reference.double())   # B's corpus mean: ones
    merge = Ties(top_p=50, scale=0.5).bind(Fitted(stats))
    out = merge((reference + delta_b)[None, None], (reference + delta_a)[None, None])
    assert torch.allclose(out[0, 0], reference + 0.5 * merged)


def test_scaled_add_by_hand():
    stats = fit_layer_stats(natural_states(), seed=0)
    a, b = vectors(2, 1, 8, seed=1), vectors(2, 1, 8, seed=2)
    out = ScaledAdd(scale=0.25).bind(Fitted(stats))(b, a)
    assert torch.allclose(out, b + 0.25 * (a - stats.mean.float()), atol=1e-6)


@pytest.mark.parametrize("merge", [Orthogonal(norm=True), ScaledAdd(norm=True, scale=3.0), Ties(norm=True)])
def test_norm_control_hits_b_median_natural_norm(merge):
    stats = fit_layer_stats(natural_states(), seed=0)
    out = merge.bind(Fitted(stats))(vectors(3, 2, 8, seed=1), 10 * vectors(3, 2, 8, seed=2))
    assert torch.allclose(out.norm(dim=-1), torch.full((3, 2), stats.median_norm), rtol=1e-5)


def test_unknown_or_bad_parameters_are_named():
    with pytest.raises(SpecFormatError, match=r"unknown parameter 'scael' for merge 'residual'\. Did you mean 'scale'"):
        iv.Splice(source=iv.Site("A", 1), target=iv.Site("B", 1), combine="residual", combine_args={"scael": 2})
    with pytest.raises(SpecFormatError, match="combine 'sum' takes no parameters.*merges that take them: .*ties"):
        check_combine_args("sum", {"top_p": 10})
    with pytest.raises(SpecFormatError, match="'rank' must be an integer"):
        check_combine_args("orthogonal_subspace", {"rank": 2.5})
    with pytest.raises(SpecFormatError, match=r"top_p is a percentage of coordinates in \(0, 100\]"):
        check_combine_args("ties", {"top_p": 150})


def test_splice_with_combine_args_round_trips_and_old_specs_load(tmp_path):
    spec = iv.Splice(source=iv.Site("A", 8), target=iv.Site("B", 0.5), combine="ties",
                     combine_args={"top_p": 10, "scale": 0.5, "norm": True})
    assert iv.from_dict(iv.to_dict(spec)) == spec
    for suffix in (".json", ".yaml"):
        iv.save_spec(spec, tmp_path / f"s{suffix}")
        assert iv.load_spec(tmp_path / f"s{suffix}").combine_args == {"top_p": 10, "scale": 0.5, "norm": True}
    old = {k: v for k, v in iv.to_dict(spec).items() if k != "combine_args"}
    assert iv.from_dict({**old, "combine": "sum"}).combine_args == {}


def test_merges_run_in_a_splice_and_scale_zero_is_a_no_op(model, tmp_path, monkeypatch):
    monkeypatch.setenv("INTERVENTIONS_CACHE", str(tmp_path))
    prompts = {"A": ["w3 w4 w5", "w6"], "B": ["w7 w8", "w9 w10 w11"]}
    plain = model.hf(**model.encode(prompts["B"])).logits
    for name, args in [("orthogonal", {}), ("orthogonal_subspace", {"rank": 4}), ("residual", {}),
                       ("ties", {"top_p": 30}), ("scaled_add", {})]:
        changed = iv.run(merge_splice(name, args), model, prompts, backend="torch").logits
        assert not torch.allclose(changed, plain, atol=1e-4), name
        if name != "ties":   # ties at scale 0 is B's corpus mean, not B
            silent = iv.run(merge_splice(name, {**args, "scale": 0.0}), model, prompts, backend="torch").logits
            assert torch.allclose(silent, plain, atol=1e-5), name


def test_missing_statistics_say_how_to_fit_them(model):
    context = MergeContext(model, iv.Site("B", 2), model, iv.Site("A", 1), None, n_sentences=10 ** 6)
    with pytest.raises(StatisticsError, match=r"merge 'scaled_add' needs corpus statistics.*Fit them once with "
                                              r"interventions\.statistics\.layer_stats\(B, 2, n_sentences=1000000"):
        ScaledAdd().bind(context)
    context.target_site = iv.Site("B", 2, stream="attn_out")
    with pytest.raises(StatisticsError, match="resid_post.*attn_out"):
        Ties().bind(context)


def test_merges_with_statistics_refuse_a_narrower_trailing_message(model):
    narrow = tiny_model("qwen2", width=48)
    splice = iv.Splice(source=iv.Site("A", 1), target=iv.Site("B", 2), combine="scaled_add",
                       align=iv.Align("trailing", n_sentences=200))
    with pytest.raises(iv.WidthMismatchError, match="full 64-wide space but got 48-wide.*align: linear"):
        iv.run(splice, {"A": narrow, "B": model}, {"A": ["w3 w4"], "B": ["w5 w6"]}, backend="torch")


def test_nan_stops_the_splice_naming_the_site(model):
    prompts = {"A": ["w3 w4"], "B": ["w5 w6"]}
    CONTROLS.register("nan_message", lambda message, key: torch.full_like(message, float("nan")))
    COMBINES.register("nan_result", lambda target, source: target * float("inf"))
    try:
        splice = iv.Splice(source=iv.Site("A", 1), target=iv.Site("B", 2), combine="orthogonal")
        with pytest.raises(NonFiniteStateError,
                           match=r"message read at model role 'A' \(tiny-llama\), block 1, resid_post"):
            iv.run(splice, model, prompts, backend="torch", control="nan_message")
        splice = iv.Splice(source=iv.Site("A", 1), target=iv.Site("B", 3), combine="nan_result")
        with pytest.raises(NonFiniteStateError,
                           match=r"'nan_result' produced at model role 'B' \(tiny-llama\), block 3, resid_post"):
            iv.run(splice, model, prompts, backend="torch")
    finally:
        del CONTROLS["nan_message"], COMBINES["nan_result"]


def test_ac_defaults_keep_their_recorded_form_and_parameters_flow_into_the_splice():
    before = {"kind": "ac", "k": 8, "j": 8, "combine": "replace", "align": "none", "stream": "resid_post",
              "sender": "raw", "completion_tokens": 32, "temperature": 0.7, "control": "none"}
    assert AC(k=8, j=8).as_dict() == AC(k=8, j=8).identity() == before    # so finished work keys stay
    assert AC(k=8, j=8).name == "ac_replace_k8_j8"
    swept = AC(k=8, j=8, combine="ties", scale=0.5, top_p=10, norm=True)
    assert swept.name == "ac_ties_k8_j8_scale0.5_top_p10_norm" and swept.as_dict()["top_p"] == 10
    assert AC(k=8, j=8, diagnostics=False).as_dict() == {**before, "diagnostics": False}
    with pytest.raises(ValueError, match="unknown parameter 'top_p' for merge 'orthogonal'"):
        AC(k=8, j=8, combine="orthogonal", top_p=10)
    with pytest.raises(ValueError, match="top_p"):
        AC(k=8, j=8, combine="ties", top_p=0)


def test_ac_protocol_entry_sweeps_scale():
    protocols = expand_protocol({"kind": "ac", "combine": "residual", "k": 1, "j": 1, "scale": [0.5, 1, 2]}, "e")
    assert [p.name for p in protocols] == ["ac_residual_k1_j1_scale0.5", "ac_residual_k1_j1_scale1",
                                           "ac_residual_k1_j1_scale2"]
    assert protocols[0].splice(None).combine_args == {"scale": 0.5}
    with pytest.raises(ExperimentFormatError, match="rank"):
        expand_protocol({"kind": "ac", "combine": "orthogonal_subspace", "k": 1, "j": 1, "rank": 0}, "e")

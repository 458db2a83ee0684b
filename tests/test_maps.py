"""Map kinds and similarity metrics: planted structure is recovered, hand-computed values are met,
degenerate data is refused with a one-line reason, and every kind runs inside a splice."""

from __future__ import annotations

import json
import math

import pytest
import torch

import interventions as iv
from interventions import corpus
from interventions.alignment import MAPS, DegenerateFitError, Layer, Split, paired_states
from interventions.alignment.cca import canonical_pairs
from interventions.alignment.relative import relative_coordinates
from interventions.inspection.metrics import (METRICS, ac_similarity, ac_similarity_matrix, mutual_knn,
                                              mutual_knn_matrix, prepare_features)
from interventions.inspection.similarity import cka_matrix, linear_cka
from tiny_models import tiny_model

G = torch.Generator().manual_seed(0)


def randn(*shape) -> torch.Tensor:
    return torch.randn(*shape, generator=G, dtype=torch.float64)


def orthogonal(d: int) -> torch.Tensor:
    return torch.linalg.qr(randn(d, d))[0]


def orthonormal_columns(d: int, c: int) -> torch.Tensor:
    return torch.linalg.qr(randn(d, c))[0]


def fit(kind: str, x: torch.Tensor, y: torch.Tensor, seed: int = 0, **fields):
    """Fit and judge ``kind`` from x to y (rows = sentences), as a splice's map would be."""
    split = Split.of(x.shape[0], seed)
    return MAPS.get(kind).fit_and_judge(Layer(x, split, "A's states"), Layer(y, split, "B's states"),
                                        iv.Align(kind, n_sentences=x.shape[0], seed=seed, **fields))


def heldout(x: torch.Tensor, seed: int = 0) -> torch.Tensor:
    return x[Split.of(x.shape[0], seed).heldout]


# ------------------------------------------------------------------ planted maps

def test_linear_recovers_a_planted_affine_map():
    x = randn(400, 8)
    weight, bias = randn(8, 5), randn(5)
    fitted = fit("linear", x, x @ weight + bias)
    assert torch.allclose(fitted.weight.double(), weight, atol=1e-3)
    assert torch.allclose(fitted.bias.double(), bias, atol=1e-3)
    assert fitted.r2_heldout > 0.9999 and fitted.cosine_heldout > 0.9999


def test_procrustes_recovers_a_planted_rotation_exactly():
    x = randn(300, 6) * torch.linspace(1, 3, 6, dtype=torch.float64) + 4.0
    rotation, shift = orthogonal(6), randn(6)
    fitted = fit("procrustes", x, x @ rotation + shift)
    assert fitted.components == 6 and fitted.scale == pytest.approx(1.0, abs=1e-10)
    assert torch.allclose(fitted.weight, rotation, atol=1e-10)
    assert torch.allclose(fitted.bias, shift, atol=1e-10)
    assert fitted.r2_heldout == pytest.approx(1.0, abs=1e-12)


def test_procrustes_recovers_rotation_and_scale():
    x = randn(300, 5)
    rotation = orthogonal(5)
    fitted = fit("procrustes", x, 2.5 * x @ rotation - 1.0)
    assert fitted.scale == pytest.approx(2.5, rel=1e-10)
    assert torch.allclose(fitted.weight, 2.5 * rotation, atol=1e-9)


def test_procrustes_across_widths_through_a_shared_subspace():
    """A (width 7) and B (width 5) hold the same 4-d signal, rotated, in different subspaces."""
    z = randn(300, 4) * torch.tensor([3.0, 2.0, 1.5, 1.0], dtype=torch.float64)
    x = z @ orthonormal_columns(7, 4).T + randn(7)
    y = z @ orthogonal(4) @ orthonormal_columns(5, 4).T + randn(5)
    fitted = fit("procrustes", x, y)
    assert fitted.components == 4 and fitted.weight.shape == (7, 5)
    assert torch.allclose(fitted(heldout(x)), heldout(y), atol=1e-9)
    # a plain rotation of the widths' trailing coordinates cannot do this
    assert fitted.r2_heldout == pytest.approx(1.0, abs=1e-10)


def test_cca_recovers_planted_correlated_directions():
    n = 3000
    shared = randn(n, 2)
    x = torch.cat([shared, randn(n, 4)], dim=1) @ randn(6, 6)          # 2 shared + 4 private, mixed
    y = torch.cat([shared @ orthogonal(2) + 0.05 * randn(n, 2), randn(n, 3)], dim=1) @ randn(5, 5)
    split = Split.of(n, 0)
    source = Layer(x, split, "A").centred("train")
    target = Layer(y, split, "B").centred("train")
    a, _, correlations = canonical_pairs(source, target, ridge=1e-8)
    assert (correlations[:2] > 0.99).all() and (correlations[2:] < 0.1).all()
    # A's top two canonical variates span the planted shared signal
    variates = source.data @ a[:, :2]
    signal = shared[split.train] - shared[split.train].mean(0)
    residual = signal - variates @ torch.linalg.lstsq(variates, signal).solution
    assert float((residual ** 2).sum() / (signal ** 2).sum()) < 1e-3
    # two components carry all that A knows of B: as good as the full linear map on held-out sentences
    fitted = fit("cca", x, y, components=2)
    linear = fit("linear", x, y)
    assert fitted.components == 2 and min(fitted.correlations) > 0.95
    assert fitted.r2_heldout == pytest.approx(linear.r2_heldout, abs=0.005) and fitted.r2_heldout > 0.2
    assert fit("cca", x, y, components=1).r2_heldout < fitted.r2_heldout - 0.1


def test_cca_with_every_component_is_the_ridge_map():
    """With all canonical pairs and B no wider than A, a·diag(ρ)·b⁻¹ = (S_X + pI)⁻¹XᵀY."""
    x = randn(500, 7)
    y = x @ randn(7, 5) + randn(500, 5)
    full, linear = fit("cca", x, y), fit("linear", x, y)
    assert full.components == 5 and full.ridge == linear.ridge
    assert torch.allclose(full.weight, linear.weight, atol=1e-9)


def test_relative_coordinates_survive_rotation_and_scale_and_decode_back():
    """Points on a sphere: relative coordinates of A and of B = 3·A·R + t agree exactly, and B's
    states decode from them."""
    directions = torch.nn.functional.normalize(randn(1500, 6), dim=-1)
    x = 5.0 + 2.0 * directions
    y = 3.0 * x @ orthogonal(6) + randn(6)
    mean_x, mean_y = x.mean(0), y.mean(0)
    anchors_x = torch.nn.functional.normalize(x[:50] - mean_x, dim=-1)
    anchors_y = torch.nn.functional.normalize(y[:50] - mean_y, dim=-1)
    assert torch.allclose(relative_coordinates(x, mean_x, anchors_x), relative_coordinates(y, mean_y, anchors_y),
                          atol=1e-10)
    fitted = fit("relative", x, y, anchors=100)
    assert fitted.anchors.shape == (100, 6) and fitted.r2_heldout > 0.97 and fitted.cosine_heldout > 0.99
    unrelated = fit("relative", x, randn(1500, 6), anchors=100)
    assert unrelated.r2_heldout < 0.05


# ------------------------------------------------------------------ metrics

def test_ac_similarity_by_hand():
    # YᵀX = Yᵀ: ‖·‖² = 3; ‖X‖² = 2, ‖Y‖² = 3  ->  3 / 6
    x, y = torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([[1.0, 1.0], [0.0, 1.0]])
    assert ac_similarity(x, y) == pytest.approx(0.5)
    # YᵀX = [1, 2]: 5; ‖X‖² = 4, ‖Y‖² = 5  ->  5 / 20
    x3, y3 = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]), torch.tensor([[1.0], [2.0], [0.0]])
    assert ac_similarity(x3, y3) == pytest.approx(0.25)
    assert ac_similarity(x3, 7 * x3) == pytest.approx(float((x3.T @ x3).norm() ** 2 / 16))


def test_all_pairs_metrics_match_the_single_pair_ones():
    xs, ys = randn(3, 60, 8), randn(2, 60, 5)
    ys[1] = xs[0][:, :5] * 2
    for j in range(2):
        for i in range(3):
            assert ac_similarity_matrix(xs, ys)[i, j] == pytest.approx(ac_similarity(xs[i], ys[j]), rel=1e-5)
            assert mutual_knn_matrix(xs, ys)[i, j] == pytest.approx(mutual_knn(xs[i], ys[j]))
            assert cka_matrix(xs, ys)[i, j] == pytest.approx(linear_cka(xs[i], ys[j]), rel=1e-5)
    assert set(METRICS) == {"ac_similarity", "mutual_knn", "cka"}


def test_mutual_knn_is_one_for_identical_neighbourhoods():
    x = randn(200, 16)
    # clamping per coordinate is invariant to permuting, flipping and scaling coordinates
    signs = torch.where(torch.rand(16, generator=G) < 0.5, -1.0, 1.0).double()
    assert mutual_knn(x, 4.0 * x[:, torch.randperm(16, generator=G)] * signs) == 1.0
    # a general rotation keeps cosines exactly only without the clamp
    assert mutual_knn(x, x @ orthogonal(16), quantile=1.0) == 1.0
    assert mutual_knn(x, randn(200, 16)) < 0.2


def test_mutual_knn_is_near_chance_for_independent_data():
    n, k = 500, 10
    value = mutual_knn(randn(n, 32), randn(n, 24), k=k)
    assert value == pytest.approx(k / (n - 1), abs=0.01)


def test_mutual_knn_partial_overlap_by_hand():
    """Six points on a circle, k = 2. Angles (degrees) in X: 0 10 32 60 100 150; in Y points 0 and
    5 swap places. Neighbours X: {1,2} {0,2} {1,3} {2,4} {3,5} {4,3}; Y: {4,3} {5,2} {1,3} {2,4}
    {3,0} {1,2}. Shared fractions 0, 1/2, 1, 1, 1/2, 0: mean 1/2."""
    def circle(degrees):
        radians = torch.tensor(degrees, dtype=torch.float64) * math.pi / 180
        return torch.stack([radians.cos(), radians.sin()], dim=1)

    x, y = circle([0, 10, 32, 60, 100, 150]), circle([150, 10, 32, 60, 100, 0])
    assert mutual_knn(x, y, k=2, quantile=1.0) == pytest.approx(0.5)
    assert mutual_knn(x, y, k=2) == pytest.approx(0.5)  # the 95th percentile of 12 values is the largest


def test_features_are_clamped_at_the_95th_percentile_then_normalised():
    x = torch.ones(20, 2)
    x[0, 0] = 100.0   # 39 ones and one outlier: the 95th-percentile order statistic is 1
    prepared = prepare_features(x)
    assert torch.allclose(prepared[0], torch.tensor([0.5 ** 0.5, 0.5 ** 0.5]))
    assert torch.allclose(prepared.norm(dim=1), torch.ones(20))


# ------------------------------------------------------------------ degenerate fits

def one_line(error) -> str:
    message = str(error.value)
    assert "\n" not in message and isinstance(error.value, iv.InterventionError)
    return message


def test_constant_states_are_refused():
    x = randn(100, 4)
    with pytest.raises(DegenerateFitError) as error:
        fit("linear", x, torch.ones(100, 3))
    assert "same for every training sentence" in one_line(error)


def test_non_finite_states_are_refused():
    x = randn(100, 4)
    x[3, 1] = math.nan
    with pytest.raises(DegenerateFitError) as error:
        fit("procrustes", x, randn(100, 4))
    assert "NaN" in one_line(error)


def test_too_few_sentences_are_refused():
    with pytest.raises(DegenerateFitError) as error:
        fit("linear", randn(12, 3), randn(12, 3))
    assert "at least 30" in one_line(error)


@pytest.mark.parametrize("kind", ["procrustes", "cca"])
def test_more_components_than_the_data_spans_names_the_maximum(kind):
    z = randn(200, 3)
    x, y = z @ randn(3, 6), z @ randn(3, 5)     # rank 3 on both sides
    with pytest.raises(DegenerateFitError) as error:
        fit(kind, x, y, components=4)
    assert "at most 3" in one_line(error) and "components <= 3" in one_line(error)
    assert fit(kind, x, y).components == 3      # the default takes what the data spans


@pytest.mark.parametrize("kind", ["procrustes", "cca"])
def test_fewer_sentences_than_the_widths_need_are_refused(kind):
    with pytest.raises(DegenerateFitError) as error:
        fit(kind, randn(40, 64), randn(40, 48))
    message = one_line(error)
    assert "fewer than the 48 a full map needs" in message and "Fit on at least 54 sentences" in message


def test_more_anchors_than_training_sentences_are_refused():
    with pytest.raises(DegenerateFitError) as error:
        fit("relative", randn(100, 4), randn(100, 4), anchors=300)
    assert "anchors <= 81" in one_line(error)


@pytest.mark.parametrize("fields", [{"components": 0}, {"anchors": 1}, {"n_sentences": "many"},
                                    {"components": True}])
def test_align_fields_are_checked(fields):
    with pytest.raises(iv.SpecFormatError, match="align\\."):
        iv.Align("procrustes", **fields)


# ------------------------------------------------------------------ specs and splices on tiny models

@pytest.fixture(scope="module")
def tiny_cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture
def shared_cache(tiny_cache_dir, monkeypatch):
    """A private cache shared by this module's tiny-model tests: corpus activations are computed
    once, and tests that do not ask for it (real models) keep the real cache."""
    monkeypatch.setenv("INTERVENTIONS_CACHE", str(tiny_cache_dir))


@pytest.fixture(scope="module")
def tiny_pair():
    return tiny_model("llama"), tiny_model("qwen2", width=48)


@pytest.fixture
def pair(tiny_pair, shared_cache):
    return tiny_pair


def test_old_spec_dicts_load_with_the_new_align_defaults():
    old = {"schema_version": 1, "kind": "splice", "source": {"model": "A", "layer": 1},
           "target": {"model": "B", "layer": 2}, "align": {"kind": "linear", "n_sentences": 500, "seed": 0}}
    spec = iv.from_dict(old)
    assert spec.align == iv.Align("linear", 500, 0) and spec.align.components is None and spec.align.anchors == 300
    assert hash(spec.align) == hash(iv.Align("linear", 500, 0))


@pytest.mark.parametrize("kind", ["procrustes", "cca", "relative"])
def test_every_kind_round_trips_and_splices_across_widths(pair, kind):
    a, b = pair
    spec = iv.Splice(source=iv.Site("A", 1), target=iv.Site("B", 2), combine="sum",
                     align=iv.Align(kind, n_sentences=200, components=None, anchors=64))
    assert iv.from_text(iv.to_json(spec)) == spec and iv.from_text(iv.to_yaml(spec)) == spec
    result = iv.run(spec, {"A": a, "B": b}, "w3 w4 w5", backend="torch")
    plain = b.hf(**b.encode("w3 w4 w5")).logits
    assert result.logits.shape == plain.shape and not torch.allclose(result.logits, plain)
    described = result.maps[0].describe()
    assert described["kind"] == kind and described["shape"] == [64, 48]
    assert math.isfinite(described["r2_heldout"]) and -1.0 <= described["cosine_heldout"] <= 1.0


def test_fitted_maps_are_cached_by_fingerprint(pair, tmp_path):
    a, b = pair
    first = MAPS.get("cca")(a, 1, b, 2, iv.Align("cca", n_sentences=200))
    again = MAPS.get("cca")(a, 1, b, 2, iv.Align("cca", n_sentences=200))
    assert torch.equal(first.weight, again.weight) and first.fingerprint.endswith("-cca-ridgecv-cauto")
    fewer = MAPS.get("cca")(a, 1, b, 2, iv.Align("cca", n_sentences=200, components=2))
    assert fewer.components == 2 and fewer.fingerprint != first.fingerprint


def test_linear_map_reports_its_heldout_cosine(pair):
    a, b = pair
    fitted = iv.fit_linear_map(a, 0, b, 3, n_sentences=200)
    x, y = paired_states(a, 0, b, 3, corpus.sentences(200, 0))
    rows = Split.of(200, 0).heldout
    expected = torch.nn.functional.cosine_similarity(fitted(x[rows]).double(), y[rows].double(), dim=-1).mean()
    assert fitted.describe()["cosine_heldout"] == pytest.approx(float(expected), abs=1e-4)
    assert 0.0 < fitted.cosine_heldout <= 1.0


# ------------------------------------------------------------------ the survey (interventions align)

def test_align_command_on_one_model_against_itself(tiny_dir, tmp_path, shared_cache, capsys):
    from interventions.cli import main

    assert main(["align", str(tiny_dir), str(tiny_dir), "--out", str(tmp_path), "--n", "100"]) == 0
    printed = capsys.readouterr().out
    data = json.loads((tmp_path / "align.json").read_text())
    assert data["n"] == 100 and data["models"]["A"]["sha256"] == data["models"]["B"]["sha256"]
    scores = {name: torch.tensor([[math.nan if v is None else v for v in row] for row in matrix])
              for name, matrix in data["scores"].items()}
    for name in ("cka", "mutual_knn", "linear_r2", "procrustes_r2"):
        assert scores[name].shape == (4, 4)
        assert torch.allclose(scores[name].diagonal(), torch.ones(4), atol=1e-3), name  # a layer maps onto itself
    assert scores["relative_r2"].isnan().all()   # 300 anchors need more than 100 sentences: refused, said so
    assert "relative: 16 pairs refused" in printed and "best block pair" in printed and "candidates" in printed
    assert {p.name for p in tmp_path.glob("*.png")} >= {"cka.png", "mutual_knn.png", "ac_similarity.png",
                                                        "linear_r2.png", "cca_cosine.png"}


def test_survey_summary_by_hand():
    from interventions.alignment.survey import Survey, agreeing_kinds

    nan = math.nan
    scores = {"cka": [[0.1, 0.9], [0.5, 0.2]], "linear_r2": [[0.0, 0.8], [0.9, nan]],
              "cca_r2": [[0.001, 0.8], [0.9, nan]], "linear_cosine": [[1.0, 1.0], [1.0, 1.0]]}
    model = {"name": "m", "sha256": "0", "n_layers": 2, "d_model": 4}
    result = Survey(models={"A": model, "B": model}, n=10, seed=0, corpus={},
                    scores={name: torch.tensor(m) for name, m in scores.items()})
    assert result.best()["cka"] == (0, 1, pytest.approx(0.9)) and result.best()["linear_r2"][:2] == (1, 0)
    # ranks (1 = best) of cells (0,0) (0,1) (1,0) (1,1): cka 4 1 2 3, linear 3 2 1 4, cca 3 2 1 4
    assert [(k, j) for k, j, _ in result.candidates()] == [(1, 0), (0, 1), (0, 0)]
    assert result.candidates()[0][2] == pytest.approx(4 / 3)
    assert agreeing_kinds(result, ["linear", "cca"]) == [
        "linear and cca give the same held-out R² on every pair (largest gap 0.0010)"]
    assert "null" not in json.dumps(result.to_dict()["best"])


# ------------------------------------------------------------------ real models

@pytest.mark.real
def test_every_kind_fits_gemma_to_smollm2():
    gemma, smollm2 = iv.load("gemma3-270m"), iv.load("smollm2-135m")
    fitted = {kind: MAPS.get(kind)(gemma, 9, smollm2, 14, iv.Align(kind))
              for kind in ("linear", "procrustes", "cca", "relative")}
    for kind, mapping in fitted.items():
        assert math.isfinite(mapping.r2_heldout) and 0.5 < mapping.cosine_heldout < 1.0, kind
        assert mapping(torch.zeros(1, 640)).shape == (1, 576)
    # a rotation is stiffer than a free linear map; all-pairs CCA into the narrower model is the ridge map
    assert 0.0 < fitted["procrustes"].r2_heldout < fitted["linear"].r2_heldout < 1.0
    assert fitted["cca"].r2_heldout == pytest.approx(fitted["linear"].r2_heldout, abs=1e-3)

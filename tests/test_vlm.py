"""Vision-language models as senders (interventions.vision.vlm): tiny random-weight LLaVA, Gemma 3
multimodal, Idefics3 and Qwen2-VL, captured on every backend and checked against plain PyTorch, and
their image-token states patched into text-only models as soft tokens or a residual graft."""

import pytest
import torch
from tiny_models import tiny_model
from tiny_vlms import tiny_images, tiny_vlm

import interventions as iv
from interventions.backends.transformer_lens import UnsupportedArchitectureError
from interventions.errors import LayerOutOfRangeError, WidthMismatchError
from interventions.vision.vlm import VLMInputError, load_vlm

ARCHITECTURES = ("llava", "gemma3", "idefics3", "qwen2_vl")
TEXT_FAMILY = {"llava": "llama", "gemma3": "gemma3", "idefics3": "llama", "qwen2_vl": "qwen2"}
PROMPTS = ["w5 w6 w7 w8", "w9"]          # different lengths: the batch is padded
MARKERS = ("w3", "w4")
_BUILT: dict = {}


def built(kind: str, name: str):
    if (kind, name) not in _BUILT:
        _BUILT[kind, name] = tiny_vlm(name) if kind == "vlm" else tiny_model(name)
    return _BUILT[kind, name]


def bridged(vlm, backend: str) -> bool:
    """TransformerLens 4.3 has adapters for LLaVA, Gemma 3 multimodal and Idefics3, not for Qwen2-VL."""
    return not (backend == "transformer_lens" and vlm.model.hf.config.model_type == "qwen2_vl")


def reference_batch(vlm, images, prompts):
    """The processor's batch built here by hand: the placeholder in front, one image per prompt, left padding."""
    processor = vlm.processor
    processor.tokenizer.padding_side = "left"
    texts = [f"{processor.image_token}\n{p}" for p in prompts]
    return dict(processor(images=[[im] for im in images], text=texts, return_tensors="pt", padding=True))


def block_outputs(hf, batch, block: int) -> torch.Tensor:
    """(rows, seq, d) output of the language model's block ``block``, read by a plain forward hook."""
    seen = {}
    layer = hf.get_decoder().layers[block]
    handle = layer.register_forward_hook(lambda _m, _a, out: seen.setdefault("x", out[0] if isinstance(out, tuple) else out))
    try:
        with torch.no_grad():
            hf(**batch)
    finally:
        handle.remove()
    return seen["x"]


def implied_image_tokens(vlm, batch) -> list[int]:
    """How many image tokens each row should hold, from the config (and Qwen2-VL's patch grid)."""
    config = vlm.model.hf.config
    vision = config.vision_config
    per_image = {
        "llava": lambda: (vision.image_size // vision.patch_size) ** 2,   # "default" drops CLS
        "gemma3": lambda: config.mm_tokens_per_image,
        "idefics3": lambda: int((vision.image_size // vision.patch_size) ** 2 / config.scale_factor ** 2),
        "qwen2_vl": lambda: None,
    }[config.model_type]()
    if per_image is None:
        return (batch["image_grid_thw"].prod(-1) // vision.spatial_merge_size ** 2).tolist()
    return [per_image] * batch["input_ids"].shape[0]


# ---------------------------------------------------------------------------------------------- capture


@pytest.mark.parametrize("backend", iv.BACKENDS)
@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_image_token_states_match_plain_pytorch(architecture, backend):
    vlm = built("vlm", architecture)
    images = tiny_images(2)
    batch = reference_batch(vlm, images, PROMPTS)
    chosen = batch["input_ids"] == vlm.model.hf.config.image_token_id
    if not bridged(vlm, backend):
        with pytest.raises(UnsupportedArchitectureError, match="backend 'torch' or 'nnsight'"):
            vlm.capture(images, PROMPTS, backend=backend)
        return
    with torch.no_grad():
        first = vlm.model.hf(**batch, output_hidden_states=True).hidden_states[1]   # output of block 0
    last = block_outputs(vlm.model.hf, batch, -1)
    for layer, expected in ((0, first), (-1, last)):
        got = vlm.capture(images, PROMPTS, layer=layer, backend=backend)
        assert len(got) == 2
        for row, states in enumerate(got):
            assert states.dtype == torch.float32 and states.device.type == "cpu"
            torch.testing.assert_close(states, expected[row][chosen[row]].float(), atol=1e-5, rtol=0)
    at_last = vlm.capture(images, PROMPTS, layer=-1, positions="last", backend=backend)
    torch.testing.assert_close(torch.cat(at_last), last[:, -1].float(), atol=1e-5, rtol=0)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_as_many_states_as_the_config_implies_image_tokens(architecture):
    vlm = built("vlm", architecture)
    images = tiny_images(3, seed=1)
    prompts = ["w5", "w6 w7", "w8 w9 w10"]
    implied = implied_image_tokens(vlm, reference_batch(vlm, images, prompts))
    got = vlm.capture(images, prompts, backend="torch")
    assert [len(states) for states in got] == implied
    assert all(n > 1 for n in implied)
    # the same per image whether the images go one batch or one at a time
    alone = vlm.capture(images, prompts, backend="torch", batch_size=1)
    assert [len(states) for states in alone] == implied


def test_a_processor_with_a_chat_template_wraps_the_prompt_as_one_user_turn_with_an_image():
    vlm = tiny_vlm("llava")      # its own copy: the template is set on its processor
    vlm.processor.chat_template = ("{% for m in messages %}w30 {% for c in m['content'] %}{% if c['type'] == 'image' %}"
                                   "<image>{% else %} {{ c['text'] }}{% endif %}{% endfor %}{% endfor %} w31")
    assert vlm.prompt_text("w5 w6") == "w30 <image> w5 w6 w31"
    images = tiny_images(1)
    chatted = vlm.capture(images, "w5 w6", positions="last", backend="torch")
    plain = vlm.capture(images, "w30 <image> w5 w6 w31", positions="last", backend="torch", chat=False)
    torch.testing.assert_close(chatted[0], plain[0], atol=0, rtol=0)


def test_any_checkpoint_directory_loads_as_a_vlm(tmp_path):
    vlm = built("vlm", "llava")
    vlm.model.hf.save_pretrained(tmp_path)
    vlm.processor.save_pretrained(tmp_path)
    again = load_vlm(str(tmp_path))
    assert again.model.family == "llava:llama" and again.model.n_layers == 2
    images = tiny_images(2)
    for a, b in zip(vlm.capture(images, "w5 w6", backend="torch"), again.capture(images, "w5 w6", backend="torch")):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


# ---------------------------------------------------------------------------------------------- patching


def soft_token_reference(model, prompt: str, vectors: torch.Tensor) -> torch.Tensor:
    """Logits of ``model`` on its prompt's embeddings, then the markers around ``vectors``, built by hand."""
    embed = model.hf.get_input_embeddings()
    ids = lambda text, special: torch.tensor(model.tokenizer(text, add_special_tokens=special)["input_ids"])  # noqa: E731
    with torch.no_grad():
        embeds = torch.cat([embed(ids(prompt, True)), embed(ids(MARKERS[0], False)), vectors,
                            embed(ids(MARKERS[1], False))])
        return model.hf(inputs_embeds=embeds[None]).logits[0]


@pytest.mark.parametrize("backend", iv.BACKENDS)
@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_image_states_as_soft_tokens_in_a_text_only_model(architecture, backend):
    vlm = built("vlm", architecture)
    reader = built("text", TEXT_FAMILY[architecture])
    vectors = vlm.capture(tiny_images(2), PROMPTS, layer=-1, backend="torch")
    prompts = ["w10 w11 w12", "w13"]
    result = iv.run(iv.SoftTokens(model="B", message="vision", markers=MARKERS), {"B": reader},
                    {"B": prompts, "vision": vectors}, backend=backend)
    for row, prompt in enumerate(prompts):
        expected = soft_token_reference(reader, prompt, vectors[row])
        torch.testing.assert_close(result.logits[row, -len(expected):], expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_image_states_as_soft_tokens_in_the_vlms_own_language_model(architecture):
    """The VLM's LoadedModel serves text-only requests too (no image): its own states read back as soft tokens."""
    vlm = built("vlm", architecture)
    vectors = vlm.capture(tiny_images(2), PROMPTS, layer=0, stream="resid_pre", backend="torch")
    result = iv.run(iv.SoftTokens(model="B", message="vision", markers=MARKERS), {"B": vlm.model},
                    {"B": ["w10 w11"], "vision": vectors[:1]}, backend="torch")
    expected = soft_token_reference(vlm.model, "w10 w11", vectors[0])
    torch.testing.assert_close(result.logits[0], expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("backend", iv.BACKENDS)
@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_image_states_grafted_into_the_residual_stream(architecture, backend):
    """k filler slots in the prompt; their states after block j replaced by the VLM's image-token states."""
    vlm = built("vlm", architecture)
    reader = built("text", TEXT_FAMILY[architecture])
    vectors = vlm.capture(tiny_images(2), PROMPTS, layer=-1, backend="torch")
    k = len(vectors[0])
    prompts = [" ".join(["w20"] * k) + " w21 w22"] * 2
    slots = tuple(range(-k - 2, -2))
    spec = iv.Splice(target=iv.Site("B", layer=1, position=slots), message="vision")
    result = iv.run(spec, {"B": reader}, {"B": prompts, "vision": vectors}, backend=backend)

    batch = reader.encode(prompts)
    n = batch["input_ids"].shape[1]

    def replace(_module, _args, out):
        hidden = out[0] if isinstance(out, tuple) else out
        hidden = hidden.clone()
        hidden[:, n - k - 2:n - 2] = torch.stack(vectors)
        return (hidden, *out[1:]) if isinstance(out, tuple) else hidden

    handle = reader.hf.model.layers[1].register_forward_hook(replace)
    try:
        with torch.no_grad():
            expected = reader.hf(**batch).logits
    finally:
        handle.remove()
    torch.testing.assert_close(result.logits, expected, atol=1e-4, rtol=0)


def test_a_wider_or_narrower_reader_needs_a_map():
    vlm = built("vlm", "gemma3")
    reader = tiny_model("llama", width=48)
    images = tiny_images(40, seed=3)
    features = torch.stack(vlm.capture(images, "w5", layer=-1, backend="torch"))     # (40, 4, 64)
    spec = iv.SoftTokens(model="B", message="vision", markers=MARKERS)
    with pytest.raises(WidthMismatchError, match="width 64 differs .* 48"):
        iv.run(spec, {"B": reader}, {"B": ["w10"], "vision": [features[0]]}, backend="torch")

    from interventions.vision.embedding_maps import fit_embedding_map

    captions = [" ".join(f"w{3 + (i * 7 + j) % 90}" for j in range(6)) for i in range(40)]
    mapping = fit_embedding_map("linear", features, reader, captions, "tiny-gemma3 block 1 image tokens")
    mapped = mapping(features[:2])
    assert mapped.shape == (2, 4, 48)
    result = iv.run(spec, {"B": reader}, {"B": ["w10", "w11 w12"], "vision": list(mapped)}, backend="torch")
    expected = soft_token_reference(reader, "w11 w12", mapped[1])
    torch.testing.assert_close(result.logits[1, -len(expected):], expected, atol=1e-4, rtol=0)


# ---------------------------------------------------------------------------------------------- bad input


def test_bad_input_is_refused_with_what_to_do():
    vlm = built("vlm", "llava")
    images = tiny_images(2)
    with pytest.raises(LayerOutOfRangeError, match=r"layer 2 out of range .*valid: 0\.\.1"):
        vlm.capture(images, "w5", layer=2)
    with pytest.raises(LayerOutOfRangeError, match=r"valid: 0\.\.1"):
        vlm.capture(images, "w5", layer=-3)
    with pytest.raises(VLMInputError, match="2 image placeholders .*'<image>'"):
        vlm.capture(images, "<image> w5 <image>")
    with pytest.raises(VLMInputError, match="2 images for 3 prompts"):
        vlm.capture(images, ["w5", "w6", "w7"])
    with pytest.raises(VLMInputError, match="positions must be one of image, last"):
        vlm.capture(images, "w5", positions="all")


def test_a_graft_with_fewer_slots_than_image_tokens_is_refused():
    vlm = built("vlm", "gemma3")
    reader = built("text", "gemma3")
    vectors = vlm.capture(tiny_images(1), "w5", backend="torch")          # 4 image tokens
    spec = iv.Splice(target=iv.Site("B", layer=1, position=(0, 1, 2)), message="vision")
    with pytest.raises(iv.SpecFormatError, match="sends 4 vectors per row to 3 target positions"):
        iv.run(spec, {"B": reader}, {"B": ["w20 w20 w20 w21"], "vision": vectors}, backend="torch")


def test_booting_a_multimodal_bridge_fetches_no_processor_and_installs_nothing(monkeypatch):
    """TransformerLens fetches a multimodal model's processor from the hub by name and, failing that,
    pip-installs torchvision into the running environment; the backend's inputs are processed already."""
    import transformers
    from transformer_lens.model_bridge.sources.transformers import helpers

    def refuse(*_args, **_kwargs):
        raise AssertionError("the bridge boot reached for the hub or the package installer")

    monkeypatch.setattr(helpers, "_ensure_torchvision", refuse)
    monkeypatch.setattr(transformers.AutoProcessor, "from_pretrained", refuse)
    vlm = tiny_vlm("llava")
    got = vlm.capture(tiny_images(1), "w5", positions="last", backend="transformer_lens")
    torch.testing.assert_close(got[0], vlm.capture(tiny_images(1), "w5", positions="last", backend="torch")[0],
                               atol=1e-5, rtol=0)

"""Every backend must match a plain PyTorch forward-hook reference (max abs diff <= 1e-4, fp32)."""

from __future__ import annotations

import copy

import pytest
import torch

from interventions.backends import get_backend
from interventions.sites import Edit, resolve_positions, resolve_site
from interventions.spec import Site
from tiny_models import padded_batch, tiny_model

BACKENDS = ["transformer_lens", "nnsight", "torch"]
FAMILIES = ["llama", "gemma3", "qwen2"]
TOL = 1e-4


def reference_logits(model, batch, block, positions, fn, stream="resid_post"):
    """An independent reference: a forward hook on a pristine copy of the transformers model."""
    hf = copy.deepcopy(model.hf)
    layer = hf.model.layers[block]
    rows = torch.arange(batch["input_ids"].shape[0])[:, None]

    def edit(x):
        x = x.clone()
        x[rows, positions] = fn(x[rows, positions])
        return x

    if stream == "resid_pre":
        handle = layer.register_forward_pre_hook(
            lambda m, args, kwargs: ((edit(args[0]), *args[1:]), kwargs) if args
            else (args, {**kwargs, "hidden_states": edit(kwargs["hidden_states"])}), with_kwargs=True)
    else:
        # Gemma 3 adds the MLP output to the residual after its post-feedforward norm
        gemma = model.family == "gemma3_text"
        mlp_out = layer.post_feedforward_layernorm if gemma else layer.mlp
        attn_out = layer.post_attention_layernorm if gemma else layer.self_attn
        module = {"resid_post": layer, "mlp_out": mlp_out, "attn_out": attn_out}[stream]
        handle = module.register_forward_hook(
            lambda m, a, out: (edit(out[0]), *out[1:]) if isinstance(out, tuple) else edit(out))
    with torch.no_grad():
        logits = hf(**batch).logits
    handle.remove()
    return logits


def masked_max_diff(a, b, mask):
    return (a - b)[mask.bool()].abs().max().item()


@pytest.fixture(scope="module", params=FAMILIES)
def model(request):
    return tiny_model(request.param)


@pytest.mark.parametrize("backend", BACKENDS)
def test_plain_forward_matches_hf(model, backend):
    batch = padded_batch()
    with torch.no_grad():
        expected = copy.deepcopy(model.hf)(**batch).logits
    out = get_backend(backend).forward(model, batch)
    assert masked_max_diff(out.logits, expected, batch["attention_mask"]) <= TOL


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("stream", ["resid_post", "resid_pre", "mlp_out", "attn_out"])
def test_edit_matches_reference_hook(model, backend, stream):
    batch = padded_batch()
    vector = torch.randn(model.d_model, generator=torch.Generator().manual_seed(3))
    fn = lambda acts: acts * 0.5 + vector  # noqa: E731
    site = resolve_site(Site(layer=2, position=(-1, 1), stream=stream), model, batch["attention_mask"])
    out = get_backend(backend).forward(model, batch, edits=[Edit(site, fn)])
    expected = reference_logits(model, batch, 2, site.positions, fn, stream)
    untouched = reference_logits(model, batch, 2, site.positions, lambda a: a, stream)
    assert masked_max_diff(out.logits, untouched, batch["attention_mask"]) > 1e-2  # the edit did something
    assert masked_max_diff(out.logits, expected, batch["attention_mask"]) <= TOL


@pytest.mark.parametrize("backend", BACKENDS)
def test_capture_matches_hidden_states(model, backend):
    batch = padded_batch()
    with torch.no_grad():
        hidden = copy.deepcopy(model.hf)(**batch, output_hidden_states=True).hidden_states
    sites = [resolve_site(Site(layer=l, position=-1), model, batch["attention_mask"]) for l in (0, 2)]
    out = get_backend(backend).forward(model, batch, captures=sites, stop_after_captures=True)
    assert out.logits is None  # stopped after the last capture
    for captured, layer in zip(out.captures, (0, 2)):
        # hidden_states[l + 1] is the output of block l (the last entry is after the final norm)
        assert (captured[:, 0] - hidden[layer + 1][:, -1]).abs().max().item() <= TOL


@pytest.mark.parametrize("every_step", [False, True])
def test_generation_agrees_across_backends(model, every_step):
    batch = padded_batch()
    site = resolve_site(Site(layer=1), model, batch["attention_mask"])
    vector = torch.randn(model.d_model, generator=torch.Generator().manual_seed(5)) * 4
    edit = Edit(site, lambda acts: acts + vector, every_step=every_step)
    outputs = [get_backend(b).generate(model, batch, [edit], max_new_tokens=6, pad_token_id=0)
               for b in BACKENDS]
    plain = get_backend("torch").generate(model, batch, [], max_new_tokens=6, pad_token_id=0)
    for other in outputs[1:]:
        assert torch.equal(outputs[0], other)
    assert not torch.equal(outputs[0], plain)


def test_positive_positions_follow_left_padding():
    mask = padded_batch((3, 5))["attention_mask"]
    positions = resolve_positions((0, -1), mask)
    assert positions.tolist() == [[2, 4], [0, 4]]


@pytest.mark.parametrize("backend", BACKENDS)
def test_steer_spec_matches_reference(backend):
    import interventions as iv

    model = tiny_model("qwen2")
    vector = torch.randn(model.d_model, generator=torch.Generator().manual_seed(7))
    spec = iv.Steer(target=iv.Site("B", layer=1, position=-1), vector=tuple(vector.tolist()), scale=3.0)
    logits = iv.run(spec, model, "w5 w6 w7 w8", backend=backend).logits
    batch = model.encode("w5 w6 w7 w8")
    positions = torch.tensor([[batch["input_ids"].shape[1] - 1]])
    expected = reference_logits(model, batch, 1, positions, lambda acts: acts + 3.0 * vector)
    assert (logits - expected).abs().max().item() <= TOL

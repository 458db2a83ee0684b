"""Step-wise decoding: the same tokens as generate, per-step logits equal to transformers' own,
on every backend, with edits at prefill and at every step."""

from __future__ import annotations

import copy

import pytest
import torch

import interventions as iv
from interventions.session import Sampler, entropy
from tiny_models import tiny_model

BACKENDS = ["transformer_lens", "nnsight", "torch"]
PROMPTS = ["w3 w4 w5 w6 w7", "w8 w9", "w10 w11 w12"]


@pytest.fixture(scope="module", params=["llama", "gemma3", "qwen2"])
def model(request):
    return tiny_model(request.param)


def steer(model, apply):
    vector = torch.randn(model.d_model, generator=torch.Generator().manual_seed(4)) * 3
    return iv.Steer(target=iv.Site("B", layer=1), vector=vector, apply=apply), vector


def reference_generate(model, vector, every_step, n=6):
    """transformers' generate on a pristine copy, with a plain forward hook adding ``vector`` to the
    last position at prefill (and to the new token at each step when ``every_step``)."""
    hf = copy.deepcopy(model.hf)
    calls = []

    def hook(module, args, out):
        calls.append(1)
        if len(calls) > 1 and not every_step:
            return out
        out = out.clone()
        out[:, -1] += vector
        return out

    handle = hf.model.layers[1].register_forward_hook(hook)
    batch = model.encode(PROMPTS)
    with torch.no_grad():
        out = hf.generate(**batch, max_new_tokens=n, do_sample=False, pad_token_id=0, output_logits=True,
                          return_dict_in_generate=True)
    handle.remove()
    return out.sequences[:, batch["input_ids"].shape[1]:], torch.stack(out.logits, 1)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("apply", ["prefill", "every_step"])
def test_decode_matches_generate_and_reference_logits(model, backend, apply):
    spec, vector = steer(model, apply)
    session = iv.Session(model, backend)
    decoded = session.decode("B", PROMPTS, [spec], max_new_tokens=6, keep_logits=True)
    generated = session.generate("B", PROMPTS, [spec], max_new_tokens=6)
    ids, logits = reference_generate(model, vector, apply == "every_step")
    assert torch.equal(decoded.ids, ids) and torch.equal(generated.ids, ids)
    steps = decoded.logits.shape[1]
    assert (decoded.logits - logits[:, :steps]).abs().max().item() <= 1e-4
    assert torch.allclose(decoded.entropy, entropy(logits[:, :steps]), atol=1e-4)
    assert decoded.compute[0].tokens["B"] == decoded.prompt_tokens[0] + decoded.new_tokens[0]


def test_feeding_embeddings_of_the_chosen_token_equals_feeding_the_token(model):
    embed = model.hf.get_input_embeddings()
    session = iv.Session(model, "torch")
    greedy = session.decode("B", PROMPTS, max_new_tokens=6)
    as_vectors = session.decode("B", PROMPTS, max_new_tokens=6,
                                policy=lambda step: embed(step.logits.argmax(-1)).detach())
    assert torch.equal(greedy.ids, as_vectors.ids)


def test_policy_sees_hidden_states_and_sampling_is_seeded(model):
    session = iv.Session(model, "torch")
    seen = []

    def policy(step):
        seen.append(step.hidden.shape)
        return step.logits.argmax(-1)

    out = session.decode("B", PROMPTS, max_new_tokens=3, policy=policy, needs_hidden=True)
    assert seen[0] == (3, model.d_model) and out.hidden.shape[:2] == out.ids.shape
    first = session.decode("B", PROMPTS, max_new_tokens=5, policy=Sampler(1.0, [1, 2, 3]))
    again = session.decode("B", PROMPTS, max_new_tokens=5, policy=Sampler(1.0, [1, 2, 3]))
    other = session.decode("B", PROMPTS, max_new_tokens=5, policy=Sampler(1.0, [7, 8, 9]))
    assert torch.equal(first.ids, again.ids) and not torch.equal(first.ids, other.ids)
    cold = session.decode("B", PROMPTS, max_new_tokens=5, policy=Sampler(0.0, [1, 2, 3]))
    assert torch.equal(cold.ids, session.decode("B", PROMPTS, max_new_tokens=5).ids)

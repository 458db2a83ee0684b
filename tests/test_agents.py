"""Choice log-likelihoods with a shared context cache equal a plain per-row computation."""

from __future__ import annotations

import pytest
import torch

from interventions.backends import get_backend
from interventions.harness import agents
from tiny_models import tiny_model


def reference_logliks(model, context, options, vector=None, layer=None):
    """Each (context + choice) on its own, unpadded, with an optional hook on the last context token."""
    tok = model.tokenizer
    ctx = tok(context)["input_ids"]
    out = []
    for option in options:
        cont = tok(" " + option, add_special_tokens=False)["input_ids"]
        ids = torch.tensor([ctx + cont])
        handle = None
        if vector is not None:
            def hook(module, args, output):
                output = output.clone()
                output[:, len(ctx) - 1] = (output[:, len(ctx) - 1] + vector) / 2
                return output
            handle = model.hf.model.layers[layer].register_forward_hook(hook)
        with torch.no_grad():
            logp = torch.log_softmax(model.hf(ids).logits[0].float(), -1)
        if handle:
            handle.remove()
        out.append(sum(float(logp[len(ctx) - 1 + i, t]) for i, t in enumerate(cont)))
    return out


@pytest.mark.parametrize("family", ["llama", "gemma3"])
@pytest.mark.parametrize("backend", ["torch", "nnsight", "transformer_lens"])
@pytest.mark.parametrize("grafted", [False, True])
def test_shared_prefix_logliks_match_reference(family, backend, grafted):
    model = tiny_model(family)
    contexts = ["w3 w4 w5 w6", "w7 w8", "w9 w10 w11 w12 w13 w14"]
    choices = [("w20", "w21 w22", "w23"), ("w24 w25 w26", "w27"), ("w28", "w29", "w30 w31", "w32")]
    vectors = torch.randn(len(contexts), model.d_model, generator=torch.Generator().manual_seed(0))
    injection = agents.Injection(2, "mean", vectors) if grafted else None
    scores = agents.choice_logliks(model, contexts, choices, get_backend(backend), injection, items_per_forward=2)
    for i, (context, options) in enumerate(zip(contexts, choices)):
        expected = reference_logliks(model, context, options, vectors[i] if grafted else None, 2)
        assert scores.logliks[i] == pytest.approx(expected, abs=1e-4)
    assert scores.tokens[0] == 4 + 1 + 2 + 1

"""Choice log-likelihoods with a shared context cache equal a plain per-row computation."""

from __future__ import annotations

import pytest
import torch

import interventions as iv
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


def sender_state(model, text, layer):
    """A's last-token output of block ``layer``, from transformers' own hidden states."""
    with torch.no_grad():
        return model.hf(**model.encode(text), output_hidden_states=True).hidden_states[layer + 1][0, -1]


@pytest.fixture
def cache_by_its_new_name(monkeypatch):
    """Passing the KV cache to forward, or reading it from an output, by its pre-5.25 name fails the
    test: transformers warns of the first with a FutureWarning and logs the second once per process."""
    from transformers.utils import generic

    def fail(message, *args, **kwargs):
        raise AssertionError(message)

    monkeypatch.setattr(generic.logger, "warning_once", fail)


@pytest.mark.parametrize("family", ["llama", "gemma3"])
@pytest.mark.parametrize("backend", ["torch", "nnsight", "transformer_lens"])
@pytest.mark.parametrize("grafted", [False, True])
@pytest.mark.filterwarnings("error:.*past_key_values.*:FutureWarning")
@pytest.mark.usefixtures("cache_by_its_new_name")
def test_shared_prefix_logliks_match_reference(family, backend, grafted):
    model = tiny_model(family)
    contexts = ["w3 w4 w5 w6", "w7 w8", "w9 w10 w11 w12 w13 w14"]
    senders = ["w40 w41", "w42 w43 w44", "w45"]
    choices = [("w20", "w21 w22", "w23"), ("w24 w25 w26", "w27"), ("w28", "w29", "w30 w31", "w32")]
    splice = iv.Splice(source=iv.Site("A", 2), target=iv.Site("B", 2), combine="mean")
    session = iv.Session(model, backend)
    scores = session.loglikelihood("B", {"A": senders, "B": contexts}, choices, [splice] if grafted else [],
                                   items_per_forward=2)
    for i, (context, options) in enumerate(zip(contexts, choices)):
        vector = sender_state(model, senders[i], 2) if grafted else None
        expected = reference_logliks(model, context, options, vector, 2)
        assert scores.logliks[i] == pytest.approx(expected, abs=1e-4)
    assert scores.tokens[0] == 4 + 1 + 2 + 1
    # compute is charged inside the request: B's context and choices, and A's stopped forward
    assert scores.compute[0].tokens["B"] == 4 + 1 + 2 + 1
    assert ("A" in scores.compute[0].tokens) == grafted

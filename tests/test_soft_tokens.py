"""Soft tokens on every backend against a plain ``inputs_embeds`` reference built by hand."""

from __future__ import annotations

import copy

import pytest
import torch

import interventions as iv
from interventions.program import SoftTokenError
from tiny_models import tiny_model

BACKENDS = ["transformer_lens", "nnsight", "torch"]
PROMPTS = ["w3 w4 w5 w6 w7", "w8 w9", "w10 w11 w12"]     # different lengths: a left-padded batch
TOL = 1e-4


def reference_batch(model, prompts, vectors, at, markers):
    """Token embeddings with the vectors (one tensor for all rows, or a list per row) spliced in
    between marker embeddings, left-padded."""
    embed = model.hf.get_input_embeddings()
    tok = model.tokenizer
    rows = []
    with torch.no_grad():
        for i, prompt in enumerate(prompts):
            ids = tok(prompt)["input_ids"]
            cut = len(ids) if at == "end" else at if at >= 0 else len(ids) + at
            marker = [embed(torch.tensor(tok(m, add_special_tokens=False)["input_ids"])) if m
                      else torch.zeros(0, model.d_model) for m in markers]
            middle = vectors[i] if isinstance(vectors, list) else vectors
            rows.append(torch.cat([embed(torch.tensor(ids[:cut], dtype=torch.long)), marker[0], middle, marker[1],
                                   embed(torch.tensor(ids[cut:], dtype=torch.long))]))
    width = max(len(r) for r in rows)
    embeds = torch.zeros(len(rows), width, model.d_model)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, r in enumerate(rows):
        embeds[i, width - len(r):] = r
        mask[i, width - len(r):] = 1
    return embeds, mask


@pytest.fixture(scope="module", params=["llama", "gemma3"])
def model(request):
    return tiny_model(request.param)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("at,markers", [("end", ("", "")), (1, ("w90", "w91 w92")), (-1, ("", "w93"))])
def test_forward_matches_inputs_embeds_reference(model, backend, at, markers):
    vectors = torch.randn(3, model.d_model, generator=torch.Generator().manual_seed(0))
    spec = iv.SoftTokens(vectors=vectors, at=at, markers=markers)
    result = iv.run(spec, model, PROMPTS, backend=backend)
    embeds, mask = reference_batch(model, PROMPTS, vectors, at, markers)
    with torch.no_grad():
        expected = copy.deepcopy(model.hf)(inputs_embeds=embeds, attention_mask=mask).logits
    assert torch.equal(result.attention_mask["B"], mask)
    assert (result.logits - expected)[mask.bool()].abs().max().item() <= TOL


@pytest.mark.parametrize("backend", BACKENDS)
def test_generate_and_decode_match_reference(model, backend):
    vectors = torch.randn(2, model.d_model, generator=torch.Generator().manual_seed(1)) * 3
    spec = iv.SoftTokens(vectors=vectors, at=1, markers=("w90", "w91"))
    embeds, mask = reference_batch(model, PROMPTS, vectors, 1, ("w90", "w91"))
    with torch.no_grad():
        expected = copy.deepcopy(model.hf).generate(inputs_embeds=embeds, attention_mask=mask, max_new_tokens=6,
                                                    do_sample=False, pad_token_id=0)
    session = iv.Session(model, backend)
    generated = session.generate("B", PROMPTS, [spec], max_new_tokens=6)
    decoded = session.decode("B", PROMPTS, [spec], max_new_tokens=6)
    assert torch.equal(generated.ids, expected)
    assert torch.equal(decoded.ids, expected)
    plain = session.generate("B", PROMPTS, [], max_new_tokens=6)
    assert not torch.equal(plain.ids, expected)                  # the vectors changed the answer
    assert generated.prompt_tokens[1] == 1 + 1 + 2 + 1 + 1       # w8 | w90 | 2 vectors | w91 | w9


@pytest.mark.parametrize("backend", BACKENDS)
def test_loglikelihood_with_soft_tokens_matches_per_row_reference(backend):
    model = tiny_model("qwen2")
    vectors = torch.randn(2, model.d_model, generator=torch.Generator().manual_seed(2))
    spec = iv.SoftTokens(vectors=vectors, at="end", markers=("w90", ""))
    choices = [("w20", "w21 w22"), ("w23",), ("w24 w25", "w26", "w27")]
    scores = iv.Session(model, backend).loglikelihood("B", PROMPTS, choices, [spec])
    embed = model.hf.get_input_embeddings()
    for prompt, options, got in zip(PROMPTS, choices, scores.logliks):
        context, _ = reference_batch(model, [prompt], vectors, "end", ("w90", ""))
        for option, value in zip(options, got):
            cont = model.tokenizer(" " + option, add_special_tokens=False)["input_ids"]
            with torch.no_grad():
                full = torch.cat([context[0], embed(torch.tensor(cont))])[None]
                logp = torch.log_softmax(model.hf(inputs_embeds=full).logits[0], -1)
            n = context.shape[1]
            assert value == pytest.approx(sum(float(logp[n - 1 + i, t]) for i, t in enumerate(cont)), abs=TOL)


def test_soft_tokens_from_another_model_and_a_splice_together():
    """Sites of a splice resolve against the extended sequence: -1 is still the last position."""
    a, b = tiny_model("llama", seed=1), tiny_model("llama", seed=2)
    soft = iv.SoftTokens(source=iv.Site("A", layer=2, position="all"), at="end")
    splice = iv.Splice(source=iv.Site("A", 1), target=iv.Site("B", 1, position=-1), combine="sum")
    prompts = {"A": ["w3 w4 w5", "w6 w7"], "B": ["w8 w9", "w10 w11 w12"]}
    result = iv.run([soft, splice], {"A": a, "B": b}, prompts, backend="torch")
    with torch.no_grad():
        hidden = [a.hf(**a.encode(p), output_hidden_states=True).hidden_states for p in prompts["A"]]
        embeds, mask = reference_batch(b, prompts["B"], [h[3][0] for h in hidden], "end", ("", ""))  # block 2, all
        source = torch.stack([h[2][0, -1] for h in hidden])   # A's block-1 output, last token
        hook = lambda m, args, out: torch.cat([out[:, :-1], out[:, -1:] + source[:, None]], 1)  # noqa: E731
        handle = b.hf.model.layers[1].register_forward_hook(hook)
        expected = b.hf(inputs_embeds=embeds, attention_mask=mask).logits
        handle.remove()
    assert (result.logits - expected)[mask.bool()].abs().max().item() <= TOL


def test_width_mismatch_and_overlong_sequences_are_explained():
    model = tiny_model("llama")
    with pytest.raises(iv.WidthMismatchError, match="align: {kind: linear}"):
        iv.run(iv.SoftTokens(vectors=torch.zeros(2, 8)), model, "w3 w4", backend="torch")
    too_many = iv.SoftTokens(vectors=torch.zeros(300, model.d_model))
    with pytest.raises(SoftTokenError, match="past .* context of 256"):
        iv.run(too_many, model, "w3 w4", backend="torch")
    with pytest.raises(iv.SpecFormatError, match="give one of vectors"):
        iv.SoftTokens()
    with pytest.raises(iv.SpecFormatError, match="give one of vectors"):
        iv.SoftTokens(vectors=torch.zeros(1, model.d_model), message="m")


@pytest.mark.parametrize("backend", BACKENDS)
def test_per_row_message_matches_reference_and_is_recorded_by_name(backend):
    """Vectors handed beside the prompts: a different number of vectors per row, each row its own."""
    model = tiny_model("llama")
    gen = torch.Generator().manual_seed(3)
    rows = [torch.randn(n, model.d_model, generator=gen) for n in (1, 3, 2)]
    spec = iv.SoftTokens(message="thought", at="end", markers=("w90", "w91"))
    result = iv.run(spec, model, {"B": PROMPTS, "thought": rows}, backend=backend)
    embeds, mask = reference_batch(model, PROMPTS, rows, "end", ("w90", "w91"))
    with torch.no_grad():
        expected = copy.deepcopy(model.hf)(inputs_embeds=embeds, attention_mask=mask).logits
    assert (result.logits - expected)[mask.bool()].abs().max().item() <= TOL
    assert iv.to_dict(spec)["message"] == "thought"            # the row records a name, not the vectors
    shared = iv.run(spec, model, {"B": PROMPTS[:1], "thought": rows[:1]}, backend=backend)
    assert torch.allclose(shared.logits[0], result.logits[0, -shared.logits.shape[1]:], atol=TOL)


def test_per_row_message_errors_name_the_fix():
    model = tiny_model("llama")
    spec = iv.SoftTokens(message="thought")
    with pytest.raises(iv.MissingRoleError, match=r"prompts\['thought'\]"):
        iv.run(spec, model, {"B": PROMPTS}, backend="torch")
    with pytest.raises(iv.InterventionError, match="2 tensors for 3 rows"):
        iv.run(spec, model, {"B": PROMPTS, "thought": [torch.zeros(1, model.d_model)] * 2}, backend="torch")
    with pytest.raises(iv.WidthMismatchError):
        iv.run(spec, model, {"B": PROMPTS, "thought": [torch.zeros(1, 8)] * 3}, backend="torch")


def test_soft_tokens_round_trip_as_data():
    spec = iv.SoftTokens(source=iv.Site("A", layer="50%", position="all"), at=1, markers=("<m>", "</m>"),
                         align=iv.Align("linear"))
    assert iv.from_text(iv.to_yaml(spec)) == spec

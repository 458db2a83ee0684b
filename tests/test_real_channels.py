"""The literature's channels on the real SmolLM2-135M, against plain transformers references."""

from __future__ import annotations

import pytest
import torch

import interventions as iv
from interventions.alignment.hidden_to_embedding import hidden_to_embedding
from interventions.harness.protocols.cipher import EmbeddingMixture

pytestmark = pytest.mark.real
SENDER = "Rosa is at the Eiffel Tower"
RECEIVER = ". Which country is Rosa in? Answer:"


@pytest.fixture(scope="module")
def smollm2():
    return iv.load("smollm2-135m")


def test_receiver_reading_its_own_prefix_cache_reproduces_the_whole_prompt(smollm2):
    """KV sharing: B attending to A's cache of the first half equals one forward of both halves."""
    tok = smollm2.tokenizer
    whole = tok(SENDER + RECEIVER, return_tensors="pt").input_ids
    n_sender = len(tok(SENDER)["input_ids"])
    assert torch.equal(whole[0, :n_sender], torch.tensor(tok(SENDER)["input_ids"]))   # the split is clean
    with torch.no_grad():
        expected = smollm2.hf(whole).logits[0, n_sender:]
    receiver = tok.decode(whole[0, n_sender:])
    result = iv.run(iv.KVTransfer(), {"A": smollm2, "B": smollm2}, {"A": [SENDER], "B": [receiver]},
                    backend="torch")
    assert result.logits.shape[1] == whole.shape[1] - n_sender
    assert (result.logits[0] - expected).abs().max().item() < 1e-3
    assert result.logits[0, -1].argmax() == expected[-1].argmax()


def test_cipher_at_temperature_zero_decodes_greedy_tokens_as_their_embeddings(smollm2):
    """CIPHER with one-hot mixtures is greedy decoding fed token embeddings."""
    prompt = smollm2.format_prompt("Name the capital of France.")
    greedy = iv.Session(smollm2, "torch").generate("B", [prompt], max_new_tokens=8)
    policy = EmbeddingMixture(smollm2, temperature=0.0)
    decoded = iv.Session(smollm2, "torch").decode("B", [prompt], max_new_tokens=8, policy=policy)
    assert torch.equal(decoded.ids, greedy.ids)
    table = smollm2.hf.get_input_embeddings().weight
    for step, vector in enumerate(policy.vectors[:decoded.ids.shape[1]]):
        assert torch.allclose(vector[0].float(), table[decoded.ids[0, step]].float())


def test_latentmas_map_on_tied_embeddings_is_a_rescale_of_the_identity(smollm2):
    """SmolLM2 ties its input and output embeddings, so W_a is the identity and only the rescale acts."""
    mapping = hidden_to_embedding(smollm2)
    hidden = torch.randn(4, smollm2.d_model, generator=torch.Generator().manual_seed(0))
    mapped = mapping(hidden)
    target_norm = smollm2.hf.get_input_embeddings().weight.float().norm(dim=-1).mean()
    assert torch.allclose(mapped.norm(dim=-1), target_norm.expand(4), rtol=1e-4)
    cosine = torch.nn.functional.cosine_similarity(mapped, hidden, dim=-1)
    assert cosine.min().item() > 0.999


def test_a_handoff_from_gemma_to_smollm2_goes_through_the_tokens_both_spell_alike(smollm2):
    """Cross-family reverse cascade on the real models: matched tokens span a large shared vocabulary;
    n = 0 is SmolLM2 alone, and SmolLM2 continues Gemma's text re-tokenized."""
    from interventions.alignment.hidden_to_embedding import matched_tokens

    gemma = iv.load("gemma3-270m")
    ours, theirs = matched_tokens(gemma, smollm2)
    assert len(ours) > 10_000
    assert gemma.tokenizer.decode([int(ours[500])]) == smollm2.tokenizer.decode([int(theirs[500])])
    question = "What is 12 plus 30?"
    prompts = {"A": [f"{question}\nAnswer:"], "B": [smollm2.format_prompt(question)]}
    models = {"A": gemma, "B": smollm2}
    batch = smollm2.encode(prompts["B"])
    alone = smollm2.hf.generate(**batch, max_new_tokens=8, do_sample=False)[0, batch["input_ids"].shape[1]:]
    at_zero = iv.run(iv.Handoff(trigger=iv.Trigger(n=0), horizon=8), models, prompts, max_new_tokens=8)
    assert at_zero.texts[0] == smollm2.tokenizer.decode(alone, skip_special_tokens=True)
    text = iv.run(iv.Handoff(trigger=iv.Trigger(n=4), horizon=8), models, prompts, max_new_tokens=8)
    handed = text.notes[0]["handoff"]["lead_text"]
    assert text.texts[0].startswith(handed) and len(text.texts[0]) > len(handed)
    latent = iv.run(iv.Handoff(trigger=iv.Trigger(n=4), carry="latent", horizon=8), models, prompts,
                    max_new_tokens=8)
    assert latent.compute[0].role_flops["A"] == text.compute[0].role_flops["A"] > 0
    assert latent.texts[0] and latent.notes[0]["handoff"]["handed_tokens"] == 4

"""Continuous thought (Coconut / LatentMAS, training-free): the ridge map against numpy, thinking
against a hand-written loop over the plain HF model (no KV cache), answers against HF ``generate``
and log-probabilities on ``inputs_embeds``, and the protocols through the runner."""

from __future__ import annotations

import copy
import dataclasses
import json

import numpy as np
import pytest
import torch

import interventions as iv
from interventions.compute import Compute
from interventions.alignment.hidden_to_embedding import (HiddenSiteError, VocabularyMismatchError,
                                                         hidden_to_embedding, realign_weight)
from interventions.harness.experiment import load_experiment
from interventions.harness.prompts import answer_prompt
from interventions.harness.protocols import Context
from interventions.harness.protocols.continuous_thought import (ContinuousThought, LatentMAS, PauseTextError,
                                                                think)
from interventions.harness.protocols.single import Single
from interventions.harness.runner import run_experiment
from interventions.harness.tasks import get_task
from tiny_models import VOCAB, tiny_model, tiny_tokenizer

PROMPTS = ["w3 w4 w5 w6 w7", "w8 w9"]     # different lengths: a left-padded batch
TOL = 1e-4


# ---------------------------------------------------------------- independent references

def numpy_map(output_weight: torch.Tensor, input_weight: torch.Tensor) -> tuple[torch.Tensor, float]:
    """LatentMAS's W_a by the normal equations in numpy, and the mean input-embedding norm."""
    w_out, w_in = output_weight.double().numpy(), input_weight.double().numpy()
    weight = np.linalg.solve(w_out.T @ w_out + 1e-5 * np.eye(w_out.shape[1]), w_out.T @ w_in)
    return torch.tensor(weight, dtype=torch.float32), float(np.linalg.norm(w_in, axis=1).mean())


def embedding_table(hf) -> torch.Tensor:
    """Every token's input embedding as the model computes it (Gemma's scale included)."""
    with torch.no_grad():
        return hf.get_input_embeddings()(torch.arange(VOCAB)).float()


def reference_thoughts(hf, ids: list[int], m: int, weight, norm) -> tuple[torch.Tensor, torch.Tensor]:
    """(fed vectors, hidden states): re-run the whole sequence at every step (no cache), map the
    last position's final hidden state by hand and append it to the input embeddings."""
    with torch.no_grad():
        seq = hf.get_input_embeddings()(torch.tensor([ids]))
        fed, hidden = [], []
        for _ in range(m):
            h = hf(inputs_embeds=seq, output_hidden_states=True).hidden_states[-1][0, -1]
            v = h @ weight
            v = v * norm / v.norm()
            fed.append(v)
            hidden.append(h)
            seq = torch.cat([seq, v[None, None]], 1)
    return torch.stack(fed), torch.stack(hidden)


def reference_answer(hf, tokenizer, prompt: str, vectors: torch.Tensor, max_new_tokens: int) -> str:
    ids = torch.tensor([tokenizer(prompt)["input_ids"]])
    with torch.no_grad():
        embeds = torch.cat([hf.get_input_embeddings()(ids), vectors[None]], 1)
        out = hf.generate(inputs_embeds=embeds, attention_mask=torch.ones(embeds.shape[:2], dtype=torch.long),
                          max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=0)
    return tokenizer.batch_decode(out, skip_special_tokens=True)[0]


def reference_logliks(hf, tokenizer, prompt: str, vectors: torch.Tensor, choices) -> list[float]:
    """Summed log-probabilities of each " choice" after the prompt and the vectors, in one forward."""
    embed = hf.get_input_embeddings()
    context = torch.cat([embed(torch.tensor(tokenizer(prompt)["input_ids"])), vectors])
    out = []
    with torch.no_grad():
        for choice in choices:
            ids = tokenizer(" " + choice, add_special_tokens=False)["input_ids"]
            logp = torch.log_softmax(hf(inputs_embeds=torch.cat([context, embed(torch.tensor(ids))])[None]).logits[0], -1)
            out.append(sum(float(logp[len(context) - 1 + i, t]) for i, t in enumerate(ids)))
    return out


def word_task(tmp_path, scoring: str, n: int = 3):
    path = tmp_path / f"{scoring}.jsonl"
    path.write_text("".join(json.dumps({"id": f"q{i}", "question": " ".join(f"w{3 + (5 * i + k) % 90}" for k in range(2 + i)),
                                        "choices": ["w5", "w6 w7"], "answer": "w5"}) + "\n" for i in range(n)))
    task = get_task("jsonl", path=str(path), scoring=scoring)
    return task, task.items(n, 0)


@pytest.fixture(scope="module")
def llama():
    return tiny_model("llama")


# ---------------------------------------------------------------- the map

def test_map_is_the_ridge_least_squares_solution_rescaled():
    g = torch.Generator().manual_seed(0)
    w_out, w_in = torch.randn(40, 6, generator=g), torch.randn(40, 5, generator=g) * 3
    weight = realign_weight(w_out, w_in)
    expected, _ = numpy_map(w_out, w_in)
    assert torch.allclose(weight, expected, atol=1e-5)
    lstsq = torch.tensor(np.linalg.lstsq(w_out.double().numpy(), w_in.double().numpy(), rcond=None)[0]).float()
    assert torch.allclose(weight, lstsq, atol=1e-4)              # λ = 1e-5 barely moves a least-squares fit


def test_tied_embeddings_map_to_the_identity_up_to_the_rescale():
    table = torch.randn(96, 16, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(realign_weight(table, table), torch.eye(16), atol=1e-4)
    gemma = tiny_model("gemma3")   # tied, and Gemma scales its input embeddings by sqrt(d) = 8
    mapping = hidden_to_embedding(gemma)
    # λ shrinks a little, since tiny random embeddings are small; the rescale undoes that
    assert torch.allclose(mapping.weight / 8, torch.eye(gemma.d_model), atol=2e-3)
    hidden = torch.randn(3, gemma.d_model, generator=torch.Generator().manual_seed(2))
    mapped = mapping(hidden)
    norm = float(embedding_table(gemma.hf).norm(dim=-1).mean())
    assert torch.allclose(mapped.norm(dim=-1), torch.full((3,), norm), atol=1e-3)
    assert torch.allclose(torch.nn.functional.cosine_similarity(mapped, hidden), torch.ones(3), atol=1e-4)


def test_map_matches_numpy_on_an_untied_model_and_is_computed_once(llama):
    weight, norm = numpy_map(llama.hf.lm_head.weight.detach(), embedding_table(llama.hf))
    mapping = hidden_to_embedding(llama)
    assert torch.allclose(mapping.weight, weight, atol=1e-4) and mapping.target_norm == pytest.approx(norm, rel=1e-5)
    assert hidden_to_embedding(llama) is mapping
    plain = hidden_to_embedding(llama, identity=True)
    assert torch.equal(plain.weight, torch.eye(llama.d_model)) and plain.target_norm == mapping.target_norm


def test_registered_map_reads_the_last_block_through_the_final_norm():
    """As a soft-token source: A's last-block residuals, final-normed and mapped, go into B's prompt."""
    llama = tiny_model("llama")
    with torch.no_grad():   # a final norm with uneven gains: the rescale alone would not undo it
        llama.hf.model.norm.weight.copy_(torch.linspace(0.2, 3.0, llama.d_model))
    spec = iv.SoftTokens(source=iv.Site("A", -1, "all"), align=iv.Align("hidden_to_embedding"))
    result = iv.run(spec, llama, {"A": ["w20 w21 w22"], "B": ["w3 w4"]}, backend="torch")
    hf = copy.deepcopy(llama.hf)
    weight, norm = numpy_map(hf.lm_head.weight.detach(), embedding_table(hf))
    with torch.no_grad():
        hidden = hf(torch.tensor([[20, 21, 22]]), output_hidden_states=True).hidden_states[-1][0]
        mapped = hidden @ weight
        mapped = mapped * norm / mapped.norm(dim=-1, keepdim=True)
        expected = hf(inputs_embeds=torch.cat([hf.get_input_embeddings()(torch.tensor([3, 4])), mapped])[None]).logits
    assert (result.logits - expected).abs().max().item() <= TOL
    with pytest.raises(HiddenSiteError, match="last block"):
        iv.run(iv.SoftTokens(source=iv.Site("A", 1, "all"), align=iv.Align("hidden_to_embedding")), llama,
               {"A": ["w20"], "B": ["w3"]}, backend="torch")


# ---------------------------------------------------------------- thinking

@pytest.mark.parametrize("family,backend", [("llama", "torch"), ("llama", "nnsight"), ("llama", "transformer_lens"),
                                            ("gemma3", "torch")])
def test_thinking_feeds_exactly_the_mapped_hidden_states(family, backend):
    model = tiny_model(family)
    thoughts = think(iv.Session(model, backend), "B", PROMPTS, 4, hidden_to_embedding(model))
    hf = copy.deepcopy(model.hf)
    weight, norm = numpy_map(hf.get_output_embeddings().weight.detach(), embedding_table(hf))
    for r, prompt in enumerate(PROMPTS):
        fed, hidden = reference_thoughts(hf, model.tokenizer(prompt)["input_ids"], 4, weight, norm)
        assert thoughts.fed[r].shape == (4, model.d_model)
        assert (thoughts.fed[r] - fed).abs().max().item() <= TOL
        assert (thoughts.hidden[r] - hidden).abs().max().item() <= TOL
    assert thoughts.compute[1].tokens == {"B": 2 + 4}              # prompt + every thought


def _eos_everywhere(model, rows=None):
    """Make the logits favour end-of-sequence (for ``rows``, or all) without touching hidden states."""
    def hook(module, inputs, output):
        output = output.clone()
        output[rows if rows is not None else slice(None), :, model.tokenizer.eos_token_id] += 1e4
        return output
    return model.hf.lm_head.register_forward_hook(hook)


def test_thinking_goes_on_past_end_of_sequence_readings_and_is_charged_every_step(llama):
    hf = copy.deepcopy(llama.hf)
    weight, norm = numpy_map(hf.lm_head.weight.detach(), embedding_table(hf))
    mapping = hidden_to_embedding(llama)
    handle = _eos_everywhere(llama)          # every step reads end-of-sequence: thinking goes on
    try:
        thoughts = think(iv.Session(llama, "torch"), "B", PROMPTS, 3, mapping)
    finally:
        handle.remove()
    for r, prompt in enumerate(PROMPTS):
        fed, _ = reference_thoughts(hf, llama.tokenizer(prompt)["input_ids"], 3, weight, norm)
        assert (thoughts.fed[r] - fed).abs().max().item() <= TOL
    # the prompt's 2 tokens and 3 thought steps, every step charged
    assert thoughts.compute[1].tokens == {"B": 2 + 3}

    handle = _eos_everywhere(llama, rows=0)  # only row 0 reads end-of-sequence: it is still charged every step
    try:
        thoughts = think(iv.Session(llama, "torch"), "B", PROMPTS, 3, mapping)
    finally:
        handle.remove()
    shape = iv.Session(llama, "torch").shape("B")
    expected = Compute()
    expected.add_generation("B", shape, 5, 3)
    assert thoughts.compute[0].tokens == {"B": 5 + 3}
    assert thoughts.compute[0].flops == pytest.approx(expected.flops)


# ---------------------------------------------------------------- the protocols

@pytest.mark.parametrize("scoring", ["exact", "choice_loglik"])
def test_zero_steps_is_plain_answering(tmp_path, llama, scoring):
    task, items = word_task(tmp_path, scoring)
    ctx = Context(iv.Session(llama, "torch"), task, max_new_tokens=4, pool=items)
    plain = Single(role="B").run(ctx, items)
    for protocol in (ContinuousThought(m=0), LatentMAS(m=0)):
        outcomes = protocol.run(ctx, items)
        assert [o.raw for o in outcomes] == [p.raw for p in plain]          # texts, or every log-likelihood
        assert [o.compute.tokens for o in outcomes] == [p.compute.tokens for p in plain]


@pytest.mark.parametrize("scoring", ["exact", "choice_loglik"])
def test_answer_reads_the_thoughts_after_the_prompt(tmp_path, llama, scoring):
    task, items = word_task(tmp_path, scoring)
    ctx = Context(iv.Session(llama, "torch"), task, max_new_tokens=4, pool=items)
    outcomes = ContinuousThought(m=3).run(ctx, items)
    hf = copy.deepcopy(llama.hf)
    weight, norm = numpy_map(hf.lm_head.weight.detach(), embedding_table(hf))
    plain = Single(role="B").run(ctx, items)
    for item, outcome in zip(items, outcomes):
        prompt = answer_prompt(llama, task, item)
        fed, _ = reference_thoughts(hf, llama.tokenizer(prompt)["input_ids"], 3, weight, norm)
        if scoring == "exact":
            assert outcome.raw == reference_answer(hf, llama.tokenizer, prompt, fed, 4)
        else:
            assert outcome.raw == pytest.approx(reference_logliks(hf, llama.tokenizer, prompt, fed, item.choices), abs=1e-3)
        assert outcome.interventions[0]["message"] == "thought"
    if scoring == "choice_loglik":
        assert [o.raw for o in outcomes] != [p.raw for p in plain]          # the thoughts changed the scores


def test_pause_control_reads_one_fixed_embedding_and_thinks_nothing(tmp_path, llama):
    task, items = word_task(tmp_path, "exact")
    ctx = Context(iv.Session(llama, "torch"), task, max_new_tokens=4, pool=items)
    outcomes = ContinuousThought(m=3, control="pause", pause="w50").run(ctx, items)
    hf = copy.deepcopy(llama.hf)
    pause = embedding_table(hf)[50].expand(3, -1)
    for item, outcome in zip(items, outcomes):
        prompt = answer_prompt(llama, task, item)
        assert outcome.raw == reference_answer(hf, llama.tokenizer, prompt, pause, 4)
        n_prompt = len(llama.tokenizer(prompt)["input_ids"])
        assert n_prompt + 3 < outcome.compute.tokens["B"] <= n_prompt + 3 + 4   # no thinking charged
    with pytest.raises(PauseTextError, match="one token"):
        ContinuousThought(m=2, control="pause", pause="w3 w4").run(ctx, items)


def test_latent_mas_across_widths_maps_a_through_the_shared_vocabulary(tmp_path):
    task, items = word_task(tmp_path, "exact", n=2)
    a, b = tiny_model("llama"), tiny_model("qwen2", width=48)
    ctx = Context(iv.Session({"A": a, "B": b}, "torch"), task, max_new_tokens=4, pool=items)
    outcomes = LatentMAS(m=2, sender="raw").run(ctx, items)
    hf_a, hf_b = copy.deepcopy(a.hf), copy.deepcopy(b.hf)
    own, own_norm = numpy_map(hf_a.lm_head.weight.detach(), embedding_table(hf_a))
    across, b_norm = numpy_map(hf_a.lm_head.weight.detach(), embedding_table(hf_b))
    for item, outcome in zip(items, outcomes):
        _, hidden = reference_thoughts(hf_a, a.tokenizer(item.question)["input_ids"], 2, own, own_norm)
        read = hidden @ across
        read = read * b_norm / read.norm(dim=-1, keepdim=True)
        assert outcome.raw == reference_answer(hf_b, b.tokenizer, answer_prompt(b, task, item), read, 4)
        assert outcome.compute.tokens["A"] == len(a.tokenizer(item.question)["input_ids"]) + 2

    other = dataclasses.replace(b, tokenizer=tiny_tokenizer("v"), weight_sha256="another")
    ctx = Context(iv.Session({"A": a, "B": other}, "torch"), task, max_new_tokens=4, pool=items)
    with pytest.raises(VocabularyMismatchError, match="nl_message"):
        LatentMAS(m=2).run(ctx, items)


def test_protocols_run_through_the_runner_with_m_swept(tmp_path, tiny_dir):
    task_file = tmp_path / "mc.jsonl"
    task_file.write_text("".join(json.dumps({"id": f"q{i}", "question": f"w{i + 3} w{i + 4}?", "choices": ["w5", "w6 w7"],
                                             "answer": "w5"}) + "\n" for i in range(4)))
    path = tmp_path / "e.yaml"
    path.write_text(json.dumps({
        "name": "thought", "max_new_tokens": 3, "batch_size": 2, "pairs": [{"A": str(tiny_dir), "B": str(tiny_dir)}],
        "tasks": [{"name": "countries", "n": 4}, {"name": "jsonl", "options": {"path": str(task_file),
                                                                              "scoring": "choice_loglik"}}],
        "protocols": [{"kind": "silent"}, {"kind": "continuous_thought", "m": [0, 2]},
                      {"kind": "continuous_thought", "m": 2, "control": ["pause", "random"]},
                      {"kind": "latent_mas", "m": [0, 2], "control": ["none", "mismatched"]}]}))
    rows = run_experiment(load_experiment(str(path)), tmp_path / "out", progress=False)
    names = {r["protocol"] for r in rows}
    assert {"continuous_thought_m0", "continuous_thought_m2", "continuous_thought_m2_ctl-pause",
            "continuous_thought_m2_ctl-random", "latent_mas_m2", "latent_mas_m2_ctl-mismatched"} <= names
    for task in ("countries", "jsonl/mc"):
        def by(protocol):
            return {r["item_id"]: (r["prediction"], r["score"], r["score_norm"])
                    for r in rows if r["protocol"] == protocol and r["task"] == task}
        assert by("continuous_thought_m0") == by("silent") == by("latent_mas_m0")
    thinking = [r for r in rows if r["protocol"] == "continuous_thought_m2"]
    assert len(thinking) == 8 and all(r["protocol_spec"]["m"] == 2 for r in thinking)
    assert all(r["compute"]["tokens"]["B"] > 2 for r in thinking)
    latent = [r for r in rows if r["protocol"] == "latent_mas_m2"]
    assert all(r["compute"]["tokens"]["A"] > 0 for r in latent)
    mismatched = [r for r in rows if r["protocol"] == "latent_mas_m2_ctl-mismatched"]
    assert len(mismatched) == 8 and all(r["extra"]["message_from"] != r["item_id"] for r in mismatched)

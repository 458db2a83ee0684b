"""CIPHER: the embedding mixture against hand computations, greedy equivalence at top-k = 1 against
transformers' generate, the end-of-sequence cut, the debate against a hand-built token reference,
and the refusal of pairs whose vocabularies differ."""

from __future__ import annotations

import copy
import json

import pytest
import torch

import interventions as iv
from interventions.harness.experiment import load_experiment
from interventions.harness.prompts import answer_prompt, question_text
from interventions.harness.protocols import PROTOCOLS, Context
from interventions.errors import VocabularyMismatchError
from interventions.harness.protocols.cipher import (MARKERS, EmbeddingMixture,
                                                    check_shared_vocabulary)
from interventions.harness.runner import run_experiment
from interventions.harness.tasks import get_task
from interventions.models import load_model, wrap_model
from interventions.session import Step
from tiny_models import VOCAB, tiny_model, tiny_tokenizer

PROMPTS = ["w3 w4 w5 w6 w7", "w8 w9", "w10 w11 w12"]
EOS = 2


@pytest.fixture(scope="module", params=["llama", "gemma3"])
def model(request):
    return tiny_model(request.param)


def table_by_hand(model) -> torch.Tensor:
    """The input embeddings the model sees: Gemma scales its table by sqrt(d) inside the module."""
    weight = model.hf.get_input_embeddings().weight.detach().double()
    return weight * model.d_model ** 0.5 if model.family.startswith("gemma") else weight


def step(logits) -> Step:
    return Step(0, logits, None, torch.zeros(len(logits), dtype=torch.bool))


def test_a_one_hot_distribution_mixes_to_that_tokens_embedding(model):
    logits = torch.randn(3, VOCAB, generator=torch.Generator().manual_seed(0))
    logits[torch.arange(3), torch.tensor([5, 17, 40])] = 1e4          # one-hot after the softmax
    table = table_by_hand(model)
    for policy in (EmbeddingMixture(model, 1.0), EmbeddingMixture(model, 0.0), EmbeddingMixture(model, 1.0, top_k=1)):
        mixed = policy(step(logits))
        assert torch.allclose(mixed.double(), table[[5, 17, 40]], atol=1e-5)
        assert policy.messages(torch.zeros(3, 1, dtype=torch.long))[1] == [[5], [17], [40]]


@pytest.mark.parametrize("temperature,top_k,top_p", [(0.7, None, None), (1.3, 5, None), (0.9, None, 0.6),
                                                     (0.5, 8, 0.8)])
def test_mixture_equals_the_weighted_sum_computed_by_hand(model, temperature, top_k, top_p):
    logits = torch.randn(2, VOCAB, generator=torch.Generator().manual_seed(1)) * 3
    table = table_by_hand(model)
    expected = []
    for row in logits.double():
        probs = torch.softmax(row / temperature, -1)
        keep = set(range(VOCAB))
        if top_k is not None:
            keep = set(torch.topk(row, top_k).indices.tolist())
            probs = torch.zeros_like(probs)
            probs[list(keep)] = torch.softmax(row[list(keep)] / temperature, -1)
        if top_p is not None:
            mass, chosen = 0.0, []
            for i in sorted(keep, key=lambda i: -float(probs[i])):
                chosen.append(i)
                mass += float(probs[i])
                if mass >= top_p:
                    break
            kept = torch.zeros_like(probs)
            kept[chosen] = probs[chosen] / probs[chosen].sum()
            probs = kept
        expected.append(sum(float(probs[i]) * table[i] for i in range(VOCAB)))
    mixed = EmbeddingMixture(model, temperature, top_k, top_p)(step(logits))
    assert torch.allclose(mixed.double(), torch.stack(expected), atol=1e-5)


def test_nearest_token_is_the_euclidean_nearest_row_of_the_table(model):
    policy = EmbeddingMixture(model, 1.0)
    vectors = torch.randn(5, model.d_model, generator=torch.Generator().manual_seed(2))
    assert torch.equal(policy.nearest_tokens(vectors), torch.cdist(vectors.double(), table_by_hand(model)).argmin(-1))


def test_top_k_1_decoding_is_greedy_generation(model):
    policy = EmbeddingMixture(model, 0.8, top_k=1)
    decoded = iv.Session(model, "torch").decode("B", PROMPTS, max_new_tokens=6, policy=policy)
    batch = model.encode(PROMPTS)
    with torch.no_grad():
        reference = copy.deepcopy(model.hf).generate(**batch, max_new_tokens=6, do_sample=False, pad_token_id=0)
    greedy = reference[:, batch["input_ids"].shape[1]:]
    assert torch.equal(decoded.ids, greedy)
    vectors, nearest = policy.messages(decoded.ids)
    table = table_by_hand(model)
    for row in range(len(PROMPTS)):
        n = len(nearest[row])
        assert nearest[row] == greedy[row, :n].tolist()           # cut only at end-of-sequence
        assert n == len(greedy[row]) or int(greedy[row, n]) == EOS
        assert torch.allclose(vectors[row].double(), table[greedy[row, :n]], atol=1e-5)


def test_a_turn_ends_before_the_first_vector_nearest_to_end_of_sequence(model):
    policy = EmbeddingMixture(model, 1.0)
    picks = [[5, 6], [EOS, 7], [9, EOS], [EOS, 11]]              # row 0 stops at step 1, row 1 at step 2
    for tokens in picks:
        logits = torch.zeros(2, VOCAB)
        logits[torch.arange(2), torch.tensor(tokens)] = 1e4
        policy(step(logits))
    ids = torch.tensor([[5, 8, 9, 4], [6, 7, 3, 3]])             # decode's argmax ids: no EOS
    vectors, nearest = policy.messages(ids)
    assert nearest == [[5], [6, 7]]
    assert [len(v) for v in vectors] == [1, 2]
    # decode's own end (argmax = EOS) cuts a row too, whatever the mixture's nearest token
    _, nearest = policy.messages(torch.tensor([[5, 8, 9, 4], [EOS, 0, 0, 0]]))
    assert nearest == [[5], []]


def greedy_ids(hf, ids: list[int], n: int) -> torch.Tensor:
    """Plain greedy generate; the mask is explicit because unknown words are the pad id here."""
    with torch.no_grad():
        out = hf.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                          max_new_tokens=n, do_sample=False, pad_token_id=0)
    return out[0, len(ids):]


def test_debate_at_temperature_zero_equals_greedy_reading_the_other_agents_tokens(tmp_path):
    """At T = 0 every vector is a token's embedding, so B's final turn must equal plain greedy
    generation on the token sequence head + marker + A's tokens + marker + question, built by hand."""
    model = tiny_model("llama")
    task = get_task("countries")
    items = task.items(3, 0)
    protocol = PROTOCOLS.get("cipher")(rounds=2, temperatures=(0.0, 0.0), message_tokens=5)
    ctx = Context(iv.Session(model, "torch"), task, 5, 0, items)
    outcomes = protocol.run(ctx, items)
    tok = model.tokenizer
    hf = copy.deepcopy(model.hf)
    heard = 0
    for item, outcome in zip(items, outcomes):
        prompt = answer_prompt(model, task, item)
        ids = tok(prompt)["input_ids"]
        a_ids = greedy_ids(hf, ids, 5)
        a_ids = a_ids.tolist()[:a_ids.tolist().index(EOS)] if EOS in a_ids.tolist() else a_ids.tolist()
        head = len(tok(prompt[:prompt.rfind(question_text(task, item))])["input_ids"])
        marks = [tok(m, add_special_tokens=False)["input_ids"] for m in MARKERS]
        b_input = ids[:head] + marks[0] + a_ids + marks[1] + ids[head:]
        b_ids = greedy_ids(hf, b_input, 5)
        assert outcome.prediction == tok.decode(b_ids, skip_special_tokens=True).strip()
        heard += not torch.equal(b_ids, greedy_ids(hf, ids, 5))
        assert outcome.extra["answered_by"] == "B" and len(outcome.extra["cipher_trace"]) == 2
        assert outcome.extra["cipher_trace"][0] == "A: " + tok.decode(a_ids).replace("\n", " ")
        assert outcome.compute.tokens["A"] == len(ids) + min(len(a_ids) + 1, 5)   # A's turn is charged
        assert outcome.compute.tokens["B"] > len(b_input)
    assert heard  # the message changed B's answer somewhere: the comparison is not vacuous


def write_experiment(path, model_dirs, tasks, protocols):
    path.write_text(json.dumps({"name": "cipher", "max_new_tokens": 4, "batch_size": 3,
                                "pairs": [{"A": str(model_dirs[0]), "B": str(model_dirs[1])}],
                                "tasks": tasks, "protocols": protocols}))
    return path


def test_cipher_runs_end_to_end_on_generation_and_choice_tasks(tmp_path, tiny_dir):
    data = tmp_path / "mc.jsonl"
    data.write_text("".join(json.dumps({"id": f"q{i}", "question": f"w{i + 3} w{i + 4}?", "choices": ["w5", "w6 w7"],
                                        "answer": "w5"}) + "\n" for i in range(4)))
    path = write_experiment(tmp_path / "e.yaml", (tiny_dir, tiny_dir), [
        {"name": "countries", "n": 4}, {"name": "jsonl", "options": {"path": str(data), "scoring": "choice_loglik"}}],
        [{"kind": "cipher", "message_tokens": 4}, {"kind": "cipher", "message_tokens": 4, "control": "mismatched"},
         {"kind": "cipher", "message_tokens": 4, "control": "random", "top_k": 20}])
    rows = run_experiment(load_experiment(str(path)), tmp_path / "out", progress=False)
    names = {r["protocol"] for r in rows}
    assert names == {"cipher_r2_t1-0.2", "cipher_r2_t1-0.2_ctl-mismatched", "cipher_r2_t1-0.2_top_k20_ctl-random"}
    assert len(rows) == 3 * 8
    for row in rows:
        assert set(row["compute"]["tokens"]) == {"A", "B"} and row["compute"]["flops"] > 0
        assert row["score"] in (0.0, 1.0)
        assert row["extra"]["answered_by"] == "B"
    choice = [r for r in rows if r["task"] == "jsonl/mc"]
    assert all(r["prediction"] in ("w5", "w6 w7") and r["score_norm"] is not None for r in choice)
    assert all(r["interventions"][0]["kind"] == "soft_tokens" for r in choice)   # B read A's vectors
    mismatched = [r for r in rows if "mismatched" in r["protocol"]]
    assert all(r["extra"]["message_from"] != r["item_id"] for r in mismatched)
    plain = {r["protocol_spec"].get("control") for r in rows if r["protocol"] == "cipher_r2_t1-0.2"}
    assert plain == {None}                                      # defaults stay out of the work key


def other_vocabulary_model():
    """A tiny Llama whose tokenizer names its words differently."""
    return wrap_model("tiny-other-vocab", tiny_model("llama", seed=1).hf, tokenizer=tiny_tokenizer("v"))


def test_pairs_without_a_shared_vocabulary_are_refused_before_any_work(tmp_path, tiny_dir):
    with pytest.raises(VocabularyMismatchError, match="ac with an align map, nl_message or nl_debate"):
        check_shared_vocabulary(tiny_model("llama"), other_vocabulary_model())
    check_shared_vocabulary(tiny_model("llama"), tiny_model("qwen2", seed=3))    # same words and width
    narrow = tiny_model("llama", width=32)
    narrow_dir = tmp_path / "narrow"
    narrow.hf.save_pretrained(narrow_dir)
    narrow.tokenizer.save_pretrained(narrow_dir)
    path = write_experiment(tmp_path / "e.yaml", (tiny_dir, narrow_dir), [{"name": "countries", "n": 2}],
                            [{"kind": "silent"}, {"kind": "cipher"}])
    with pytest.raises(VocabularyMismatchError, match=r"64-wide.*32-wide.*Across families use ac"):
        run_experiment(load_experiment(str(path)), tmp_path / "out", progress=False)
    assert not (tmp_path / "out" / "results.jsonl").exists() or not (tmp_path / "out" / "results.jsonl").read_text()
    load_model(str(tiny_dir))  # the runner's models stay loadable

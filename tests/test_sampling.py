"""Sampled generation: filtering as transformers' logits warpers filter, one random stream per row (a
row draws the same tokens alone or in a batch), and finished rows leaving the batch without changing
any token."""

from __future__ import annotations

import pytest
import torch
from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

import interventions as iv
from interventions.harness.experiment import load_experiment
from interventions.harness.runner import run_experiment
from interventions.sampling import NUCLEUS_HEAD, filtered
from interventions.session import Sampler, Step
from test_runner import write_experiment
from tiny_models import tiny_model

BACKENDS = ["transformer_lens", "nnsight", "torch"]
PROMPTS = ["w3 w4 w5 w6 w7", "w8 w9", "w10 w11 w12"]


def warped(logits, temperature, top_k, top_p):
    """The reference: transformers' own warpers, in generate's order, then softmax."""
    scores = TemperatureLogitsWarper(temperature)(None, logits.clone())
    if top_k is not None:
        scores = TopKLogitsWarper(top_k)(None, scores)
    if top_p is not None:
        scores = TopPLogitsWarper(top_p)(None, scores)
    return torch.softmax(scores, -1)


# peaked logits keep the nucleus among the first NUCLEUS_HEAD tokens; flat ones need the full sort
@pytest.mark.parametrize("vocab,scale", [(50, 1.0), (3000, 6.0), (3000, 0.01)])
@pytest.mark.parametrize("top_k,top_p", [(None, 0.9), (20, 0.8), (None, 0.5), (7, None), (None, None)])
def test_filtered_matches_transformers_warpers(vocab, scale, top_k, top_p):
    logits = torch.randn(4, vocab, generator=torch.Generator().manual_seed(vocab)) * scale
    probs, ids = filtered(logits, 0.7, top_k, top_p)
    dense = probs if ids is None else torch.zeros(4, vocab).scatter(-1, ids, probs)
    assert torch.allclose(dense, warped(logits, 0.7, top_k, top_p), atol=1e-6)
    if vocab > NUCLEUS_HEAD and top_k is None and top_p is not None:
        assert ids.shape[1] == (NUCLEUS_HEAD if scale > 1 else vocab)
    probs, ids = filtered(logits, 0.0)
    assert probs.tolist() == [[1.0]] * 4 and torch.equal(ids[:, 0], logits.argmax(-1))


def test_sampler_draws_each_unfinished_row_from_its_own_generator():
    logits = torch.randn(3, 40, generator=torch.Generator().manual_seed(0))
    finished = torch.tensor([False, True, False])
    tokens = Sampler(0.8, [1, 2, 3])(Step(0, logits, None, finished))
    for row, seed in ((0, 1), (2, 3)):
        reference = torch.multinomial(torch.softmax(logits[row] / 0.8, -1), 1,
                                      generator=torch.Generator().manual_seed(seed))
        assert tokens[row] == reference[0]
    assert tokens[1] == logits[1].argmax()      # a finished row draws nothing


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_sampled_row_draws_the_same_tokens_alone_or_in_a_batch(backend):
    session = iv.Session(tiny_model("llama"), backend)
    sample = dict(max_new_tokens=10, do_sample=True, top_p=0.9, seed=3)
    batch = session.generate("B", PROMPTS, **sample)
    for row, prompt in enumerate(PROMPTS):
        assert session.generate("B", [prompt], **sample).texts[0] == batch.texts[row]
    assert session.generate("B", PROMPTS, **{**sample, "seed": 4}).texts != batch.texts
    # a nucleus of one token is the argmax: the greedy answer
    narrow = session.generate("B", PROMPTS, **{**sample, "top_p": 1e-6})
    assert torch.equal(narrow.ids, session.generate("B", PROMPTS, max_new_tokens=10).ids)
    with pytest.raises(iv.InterventionError, match="takes temperature, top_k and top_p; got also.*num_beams"):
        session.generate("B", PROMPTS, do_sample=True, num_beams=2)


# a prefill steer (seeded per family) under which one row ends within the budget and another does not
EARLY_END = {"gemma3": 2, "llama": 4, "qwen2": 2}


@pytest.mark.parametrize("family", sorted(EARLY_END))
@pytest.mark.parametrize("backend", BACKENDS)
def test_finished_rows_leave_the_batch_and_change_no_token(backend, family, monkeypatch):
    model = tiny_model(family)
    vector = torch.randn(model.d_model, generator=torch.Generator().manual_seed(EARLY_END[family])) * 3
    steer = [iv.Steer(target=iv.Site("B", layer=1), vector=vector, apply="prefill")]
    session = iv.Session(model, backend)
    rows_run = []
    forward = session.backend.forward

    def counting(model, batch, *args, **kwargs):
        rows_run.append(len(batch["attention_mask"]))
        return forward(model, batch, *args, **kwargs)

    monkeypatch.setattr(session.backend, "forward", counting)
    shrunk = session.decode("B", PROMPTS, steer, max_new_tokens=12)
    last_batch = rows_run[-1]
    kept = session.decode("B", PROMPTS, steer, max_new_tokens=12, keep_logits=True)   # keeping logits runs every row
    assert min(shrunk.new_tokens) < 12 == max(shrunk.new_tokens)
    assert last_batch < 3 and rows_run[-1] == 3                  # the rows that ended left the batch
    assert torch.equal(shrunk.ids, kept.ids) and shrunk.new_tokens == kept.new_tokens
    generated = session.generate("B", PROMPTS, steer, max_new_tokens=12).ids     # transformers' generate
    assert all(torch.equal(shrunk.ids[row, :n], generated[row, :n]) for row, n in enumerate(shrunk.new_tokens))


def test_an_experiments_top_k_filters_each_sampled_answer(tmp_path, tiny_dir):
    common = dict(max_new_tokens=6, tasks=[{"name": "countries", "n": 6}], protocols=[{"kind": "silent"}])
    runs = {}
    for name, sampling in {"greedy": None, "nucleus": {"temperature": 1.5, "seeds": [0, 1]},
                           "top1": {"temperature": 1.5, "seeds": [0, 1], "top_k": 1}}.items():
        experiment = load_experiment(str(write_experiment(tmp_path / f"{name}.yaml", tiny_dir, sampling=sampling,
                                                          **common)))
        runs[name] = run_experiment(experiment, tmp_path / name, progress=False)
    greedy = {r["item_id"]: r["prediction"] for r in runs["greedy"]}
    assert all(r["sampling"]["top_k"] == 1 and r["prediction"] == greedy[r["item_id"]] for r in runs["top1"])
    assert any(r["prediction"] != greedy[r["item_id"]] for r in runs["nucleus"])
    assert all("top_k" not in r["sampling"] for r in runs["nucleus"])    # unset, it stays out of the rows' keys

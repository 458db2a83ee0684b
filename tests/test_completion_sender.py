"""The completion sender: what A writes before its state is sent, sampled once and kept on disk, so a
resumed run or a later protocol reads it again instead of sampling it again."""

from __future__ import annotations

import json

import pytest
import torch

import interventions as iv
from interventions import completions
from interventions.completions import CompletionStore
from interventions.harness.prompts import sender_prompt
from interventions.harness.protocols import Context
from interventions.harness.protocols.ac import sender_texts
from interventions.harness.tasks import get_task
from tiny_models import tiny_model


@pytest.fixture(scope="module")
def model():
    return tiny_model("llama")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("INTERVENTIONS_CACHE", str(tmp_path))
    monkeypatch.setattr(completions, "_STORES", {})   # as in a new process
    return tmp_path


@pytest.fixture
def decodes(monkeypatch):
    """How many times each session sampled."""
    calls = []
    plain = iv.Session.decode

    def counted(self, role, prompts, *args, **kwargs):
        calls.append(len(prompts))
        return plain(self, role, prompts, *args, **kwargs)
    monkeypatch.setattr(iv.Session, "decode", counted)
    return calls


def _context(model, generation_seed=None):
    task = get_task("countries")
    items = task.items(4, 0)
    generation = {"seed": generation_seed} if generation_seed is not None else None
    return Context(iv.Session(model, "torch"), task, pool=items, generation=generation), items


def test_greedy_completion_is_what_generate_writes(model, cache):
    ctx, items = _context(model)
    texts, costs = sender_texts(ctx, items, "completion", 5, 0.0)
    for item, text, cost in zip(items, texts, costs):
        prompt = sender_prompt(model, ctx.task, item, "chat")
        ids = model.tokenizer(prompt, return_tensors="pt")
        with torch.no_grad():
            out = model.hf.generate(**ids, max_new_tokens=5, do_sample=False)
        assert text == prompt + model.tokenizer.decode(out[0, ids.input_ids.shape[1]:]).rstrip()
        assert cost.tokens == {"A": ids.input_ids.shape[1] + 5}


def test_completions_are_sampled_once_and_read_back_by_a_later_run(model, cache, decodes):
    ctx, items = _context(model)
    texts, costs = sender_texts(ctx, items, "completion", 6, 0.7)
    assert decodes == [4] and all(c.wall_s > 0 for c in costs)
    assert sender_texts(ctx, items[:2], "completion", 6, 0.7)[0] == texts[:2]   # a later protocol
    assert decodes == [4]

    completions._STORES.clear()                       # a resumed run, in a new process
    again, charged = sender_texts(_context(model)[0], items, "completion", 6, 0.7)
    assert decodes == [4] and again == texts
    assert [c.flops for c in charged] == [c.flops for c in costs]      # still charged its completion...
    assert [c.tokens for c in charged] == [c.tokens for c in costs]
    assert all(c.wall_s == 0 for c in charged)                          # ...but not the time it did not spend

    other_seed, _ = sender_texts(_context(model, generation_seed=1)[0], items, "completion", 6, 0.7)
    assert decodes == [4, 4] and other_seed != texts                    # another sampling seed samples again
    sender_texts(ctx, items, "completion", 7, 0.7)                      # and so do more tokens
    assert decodes == [4, 4, 4]


def test_another_model_does_not_read_these_completions(model, cache, decodes):
    other = tiny_model("llama", seed=1)
    ctx, items = _context(model)
    sender_texts(ctx, items, "completion", 4, 0.7)
    sender_texts(_context(other)[0], items, "completion", 4, 0.7)
    assert decodes == [4, 4]
    assert CompletionStore.of(model, "torch").path != CompletionStore.of(other, "torch").path


def test_a_half_written_line_is_skipped_and_its_completion_sampled_again(model, cache, decodes, capsys):
    ctx, items = _context(model)
    texts, _ = sender_texts(ctx, items, "completion", 4, 0.7)
    path = CompletionStore.of(model, "torch").path
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:-1]) + "\n" + lines[-1][:20])    # the last write was killed halfway

    completions._STORES.clear()
    assert sender_texts(_context(model)[0], items, "completion", 4, 0.7)[0] == texts
    assert decodes == [4, 1]                                            # only the lost one again
    assert "1 unreadable line(s) skipped" in capsys.readouterr().err
    rows = path.read_text().splitlines()
    assert len(rows) == 5 and rows[-2] == lines[-1][:20]                # the new line did not join the half one
    assert json.loads(rows[-1])["key"] == json.loads(lines[-1])["key"]

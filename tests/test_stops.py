"""Stop strings end a generated answer where a base model would go on to write the next turn: the
same tokens as plain generate up to the stop, the text before it, and only those tokens charged."""

from __future__ import annotations

import copy

import pytest

import interventions as iv
from interventions.harness.experiment import load_experiment
from interventions.harness.protocols.base import Context
from interventions.harness.runner import run_experiment
from interventions.stops import stop_at
from test_runner import write_experiment
from tiny_models import tiny_model

PROMPTS = ["w3 w4 w5 w6 w7", "w8 w9", "w10 w11 w12"]


def test_stop_at_takes_the_first_stop_after_the_answer_starts():
    stops = ["\n\n", "\nAnswer:"]
    assert stop_at(" 42 eggs\nAnswer: 42 eggs\n\nQuestion", stops) == len(" 42 eggs")
    assert stop_at("\n\nD\n\nExplanation", stops) == len("\n\nD")     # an answer may start on a new line
    assert stop_at("no stop here", stops) is None and stop_at("anything", []) is None


@pytest.mark.parametrize("backend", ["transformer_lens", "nnsight", "torch"])
@pytest.mark.parametrize("sampling", [{}, {"do_sample": True, "top_p": 0.9, "seed": 1}], ids=["greedy", "sampled"])
def test_generation_stops_at_a_stop_string_with_the_tokens_before_it(backend, sampling):
    model = tiny_model("llama")
    session = iv.Session(model, backend)
    full = session.generate("B", PROMPTS, max_new_tokens=12, **sampling)
    words = full.texts[0].split(" ")
    stop = f"{words[3]} {words[4]}"           # two words row 0 writes; maybe earlier too
    stopped = session.generate("B", PROMPTS, max_new_tokens=12, stop=[stop], **sampling)
    for row, text in enumerate(full.texts):
        if stop not in text:                  # untouched
            assert stopped.texts[row] == text and stopped.new_tokens[row] == full.new_tokens[row]
            continue
        # reference: a linear scan for the fewest generated tokens whose text holds the stop
        fewest = next(m for m in range(1, full.new_tokens[row] + 1)
                      if stop in model.tokenizer.decode(full.ids[row, :m], skip_special_tokens=True))
        assert stopped.texts[row] == text[:text.index(stop)]
        assert stopped.new_tokens[row] == fewest and stopped.ids[row, :fewest].equal(full.ids[row, :fewest])
        assert stopped.compute[row].tokens["B"] == stopped.prompt_tokens[row] + fewest
    alone = session.generate("B", PROMPTS[:1], max_new_tokens=12, stop=[stop], **sampling)
    assert alone.ids.shape[1] == alone.new_tokens[0] == stopped.new_tokens[0] < 12   # generate ended at the stop


def test_stop_strings_end_only_the_answers_of_models_without_a_chat_template():
    plain = tiny_model("llama")
    chat = copy.copy(plain)
    chat.tokenizer = copy.deepcopy(plain.tokenizer)
    chat.tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    ctx = Context(iv.Session({"A": plain, "B": chat}), task=None, generation={"seed": 0, "stop": ["\n"]})
    assert ctx.generation_for("A") == {"seed": 0, "stop": ["\n"]}
    assert ctx.generation_for("B") == {"seed": 0}


def test_an_experiments_stop_ends_each_sampled_answer_and_keys_its_rows(tmp_path, tiny_dir):
    sampling = {"top_p": 0.9, "temperature": 1.5, "seeds": [0]}
    common = dict(max_new_tokens=6, tasks=[{"name": "countries", "n": 6}], protocols=[{"kind": "silent"}])
    free = load_experiment(str(write_experiment(tmp_path / "free.yaml", tiny_dir, sampling=sampling, **common)))
    cut = load_experiment(str(write_experiment(tmp_path / "cut.yaml", tiny_dir, sampling={**sampling, "stop": [" "]},
                                               **common)))
    free_rows = run_experiment(free, tmp_path / "free", progress=False)
    cut_rows = run_experiment(cut, tmp_path / "cut", progress=False)
    assert all(r["sampling"]["stop"] == [" "] for r in cut_rows)
    assert not {r["key"] for r in free_rows} & {r["key"] for r in cut_rows}   # a stop is part of the work
    by_item = {r["item_id"]: r for r in free_rows}
    for row in cut_rows:   # the same draw up to the first space after the answer starts
        before = by_item[row["item_id"]]["prediction"]
        assert " " not in row["prediction"] and before.startswith(row["prediction"])
    assert any(" " in r["prediction"] for r in free_rows)

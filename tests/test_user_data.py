"""User data: files and Hugging Face datasets read through a field mapping, scoring that follows the
data, errors that name the row and field, the same question text for both roles, chance levels in
the summary, and `interventions export`."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from interventions.cli import main
from interventions.harness.experiment import load_experiment
from interventions.harness.export import flatten
from interventions.harness.prompts import answer_prompt, sender_prompt
from interventions.harness.runner import run_experiment
from interventions.harness.tasks import DatasetFormatError, TaskOptionError, get_task

QUESTIONS = [  # (id, question, choices, gold index)
    ("cap", "Capital of France?", ["Rome", "Paris", "Berlin"], 1),
    ("sum", "2 + 2 =", ["3", "4", "5"], 1),
    ("big", "Largest planet?", ["Jupiter", "Mars", "Venus"], 0),
]
TABLE_FIELDS = {"id": "qid", "question": "q", "answer": "a", "choices": ["c1", "c2", "c3"]}
LIST_FIELDS = {"id": "qid", "question": "q", "answer": "a", "choices": "opts"}


def _table_rows(answer=lambda choices, gold: choices[gold]):
    return [{"qid": i, "q": q, "a": answer(c, g), "c1": c[0], "c2": c[1], "c3": c[2]} for i, q, c, g in QUESTIONS]


def _list_rows():
    return [{"qid": i, "q": q, "a": c[g], "opts": c} for i, q, c, g in QUESTIONS]


def write_csv(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def write_parquet(path: Path, rows: list[dict]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def _essence(task):
    return [(it.id, it.question, it.answer, it.choices, it.answer_index) for it in task.all_items()]


# ---------------------------------------------------------------- reading the same items

def test_csv_jsonl_json_and_parquet_read_the_same_items(tmp_path):
    (tmp_path / "qa.json").write_text(json.dumps(_list_rows()))
    tasks = [
        get_task("file", path=str(write_csv(tmp_path / "qa.csv", _table_rows())), fields=TABLE_FIELDS),
        get_task("file", path=str(write_parquet(tmp_path / "qa.parquet", _table_rows())), fields=TABLE_FIELDS),
        get_task("file", path=str(write_jsonl(tmp_path / "qa.jsonl", _list_rows())), fields=LIST_FIELDS),
        get_task("file", path=str(tmp_path / "qa.json"), fields=LIST_FIELDS),
    ]
    assert [t.name for t in tasks] == ["csv/qa", "parquet/qa", "jsonl/qa", "json/qa"]
    want = [(f"qa/{i}", q, c[g], tuple(c), g) for i, q, c, g in QUESTIONS]
    for task in tasks:
        assert _essence(task) == want, task.name
        assert task.scoring == "choice_loglik"
        assert task.source.startswith(task.name.split("/")[0] + " file") and "sha256" in task.source


def test_format_option_overrides_the_extension(tmp_path):
    path = write_csv(tmp_path / "qa.txt", _table_rows())
    with pytest.raises(TaskOptionError, match="format"):
        get_task("file", path=str(path), fields=TABLE_FIELDS)
    assert _essence(get_task("file", path=str(path), fields=TABLE_FIELDS, format="csv"))[0][0] == "qa/cap"


def test_csv_cells_stay_text(tmp_path):
    path = write_csv(tmp_path / "codes.csv", [{"question": "Agent?", "answer": "007"},
                                              {"question": "Not available?", "answer": "NA"}])
    task = get_task("file", path=str(path))
    assert [it.answer for it in task.all_items()] == ["007", "NA"]


# ---------------------------------------------------------------- field mapping

def test_field_mapping_reads_context_ids_and_letters(tmp_path):
    rows = [{"passage": "Ann is in Rome.", "ask": "Where is Ann?", "gold": "B", "A": "Paris", "B": "Rome"},
            {"passage": "Bo is in Oslo.", "ask": "Where is Bo?", "gold": "Oslo", "A": "Oslo", "B": "Rome"}]
    task = get_task("file", path=str(write_csv(tmp_path / "where.csv", rows)),
                    fields={"question": "ask", "answer": "gold", "context": "passage", "choices": ["A", "B"]})
    first, second = task.all_items()
    assert (first.id, first.context, first.question) == ("where/1", "Ann is in Rome.", "Where is Ann?")
    assert (first.answer, first.answer_index, first.meta["answer_given"]) == ("Rome", 1, "B")
    assert (second.answer, second.answer_index) == ("Oslo", 0) and "answer_given" not in second.meta
    assert task.info_split == "private_context" and task.name == "csv/where"


def test_integer_answers_are_indices_and_ambiguity_names_answer_is(tmp_path):
    rows = [{"question": "Pick", "choices": ["x", "y", "z"], "answer": 2}]
    task = get_task("file", path=str(write_jsonl(tmp_path / "idx.jsonl", rows)))
    assert task.all_items()[0].answer == "z"
    ambiguous = [{"question": "Order?", "choices": ["1", "0"], "answer": 1}]   # the text "1", or index 1 ("0")?
    with pytest.raises(DatasetFormatError, match="answer_is") as e:
        get_task("file", path=str(write_jsonl(tmp_path / "amb.jsonl", ambiguous)))
    assert e.value.line == 1 and e.value.field == "answer"
    chosen = get_task("file", path=str(tmp_path / "amb.jsonl"), answer_is="index")
    assert chosen.all_items()[0].answer == "0"


def test_digit_strings_are_indices_only_when_asked(tmp_path):
    path = write_csv(tmp_path / "arc.csv", _table_rows(lambda choices, gold: str(gold)))
    with pytest.raises(DatasetFormatError, match="answer_is: index"):
        get_task("file", path=str(path), fields=TABLE_FIELDS)
    task = get_task("file", path=str(path), fields=TABLE_FIELDS, answer_is="index")
    assert [it.answer_index for it in task.all_items()] == [g for *_, g in QUESTIONS]


def test_unknown_role_and_missing_column_are_named(tmp_path):
    path = write_csv(tmp_path / "qa.csv", _table_rows())
    with pytest.raises(TaskOptionError, match="'questoin'.*Did you mean 'question'"):
        get_task("file", path=str(path), fields={"questoin": "q"})
    with pytest.raises(TaskOptionError, match="no column 'qq' \\(fields.question\\).*Its columns: qid, q, a"):
        get_task("file", path=str(path), fields={**TABLE_FIELDS, "question": "qq"})
    with pytest.raises(TaskOptionError, match="no column 'question' for the question: name the one that holds it "
                                              "with fields: \\{question: ...\\}"):
        get_task("file", path=str(path))
    with pytest.raises(TaskOptionError, match="fields must map roles to column names"):
        get_task("file", path=str(path), fields=["q", "a"])


# ---------------------------------------------------------------- scoring follows the data

def test_scoring_follows_the_data(tmp_path):
    with_choices = get_task("file", path=str(write_jsonl(tmp_path / "mc.jsonl", _list_rows())), fields=LIST_FIELDS)
    numbers = get_task("file", path=str(write_jsonl(tmp_path / "num.jsonl", [
        {"question": "2+2?", "answer": 4}, {"question": "Half of 5?", "answer": "2.5"}])))
    words = get_task("file", path=str(write_jsonl(tmp_path / "words.jsonl", [
        {"question": "2+2?", "answer": "4"}, {"question": "Capital of Italy?", "answer": "Rome"}])))
    assert (with_choices.scoring, numbers.scoring, words.scoring) == ("choice_loglik", "numeric", "exact")
    assert numbers.score(numbers.all_items()[1], "It is 2.50.") == 1.0
    assert words.score(words.all_items()[1], "rome\nbecause...") == 1.0
    assert with_choices.chance(with_choices.all_items()[0]) == pytest.approx(1 / 3)
    assert words.chance(words.all_items()[0]) is None


def test_choice_loglik_declared_on_items_without_choices_names_the_row(tmp_path):
    path = write_jsonl(tmp_path / "free.jsonl", [{"question": "q1", "answer": "a"}, {"question": "q2", "answer": "b"}])
    with pytest.raises(DatasetFormatError, match=r"free.jsonl:1: field 'choices' needs at least 2 options.*"
                                                 r"fields: \{choices"):
        get_task("file", path=str(path), scoring="choice_loglik")


def test_exact_on_letter_answers_is_refused_with_the_fix(tmp_path):
    path = write_csv(tmp_path / "letters.csv", _table_rows(lambda choices, gold: "ABC"[gold]))
    with pytest.raises(DatasetFormatError, match="row 1: field 'a' \\(the answer\\) 'B' names a choice by "
                                                 "position.*Leave scoring out") as e:
        get_task("file", path=str(path), fields=TABLE_FIELDS, scoring="exact")
    assert e.value.line == 1
    assert get_task("file", path=str(path), fields=TABLE_FIELDS).scoring == "choice_loglik"


def test_some_rows_without_choices_is_an_error_not_a_mix(tmp_path):
    rows = [{"question": q, "answer": c[g], "choices": c} for _, q, c, g in QUESTIONS]
    rows.append({"question": "Name a colour", "answer": "red"})
    with pytest.raises(DatasetFormatError, match="mixed.jsonl:4: field 'choices' needs at least 2 "
                                                 "options.*give every row its choices, or set scoring: exact"):
        get_task("file", path=str(write_jsonl(tmp_path / "mixed.jsonl", rows)))
    # a choices column named in fields: a line without it is a missing field
    rows = _list_rows() + [{"qid": "free", "q": "Name a colour", "a": "red"}]
    with pytest.raises(DatasetFormatError, match="named.jsonl:4: field 'opts' \\(the choices\\) is missing"):
        get_task("file", path=str(write_jsonl(tmp_path / "named.jsonl", rows)), fields=LIST_FIELDS)


def test_unknown_scoring_is_named(tmp_path):
    with pytest.raises(TaskOptionError, match="Did you mean 'numeric'"):
        get_task("file", path=str(write_jsonl(tmp_path / "a.jsonl", _list_rows())), scoring="numerik")


# ---------------------------------------------------------------- missing fields name the row and field

def test_empty_csv_cell_names_row_and_field(tmp_path):
    rows = _table_rows()
    rows[1]["q"] = ""
    with pytest.raises(DatasetFormatError) as e:
        get_task("file", path=str(write_csv(tmp_path / "gap.csv", rows)), fields=TABLE_FIELDS)
    assert str(e.value).startswith(f"{tmp_path / 'gap.csv'}: row 2: field 'q' (the question) is missing")
    assert (e.value.line, e.value.field) == (2, "q")


def test_missing_key_in_a_json_line_names_the_line(tmp_path):
    rows = _list_rows()
    del rows[2]["a"]
    path = write_jsonl(tmp_path / "gap.jsonl", [rows[0], "", rows[1], rows[2]])  # a blank line counts
    with pytest.raises(DatasetFormatError, match=r"gap.jsonl:4: field 'a' \(the answer\) is missing"):
        get_task("file", path=str(path), fields=LIST_FIELDS)


def test_a_gap_between_choice_columns_is_named(tmp_path):
    rows = _table_rows()
    rows[0]["c2"] = ""
    with pytest.raises(DatasetFormatError, match="row 1: field 'c2' \\(the choices\\) is missing"):
        get_task("file", path=str(write_csv(tmp_path / "hole.csv", rows)), fields=TABLE_FIELDS)
    rows = _table_rows()
    rows[1]["c3"] = ""   # fewer choices on one item: fine
    task = get_task("file", path=str(write_csv(tmp_path / "short.csv", rows)), fields=TABLE_FIELDS)
    assert task.all_items()[1].choices == ("3", "4")


# ---------------------------------------------------------------- Hugging Face datasets

def test_hf_reads_a_local_dataset_folder(tmp_path):
    folder = tmp_path / "my_dataset"
    folder.mkdir()
    write_csv(folder / "test.csv", _table_rows())
    write_csv(folder / "train.csv", _table_rows()[:1])
    task = get_task("hf", dataset=str(folder), split="test", fields=TABLE_FIELDS)
    assert task.name == f"hf/{folder}/test" and len(task.all_items()) == 3
    assert task.all_items()[0].id == "test/cap" and "split 'test'" in task.source


def test_hf_hub_id_offline_says_so_in_one_line(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(TaskOptionError) as e:
        get_task("hf", dataset="no-such-org/no-such-dataset-xyz", split="test")
    message = str(e.value)
    assert "HF_HUB_OFFLINE=0" in message and "no-such-org/no-such-dataset-xyz" in message and "\n" not in message


# ---------------------------------------------------------------- end to end on a tiny model

@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_dir):
    """One experiment on a user CSV (4-choice items in the tiny model's words) and Countries:
    B alone, and same-model AC replace at k = j."""
    root = tmp_path_factory.mktemp("user-run")
    words = [f"w{i}" for i in range(3, 96)]
    rows = [{"q": f"{words[i]} {words[i + 7]} {words[i + 2]}", "a": "ABCD"[i % 4],
             **{f"c{n + 1}": f"{words[(5 * i + n * 11) % 90]} {words[(i + n) % 90]}" for n in range(4)}}
            for i in range(10)]
    data = write_csv(root / "quiz.csv", rows)
    spec = {"name": "user", "seed": 0, "max_new_tokens": 3, "batch_size": 4,
            "pairs": [{"A": str(tiny_dir), "B": str(tiny_dir)}],
            "tasks": [{"name": "file", "options": {"path": str(data), "fields": {
                "question": "q", "answer": "a", "choices": ["c1", "c2", "c3", "c4"]}}},
                {"name": "countries", "n": 3}],
            "protocols": [{"kind": "single"}, {"kind": "ac", "combine": "replace", "k": [1, 3], "j": [1, 3]}]}
    path = root / "user.yaml"
    path.write_text(json.dumps(spec))
    out = root / "out"
    rows = run_experiment(load_experiment(str(path)), out, progress=False)
    return path, out, rows


def test_same_model_splice_at_k_equal_j_is_a_no_op_on_a_user_task(tiny_run):
    _, _, rows = tiny_run
    user = [r for r in rows if r["task"] == "csv/quiz"]
    answers = lambda name: {r["item_id"]: (r["prediction"], r["score_norm"])  # noqa: E731
                            for r in user if r["protocol"] == name}
    kl = lambda name: [r["extra"]["diagnostics"]["kl"] for r in user if r["protocol"] == name]  # noqa: E731
    assert len(answers("single_B")) == 10
    for k in (1, 3):
        assert answers(f"ac_replace_k{k}_j{k}") == answers("single_B"), k
        # KL(clean || spliced) at the answer position is the sensitive check: A read exactly B's text
        assert max(kl(f"ac_replace_k{k}_j{k}")) < 1e-9, k
    assert min(kl("ac_replace_k1_j3")) > 1e-4   # a splice that is not a no-op shows up in the same measure


def test_sender_and_receiver_read_the_same_question(tmp_path):
    task = get_task("file", path=str(write_jsonl(tmp_path / "mc.jsonl", _list_rows())), fields=LIST_FIELDS)
    item = task.all_items()[0]
    # a choice task's prompts do not depend on the model (no chat template), so no model is needed
    assert sender_prompt(None, task, item) == answer_prompt(None, task, item) == "Question: Capital of France?\nAnswer:"


def test_summary_prints_each_tasks_chance(tiny_run):
    path, out, _ = tiny_run
    assert main(["report", str(path), "--out", str(out)]) == 0
    summary = (out / "summary.md").read_text()
    user = summary.split("## csv/quiz")[1].split("## ")[0]
    countries = summary.split("## countries")[1].split("## ")[0]
    assert "Chance: 0.250 (a uniform guess among each item's choices)." in user
    assert "Chance: – (the rows record no choices" in countries


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_export_writes_one_table_row_per_result(tiny_run, tmp_path, fmt, capsys):
    import pyarrow.parquet as pq

    path, out, rows = tiny_run
    target = tmp_path / f"rows.{fmt}"
    assert main(["export", str(path), "--results", str(out), "--format", fmt, "--out", str(target)]) == 0
    assert f"{len(rows)} rows -> {target}" in capsys.readouterr().out
    if fmt == "csv":
        with open(target, newline="") as handle:
            table = list(csv.DictReader(handle))
    else:
        table = pq.read_table(target).to_pylist()
    assert len(table) == len(rows)
    assert [t["key"] for t in table] == [r["key"] for r in rows]
    spliced = next(t for t, r in zip(table, rows) if r["protocol"].startswith("ac_"))
    assert float(spliced["compute.tokens.A"]) > 0 and spliced["models.B.name"]
    assert json.loads(spliced["interventions"])[0]["kind"] == "splice"   # lists as JSON text
    assert spliced["params.k"] in (1, 3, "1", "3")


def test_flatten_dots_nested_fields_and_writes_lists_as_json():
    assert flatten({"a": {"b": 1, "c": {"d": None}}, "e": [1, {"f": 2}], "g": {}}) == {
        "a.b": 1, "a.c.d": None, "e": '[1, {"f": 2}]', "g": "{}"}

"""Results that cannot lie: one writer per folder, corruption-tolerant reads, `check`, clean exits.

Each test reproduces a failure a careful user found (two runs into one folder, a garbage line
mid-file, Ctrl-C) and shows it handled.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from interventions import cli
from interventions.harness.check import check_results
from interventions.harness.experiment import load_experiment
from interventions.harness.lock import ResultsLockedError, results_lock
from interventions.harness.runner import report, run_experiment
from interventions.harness.store import read_results, read_rows

from test_runner import write_experiment


def _cli(*args) -> list[str]:
    return [sys.executable, "-m", "interventions.cli", *map(str, args)]


def _tiny(tmp_path, tiny_dir, n=8, **overrides):
    spec = write_experiment(tmp_path / "e.yaml", tiny_dir, tasks=[{"name": "countries", "n": n}], **overrides)
    return spec, load_experiment(str(spec))


def test_garbage_line_mid_file_loses_nothing_and_adds_nothing(tmp_path, tiny_dir):
    spec, experiment = _tiny(tmp_path, tiny_dir)
    out = tmp_path / "out"
    rows = run_experiment(experiment, out, progress=False)
    path = out / "results.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    lines.insert(5, "this is not json\n")
    path.write_text("".join(lines))
    found = read_results(path)
    assert len(found.rows) == len(rows) and found.bad_lines == [6]
    again = run_experiment(experiment, out, progress=False)     # resume: nothing is missing
    assert len(again) == len(rows)
    assert len(path.read_text().splitlines()) == len(rows) + 1  # nothing re-appended
    summary = report(experiment, out)["summary"]
    assert sum(s["n"] for s in summary) == len(rows)            # every row counted once
    assert "skipped 1 unreadable line (line 6)" in (out / "summary.md").read_text()
    checked = check_results(out)
    assert not checked.clean and checked.bad_lines == [6]
    assert check_results(out, fix=True).lines()[-1].strip().startswith("fixed: 1 line(s) moved")
    assert check_results(out).clean and len(read_rows(path)) == len(rows)
    assert (out / "results.rejected").read_text() == "this is not json\n"


def test_duplicate_rows_are_counted_once_and_reported(tmp_path, tiny_dir):
    _, experiment = _tiny(tmp_path, tiny_dir)
    out = tmp_path / "out"
    rows = run_experiment(experiment, out, progress=False)
    path = out / "results.jsonl"
    path.write_text(path.read_text() * 2)  # what two unlocked runs into one folder produced
    assert len(read_rows(path)) == len(rows)
    summary = report(experiment, out)["summary"]
    assert sum(s["n"] for s in summary) == len(rows)
    assert f"dropped {len(rows)} duplicate rows" in (out / "summary.md").read_text()
    assert len(check_results(out).duplicates) == len(rows)


def test_second_writer_is_refused_naming_the_holder(tmp_path, tiny_dir):
    _, experiment = _tiny(tmp_path, tiny_dir)
    out = tmp_path / "out"
    with results_lock(out):
        with pytest.raises(ResultsLockedError, match=f"PID {os.getpid()}.*--wait"):
            run_experiment(experiment, out, progress=False)
    assert not (out / "results.jsonl").exists()


def test_wait_queues_behind_the_holder(tmp_path, tiny_dir):
    _, experiment = _tiny(tmp_path, tiny_dir, n=4)
    out = tmp_path / "out"
    held = threading.Event()

    def hold():
        with results_lock(out):
            held.set()
            time.sleep(1.0)

    holder = threading.Thread(target=hold)
    holder.start()
    held.wait()
    start = time.perf_counter()
    rows = run_experiment(experiment, out, progress=False, wait=True)
    holder.join()
    assert time.perf_counter() - start >= 0.9 and len(rows) == 4 * 3


def test_two_concurrent_runs_one_refused_no_duplicates(tmp_path, tiny_dir):
    # long enough (80 items) that the second process starts before the first is done, even under load
    spec, _ = _tiny(tmp_path, tiny_dir, n=80, batch_size=2)
    out = tmp_path / "out"
    procs = [subprocess.Popen(_cli("run", spec, "--out", out), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    refused = next(err for code, err in results if code == 2).strip().splitlines()
    assert len(refused) == 1 and "is being written by PID" in refused[0]
    keys = [json.loads(line)["key"] for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(keys) == 80 * 3 and len(set(keys)) == len(keys)


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "scheduler-sigterm"])
def test_interrupt_exits_130_with_the_resume_command(tmp_path, tiny_dir, stop):
    spec, _ = _tiny(tmp_path, tiny_dir, n=40, batch_size=2)
    out = tmp_path / "out"
    results = out / "results.jsonl"
    # a shell's background jobs inherit SIGINT as ignored; give the child Ctrl-C back, as a terminal would
    proc = subprocess.Popen(_cli("run", spec, "--out", out), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 120
    while time.time() < deadline and len(read_rows(results)) < 6:
        time.sleep(0.05)
    proc.send_signal(stop)
    code, err = proc.wait(timeout=60), proc.stderr.read()
    saved = len(read_rows(results))
    assert code == 130 and "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert f"of {40 * 3} work items done" in last and f"resume with: interventions run {spec} --out {out}" in last
    assert 6 <= saved < 120
    subprocess.run(_cli("run", spec, "--out", out), check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    keys = [r["key"] for r in read_rows(results)]
    assert len(keys) == 120 and len(set(keys)) == 120


def test_main_gives_the_callers_sigterm_handler_back(capsys):
    def mine(signum, frame):
        pass
    previous = signal.signal(signal.SIGTERM, mine)
    try:
        assert cli.main(["protocols"]) == 0
        assert signal.getsignal(signal.SIGTERM) is mine   # SIGTERM is Ctrl-C only while a command runs
    finally:
        signal.signal(signal.SIGTERM, previous)


BAD_TASKS = {
    "jsonl file missing": ({"name": "jsonl", "options": {"path": "nope.jsonl"}}, "not found"),
    "wrong scoring": ({"name": "jsonl", "options": {"path": "ok.jsonl", "scoring": "bogus"}}, "scoring"),
    "misspelled option": ({"name": "jsonl", "options": {"path": "ok.jsonl", "scorng": "exact"}},
                          "Did you mean 'scoring'"),
    "jsonl without path": ({"name": "jsonl"}, "needs the option 'path'"),
    "negative n": ({"name": "countries", "n": -5}, r"tasks\[0\]\.n"),
}


@pytest.mark.parametrize("case", sorted(BAD_TASKS))
def test_bad_input_is_one_line_exit_2_before_any_model_loads(case, tmp_path, tiny_dir, monkeypatch, capsys):
    import interventions.harness.units as units

    monkeypatch.chdir(tmp_path)
    (tmp_path / "ok.jsonl").write_text('{"question": "q", "answer": "a"}\n')
    for loader in ("load_model", "model_identity"):
        monkeypatch.setattr(units, loader, lambda *a, **k: pytest.fail("a model was loaded"))
    entry, message = BAD_TASKS[case]
    spec = write_experiment(tmp_path / "e.yaml", tiny_dir, tasks=[entry])
    assert cli.main(["run", str(spec), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")
    assert __import__("re").search(message, err[0]), err[0]


def _exit_code(argv) -> int:
    try:
        return cli.main(argv)
    except SystemExit as stop:  # argparse's own refusals
        return stop.code


@pytest.mark.parametrize("case", ["out is a file", "empty task list", "k not a layer", "limit 0", "batch size 0"])
def test_more_bad_inputs(case, tmp_path, tiny_dir, monkeypatch, capsys):
    import interventions.harness.units as units

    for loader in ("load_model", "model_identity"):
        monkeypatch.setattr(units, loader, lambda *a, **k: pytest.fail("a model was loaded"))
    out, extra, overrides = tmp_path / "out", [], {}
    if case == "out is a file":
        out.write_text("")
    elif case == "empty task list":
        overrides["tasks"] = []
    elif case == "k not a layer":
        overrides["protocols"] = [{"kind": "ac", "k": "eight", "j": 8}]
    else:
        extra = [{"limit 0": "--limit", "batch size 0": "--batch-size"}[case], "0"]
    spec = write_experiment(tmp_path / "e.yaml", tiny_dir, **overrides)
    assert _exit_code(["run", str(spec), "--out", str(out), *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert {"out is a file": "is a file", "empty task list": "tasks", "k not a layer": "layer 'eight'",
            "limit 0": "--limit", "batch size 0": "--batch-size"}[case] in err[0]


def test_check_flags_rows_whose_protocol_changed(tmp_path, tiny_dir):
    _, experiment = _tiny(tmp_path, tiny_dir, n=4)
    out = tmp_path / "out"
    run_experiment(experiment, out, progress=False)
    path = out / "results.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    edited = next(r for r in rows if r["protocol_spec"]["kind"] == "ac")
    edited["protocol_spec"]["k"] = 0  # as if the protocol's definition had changed under the row
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    checked = check_results(out)
    assert sum(len(keys) for keys in checked.stale.values()) == 1
    check_results(out, fix=True)
    assert len(read_rows(path)) == len(rows) - 1
    assert len(run_experiment(experiment, out, progress=False)) == len(rows)  # the resume redoes exactly it


def test_a_longer_token_budget_recomputes_generated_answers_and_keeps_scored_choices(tmp_path, tiny_dir):
    choices = tmp_path / "mc.jsonl"
    choices.write_text("".join(json.dumps({"id": f"q{i}", "question": f"w{i + 3}?", "choices": ["w5", "w6 w7"],
                                           "answer": "w5"}) + "\n" for i in range(3)))
    tasks = [{"name": "countries", "n": 3},
             {"name": "jsonl", "options": {"path": str(choices), "scoring": "choice_loglik"}}]
    out = tmp_path / "out"
    short = load_experiment(str(write_experiment(tmp_path / "e.yaml", tiny_dir, tasks=tasks,
                                                 protocols=[{"kind": "silent"}])))
    first = run_experiment(short, out, progress=False)
    assert [r.get("max_new_tokens", 0) for r in first] == [4] * 3 + [0] * 3   # only generated answers say it
    longer = load_experiment(str(write_experiment(tmp_path / "e.yaml", tiny_dir, tasks=tasks, max_new_tokens=6,
                                                  protocols=[{"kind": "silent"}])))
    both = run_experiment(longer, out, progress=False)
    generated = [r for r in both if r["task"] == "countries"]
    assert len(both) == 9 and sorted(r["max_new_tokens"] for r in generated) == [4] * 3 + [6] * 3
    assert {r["key"] for r in both if r["task"] != "countries"} == {r["key"] for r in first if r["task"] != "countries"}
    assert check_results(out).clean


def test_check_stamps_generated_answers_written_before_rows_said_their_token_budget(tmp_path, tiny_dir):
    from interventions.harness.runner import UnbudgetedRowsError
    from interventions.harness.units import row_key, row_weights

    spec, experiment = _tiny(tmp_path, tiny_dir, n=2)
    out = tmp_path / "out"
    rows = run_experiment(experiment, out, progress=False)
    path = out / "results.jsonl"
    by_name = {p.name: p for p in experiment.protocols}
    legacy = []
    for row in rows:   # as the runner wrote them before: no budget, and a key without it
        old = {k: v for k, v in row.items() if k != "max_new_tokens"}
        legacy.append({**old, "key": row_key(by_name[row["protocol"]], row_weights(row), old)})
    legacy[1]["reused_from"] = legacy[0]["key"]   # a copy names its source by the key the source had
    path.write_text("".join(json.dumps(r) + "\n" for r in legacy))
    with pytest.raises(UnbudgetedRowsError, match="check .* --fix"):
        run_experiment(experiment, out, progress=False)   # it would redo them all, so it says how to keep them
    (advice,) = check_results(out).unchecked   # the folder alone does not say the experiment's budget
    assert "name its YAML" in advice
    checked = check_results(out, experiment=experiment)
    assert len(checked.unbudgeted) == len(rows) and not checked.clean
    assert "experiment's max_new_tokens: [4]" in "\n".join(checked.lines())
    check_results(out, fix=True, experiment=experiment)
    stamped = read_rows(path)
    assert stamped == [{**r, **({"reused_from": rows[0]["key"]} if i == 1 else {})} for i, r in enumerate(rows)]
    assert check_results(out).clean
    assert len(run_experiment(experiment, out, progress=False)) == len(rows)   # nothing to redo
    assert len(path.read_text().splitlines()) == len(rows)


def test_check_rescores_answers_whose_parser_changed_and_keeps_the_rest(tmp_path, monkeypatch):
    from interventions.harness.tasks import get_task

    task = get_task("mmlu_gen/formal_logic")
    items = task.items(3, seed=0)
    gold = ["ABCD"[it.answer_index] for it in items]
    wrong = [next(x for x in "ABCD" if x != g) for g in gold]
    answers = [f"A. x\nB. y\nThe answer is {gold[0]}.", gold[1], f"{wrong[2]}."]
    rows = [{"key": f"k{i}", "task": task.name, "item_id": it.id, "max_new_tokens": 16, "gold": it.answer,
             "prediction": text,
             # as an older parser wrote them: the first answer's conclusion was not read
             "score": 0.0 if i == 0 else task.score(it, text), "extra": {"parsed": (
                 {"pick": None, "rule": "several", "named": ["A", "B"]} if i == 0 else task.parse(it, text))}}
            for i, (it, text) in enumerate(zip(items, answers))]
    rows.append({**rows[2], "key": "k3", "task": "no_such_task"})   # a task this install cannot build
    out = tmp_path / "out"
    out.mkdir()
    path = out / "results.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    monkeypatch.setattr("interventions.harness.check._row_problem", lambda row, zoo: None)  # only the parse is tested
    report = check_results(out)
    assert list(report.rescored) == ["k0"] and not report.clean
    assert list(report.unchecked.values()) == [1] and "'no_such_task' cannot be rebuilt" in str(report.unchecked)
    assert "1 row(s) whose answer their task now parses otherwise (1 with another score)" in [
        line.strip() for line in report.lines()]
    fixed = check_results(out, fix=True).lines()
    assert fixed[-1].strip() == ("fixed: 0 line(s) moved to results.rejected (a resume recomputes their work "
                                 "items), 1 row(s) re-scored, 0 stamped with their token budget")
    assert check_results(out).clean
    after = read_rows(path)
    assert [r["key"] for r in after] == ["k0", "k1", "k2", "k3"]   # nothing dropped, order kept
    assert after[0]["score"] == 1.0 and after[0]["extra"]["parsed"]["rule"] == "stated"
    assert after[1:] == rows[1:]


def test_check_finds_the_folder_from_the_experiment(tmp_path, tiny_dir, monkeypatch, capsys):
    spec, experiment = _tiny(tmp_path, tiny_dir, n=2)
    monkeypatch.chdir(tmp_path)
    run_experiment(experiment, tmp_path / "results" / "tiny", progress=False)
    assert cli.main(["check", str(spec)]) == 0   # by YAML path, as `run` and `report` take it
    assert capsys.readouterr().out.splitlines()[0] == "results/tiny/results.jsonl: 6 rows"


def test_unwritable_out_is_named(tmp_path):
    from interventions.harness.store import OutputDirError, writable_dir

    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(OutputDirError, match="is a file"):
        writable_dir(blocker)
    with pytest.raises(OutputDirError, match="not a writable directory"):
        writable_dir(blocker / "sub")

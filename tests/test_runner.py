"""The runner: work-item keys, resumption after a kill, and clear errors in experiment files."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from interventions.errors import MissingRoleError
from interventions.harness.experiment import ExperimentFormatError, load_experiment
from interventions.harness.protocols import UnknownProtocolError
from interventions.harness.runner import run_experiment
from interventions.harness.store import read_rows
from interventions.harness.tasks import UnknownTaskError


def write_experiment(path: Path, model_dir: Path, **overrides) -> Path:
    data = {"name": "tiny", "seed": 0, "max_new_tokens": 4, "batch_size": 4,
            "pairs": [{"A": str(model_dir), "B": str(model_dir)}],
            "tasks": [{"name": "countries", "n": 24}],
            "protocols": [{"kind": "silent"}, {"kind": "ac", "combine": ["sum", "replace"], "k": 1, "j": 2}]}
    data.update(overrides)
    path.write_text(json.dumps(data))  # JSON is YAML
    return path


def test_rerun_skips_finished_items(tmp_path, tiny_dir):
    experiment = load_experiment(str(write_experiment(tmp_path / "e.yaml", tiny_dir)))
    rows = run_experiment(experiment, tmp_path / "out", progress=False)
    assert len(rows) == 24 * 3
    assert len({r["key"] for r in rows}) == len(rows)
    mtime = (tmp_path / "out" / "results.jsonl").stat().st_mtime_ns
    again = run_experiment(experiment, tmp_path / "out", progress=False)
    assert len(again) == len(rows)
    assert (tmp_path / "out" / "results.jsonl").stat().st_mtime_ns == mtime  # nothing re-run
    row = rows[-1]
    assert row["protocol_spec"]["kind"] == "ac" and row["compute"]["flops"] > 0
    assert set(row["compute"]["tokens"]) == {"A", "B"}


def test_killed_run_resumes_without_loss_or_duplicates(tmp_path, tiny_dir):
    spec = write_experiment(tmp_path / "e.yaml", tiny_dir, batch_size=2, tasks=[{"name": "countries", "n": 40}])
    out = tmp_path / "out"
    results = out / "results.jsonl"
    command = [sys.executable, "-m", "interventions.cli", "run", str(spec), "--out", str(out)]
    kill_mid_run_and_resume(command, results, total=40 * 3)


def kill_mid_run_and_resume(command: list, results: Path, total: int, wait_s: float = 120) -> list[dict]:
    """SIGKILL ``command`` once it has written a few rows, tear its last line, run it again; check that
    every key is written once and the rows finished before the kill are kept. Returns the rows."""
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + wait_s
    while time.time() < deadline and len(read_rows(results)) < 6 and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = read_rows(results)
    assert 6 <= len(partial) < total, "the kill should land mid-run"
    with open(results, "a") as handle:  # as if the kill tore a line in half
        handle.write('{"key": "torn')
    done = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = read_rows(results)
    keys = [r["key"] for r in rows]
    assert len(keys) == total and len(set(keys)) == len(keys)
    assert keys[:len(partial)] == [r["key"] for r in partial]  # finished work kept
    return rows


def test_typo_in_experiment_key_is_named(tmp_path, tiny_dir):
    path = write_experiment(tmp_path / "e.yaml", tiny_dir, protocls=[])
    with pytest.raises(ExperimentFormatError, match="'protocls'.*Did you mean 'protocols'"):
        load_experiment(str(path))
    path = write_experiment(tmp_path / "f.yaml", tiny_dir, protocols=[{"kind": "ac", "combin": "sum"}])
    with pytest.raises(ExperimentFormatError, match=r"protocols\[0\].*'combin'"):
        load_experiment(str(path))


def test_unknown_protocol_and_task_list_known(tmp_path, tiny_dir):
    path = write_experiment(tmp_path / "e.yaml", tiny_dir, protocols=[{"kind": "silnet"}])
    with pytest.raises(UnknownProtocolError, match="Did you mean 'silent'"):
        load_experiment(str(path))
    path = write_experiment(tmp_path / "f.yaml", tiny_dir, tasks=[{"name": "countreis"}])
    with pytest.raises(UnknownTaskError, match="countries"):
        run_experiment(load_experiment(str(path)), tmp_path / "out", progress=False)


def test_two_model_protocol_with_one_model(tmp_path, tiny_dir):
    path = write_experiment(tmp_path / "e.yaml", tiny_dir, pairs=[{"B": str(tiny_dir)}])
    with pytest.raises(MissingRoleError, match="needs two models"):
        run_experiment(load_experiment(str(path)), tmp_path / "out", progress=False)


def test_catalog_entries_parse():
    for name in ("quickstart", "ac_coordination", "ac_reasoning", "d2_reverse_cascade"):
        experiment = load_experiment(name)
        assert experiment.protocols and experiment.tasks


def test_overlapping_protocol_entries_run_once(tmp_path, tiny_dir):
    path = write_experiment(tmp_path / "e.yaml", tiny_dir, protocols=[
        {"kind": "ac", "combine": ["sum", "replace"], "k": 1, "j": 2},
        {"kind": "ac", "combine": "replace", "k": [1, 2], "j": 2, "tasks": ["countries"]}])
    experiment = load_experiment(str(path))
    names = [p.name for p in experiment.protocols]
    assert names == ["ac_sum_k1_j2", "ac_replace_k1_j2", "ac_replace_k2_j2"]
    assert experiment.protocol_tasks[experiment.protocols[1]] is None  # unrestricted via the first entry


def test_every_protocol_runs_on_generation_and_choice_tasks(tmp_path, tiny_dir):
    data = tmp_path / "mc.jsonl"
    data.write_text("".join(json.dumps({"id": f"q{i}", "question": f"w{i + 3} w{i + 4}?", "choices": ["w5", "w6 w7"],
                                        "answer": "w5"}) + "\n" for i in range(6)))
    path = write_experiment(tmp_path / "e.yaml", tiny_dir, tasks=[
        {"name": "countries", "n": 4}, {"name": "jsonl", "options": {"path": str(data), "scoring": "choice_loglik"}}],
        protocols=[{"kind": k} for k in ("single", "silent", "skyline", "nl_message", "nl_debate")]
        + [{"kind": "ac", "combine": "mean", "k": 0.5, "j": -1, "align": "trailing"}])
    rows = run_experiment(load_experiment(str(path)), tmp_path / "out", progress=False)
    by_task = {}
    for row in rows:
        by_task.setdefault(row["task"], set()).add(row["protocol"])
    # skyline and message need private context, so they only run on countries
    assert by_task["countries"] == {"single_B", "silent", "skyline", "nl_message", "nl_debate_r2", "ac_mean_k0.5_j-1_trailing"}
    assert by_task["jsonl/mc"] == {"single_B", "silent", "nl_debate_r2", "ac_mean_k0.5_j-1_trailing"}
    debate = [r for r in rows if r["protocol"] == "nl_debate_r2"]
    assert all(set(r["compute"]["tokens"]) == {"A", "B"} for r in debate)
    assert all(r["score_norm"] is not None for r in rows if r["task"] == "jsonl/mc")

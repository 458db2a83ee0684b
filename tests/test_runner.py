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


def test_batch_size_override_sizes_the_units_not_the_keys(tmp_path, tiny_dir):
    """`run --batch-size` (a GPU takes bigger batches) changes what runs at once, not which rows exist;
    items of like length batch together."""
    from interventions.harness.runner import _runner
    from interventions.harness.prompts import prompt_size
    from interventions.harness.units import plan

    experiment = load_experiment(str(write_experiment(tmp_path / "e.yaml", tiny_dir, protocols=[{"kind": "silent"}],
                                                      tasks=[{"name": "countries", "n": 10}])))
    runner = _runner(experiment, None, None, None, None, None, 3)
    units = plan(runner, {}).units
    assert [len(u) for u in units] == [3, 3, 3, 1]
    size = {it.id: prompt_size(it) for it in runner.items(0)}   # like lengths batch together
    sizes = [[size[i] for i in u.item_ids] for u in units]
    assert all(max(a) <= min(b) for a, b in zip(sizes, sizes[1:]))
    assert [i for u in units for i in u.item_ids] != list(size)    # the task's own order was not
    rows = run_experiment(experiment, tmp_path / "out", progress=False, batch_size=3)
    path = tmp_path / "out" / "results.jsonl"
    mtime = path.stat().st_mtime_ns
    assert {r["key"] for r in run_experiment(experiment, tmp_path / "out", progress=False)} == {r["key"] for r in rows}
    assert path.stat().st_mtime_ns == mtime and len(rows) == 10   # the default size (4) found every row done


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


def test_part_of_an_experiment_runs_first_and_the_full_run_resumes_around_it(tmp_path, tiny_dir):
    path = write_experiment(tmp_path / "e.yaml", tiny_dir, tasks=[{"name": "countries", "n": 4},
                                                                   {"name": "tip_sheets", "n": 4}])
    experiment = load_experiment(str(path))
    with pytest.raises(ExperimentFormatError, match="no task 'tip_sheet'.*Did you mean 'tip_sheets'"):
        experiment.only(tasks=["tip_sheet"])
    with pytest.raises(ExperimentFormatError, match="Its pairs: "):
        experiment.only(pairs=["a>b"])
    with pytest.raises(ExperimentFormatError, match="no protocol 'silnt'.*Did you mean 'silent'"):
        experiment.only(protocols=["silnt"])
    part = run_experiment(experiment.only(tasks=["tip_sheets"], pairs=[f"{tiny_dir}>{tiny_dir}"],
                                          protocols=["silent", "ac_rep*"]), tmp_path / "out", progress=False)
    assert {r["task"] for r in part} == {"tip_sheets"} and len(part) == 4 * 2
    assert {r["protocol"] for r in part} == {"silent", "ac_replace_k1_j2"}
    full = run_experiment(experiment, tmp_path / "out", progress=False)
    assert len(full) == 8 * 3 and [r["key"] for r in full[:len(part)]] == [r["key"] for r in part]


def test_a_protocol_entry_limited_to_some_pairs(tmp_path, tiny_dir):
    from tiny_models import tiny_model

    other = tiny_model("llama", seed=1, width=48)
    other.hf.save_pretrained(tmp_path / "wide")
    other.tokenizer.save_pretrained(tmp_path / "wide")
    a, b = str(tiny_dir), str(tmp_path / "wide")
    path = write_experiment(tmp_path / "e.yaml", tiny_dir, tasks=[{"name": "countries", "n": 2}],
                            pairs=[{"A": a, "B": a}, {"A": a, "B": b}],
                            protocols=[{"kind": "silent"}, {"kind": "ac", "combine": "sum", "k": 1, "j": 1,
                                                            "align": "trailing", "pairs": [f"{a}>{b}"]}])
    rows = run_experiment(load_experiment(str(path)), tmp_path / "out", progress=False)
    trailing = [r for r in rows if r["protocol"] != "silent"]
    assert len(rows) == 2 * 2 + 2 and {r["models"]["B"]["name"] for r in trailing} == {b}
    bad = write_experiment(tmp_path / "f.yaml", tiny_dir, protocols=[{"kind": "silent", "pairs": [f"{a}>{b}"]}])
    with pytest.raises(ExperimentFormatError, match=r"protocols\[0\]\.pairs: this experiment has no pair"):
        load_experiment(str(bad))


def _pairs_sharing_b(tmp_path, tiny_dir, one_model_protocols):
    """An experiment of two pairs that share B (a wider A, then A = B) on three countries items: the
    given protocols, then AC sum; and the two models' names."""
    from tiny_models import tiny_model

    other = tiny_model("llama", seed=1, width=48)
    other.hf.save_pretrained(tmp_path / "wide")
    other.tokenizer.save_pretrained(tmp_path / "wide")
    a, b = str(tmp_path / "wide"), str(tiny_dir)
    path = write_experiment(tmp_path / "e.yaml", tiny_dir, tasks=[{"name": "countries", "n": 3}],
                            pairs=[{"A": a, "B": b}, {"A": b, "B": b}],
                            protocols=[*one_model_protocols,
                                       {"kind": "ac", "combine": "sum", "k": 1, "j": 1, "align": "trailing"}])
    return load_experiment(str(path)), a, b


def test_one_model_protocols_are_copied_between_pairs_that_share_the_model(tmp_path, tiny_dir):
    """single_B and silent need only B: a pair sharing B copies their rows from another pair instead
    of recomputing, and a copy is the row a direct run of that pair writes (same key, same answer)."""
    from interventions.harness.check import check_results

    experiment, a, b = _pairs_sharing_b(tmp_path, tiny_dir, [{"kind": "single", "role": ["A", "B"]}, {"kind": "silent"}])
    rows = run_experiment(experiment, tmp_path / "out", progress=False)
    copied = [r for r in rows if "reused_from" in r]
    assert len(rows) == 3 * (4 + 3)   # with A = B, single_A is single_B
    assert len(copied) == 3 * 2 and {r["protocol"] for r in copied} == {"single_B", "silent"}
    assert {r["models"]["A"]["name"] for r in copied} == {b}
    by_key = {r["key"]: r for r in rows}
    for row in copied:
        source = by_key[row["reused_from"]]
        assert source["models"]["A"]["name"] == a and "reused_from" not in source
        assert (row["prediction"], row["score"], row["item_id"]) == (source["prediction"], source["score"], source["item_id"])
    direct = run_experiment(experiment.only(pairs=[f"{b}>{b}"]), tmp_path / "direct", progress=False)
    direct = {r["key"]: r for r in direct}
    for row in copied:
        assert direct[row["key"]]["prediction"] == row["prediction"]
    assert check_results(tmp_path / "out").clean
    # the other way round: the shared pair ran first, so the full run copies from it
    again = run_experiment(experiment, tmp_path / "direct", progress=False)
    assert {r["key"] for r in again} == set(by_key)
    assert {r["protocol"] for r in again if "reused_from" in r} == {"single_B", "silent"}
    assert {r["models"]["A"]["name"] for r in again if "reused_from" in r} == {a}
    # one pair at a time, as long runs go: the second pair copies from the first's rows on disk
    run_experiment(experiment.only(pairs=[f"{a}>{b}"]), tmp_path / "parts", progress=False)
    parts = run_experiment(experiment.only(pairs=[f"{b}>{b}"]), tmp_path / "parts", progress=False)
    assert {r["key"] for r in parts} == set(by_key) and sum("reused_from" in r for r in parts) == 3 * 2


def test_plan_counts_what_is_left_without_running_anything(tmp_path, tiny_dir):
    """`run --plan`: per (task, pair, protocol) the items done, to copy from a pair sharing the model,
    and to compute, with a time only where finished rows of that protocol and pair say it."""
    from interventions.harness.runner import plan_experiment

    experiment, a, b = _pairs_sharing_b(tmp_path, tiny_dir, [{"kind": "single", "role": "B"}])
    out = tmp_path / "out"

    def table(text):
        lines = text.splitlines()
        return {tuple(line.split()[1:3]): line.split()[3:] for line in lines[1:lines.index("")]}, lines[-1]

    left, total = table(plan_experiment(experiment, out))
    # single_B is one model's answer: computed for the first pair, copied to the second
    assert left == {(f"{a}>{b}", "single_B"): ["0", "0", "3", "?"], (f"{a}>{b}", "ac_sum_k1_j1_trailing"): ["0", "0", "3", "?"],
                    (f"{b}>{b}", "single_B"): ["0", "3", "0"], (f"{b}>{b}", "ac_sum_k1_j1_trailing"): ["0", "0", "3", "?"]}
    assert total.startswith("9 work items to compute, 3 to copy, 0 done") and not out.exists()
    assert "no time estimate: none of the 3 group(s)" in total and "about" not in total   # not "about 0 s"
    run_experiment(experiment.only(pairs=[f"{a}>{b}"], protocols=["single_B"]), out, progress=False,
                   limit=2)
    left, total = table(plan_experiment(experiment, out))
    assert left[f"{a}>{b}", "single_B"][:3] == ["2", "0", "1"] and left[f"{a}>{b}", "single_B"][3] != "?"
    assert left[f"{b}>{b}", "single_B"] == ["0", "3", "0"]   # 2 finished in the twin, 1 to compute there
    assert left[f"{a}>{b}", "ac_sum_k1_j1_trailing"][3] == "?"
    assert "of it estimated from finished rows" in total and "2 group(s) ('?') with no such rows yet" in total
    rows = run_experiment(experiment, out, progress=False)
    assert plan_experiment(experiment, out) == f"nothing left: all {len(rows)} work items are done"


def test_plan_estimates_a_task_from_others_answered_the_same_way():
    from interventions.harness.remaining import Pace

    def row(task, wall, norm, protocol="ac", **extra):
        return {"protocol": protocol, "task": task, "models": {"B": {"name": "m"}}, "compute": {"wall_s": wall},
                "score_norm": norm, **extra}

    names = (("B", "m"),)
    pace = Pace([row("arc", 1.0, 0.0), row("arc", 3.0, 1.0), row("gsm8k", 40.0, None),
                 row("arc", 99.0, 1.0, reused_from="k")])   # a copy took no time of its own
    assert pace.per_item("ac", names, "arc", True) == 2.0
    assert pace.per_item("ac", names, "sciq", True) == 2.0      # from ARC: no protocol ran on both
    assert pace.per_item("ac", names, "math", False) == 40.0    # a generated answer from generation only
    assert pace.per_item("ac", (("B", "other"),), "arc", True) is None
    # SciQ ran 3x slower than ARC for the protocols run on both (the median of 2.5, 3 and 4)
    both = [row(t, w, 0.0, protocol=p) for p, arc, sciq in (("x", 2.0, 5.0), ("y", 1.0, 3.0), ("z", 1.0, 4.0))
            for t, w in (("arc", arc), ("sciq", sciq))]
    pace = Pace([row("arc", 2.0, 0.0), *both, row("gsm8k", 40.0, None), row("gsm8k", 80.0, None, protocol="x")])
    assert pace.per_item("ac", names, "sciq", True) == 6.0
    assert pace.per_item("ac", names, "math", False) == 40.0    # gsm8k alone; no task answered alike to scale by


def test_catalog_entries_parse():
    for name in ("quickstart", "ac_coordination", "ac_reasoning", "d2_reverse_cascade", "ac_replication_games",
                 "ac_replication_reasoning", "ac_replication_generation"):
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


def test_sampling_runs_each_item_once_per_seed_and_the_summary_averages_them(tmp_path, tiny_dir):
    from interventions.harness.report import summarize
    from interventions.harness.units import work_key

    sampling = {"top_p": 0.9, "temperature": 1.5, "seeds": [0, 1]}
    choices = tmp_path / "mc.jsonl"
    choices.write_text("".join(json.dumps({"id": f"q{i}", "question": f"w{i + 3}?", "choices": ["w5", "w6 w7"],
                                           "answer": "w5"}) + "\n" for i in range(3)))
    spec = write_experiment(tmp_path / "e.yaml", tiny_dir, sampling=sampling, max_new_tokens=6,
                            tasks=[{"name": "countries", "n": 8},
                                   {"name": "jsonl", "options": {"path": str(choices), "scoring": "choice_loglik"}}],
                            protocols=[{"kind": "silent"}])
    experiment = load_experiment(str(spec))
    rows = run_experiment(experiment, tmp_path / "out", progress=False)
    assert len([r for r in rows if "sampling" not in r]) == 3        # log-likelihoods are not sampled: once
    rows = [r for r in rows if "sampling" in r]
    assert len(rows) == 8 * 2 and len({r["key"] for r in rows}) == 16
    by_seed = {s: {r["item_id"]: r["prediction"] for r in rows if r["sampling"]["seed"] == s} for s in (0, 1)}
    assert set(by_seed[0]) == set(by_seed[1])                    # the same items under both seeds
    assert by_seed[0] != by_seed[1]                              # sampled, not greedy
    assert rows[0]["sampling"] == {"do_sample": True, "top_p": 0.9, "temperature": 1.5, "seed": rows[0]["sampling"]["seed"]}
    # the same seed on the same batches samples the same answers; a finished run resumes with nothing to do
    again = run_experiment(experiment, tmp_path / "again", progress=False)
    assert {r["key"]: r["prediction"] for r in again if "sampling" in r} == {r["key"]: r["prediction"] for r in rows}
    assert len(run_experiment(experiment, tmp_path / "out", progress=False)) == 16 + 3
    (entry,) = summarize(rows)
    assert entry["n"] == 8 and entry["samples"] == 2
    # greedy experiments keep the keys they had before sampling existed
    greedy = load_experiment(str(write_experiment(tmp_path / "g.yaml", tiny_dir, tasks=[{"name": "countries", "n": 2}],
                                                  protocols=[{"kind": "silent"}])))
    (row, _) = run_experiment(greedy, tmp_path / "greedy", progress=False)
    assert "sampling" not in row and row["max_new_tokens"] == 4
    hashes = {role: m["sha256"] for role, m in row["models"].items()}
    assert work_key(greedy.protocols[0], hashes, row["task"], row["item_id"], 0, None, 4) == row["key"]


def test_debate_by_majority_of_three_agents(tmp_path, tiny_dir):
    from interventions.compute import Compute
    from interventions.harness.protocols import PROTOCOLS
    from interventions.harness.protocols.base import Outcome
    from interventions.harness.tasks import get_task

    debate = PROTOCOLS.get("nl_debate")(agents=["A", "B", "A"], final="majority")
    assert debate.name == "nl_debate_r2_ABA_majority"
    assert PROTOCOLS.get("nl_debate")().as_dict() == {"kind": "nl_debate", "rounds": 2}   # old keys unchanged

    class Ctx:
        task = get_task("gsm8k")

    def said(*texts, scores):
        return [Outcome(s, t, Compute()) for t, s in zip(texts, scores)]

    # two of three say 18 (written differently): the majority's answer and score
    out = debate._settle(Ctx, said("It is 18.", "17", "The answer is 18.00", scores=[1, 0, 1]), Compute())
    assert (out.score, out.extra["votes"]) == (1, {"18": 2, "17": 1})
    # the minority cannot win even as the last agent
    out = debate._settle(Ctx, said("17", "18", "17", scores=[0, 1, 0]), Compute())
    assert out.score == 0 and out.prediction == "17"
    # three different answers: no majority, so B's answer, as the two-agent tie-break
    out = debate._settle(Ctx, said("1", "2", "3", scores=[0, 1, 0]), Compute())
    assert out.prediction == "2" and out.extra["votes"] == {"1": 1, "2": 1, "3": 1}
    # a choice answer is voted by its pick, and the debate's row keeps how its answer was parsed
    Ctx.task = get_task("mmlu_gen/formal_logic")
    picks = [Outcome(s, t, Compute(), extra={"parsed": {"rule": "one", "pick": p}})
             for t, p, s in (("B", "B", 1), ("(C) is it", "C", 0), ("The answer is B.", "B", 1))]
    out = debate._settle(Ctx, picks, Compute())
    assert out.extra["votes"] == {"B": 2, "C": 1} and out.extra["parsed"] == {"rule": "one", "pick": "B"}
    with pytest.raises(ValueError, match="at least three agents"):
        PROTOCOLS.get("nl_debate")(final="majority")

    # end to end, sampled: each agent draws with its own seed, every answer is charged to its model
    path = write_experiment(tmp_path / "e.yaml", tiny_dir, tasks=[{"name": "countries", "n": 4}], max_new_tokens=4,
                            sampling={"seeds": [3]}, protocols=[{"kind": "nl_debate", "agents": ["A", "B", "A"],
                                                                 "final": "majority", "rounds": 1}])
    rows = run_experiment(load_experiment(str(path)), tmp_path / "out", progress=False)
    assert len(rows) == 4 and all(sum(r["extra"]["votes"].values()) == 3 for r in rows)
    assert all(set(r["compute"]["tokens"]) == {"A", "B"} for r in rows)

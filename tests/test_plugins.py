"""Plugins: the user's combine functions, tracing functions and spec files, scored by the harness."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import interventions as iv
from interventions.cli import main
from interventions.harness.evaluate import evaluate
from interventions.harness.experiment import ExperimentFormatError, load_experiment
from interventions.harness.plugins import load_plugin
from interventions.harness.protocols import TracingResultError
from interventions.harness.runner import run_experiment

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture(autouse=True)
def forget_plugin_names():
    """Plugins register names for the whole process; keep other tests' registries as they were."""
    from interventions.harness.protocols import PROTOCOLS

    before = {registry: set(registry.names()) for registry in (iv.COMBINES, PROTOCOLS)}
    yield
    for registry, names in before.items():
        for name in set(registry.names()) - names:
            del registry[name]


def experiment(path: Path, model_dir: Path, protocols: list, plugins=(), n: int = 6) -> Path:
    path.write_text(json.dumps({"name": "plugins", "max_new_tokens": 4, "batch_size": 3, "plugins": list(plugins),
                                "pairs": [{"A": str(model_dir), "B": str(model_dir)}],
                                "tasks": [{"name": "countries", "n": n}], "protocols": protocols}))
    return path


def predictions(rows, protocol):
    return {r["item_id"]: r["prediction"] for r in rows if r["protocol"] == protocol}


def test_tracing_function_and_combine_plugin_are_scored(tmp_path, tiny_dir):
    path = experiment(tmp_path / "e.yaml", tiny_dir, plugins=[str(EXAMPLES / "plugin_nnsight.py"),
                                                              str(EXAMPLES / "plugin_combine.py")], protocols=[
        {"kind": "nnsight_replace", "layer": 1, "max_new_tokens": 4},
        {"kind": "ac", "combine": ["replace", "cosine_gated"], "k": 1, "j": 1}])
    rows = run_experiment(load_experiment(str(path)), tmp_path / "out", progress=False)
    traced = [r for r in rows if r["protocol"] == "nnsight_replace"]
    assert len(traced) == 6 and traced[0]["protocol_spec"] == {"kind": "nnsight_replace", "layer": 1,
                                                               "max_new_tokens": 4}
    assert traced[0]["compute"]["tokens"]["A"] > 0 and traced[0]["compute"]["flops"] > 0  # metered
    # the raw nnsight traces and the built-in splice path graft the same state: same answers
    assert predictions(rows, "nnsight_replace") == predictions(rows, "ac_replace_k1_j1")
    gated = [r for r in rows if r["protocol"] == "ac_cosine_gated_k1_j1"]
    assert gated[0]["interventions"][0]["combine"] == "cosine_gated"


def test_spec_file_as_protocol_matches_the_built_in_channel(tmp_path, tiny_dir):
    spec = iv.Splice(source=iv.Site("A", 1), target=iv.Site("B", 2), combine="sum")
    iv.save_spec(spec, tmp_path / "graft.yaml")
    path = experiment(tmp_path / "e.yaml", tiny_dir, protocols=[
        {"kind": "intervention", "spec": "graft.yaml"}, {"kind": "ac", "combine": "sum", "k": 1, "j": 2}])
    rows = run_experiment(load_experiment(str(path)), tmp_path / "out", progress=False)
    assert predictions(rows, "intervention_graft") == predictions(rows, "ac_sum_k1_j2")
    assert [r for r in rows if r["protocol"] == "intervention_graft"][0]["interventions"] == [iv.to_dict(spec)]


def test_eval_scores_a_plugin_against_silent_skyline_and_controls(tmp_path, tiny_dir):
    _, rows, out, _ = evaluate(str(EXAMPLES / "plugin_combine.py"), "countries", (str(tiny_dir), str(tiny_dir)),
                               n=6, out=tmp_path / "eval", k=1, j=1, max_new_tokens=4, progress=False)
    assert {r["protocol"] for r in rows} == {
        "silent", "skyline", "ac_cosine_gated_k1_j1", "ac_cosine_gated_k1_j1_ctl-random",
        "ac_cosine_gated_k1_j1_ctl-mismatched", "ac_cosine_gated_k1_j1_ctl-zero"}
    summary = (out / "summary.md").read_text()
    assert "Channels against their controls" in summary and "| mismatched |" in summary


def test_protocols_command_lists_plugin_fields(capsys):
    assert main(["protocols", "--plugin", str(EXAMPLES / "plugin_nnsight.py")]) == 0
    listing = capsys.readouterr().out
    assert "nnsight_replace  (roles A, B)" in listing and "layer: int, default 8" in listing
    assert "k: int | float | str, required" in listing


def test_bad_plugins_are_named(tmp_path):
    with pytest.raises(iv.PluginError, match="no_such_plugin.py does not exist"):
        load_plugin("no_such_plugin.py")
    broken = tmp_path / "broken.py"
    broken.write_text("import interventions\nraise RuntimeError('boom')\n")
    with pytest.raises(iv.PluginError, match=r"broken.py failed to import: RuntimeError: boom \(line 2"):
        load_plugin(str(broken))
    for name in ("one", "two"):
        (tmp_path / f"{name}.py").write_text(
            "import interventions as iv\n@iv.register_combine('clash')\ndef f(t, s):\n    return t\n")
    load_plugin(str(tmp_path / "one.py"))
    load_plugin(str(tmp_path / "one.py"))  # the same file again: fine
    with pytest.raises(iv.PluginError, match="'clash' is registered twice: by .*one.py.* and by .*two.py"):
        load_plugin(str(tmp_path / "two.py"))


def test_tracing_function_with_the_wrong_count_says_what_was_expected(tmp_path, tiny_dir):
    plugin = tmp_path / "short.py"
    plugin.write_text("import interventions as iv\n@iv.protocol('short', roles=('B',))\n"
                      "def short(session, batch):\n    return ['x']\n")
    path = experiment(tmp_path / "e.yaml", tiny_dir, plugins=[str(plugin)], protocols=[{"kind": "short"}])
    with pytest.raises(TracingResultError, match="returned 1 values for 3 items; expected one answer text per item"):
        run_experiment(load_experiment(str(path)), tmp_path / "out", progress=False)


def test_protocol_entry_with_another_kinds_field_lists_this_kinds_fields(tmp_path, tiny_dir):
    path = experiment(tmp_path / "e.yaml", tiny_dir, protocols=[{"kind": "nl_debate", "k": 8}])
    with pytest.raises(ExperimentFormatError, match=r"protocols\[0\] \(nl_debate\)\.k: unknown key 'k'.*Allowed: rounds"):
        load_experiment(str(path))
    path = experiment(tmp_path / "f.yaml", tiny_dir, protocols=[{"kind": "ac", "k": "eight", "j": 1}])
    with pytest.raises(ExperimentFormatError, match=r"\(ac\)\.k: layer 'eight'"):
        load_experiment(str(path))


def test_spec_whose_roles_the_pair_lacks(tmp_path, tiny_dir):
    iv.save_spec(iv.Splice(source=iv.Site("C", 1), target=iv.Site("B", 1)), tmp_path / "c.yaml")
    path = experiment(tmp_path / "e.yaml", tiny_dir, protocols=[{"kind": "intervention", "spec": "c.yaml"}])
    with pytest.raises(iv.MissingRoleError, match=r"needs model roles \['B', 'C'\]"):
        run_experiment(load_experiment(str(path)), tmp_path / "out", progress=False)


def test_command_line_errors_are_one_line(tmp_path, tiny_dir, capsys):
    assert main(["eval", "no_such_plugin.py"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "error: plugin file no_such_plugin.py does not exist" and "Traceback" not in err
    path = experiment(tmp_path / "e.yaml", tiny_dir, protocols=[{"kind": "nl_debate", "k": 8}])
    assert main(["run", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "unknown key 'k'" in err and "Traceback" not in err

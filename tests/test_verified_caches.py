"""Verified caches: a damaged model cache or cache file is detected and rebuilt, never loaded.

The zoo entry here wraps a tiny random model: "dequantizing" it saves the tiny model, so the
whole path (convert, record hashes, verify, rebuild, load, row hash) runs in a second.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

import interventions.models.cache as cache
import interventions.models.load as load
from interventions.models.zoo import ZooEntry
from interventions.verified import VERIFY_ENV, load_tensors, save_tensors

from tiny_models import tiny_model


@pytest.fixture
def tiny_zoo(tmp_path, monkeypatch):
    """A zoo entry for a tiny model, cached under a temporary cache root; counts conversions."""
    monkeypatch.setenv(cache.CACHE_ENV, str(tmp_path / "cache"))
    gguf = tmp_path / "tiny.gguf"
    gguf.write_bytes(b"stands in for a GGUF file")
    entry = ZooEntry(name="tiny-zoo", hub_id="none/tiny", family="llama", architecture="LlamaForCausalLM",
                     pip_args=(), gguf_name="tiny.gguf",
                     sha256=cache.verify_sha256(gguf, None), locate=lambda work: gguf)
    conversions = []

    def fake_dequantize(entry, path):
        conversions.append(path)
        model = tiny_model("llama")
        return model.hf, model.tokenizer

    monkeypatch.setattr(cache, "dequantize", fake_dequantize)
    monkeypatch.setattr(load, "ZOO", {entry.name: entry})
    return entry, conversions


def _weights(entry) -> Path:
    return cache.entry_cache_dir(entry) / "model.safetensors"


def test_marker_records_every_file_and_a_clean_cache_is_not_rebuilt(tiny_zoo):
    entry, conversions = tiny_zoo
    directory, marker = cache.ensure_cached(entry)
    assert "model.safetensors" in marker["files"] and "config.json" in marker["files"]
    assert marker["files"]["model.safetensors"]["sha256"] == cache.verify_sha256(_weights(entry), None)
    cache.ensure_cached(entry)
    assert len(conversions) == 1


def test_a_touched_model_cache_is_rerecorded_whole_not_rebuilt(tiny_zoo, monkeypatch):
    """A touched but intact weight file is hashed once and its new time recorded; the marker is
    swapped in whole, since another process reading it half-written would rebuild the cache under
    a third that is loading it."""
    entry, conversions = tiny_zoo
    directory, _ = cache.ensure_cached(entry)
    stat = _weights(entry).stat()
    os.utime(_weights(entry), ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    seen = []
    original = Path.write_text
    monkeypatch.setattr(Path, "write_text", lambda self, text, *a, **k: (seen.append(self.name),
                                                                         original(self, text, *a, **k))[1])
    _, marker = cache.ensure_cached(entry)
    assert seen and all(name.endswith(".partial") for name in seen)
    assert marker["files"]["model.safetensors"]["mtime_ns"] == stat.st_mtime_ns + 10**9
    assert cache.read_marker(directory) == marker and len(conversions) == 1


def test_random_bytes_in_the_weights_are_detected_and_rebuilt(tiny_zoo, capsys):
    entry, conversions = tiny_zoo
    clean = load.load_model(entry.name, reuse=False)
    expected = {k: v.clone() for k, v in clean.hf.state_dict().items()}  # the loaded tensors map the file
    path = _weights(entry)
    with open(path, "r+b") as handle:  # 4 KiB of noise in the middle of the tensors
        handle.seek(path.stat().st_size // 2)
        handle.write(os.urandom(4096))
    model = load.load_model(entry.name, reuse=False)
    assert "failed verification (model.safetensors: sha256 differs" in capsys.readouterr().err
    assert len(conversions) == 2
    assert model.loaded_sha256 == clean.loaded_sha256
    for name, tensor in model.hf.state_dict().items():
        assert torch.equal(tensor, expected[name])


def test_truncated_weights_are_rebuilt_not_a_traceback(tiny_zoo, capsys):
    entry, conversions = tiny_zoo
    cache.ensure_cached(entry)
    path = _weights(entry)
    with open(path, "r+b") as handle:
        handle.truncate(path.stat().st_size // 3)
    model = load.load_model(entry.name, reuse=False)
    assert "bytes, recorded" in capsys.readouterr().err and len(conversions) == 2
    assert torch.isfinite(model.hf(torch.tensor([[1, 2, 3]])).logits).all()


def test_a_stealthy_edit_is_caught_by_a_full_verify(tiny_zoo, monkeypatch):
    """Scaled weights with the old mtime restored pass the cheap check; --verify hashes and catches them."""
    from safetensors.torch import load_file, save_file

    entry, conversions = tiny_zoo
    cache.ensure_cached(entry)
    path = _weights(entry)
    stat = path.stat()
    tensors = load_file(path)
    name = next(k for k in tensors if k.endswith("weight") and tensors[k].dim() == 2)
    tensors[name] = tensors[name].clone()
    tensors[name][0, 0] += 1.0  # same size: a few weights changed
    save_file(tensors, path, metadata={"format": "pt"})
    assert path.stat().st_size == stat.st_size
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    cache.ensure_cached(entry)
    assert len(conversions) == 1          # the cheap check trusts size and mtime
    monkeypatch.setenv(VERIFY_ENV, "1")
    cache.ensure_cached(entry)
    assert len(conversions) == 2          # the full hash does not


def test_an_older_cache_without_file_hashes_is_rebuilt(tiny_zoo):
    import json

    entry, conversions = tiny_zoo
    directory, marker = cache.ensure_cached(entry)
    del marker["files"]
    (directory / cache.MARKER).write_text(json.dumps(marker))
    cache.ensure_cached(entry)
    assert len(conversions) == 2


def test_rows_record_the_hash_of_the_weights_loaded(tiny_zoo, tmp_path):
    from interventions.harness.experiment import build_experiment
    from interventions.harness.runner import run_experiment

    entry, _ = tiny_zoo
    experiment = build_experiment({"name": "t", "max_new_tokens": 2, "pairs": [{"B": entry.name}],
                                   "tasks": [{"name": "countries", "n": 2}], "protocols": [{"kind": "single"}]}, "t")
    rows = run_experiment(experiment, tmp_path / "out", progress=False)
    expected = cache.loaded_sha256(cache.read_marker(cache.entry_cache_dir(entry)))
    assert {r["models"]["B"]["loaded_sha256"] for r in rows} == {expected}
    assert {r["models"]["B"]["sha256"] for r in rows} == {entry.sha256}


def test_tensor_cache_files_are_verified(tmp_path, capsys):
    path = tmp_path / "acts.pt"
    save_tensors({"acts": torch.arange(6.0)}, path)
    assert torch.equal(load_tensors(path)["acts"], torch.arange(6.0))
    with open(path, "r+b") as handle:
        handle.seek(10)
        handle.write(b"\x00\xff" * 8)
    assert load_tensors(path, "cached activations") is None and not path.exists()
    assert "cached activations acts.pt failed verification" in capsys.readouterr().err
    torch.save({"acts": torch.zeros(2)}, path)   # written without a checksum record
    assert load_tensors(path) is None


def test_checksum_records_are_replaced_whole(tmp_path, monkeypatch, capsys):
    """Ray workers share the cache: one reads a record while another rewrites it. The record is
    swapped in whole, and a half-written one (as a reader of the old in-place write saw it) means
    recompute, not a JSONDecodeError that cost three rows their manifold diagnostics."""
    path = tmp_path / "stats.pt"
    save_tensors({"mean": torch.ones(3)}, path)
    seen = []
    original = Path.write_text
    monkeypatch.setattr(Path, "write_text", lambda self, text, *a, **k: (seen.append(self.name),
                                                                         original(self, text, *a, **k))[1])
    assert torch.equal(load_tensors(path)["mean"], torch.ones(3))   # a warm load rewrites the record
    assert seen and all(name.endswith(".partial") for name in seen)
    assert not list(tmp_path.glob("*.partial"))
    (tmp_path / "stats.pt.check.json").write_text("")
    assert load_tensors(path, "cached statistics") is None
    assert "checksum record unreadable" in capsys.readouterr().err


def test_cache_files_never_unpickle_code(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("ran code",))

    path = tmp_path / "evil.pt"
    save_tensors({"x": torch.zeros(1)}, path)
    torch.save({"x": Payload()}, path, _use_new_zipfile_serialization=True)
    from interventions.verified import record, SIDECAR
    import json
    (tmp_path / ("evil.pt" + SIDECAR)).write_text(json.dumps(record(path)))  # even with a valid record
    assert load_tensors(path) is None

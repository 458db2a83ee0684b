"""Devices and dtypes: placement requests checked against the machine, bf16 on the CPU with fp32
captures, a message moved onto the receiver's device (cpu -> meta), and the TransformerLens shell
that shares the model's weights. Where CUDA exists, the backends are also compared on it."""

from __future__ import annotations


import pytest
import torch

from interventions import Session, Site, SoftTokens, Splice, Steer
from interventions.backends import get_backend
from interventions.backends.transformer_lens import bridge_for
from interventions.harness.units import model_record
from interventions.models import load_model
from interventions.models.placement import PlacementError, placement
from tiny_models import tiny_model

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
PROMPTS = {"A": ["w3 w4 w5 w6", "w7 w8"], "B": ["w9 w10 w11", "w12 w13 w14 w15 w16"]}


def on(model, device="cpu", dtype=torch.float32):
    model.hf.to(device=device, dtype=dtype)
    return model


def test_unknown_device_lists_the_available_ones_before_loading():
    with pytest.raises(PlacementError, match=r"device 'tpu:3' is not available here; available: cpu"):
        load_model("smollm2-135m", device="tpu:3")
    with pytest.raises(PlacementError, match="fp32, bf16 or fp16"):
        load_model("smollm2-135m", dtype="fp8")


def test_bf16_without_hardware_support_falls_back_and_rows_say_so(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "an old GPU")
    with pytest.warns(UserWarning, match="no bf16"):
        where = placement("cuda", "bf16")
    assert (where.device, where.dtype) == ("cuda:0", torch.float32)
    model = tiny_model("llama")
    model.placement_note = where.note
    assert model_record(model)["placement_note"] == "bf16 requested but an old GPU has no bf16; running in fp32"


@pytest.mark.parametrize("backend", ["torch", "transformer_lens", "nnsight"])
def test_bf16_receiver_runs_with_fp32_captures_and_keys_of_its_own(backend):
    sender, receiver = tiny_model("llama"), on(tiny_model("llama"), dtype=torch.bfloat16)
    reference = tiny_model("llama")
    session = Session({"A": sender, "B": receiver}, backend)
    captured = session.capture("B", PROMPTS, [Site("B", 1)]).captures[Site("B", 1)]
    assert captured.dtype == torch.float32
    exact = Session({"A": sender, "B": reference}, backend).capture("B", PROMPTS, [Site("B", 1)]).captures[Site("B", 1)]
    assert torch.allclose(captured, exact, atol=0.05, rtol=0.05)

    splice = Splice(Site("A", 1), Site("B", 2), combine="mean")
    logits = session.forward("B", PROMPTS, [splice]).logits
    want = Session({"A": sender, "B": reference}, backend).forward("B", PROMPTS, [splice]).logits
    assert logits.dtype == torch.bfloat16
    assert (logits.float() - want).abs().max() < 0.1
    assert session.generate("B", PROMPTS, [splice], max_new_tokens=3).ids.shape[0] == 2
    scores = session.loglikelihood("B", PROMPTS, [("w20", "w21 w22")] * 2, [splice]).logliks
    want = Session({"A": sender, "B": reference}, backend).loglikelihood("B", PROMPTS, [("w20", "w21 w22")] * 2,
                                                                          [splice]).logliks
    assert torch.allclose(torch.tensor(scores), torch.tensor(want), atol=0.1)
    assert receiver.identity == receiver.weight_sha256 + "/bf16" and reference.identity == reference.weight_sha256


def test_a_message_moves_to_the_receivers_device():
    """A on the CPU, B on meta (shapes only): the compiled edits put A's state, a steering vector and
    soft tokens on B's device, and B's inputs go there too."""
    sender, receiver = tiny_model("llama"), on(tiny_model("llama"), "meta")
    session = Session({"A": sender, "B": receiver}, "torch")
    for spec in (Splice(Site("A", 1), Site("B", 2), combine="mean"), Steer(Site("B", 2), (0.5,) * 64)):
        program = session.program("B", PROMPTS, [spec])
        acts = torch.empty(2, 1, 64, device="meta")
        (edit,) = program.edits
        out = edit.fn(acts)
        assert out.device.type == "meta" and out.shape == acts.shape
    program = session.program("B", PROMPTS, [SoftTokens("B", vectors=((0.1,) * 64,) * 3)])
    assert program.batch["inputs_embeds"].device.type == "meta"
    assert all(v.device.type == "meta" for v in receiver.on_device(program.batch).values())
    assert receiver.on_device({"use_cache": True})["use_cache"] is True


@pytest.mark.parametrize("family", ["llama", "gemma3", "qwen2"])
def test_transformer_lens_shell_shares_the_weights_and_leaves_the_model_alone(family):
    from transformer_lens.model_bridge.generalized_components.base import GeneralizedComponent

    model = tiny_model(family)
    kernel = model.hf.config._attn_implementation
    _, shell = bridge_for(model)
    assert all(a.data_ptr() == b.data_ptr() for a, b in zip(model.hf.parameters(), shell.parameters()))
    assert not any(isinstance(m, GeneralizedComponent) for m in model.hf.modules())
    assert model.hf.config._attn_implementation == kernel
    assert shell.config._attn_implementation == kernel   # the model's own kernel, not eager
    batch = model.encode(["w3 w4 w5 w6 w7", "w8 w9"])
    with torch.inference_mode():
        assert torch.equal(get_backend("transformer_lens").forward(model, batch).logits, model.hf(**batch).logits)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend", ["transformer_lens", "nnsight"])
def test_backends_agree_with_plain_hooks_on_every_device(device, backend):
    sender, receiver = on(tiny_model("qwen2"), device), on(tiny_model("qwen2", seed=1), device)
    splice = Splice(Site("A", 1), Site("B", 2), combine="sum")
    want = Session({"A": sender, "B": receiver}, "torch").forward("B", PROMPTS, [splice]).logits
    got = Session({"A": sender, "B": receiver}, backend).forward("B", PROMPTS, [splice]).logits
    assert got.device.type == device and (got - want).abs().max() < 1e-4


def test_an_experiment_in_bf16_records_it_and_never_resumes_into_fp32_rows(tmp_path, tiny_dir):
    from interventions.harness.check import check_results
    from interventions.harness.experiment import load_experiment
    from interventions.harness.runner import run_experiment
    from test_runner import write_experiment

    experiment = load_experiment(str(write_experiment(tmp_path / "e.yaml", tiny_dir, dtype="bf16",
                                                      tasks=[{"name": "countries", "n": 4}])))
    rows = run_experiment(experiment, tmp_path / "out", progress=False)
    assert {(m["dtype"], m["device"]) for r in rows for m in r["models"].values()} == {("bf16", "cpu")}
    fp32 = run_experiment(experiment, tmp_path / "out", progress=False, dtype="fp32")
    assert len(fp32) == 2 * len(rows)          # the fp32 run adds its own rows, it does not skip
    assert check_results(tmp_path / "out").clean   # keys rebuilt from what the rows say

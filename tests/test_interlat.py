"""Interlat: the adapter (shape, compression, clamp), its curriculum, its checkpoints, its training,
the covariance control, and the protocol end to end on a tiny model."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest
import torch
from tiny_models import VOCAB, tiny_model

from interventions import corpus
from interventions.adapters import (
    AdapterConfig,
    AdapterMismatchError,
    Example,
    LatentAdapter,
    TrainingConfig,
    final_states,
    latent_segments,
    load_adapter,
    mix,
    mixing_rate,
    save_adapter,
    train_adapter,
)
from interventions.adapters.training import step_loss
from interventions.controls_covariance import CovarianceNoise
from interventions.harness.experiment import load_experiment
from interventions.harness.runner import run_experiment
from interventions.session import Session


def config(**fields) -> AdapterConfig:
    return AdapterConfig(**{"d_source": 64, "d_target": 48, "bound": 1e9, "init_norm": 1.0, **fields})


def trajectory(length: int = 10, d: int = 64, seed: int = 0) -> torch.Tensor:
    return torch.randn(length, d, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------- the adapter


def test_adapter_output_shape_with_and_without_compression():
    torch.manual_seed(0)
    full = LatentAdapter(config())
    assert full(trajectory()).shape == (10, 48)
    compressed = LatentAdapter(config(compress_to=4))
    compressed.load_state_dict(full.state_dict())
    out = compressed(trajectory())
    assert out.shape == (4, 48)
    # K = 4 over 10 states: segments [0,2) [2,5) [5,7) [7,10), each the mean of the adapted states
    per_token = full(trajectory())
    expected = torch.stack([per_token[a:b].mean(0) for a, b in ((0, 2), (2, 5), (5, 7), (7, 10))])
    assert torch.allclose(out, expected, atol=1e-6)
    # K above the plan's length keeps one step per token
    assert LatentAdapter(config(compress_to=20))(trajectory()).shape == (10, 48)


def test_clamp_holds_for_huge_inputs_and_leaves_small_outputs_alone():
    torch.manual_seed(0)
    adapter = LatentAdapter(config(bound=3.0))
    with torch.no_grad():
        adapter.projection.weight.mul_(1e4)   # outputs far beyond the bound
    out = adapter(trajectory() * 1e6)
    assert torch.isfinite(out).all()
    norms = torch.linalg.vector_norm(out, dim=-1)
    assert norms.max() <= 3.0 * (1 + 1e-5) and norms.min() > 2.99   # every vector was scaled onto the bound
    unclamped = LatentAdapter(config(bound=1e9))
    unclamped.load_state_dict(adapter.state_dict())
    raw = unclamped(trajectory() * 1e6)
    assert torch.allclose(out, raw / torch.linalg.vector_norm(raw, dim=-1, keepdim=True) * 3.0, rtol=1e-4)
    small = LatentAdapter(config(bound=1e9, init_norm=0.5))
    roomy = LatentAdapter(config(bound=1e6, init_norm=0.5))
    roomy.load_state_dict(small.state_dict())
    assert torch.equal(small(trajectory()), roomy(trajectory()))   # under the bound: untouched


# ---------------------------------------------------------------------- the curriculum


def test_curriculum_mixes_text_and_latents_as_specified():
    latents = torch.arange(6.0)[:, None].repeat(1, 3) + 100        # segment k's latent: 100 + k
    text = torch.arange(12.0)[:, None].repeat(1, 3)                 # plan token t: t; segment k = tokens 2k, 2k+1
    assert torch.equal(mix(latents, text, latent_segments(6, 0.0)), text)
    assert torch.equal(mix(latents, text, latent_segments(6, 1.0)), latents)
    chosen = latent_segments(6, 0.5, torch.Generator().manual_seed(3))
    assert int(chosen.sum()) == 3
    expected = []
    for k in range(6):
        expected += [100 + k] if chosen[k] else [2 * k, 2 * k + 1]
    assert mix(latents, text, chosen)[:, 0].tolist() == expected
    # fewer plan tokens than segments: some segments hold no text; the rest keep plan order
    short = torch.arange(4.0)[:, None].repeat(1, 3)
    none = torch.zeros(6, dtype=torch.bool)
    assert mix(latents, short, none)[:, 0].tolist() == [0, 1, 2, 3]
    assert int(latent_segments(7, 0.3).sum()) == 2                  # round(0.3 * 7)


def test_mixing_rate_schedule():
    steps, ramp = 101, 0.5
    assert mixing_rate(0, steps, ramp) == 0.0
    assert mixing_rate(25, steps, ramp) == pytest.approx(0.5)
    assert mixing_rate(50, steps, ramp) == 1.0
    assert mixing_rate(100, steps, ramp) == 1.0


# ---------------------------------------------------------------------- checkpoints


def test_checkpoint_for_other_models_is_refused_naming_the_mismatch(tmp_path):
    a, b, other = tiny_model("llama"), tiny_model("llama", seed=1), tiny_model("qwen2")
    torch.manual_seed(0)
    adapter = LatentAdapter(config(d_target=64, compress_to=3))
    path = tmp_path / "adapter.pt"
    save_adapter(adapter, path, a, b, {"curve": [{"step": 0, "loss": 1.0}]})
    loaded = load_adapter(path, a, b)
    assert loaded.config == adapter.config and torch.equal(loaded(trajectory()), adapter.eval()(trajectory()))
    assert json.loads(path.with_suffix(".json").read_text())["curve"][0]["loss"] == 1.0
    with pytest.raises(AdapterMismatchError, match=f"receiver {b.name}.*not {other.name}"):
        load_adapter(path, a, other)
    with pytest.raises(AdapterMismatchError, match=f"sender .*{a.weight_sha256[:12]}.*{b.weight_sha256[:12]}"):
        load_adapter(path, b, b)


# ---------------------------------------------------------------------- training


def synthetic_examples(model, n: int = 16) -> list[Example]:
    """Items whose answer (w10 or w11) only the trajectory carries: a +/- shift along one direction."""
    embed = model.hf.get_input_embeddings()
    direction = torch.randn(model.d_model, generator=torch.Generator().manual_seed(7))
    out = []
    with torch.no_grad():
        for i in range(n):
            label = i % 2
            states = trajectory(5, model.d_model, seed=100 + i) + (4.0 if label else -4.0) * direction
            ids = lambda xs: torch.tensor(xs)
            answer = ids([10 + label])
            out.append(Example(states, embed(ids([20 + i % 5, 30, 31])), embed(ids([40, 41])), embed(ids([42, 43])),
                               answer, embed(answer), f"w{10 + label}"))
    return out


def test_training_lowers_the_answer_loss_with_b_frozen():
    model = tiny_model("llama")
    examples = synthetic_examples(model)
    torch.manual_seed(0)
    adapter = LatentAdapter(config(d_target=model.d_model, init_norm=1.0, bound=50.0))
    before_weights = {k: v.clone() for k, v in model.hf.state_dict().items()}
    plain = TrainingConfig(separation=0.0, alignment=0.0)

    def latent_ce():
        with torch.no_grad():
            return step_loss(adapter, model.hf, examples, 1.0, plain, torch.Generator())[1]["ce"]

    start = latent_ce()
    curve = train_adapter(adapter, model.hf, examples, TrainingConfig(steps=40, batch_size=8, lr=3e-3, ramp=0.1),
                          progress=False)
    assert latent_ce() < start - 0.3
    assert [c["rate"] for c in curve[:2]] == [0.0, pytest.approx(1 / 3.9, abs=1e-3)] and curve[-1]["rate"] == 1.0
    assert {"ce", "separation_js", "alignment_kl", "alignment_cosine"} <= set(curve[-1])
    assert all(torch.equal(v, before_weights[k]) for k, v in model.hf.state_dict().items())   # B untouched
    assert all(p.requires_grad for p in model.hf.parameters())                              # flags restored


# ---------------------------------------------------------------------- the covariance control


def test_covariance_noise_has_the_population_moments_and_is_seeded():
    g = torch.Generator().manual_seed(0)
    mixing = torch.randn(4, 4, generator=g)
    population = torch.randn(4000, 4, generator=g) @ mixing + torch.tensor([1.0, -2.0, 0.5, 3.0])
    noise = CovarianceNoise.fit(population)
    draws = noise.sample(20000, "item-1")
    assert torch.allclose(draws.mean(0), population.mean(0), atol=0.1)
    assert torch.allclose(torch.cov(draws.T), torch.cov(population.T), atol=0.15 * mixing.abs().max() ** 2)
    assert torch.equal(noise.sample(3, "x"), noise.sample(3, "x")) and not torch.equal(noise.sample(3, "x"),
                                                                                        noise.sample(3, "y"))


# ---------------------------------------------------------------------- end to end


def test_final_states_are_what_decoding_reports():
    """The ridge map is fitted on the states a decoding step hands the channel (after the final norm)."""
    model = tiny_model("llama")
    texts = ["w3 w4 w5", "w6 w7 w8 w9"]
    decoded = Session(model).decode("A", texts[:1], (), 1, needs_hidden=True)
    assert torch.allclose(final_states(model, texts)[0], decoded.hidden[0, 0], atol=1e-5)


@pytest.fixture
def tiny_corpus(monkeypatch):
    """Corpus sentences in the tiny models' vocabulary, so maps to input embeddings have variance."""
    def sentences(n=3000, seed=0, **_):
        rng = random.Random(seed)
        return [" ".join(f"w{rng.randrange(3, VOCAB)}" for _ in range(rng.randrange(4, 9))) for _ in range(n)]
    monkeypatch.setattr(corpus, "sentences", sentences)


def test_protocol_runs_end_to_end_with_the_ridge_map_and_the_adapter(tmp_path, tiny_dir, tiny_corpus):
    adapter = {"kind": "interlat", "channel": "adapter", "plan_tokens": 4, "train_items": 8, "train_steps": 3,
               "train_batch": 4, "covariance_items": 4}
    ridge = {"kind": "interlat", "channel": "ridge", "plan_tokens": 4, "n_sentences": 120, "covariance_items": 4}
    path = tmp_path / "e.yaml"
    path.write_text(json.dumps({
        "name": "interlat", "max_new_tokens": 3, "batch_size": 3, "pairs": [{"A": str(tiny_dir), "B": str(tiny_dir)}],
        "tasks": [{"name": "countries", "n": 6}],
        "protocols": [ridge, {**ridge, "control": "covariance"}, {**ridge, "compress": 2, "control": "mismatched"},
                      adapter, {**adapter, "compress": 2}, {**adapter, "control": "random"}]}))
    rows = run_experiment(load_experiment(str(path)), tmp_path / "out", progress=False)
    by = {}
    for row in rows:
        by.setdefault(row["protocol"], []).append(row)
    assert set(by) == {"interlat_ridge", "interlat_ridge_ctl-covariance", "interlat_ridge_K2_ctl-mismatched",
                       "interlat_adapter", "interlat_adapter_K2", "interlat_adapter_ctl-random"}
    assert all(len(v) == 6 for v in by.values())
    plain = by["interlat_ridge"][0]
    assert plain["compute"]["tokens"]["A"] > 0 and plain["compute"]["tokens"]["B"] > 0
    assert 1 <= plain["extra"]["message_vectors"] <= 4 and plain["extra"]["channel"]["kind"] == "linear"
    assert plain["interventions"][0]["kind"] == "soft_tokens" and plain["interventions"][0]["message"] == "interlat"
    assert all(r["extra"]["message_vectors"] <= 2 for r in by["interlat_ridge_K2_ctl-mismatched"])
    assert all(r["extra"]["message_from"] != r["item_id"] for r in by["interlat_ridge_K2_ctl-mismatched"])
    assert by["interlat_ridge_ctl-covariance"][0]["extra"]["channel"]["control"]["kind"] == "covariance"
    trained = by["interlat_adapter"][0]["extra"]["channel"]
    assert trained["kind"] == "adapter"
    cache = Path(os.environ["INTERVENTIONS_CACHE"]) / "adapters"
    record = json.loads((cache / f"{trained['fingerprint']}.json").read_text())
    assert len(record["curve"]) == 3 and record["recipe"]["n_train"] == 8
    assert record["sender"]["sha256"] == plain["models"]["A"]["sha256"]
    evaluated = {r["item_id"] for r in rows}
    assert not evaluated & set(record["train_item_ids"])          # trained on items the run does not evaluate


def test_receiver_reads_the_mapped_plan_where_a_plain_hf_reference_puts_it(tiny_corpus, monkeypatch):
    """The ridge channel against a hand-built reference: A's plan states from HF generate, mapped,
    placed between the marker embeddings before B's prompt; B's logits must agree."""
    from interventions.adapters import trajectory_map
    from interventions.harness.prompts import answer_prompt
    from interventions.harness.protocols import Context, interlat
    from interventions.harness.tasks import get_task

    model = tiny_model("llama")
    task = get_task("countries")
    items = task.items(3, 0)
    sent = {}

    def answer(ctx, role, prompts, items, interventions, control):
        sent.update(prompts=prompts, interventions=interventions)
        return real_answer(ctx, role, prompts, items, interventions, control)

    real_answer = interlat.answer
    monkeypatch.setattr(interlat, "answer", answer)
    protocol = interlat.Interlat(channel="ridge", plan_tokens=4, n_sentences=120)
    session = Session(model)
    outcomes = protocol.run(Context(session, task, max_new_tokens=3, seed=0, pool=items), items)
    logits = session.forward("B", sent["prompts"], sent["interventions"]).logits[:, -1]
    tok, embed = model.tokenizer, model.hf.get_input_embeddings()
    mapping = trajectory_map(model, model, 120, 0)
    for row, (item, outcome) in enumerate(zip(items, outcomes)):
        ids = torch.tensor([tok(interlat.plan_prompt(model, task, item))["input_ids"]])
        with torch.no_grad():
            plan = model.hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=4, do_sample=False,
                                     output_hidden_states=True, return_dict_in_generate=True,
                                     pad_token_id=model.pad_token_id)
            states = torch.stack([step[-1][0, -1] for step in plan.hidden_states])
            new = plan.sequences[0, ids.shape[1]:].tolist()
            if tok.eos_token_id in new:
                states = states[:max(1, new.index(tok.eos_token_id))]
            markers = [embed(torch.tensor(tok(m, add_special_tokens=False)["input_ids"])) for m in protocol.markers]
            prompt = embed(torch.tensor(tok(answer_prompt(model, task, item))["input_ids"]))
            embeds = torch.cat([markers[0], mapping(states), markers[1], prompt])[None]
            expected = model.hf(inputs_embeds=embeds).logits[0, -1]
        assert outcome.extra["message_vectors"] == len(states)
        assert (logits[row] - expected).abs().max() < 1e-4


def test_too_few_training_items_and_a_missing_checkpoint_are_refused_in_one_line(tmp_path):
    from interventions.harness.protocols import Context, interlat
    from interventions.harness.tasks import get_task

    task = get_task("countries")
    evaluated = task.items(3, 0)

    class Small:            # a task whose whole pool is the evaluated items plus two more
        name = "small"
        def all_items(self):
            return task.items(5, 0)

    with pytest.raises(interlat.InterlatError, match="small has only 2 items with answers outside the 3 evaluated"):
        interlat.training_items(Small(), 16, 0, evaluated)
    assert len(interlat.training_items(task, 16, 0, evaluated)) == 16     # a large pool is fine

    model = tiny_model("llama")
    missing = tmp_path / "nowhere.pt"
    protocol = interlat.Interlat(channel="adapter", checkpoint=str(missing))
    with pytest.raises(interlat.InterlatError, match=f"no readable adapter checkpoint at {missing}$"):
        protocol.adapter(Context(Session(model), task, pool=evaluated))

"""Vision to a text model: scene and easy-VQA tasks, latents, training-free maps, probes, the projector,
and the caption / image_latent protocols, checked against hand computations on tiny random models."""

from __future__ import annotations

import re
import tempfile

import pytest
import torch
import transformers
from transformers import Dinov2Config, Dinov2Model

from interventions.harness.protocols import PROTOCOLS
from interventions.harness.protocols.base import Context
from interventions.harness.protocols.vision import MARKERS, image_prompt
from interventions.harness.tasks import get_task
from interventions.harness.tasks.scenes import caption_text, scene_labels
from interventions.models import wrap_model
from interventions.session import Session
from interventions.vision import scenes as sc
from interventions.vision.embedding_maps import caption_targets, fit_embedding_map
from interventions.vision.encoders import ENCODERS, EncoderEntry, wrap_hf
from interventions.vision.latents import ImageLatents, latents
from interventions.vision.probes import fit_probes
from interventions.vision.projector import (
    ProjectorConfig,
    ProjectorMismatchError,
    ProjectorTraining,
    load_projector,
    save_projector,
    train_projector,
)

TINY_ENCODER = "tiny-dino-test"


def scene_words() -> list[str]:
    """Every word the scene tasks and prompts use, so a word-level tokenizer covers them."""
    texts = [*MARKERS, "Question: Answer: Caption: No shapes."]
    for scene in sc.generate(60, 0):
        texts += [caption_text(scene, "full"), caption_text(scene, "short")]
        for q in sc.questions(scene):
            texts += [q.text, *q.choices]
    words = set()
    for text in texts:
        words.update(re.findall(r"\w+|[^\w\s]+", text))
    return sorted(words)


@pytest.fixture(scope="module")
def scene_lm():
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"<pad>": 0, "<bos>": 1, "<eos>": 2, **{w: i + 3 for i, w in enumerate(scene_words())}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", bos_token="<bos>",
                                                     eos_token="<eos>")
    directory = tempfile.mkdtemp(prefix="scene-tokenizer-")
    tokenizer.save_pretrained(directory)
    config = transformers.LlamaConfig(hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                                      num_key_value_heads=2, vocab_size=len(vocab), max_position_embeddings=256)
    config.architectures = ["LlamaForCausalLM"]
    torch.manual_seed(0)
    return wrap_model("tiny-scene-llama", transformers.LlamaForCausalLM(config).eval(),
                      transformers.AutoTokenizer.from_pretrained(directory))


@pytest.fixture(scope="module")
def tiny_encoder():
    torch.manual_seed(0)
    model = Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                                     patch_size=14, image_size=56))
    ENCODERS.register(TINY_ENCODER, EncoderEntry(
        TINY_ENCODER, lambda device: wrap_hf(model, TINY_ENCODER, "d" * 64, 56, (0.5,) * 3, (0.5,) * 3)))
    yield ENCODERS.get(TINY_ENCODER).load("cpu")
    del ENCODERS[TINY_ENCODER]     # other tests list the named encoders


# ------------------------------------------------------------------ tasks

def test_scene_items_answer_from_the_scene_and_fit_set_is_disjoint():
    task = get_task("scenes/count", n_scenes=40)
    items = task.items()
    assert len(items) == 40 and items == task.items()
    for item in items:
        scene = task.scene(item)
        assert item.answer == sc.NUMBERS[len(scene.objects)] == item.choices[item.answer_index]
        assert item.context == sc.caption(scene, "full") == task.caption(item, "full")
    evaluated = {s.objects for s in task.scenes.values()}
    fit = task.fit_set(50)
    assert len(fit) == 50 and not any(sc.Scene("x", ()).objects == ex for ex in evaluated if not ex)
    assert all(ex.key.startswith("fit-") for ex in fit)
    assert not {tuple(sorted(ex.labels.items())) for ex in fit} & {
        tuple(sorted(scene_labels(s).items())) for s in task.scenes.values()}


def test_caption_from_labels_inverts_the_labels():
    task = get_task("scenes/shape")
    for scene in sc.generate(30, 3):
        assert task.caption_from_labels(scene_labels(scene), "full") == sc.caption(scene, "full")
        assert task.caption_from_labels(scene_labels(scene), "short") == sc.caption(scene, "short")
    empty = {key: "none" for key in scene_labels(sc.generate(1, 0)[0])}
    assert task.caption_from_labels(empty) == "No shapes."


def test_unknown_scene_kind_suggests():
    with pytest.raises(Exception, match="Did you mean 'colour'"):
        get_task("scenes/colr")


def test_easy_vqa_items_and_unreadable_images_are_skipped(tmp_path):
    pytest.importorskip("easy_vqa")
    task = get_task("easy_vqa/colour")
    split = task.test
    first = sorted(split.labels)[0]
    corrupt = tmp_path / "broken.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    split.paths[first] = str(corrupt)
    with pytest.warns(UserWarning, match="skipping unreadable image"):
        items = task.all_items()
    assert all(item.meta["image"] != first for item in items)
    assert task.skipped and task.skipped[0]["image"] == first
    item = items[0]
    assert item.answer in item.choices and item.answer == split.labels[item.meta["image"]]["colour"]
    assert task.image(item).size == (64, 64) and task.caption(item).endswith(split.labels[item.meta["image"]]["shape"])


# ------------------------------------------------------------------ latents, maps, probes

def test_latents_are_computed_once_per_image(tiny_encoder):
    scenes = sc.generate(3, 5)
    calls = []

    def images(indices):
        calls.append(list(indices))
        return [sc.render(scenes[i], 56) for i in indices]

    read = ImageLatents(layer=-1, pool="patches", k=4)
    first = latents(tiny_encoder, read, [s.id for s in scenes], images)
    again = latents(tiny_encoder, read, [s.id for s in scenes][::-1], images)
    assert first.shape == (3, 4, 32) and calls == [[0, 1, 2]]
    assert torch.equal(again, first.flip(0))
    direct = tiny_encoder.features([sc.render(s, 56) for s in scenes], pool="patches", k=4)
    torch.testing.assert_close(first, direct)


def test_linear_embedding_map_recovers_a_linear_relation(scene_lm):
    captions = [caption_text(s, "full") for s in sc.generate(200, 7)]
    targets = caption_targets(scene_lm, captions, 2)          # (N, 2, 48)
    mixing = torch.randn(48, 48, generator=torch.Generator().manual_seed(0))
    features = targets @ mixing                               # an invertible relation: ridge must recover it
    fitted = fit_embedding_map("linear", features, scene_lm, captions, "synthetic")
    assert fitted.r2_heldout > 0.99
    torch.testing.assert_close(fitted(features[:5]), targets[:5], atol=5e-3, rtol=0)


def test_caption_targets_average_segments(scene_lm):
    ids = scene_lm.tokenizer("a red circle at", add_special_tokens=False)["input_ids"]
    embeds = scene_lm.embed(ids).detach()
    got = caption_targets(scene_lm, ["a red circle at"], 2)[0]
    torch.testing.assert_close(got, torch.stack([embeds[:2].mean(0), embeds[2:].mean(0)]))


def test_probes_read_a_linearly_coded_attribute():
    g = torch.Generator().manual_seed(0)
    colours = ["red", "blue", "green"]
    labels = [{"colour": colours[i % 3], "noise": "a" if i % 2 else "b"} for i in range(300)]
    features = torch.randn(300, 2, 8, generator=g)
    features[:, 0, :3] += 10 * torch.eye(3)[[i % 3 for i in range(300)]]
    probes = fit_probes(features, labels)
    assert probes.probes["colour"].heldout_accuracy == 1.0
    assert probes.probes["noise"].heldout_accuracy < 0.8
    assert [p["colour"] for p in probes.predict(features[:6])] == ["red", "blue", "green"] * 2


# ------------------------------------------------------------------ projector

def test_projector_learns_and_its_checkpoint_refuses_other_models(scene_lm, tiny_encoder, tmp_path):
    examples = get_task("scenes/count", n_scenes=20).fit_set(64)
    read = ImageLatents(-1, "patches", 4)
    feats = latents(tiny_encoder, read, [ex.key for ex in examples], lambda idx: [examples[i].image for i in idx])
    config = ProjectorConfig(32, 48, hidden=64)
    projector, record = train_projector(scene_lm, feats, [ex.caption for ex in examples], MARKERS[0], config,
                                        ProjectorTraining(steps=40, batch_size=16, lr=3e-3), progress=False)
    curve = record["curve"]
    assert curve[-1]["heldout_loss"] < curve[0]["heldout_loss"] and record["seconds"] > 0
    encoder = {"name": TINY_ENCODER, "identity": "d" * 64, "layer": 2, "pool": "patches", "tokens": 4}
    path = tmp_path / "p.pt"
    save_projector(projector, path, encoder, scene_lm, record)
    loaded = load_projector(path, encoder, scene_lm)
    torch.testing.assert_close(loaded(feats[:3]), projector(feats[:3]))
    with pytest.raises(ProjectorMismatchError, match="encoder layer 2"):
        load_projector(path, {**encoder, "layer": 1}, scene_lm)
    other = wrap_model("other-lm", scene_lm.hf, scene_lm.tokenizer, sha256="e" * 64)
    with pytest.raises(ProjectorMismatchError, match="language model tiny-scene-llama"):
        load_projector(path, encoder, other)
    assert (tmp_path / "p.json").exists()


# ------------------------------------------------------------------ protocols

def context_for(model, task, items):
    return Context(Session({"B": model}), task, pool=items)


def choice_logliks(model, prefix_embeds: torch.Tensor, choices) -> list[float]:
    """Hand computation: log P(" choice" | prefix) with a plain forward over inputs_embeds."""
    out = []
    for choice in choices:
        ids = model.tokenizer(" " + choice, add_special_tokens=False)["input_ids"]
        embeds = torch.cat([prefix_embeds, model.embed(ids)])[None]
        logp = model.hf(inputs_embeds=embeds).logits[0].log_softmax(-1)
        n = len(prefix_embeds)
        out.append(float(sum(logp[n - 1 + i, t] for i, t in enumerate(ids))))
    return out


@torch.no_grad()
def test_image_latent_equals_a_hand_built_embedding_sequence(scene_lm, tiny_encoder):
    task = get_task("scenes/colour", n_scenes=80)
    items = task.items(3)
    protocol = PROTOCOLS.get("image_latent")(encoder=TINY_ENCODER, map="linear", fit_images=120)
    ctx = context_for(scene_lm, task, items)
    outcomes = protocol.run(ctx, items)
    mapping = protocol.mapping(ctx)
    vectors = mapping(protocol.item_latents(ctx, items))
    tok = scene_lm.tokenizer
    for item, outcome, vec in zip(items, outcomes, vectors):
        bos = tok("")["input_ids"]
        parts = [scene_lm.embed(bos), scene_lm.embed(tok(MARKERS[0], add_special_tokens=False)["input_ids"]), vec,
                 scene_lm.embed(tok(MARKERS[1], add_special_tokens=False)["input_ids"]),
                 scene_lm.embed(tok(image_prompt(item), add_special_tokens=False)["input_ids"])]
        expected = choice_logliks(scene_lm, torch.cat(parts), item.choices)
        torch.testing.assert_close(torch.tensor(outcome.raw), torch.tensor(expected), atol=1e-4, rtol=1e-4)
        assert outcome.extra["map"]["kind"] == "linear" and outcome.compute.flops > 0


@torch.no_grad()
def test_image_latent_graft_equals_a_forward_hook_at_block_j(scene_lm, tiny_encoder):
    task = get_task("scenes/size", n_scenes=80)
    items = task.items(2)
    protocol = PROTOCOLS.get("image_latent")(encoder=TINY_ENCODER, map="linear", fit_images=120, graft=0)
    ctx = context_for(scene_lm, task, items)
    outcomes = protocol.run(ctx, items)
    vectors = protocol.mapping(ctx)(protocol.item_latents(ctx, items))
    assert protocol.mapping(ctx).weight.shape[1] == scene_lm.d_model and outcomes[0].extra["map"]["r2_heldout"]
    tok = scene_lm.tokenizer
    filler = scene_lm.embed(tok(" .", add_special_tokens=False)["input_ids"][-1:] * 4)
    marker = tok(MARKERS[0], add_special_tokens=False)["input_ids"]
    for item, outcome, vec in zip(items, outcomes, vectors):
        bos = tok("")["input_ids"]
        prefix = torch.cat([scene_lm.embed(bos), scene_lm.embed(marker), filler,
                            scene_lm.embed(tok(MARKERS[1], add_special_tokens=False)["input_ids"]),
                            scene_lm.embed(tok(image_prompt(item), add_special_tokens=False)["input_ids"])])
        first = len(bos) + len(marker)

        def replace(module, args, output):       # the reference: a plain PyTorch forward hook on block 0
            hidden = output[0] if isinstance(output, tuple) else output
            hidden[:, first:first + 4] = vec
            return output

        handle = scene_lm.hf.model.layers[0].register_forward_hook(replace)
        try:
            expected = choice_logliks(scene_lm, prefix, item.choices)
        finally:
            handle.remove()
        torch.testing.assert_close(torch.tensor(outcome.raw), torch.tensor(expected), atol=1e-4, rtol=1e-4)
    assert protocol.name == "image_linear_graft0"
    with pytest.raises(Exception, match="graft into block j through a fitted map"):
        PROTOCOLS.get("image_latent")(map="projector", graft=3)


@torch.no_grad()
def test_caption_protocols_read_the_caption_they_name(scene_lm, tiny_encoder):
    task = get_task("scenes/position", n_scenes=80)
    items = task.items(4)
    ctx = context_for(scene_lm, task, items)
    short = PROTOCOLS.get("caption")(source="short").run(ctx, items)
    assert [o.extra["caption"] for o in short] == [it.meta["caption_short"] for it in items]
    mismatched = PROTOCOLS.get("caption")(source="full", control="mismatched").run(ctx, items)
    assert [o.extra["caption"] for o in mismatched] == [ctx.partner(it).context for it in items]
    predicted = PROTOCOLS.get("caption")(source="predicted", encoder=TINY_ENCODER, fit_images=120).run(ctx, items)
    assert all(o.extra["probes"]["heldout_accuracy"] for o in predicted)
    assert predicted[0].compute.flops > short[0].compute.flops   # the encoder's forward is charged


def test_vision_protocols_skip_text_only_tasks_and_refuse_unknown_maps():
    protocol = PROTOCOLS.get("image_latent")(encoder=TINY_ENCODER)
    assert not protocol.applies_to(get_task("countries"), {"B": "x"})
    assert protocol.applies_to(get_task("scenes/size"), {"B": "x"})
    with pytest.raises(Exception, match="Did you mean 'procrustes'"):
        PROTOCOLS.get("image_latent")(map="procrustse")


# ------------------------------------------------------------------ cross-modal alignment

def test_mutual_knn_alignment_matrix_against_hand_cases():
    from interventions.vision.alignment import alignment_matrix

    g = torch.Generator().manual_seed(0)
    x = torch.randn(120, 16, generator=g)
    rotated = x @ torch.linalg.qr(torch.randn(16, 16, generator=g))[0]       # same neighbours, other basis
    unrelated = torch.randn(120, 8, generator=g)
    scores = alignment_matrix([x, unrelated], [rotated, x * 3], k=10, quantile=1.0)
    assert scores.shape == (2, 2)
    torch.testing.assert_close(scores[0], torch.ones(2))
    assert scores[1].max() < 0.25      # chance is 10 / 119


def test_cross_modal_alignment_writes_heatmaps(scene_lm, tiny_encoder, tmp_path):
    from interventions.vision.alignment import cross_modal_alignment, write_alignment

    scenes = sc.generate(40, 11)
    result = cross_modal_alignment(tiny_encoder, [scene_lm], [sc.render(s, 56) for s in scenes],
                                   [caption_text(s, "full") for s in scenes], k=5)
    matrix = result.scores[scene_lm.name]
    assert matrix.shape == (2, 2) and ((matrix >= 0) & (matrix <= 1)).all()
    assert result.chance == pytest.approx(5 / 39)
    paths = write_alignment(result, tmp_path)
    assert paths["json"].exists() and paths["size"].exists() and paths[scene_lm.name].exists()
    assert "chance" in result.summary_lines()[0]


# ------------------------------------------------------------------ an experiment end to end

def test_vision_experiment_runs_and_resumes(tmp_path, tiny_dir, tiny_encoder):
    import json

    from interventions.harness.experiment import load_experiment
    from interventions.harness.runner import run_experiment

    path = tmp_path / "d3.yaml"
    path.write_text(json.dumps({
        "name": "d3_tiny", "batch_size": 4, "pairs": [{"B": str(tiny_dir)}],
        "tasks": [{"name": "scenes/count", "n": 4, "options": {"n_scenes": 30}}, {"name": "countries", "n": 2}],
        "protocols": [{"kind": "silent"}, {"kind": "caption", "source": ["short", "full"]},
                      {"kind": "image_latent", "encoder": TINY_ENCODER, "map": "linear", "fit_images": 60,
                       "control": ["none", "random"]}]}))
    rows = run_experiment(load_experiment(str(path)), tmp_path / "out", progress=False)
    by_protocol = {}
    for row in rows:
        by_protocol.setdefault((row["task"], row["protocol"]), []).append(row)
    # vision protocols answer the image task only; silent answers both
    assert sorted(by_protocol) == sorted([("countries", "silent"), ("scenes/count", "silent"),
                                          ("scenes/count", "caption_short"), ("scenes/count", "caption_full"),
                                          ("scenes/count", "image_linear"), ("scenes/count", "image_linear_ctl-random")])
    latent = by_protocol[("scenes/count", "image_linear")][0]
    assert latent["extra"]["map"]["kind"] == "linear" and latent["compute"]["tokens"]["vision"] == 1
    lines = (tmp_path / "out" / "results.jsonl").read_text().splitlines()
    again = run_experiment(load_experiment(str(path)), tmp_path / "out", progress=False)
    assert len(again) == len(rows) == len(lines)
    assert (tmp_path / "out" / "results.jsonl").read_text().splitlines() == lines     # resumed: nothing redone

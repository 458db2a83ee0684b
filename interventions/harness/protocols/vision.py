"""Vision to a text-only language model: what B learns about an image it never sees.

B reads ``Image: <description>`` before the question, where the description is
- ``caption``: words. ``short`` and ``full`` are the ground-truth captions (skylines of a caption
  channel); ``predicted`` is the vision side's own caption, attribute words predicted by linear probes
  on the encoder's latents (``interventions.vision.probes``) rendered through the task's template;
- ``image_latent``: the encoder's latents (``layer``, ``pool``, ``k`` tokens) as soft tokens, through a
  training-free map fitted on image–caption pairs (``linear`` = ridge, ``procrustes``, or any fitted map
  kind) or a trained LLaVA-style ``projector`` (``interventions.vision.projector``); or, with ``graft: j``,
  spliced into B's residual stream after block j at k filler slots, through a map fitted to B's
  states of the captions there.
No image at all is ``silent``. Maps, probes and projectors fit on the task's ``fit_set``, never on
evaluated images. Controls for latents: ``random`` (same norm), ``zero``, ``mismatched`` (another item's
image); for captions: ``mismatched``.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, PositiveInt, field_validator, model_validator

from ...alignment import MAPS
from ...compute import Compute
from ...controls import apply_control
from ...spec import Site, SoftTokens, Splice
from ...spec.base import check_layer
from ...vision.embedding_maps import fit_embedding_map
from ...vision.encoders import ImageEncoder, load_encoder
from ...vision.latents import ImageLatents, latents
from ...vision.probes import CaptionProbes, fit_probes
from ...vision.projector import (
    ProjectorConfig,
    ProjectorTraining,
    fingerprint,
    load_projector,
    projector_path,
    save_projector,
    train_projector,
)
from ..prompts import choice_context
from ..tasks.images import ImageTask
from .ac import control_suffix
from .base import Context, Protocol, answer, register_protocol, vector_control
from .interlat import head_length

MESSAGE = "image"
MARKERS = ("Image:", "\n")
_FITTED: dict[tuple, object] = {}     # maps, probes and projectors, per process


def image_prompt(item, description: str = "") -> str:
    """B's prompt: the description line (``Image: …``), then the question as the task asks it."""
    base = choice_context(item)
    return f"{MARKERS[0]} {description}{MARKERS[1]}{base}" if description else base


def kept(key: tuple, make):
    if key not in _FITTED:
        _FITTED[key] = make()
    return _FITTED[key]


class VisionProtocol(Protocol):
    """Shared fields and plumbing: which encoder read, and the fit set that shapes the channel."""

    encoder: str = "dinov2-s"
    layer: int = -1
    pool: Literal["cls", "mean", "patches"] = "patches"
    k: PositiveInt = 4
    fit_images: PositiveInt = 600

    def applies_to(self, task, pair) -> bool:
        return isinstance(task, ImageTask)

    @property
    def read(self) -> ImageLatents:
        return ImageLatents(self.layer, self.pool, self.k)

    def image_encoder(self) -> ImageEncoder:
        return load_encoder(self.encoder)

    def encoder_record(self) -> dict:
        encoder = self.image_encoder()
        return {"name": encoder.name, "identity": encoder.identity, "layer": encoder.layer_index(self.layer),
                "pool": self.pool, "tokens": self.read.tokens}

    def identity(self) -> dict:
        """The work key also hashes the encoder's weights, so another encoder never resumes these rows."""
        return {**self.as_dict(), "encoder_identity": self.image_encoder().identity}

    def item_latents(self, ctx: Context, items) -> torch.Tensor:
        task = ctx.task
        return latents(self.image_encoder(), self.read, [task.image_key(it) for it in items],
                       lambda idx: [task.image(items[i]) for i in idx])

    def fit_latents(self, task: ImageTask):
        """(examples, (N, k, d) latents) of the task's fit set."""
        examples = kept(("fit_set", task.fit_key(self.fit_images)), lambda: task.fit_set(self.fit_images))
        feats = latents(self.image_encoder(), self.read, [ex.key for ex in examples],
                        lambda idx: [examples[i].image for i in idx])
        return examples, feats

    def vision_cost(self, n: int) -> list[Compute]:
        flops = self.image_encoder().flops_per_image
        return [Compute(tokens={"vision": 1}, flops=flops) for _ in range(n)]


@register_protocol("caption")
class Caption(VisionProtocol):
    """B reads a caption of the image: ground truth (``short``, ``full``) or predicted by probes."""

    source: Literal["short", "full", "predicted"] = "short"
    detail: Literal["short", "full"] = "full"      # of the predicted caption
    control: Literal["none", "mismatched"] = "none"
    quiet_defaults = ("encoder", "layer", "pool", "k", "fit_images", "detail")

    @property
    def name(self) -> str:
        what = f"predicted-{self.detail}" if self.source == "predicted" else self.source
        return f"caption_{what}{control_suffix(self.control)}"

    @property
    def family(self) -> str:
        return self.name

    def identity(self) -> dict:
        return super().identity() if self.source == "predicted" else self.as_dict()

    def probes(self, task: ImageTask) -> CaptionProbes:
        def fit():
            examples, feats = self.fit_latents(task)
            return fit_probes(feats, [ex.labels for ex in examples])
        return kept(("probes", self.encoder_record()["identity"], self.read, task.fit_key(self.fit_images)), fit)

    def run(self, ctx: Context, items):
        task, sources = ctx.task, ctx.sources(items, self.control)
        extra = {}
        if self.source == "predicted":
            probes = self.probes(task)
            labels = probes.predict(self.item_latents(ctx, sources))
            captions = [task.caption_from_labels(lab, self.detail) for lab in labels]
            extra = {"probes": probes.describe()}
        else:
            captions = [task.caption(it, self.source) for it in sources]
        outcomes = answer(ctx, "B", [image_prompt(it, c) for it, c in zip(items, captions)], items)
        for outcome, text in zip(outcomes, captions):
            outcome.extra.update(caption=text, **extra)
        if self.source == "predicted":
            for outcome, cost in zip(outcomes, self.vision_cost(len(items))):
                outcome.compute.merge(cost)
        return outcomes


@register_protocol("image_latent")
class ImageLatent(VisionProtocol):
    """B reads the encoder's latents as soft tokens, through a fitted map or a trained projector."""

    map: str = "linear"                     # a fitted map kind (linear, procrustes, ...) or "projector"
    control: Literal["none", "random", "zero", "mismatched"] = "none"
    train_steps: PositiveInt = 300
    train_batch: PositiveInt = 16
    lr: float = Field(1e-3, gt=0)
    hidden: PositiveInt = 1024
    checkpoint: str | None = None           # a saved projector to load instead of training
    graft: int | str | None = None          # a block (or depth "50%"): splice into the residual stream there
    quiet_defaults = ("train_steps", "train_batch", "lr", "hidden", "checkpoint", "graft")

    @field_validator("map")
    @classmethod
    def _known_map(cls, value: str) -> str:
        if value != "projector":
            MAPS.get(value)        # unknown: names the registered kinds
        return value

    @model_validator(mode="after")
    def _graft_needs_a_fitted_map(self):
        if self.graft is not None:
            if self.map == "projector":
                raise ValueError("graft: a projector makes input-embedding soft tokens; graft into block j "
                                 "through a fitted map (map: linear, procrustes, ...)")
            check_layer(self.graft)
        return self

    @property
    def name(self) -> str:
        return f"{self.family}{control_suffix(self.control)}"

    @property
    def family(self) -> str:
        return f"image_{self.map}" + (f"_graft{self.graft}" if self.graft is not None else "")

    def mapping(self, ctx: Context):
        task, model = ctx.task, ctx.model("B")
        record = self.encoder_record()
        if self.map == "projector":
            return kept(("projector", model.tag, str(record), task.fit_key(self.fit_images), self.train_steps,
                         self.train_batch, self.lr, self.hidden, self.checkpoint), lambda: self.projector(task, model))
        what = f"{record['name']} layer {record['layer']} {self.pool}"
        block = None if self.graft is None else model.resolve_layer(self.graft)
        return kept(("map", self.map, model.tag, str(record), task.fit_key(self.fit_images), block),
                    lambda: fit_embedding_map(self.map, self.fit_latents(task)[1], model,
                                              [ex.caption for ex in self.fit_latents(task)[0]], what, block=block))

    def projector(self, task: ImageTask, model):
        encoder = self.encoder_record()
        training = ProjectorTraining(self.train_steps, self.train_batch, self.lr)
        if self.checkpoint:
            loaded = load_projector(self.checkpoint, encoder, model)
            if loaded is None:
                raise FileNotFoundError(f"image_latent.checkpoint {self.checkpoint} is missing or fails verification")
            return loaded
        examples, feats = self.fit_latents(task)
        key = fingerprint(encoder, model, {"fit": task.fit_key(self.fit_images), "hidden": self.hidden,
                                           **training.__dict__})
        path = projector_path(key)
        found = load_projector(path, encoder, model)
        if found is None:
            config = ProjectorConfig(feats.shape[-1], model.embed([0]).shape[-1], self.hidden)
            found, record = train_projector(model, feats, [ex.caption for ex in examples], MARKERS[0], config, training)
            save_projector(found, path, encoder, model, {**record, "fit": task.fit_key(self.fit_images)})
        found.fingerprint = key
        return found

    def run(self, ctx: Context, items):
        model, mapping = ctx.model("B"), self.mapping(ctx)
        with torch.no_grad():
            vectors = mapping(self.item_latents(ctx, ctx.sources(items, self.control)))
        start = head_length(model, chat=False)
        prompts = {"B": [image_prompt(it) for it in items], MESSAGE: list(vectors.float())}
        if self.graft is None:
            specs = [SoftTokens(model="B", message=MESSAGE, at=start, markers=MARKERS)]
            control = vector_control(self.control)
        else:
            specs, control = self.graft_specs(model, prompts, start), "none"
        outcomes = answer(ctx, "B", prompts, items, specs, control)
        for outcome, cost in zip(outcomes, self.vision_cost(len(items))):
            outcome.compute.merge(cost)
            outcome.extra["map"] = mapping.describe()
        return outcomes

    def graft_specs(self, model, prompts: dict, start: int) -> list:
        """The image's k slots enter as copies of a filler embedding (" ."); at block ``graft`` their states
        are replaced by the mapped latents. The control is applied here, to the latents only."""
        filler_id = model.tokenizer(" .", add_special_tokens=False)["input_ids"][-1]
        with torch.no_grad():
            slots = model.embed([filler_id] * self.read.tokens).float().cpu()
        prompts["slots"] = [slots]
        prompts[MESSAGE] = [apply_control(vector_control(self.control), v, prompt)
                            for v, prompt in zip(prompts[MESSAGE], prompts["B"])]
        first = start + len(model.tokenizer(MARKERS[0], add_special_tokens=False)["input_ids"])
        target = Site("B", self.graft, tuple(range(first, first + self.read.tokens)))
        return [SoftTokens(model="B", message="slots", at=start, markers=MARKERS),
                Splice(message=MESSAGE, target=target, combine="replace")]

"""A LLaVA-style projector: a two-layer MLP that turns each image-latent token into a soft token of a
frozen language model, trained on this CPU to caption images (LLaVA's first stage, feature alignment).

The language model reads ``[BOS] Image: <soft tokens> \\nCaption:`` and is scored by its cross-entropy on
the ground-truth full caption; only the projector learns. A checkpoint holds the weights, config, the
encoder read (encoder weights, layer, pool, k) and the language model's weights hash: loading it for
another encoder or language model is refused, naming the mismatch. A JSON beside it keeps the curve,
recipe and timing for people.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..adapters.training import frozen
from ..errors import InterventionError
from ..models.cache import cache_root
from ..models.loaded import LoadedModel
from ..verified import load_tensors, save_tensors

RECIPE_VERSION = 1
CAPTION_CUE = "\nCaption:"


class ProjectorMismatchError(InterventionError, ValueError):
    pass


@dataclass(frozen=True)
class ProjectorConfig:
    d_vision: int
    d_embed: int
    hidden: int = 1024


@dataclass(frozen=True)
class ProjectorTraining:
    steps: int = 300
    batch_size: int = 16
    lr: float = 1e-3
    seed: int = 0


class Projector(torch.nn.Module):
    def __init__(self, config: ProjectorConfig):
        super().__init__()
        self.config = config
        self.fc1 = torch.nn.Linear(config.d_vision, config.hidden)
        self.fc2 = torch.nn.Linear(config.hidden, config.d_embed)

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(latents.to(self.fc1.weight.dtype))))

    def describe(self) -> dict:
        return {"kind": "projector", **asdict(self.config), "fingerprint": getattr(self, "fingerprint", "")}


def fingerprint(encoder: dict, model: LoadedModel, recipe: dict) -> str:
    blob = json.dumps({"encoder": encoder, "model": model.weight_sha256, "dtype": model.dtype_name,
                       "recipe": recipe, "version": RECIPE_VERSION}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def projector_path(key: str) -> Path:
    return cache_root() / "projectors" / f"{key}.pt"


def caption_batch(model: LoadedModel, projector: Projector, latents: torch.Tensor, caption_ids: list[list[int]],
                  head: torch.Tensor, cue: torch.Tensor):
    """Left-padded inputs_embeds, mask and the (row, position, target) of every caption token."""
    device, dtype = model.device, model.embed([0]).dtype
    sequences, spans = [], []
    for row, (vectors, ids) in enumerate(zip(projector(latents), caption_ids)):
        seq = torch.cat([head, vectors.to(device, dtype), cue, model.embed(ids)])
        sequences.append(seq)
        spans.append(len(ids))
    width = max(len(s) for s in sequences)
    embeds = sequences[0].new_zeros(len(sequences), width, sequences[0].shape[-1])
    mask = torch.zeros(len(sequences), width, dtype=torch.long, device=device)
    for row, seq in enumerate(sequences):
        embeds[row, width - len(seq):] = seq
        mask[row, width - len(seq):] = 1
    return embeds, mask, spans


def caption_loss(model: LoadedModel, projector: Projector, latents, caption_ids, head, cue) -> torch.Tensor:
    embeds, mask, spans = caption_batch(model, projector, latents, caption_ids, head, cue)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    keep = max(spans) + 1       # only the positions that predict caption tokens go through the unembedding
    logits = model.hf(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, use_cache=False,
                      logits_to_keep=keep).logits
    picked = torch.cat([logits[row, keep - 1 - m:keep - 1] for row, m in enumerate(spans)])
    targets = torch.cat([torch.tensor(ids, device=picked.device) for ids in caption_ids])
    return F.cross_entropy(picked.float(), targets)


def train_projector(model: LoadedModel, latents: torch.Tensor, captions: list[str], head_text: str,
                    config: ProjectorConfig, training: ProjectorTraining, progress: bool = True) -> tuple[Projector, dict]:
    """A projector trained to make ``model`` (frozen) caption images from their (N, k, d) latents; the
    record holds the curve (loss per step, and on held-out images every 25 steps), wall time and final loss."""
    torch.manual_seed(training.seed)
    projector = Projector(config).to(model.device)
    ids = [model.tokenizer(" " + c.strip(), add_special_tokens=False)["input_ids"] for c in captions]
    order = list(range(len(ids)))
    random.Random(training.seed).shuffle(order)
    n_held = min(32, max(1, len(order) // 10))     # a fixed held-out slice, judged every 25 steps
    held, train = order[:n_held], order[n_held:]
    with torch.no_grad():
        head = model.embed(model.tokenizer(head_text)["input_ids"])
        cue = model.embed(model.tokenizer(CAPTION_CUE, add_special_tokens=False)["input_ids"])
    optimiser = torch.optim.AdamW(projector.parameters(), lr=training.lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, training.lr, total_steps=training.steps, pct_start=0.1)
    rng, queue, curve = random.Random(training.seed), [], []
    start = time.perf_counter()

    def heldout_loss() -> float:
        with torch.no_grad():
            return caption_loss(model, projector, latents[held], [ids[i] for i in held], head, cue).item()

    with frozen(model.hf), tqdm(range(training.steps), desc=f"projector -> {model.name}", disable=not progress) as bar:
        for step in bar:
            if len(queue) < training.batch_size:
                queue += rng.sample(train, len(train))
            batch, queue = queue[:training.batch_size], queue[training.batch_size:]
            loss = caption_loss(model, projector, latents[batch], [ids[i] for i in batch], head, cue)
            optimiser.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(projector.parameters(), 1.0)
            optimiser.step()
            schedule.step()
            point = {"step": step, "loss": round(loss.item(), 4), "wall_s": round(time.perf_counter() - start, 2)}
            if step % 25 == 0 or step == training.steps - 1:
                point["heldout_loss"] = round(heldout_loss(), 4)
            curve.append(point)
            bar.set_postfix(loss=f"{loss.item():.3f}")
    projector.eval()
    record = {"curve": curve, "seconds": round(time.perf_counter() - start, 1), "final_loss": curve[-1]["loss"],
              "final_heldout_loss": curve[-1]["heldout_loss"], "n_train": len(train), "n_heldout": len(held)}
    return projector, record


def save_projector(projector: Projector, path: Path, encoder: dict, model: LoadedModel, record: dict) -> None:
    state = {name: value.detach().cpu() for name, value in projector.state_dict().items()}
    owner = {"name": model.name, "sha256": model.weight_sha256}
    save_tensors({"state": state, "config": asdict(projector.config), "encoder": encoder, "model": owner}, path)
    Path(path).with_suffix(".json").write_text(json.dumps(
        {"config": asdict(projector.config), "encoder": encoder, "model": owner, **record}, indent=2, default=str))


def load_projector(path: Path, encoder: dict, model: LoadedModel) -> Projector | None:
    """The projector at ``path`` (None if absent or unverified), refused when it was built for another
    encoder read or language model."""
    saved = load_tensors(Path(path), "projector checkpoint")
    if saved is None:
        return None
    if saved["model"]["sha256"] != model.weight_sha256:
        raise ProjectorMismatchError(
            f"projector {Path(path).name} was trained for language model {saved['model']['name']} (weights "
            f"{saved['model']['sha256'][:12]}), not {model.name} (weights {model.weight_sha256[:12]}); leave "
            "checkpoint unset to train one for this model")
    for key, value in encoder.items():
        if saved["encoder"].get(key) != value:
            raise ProjectorMismatchError(
                f"projector {Path(path).name} was trained on encoder {key} {saved['encoder'].get(key)!r}, not "
                f"{value!r}; leave checkpoint unset to train one for this encoder read")
    projector = Projector(ProjectorConfig(**saved["config"]))
    projector.load_state_dict(saved["state"])
    return projector.to(model.device).eval()

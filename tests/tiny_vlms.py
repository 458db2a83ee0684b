"""Tiny random-weight vision-language models of four architectures (LLaVA, Gemma 3 multimodal,
Idefics3, Qwen2-VL), each with a processor, built from their transformers configs: 2 text layers of
width 64 (as wide as the tiny text models of ``tiny_models``), a 2-layer vision tower, 16x16 images
that become 4 or 16 image tokens."""

from __future__ import annotations

import tempfile

import numpy as np
import torch
import transformers
from PIL import Image
from tiny_models import VOCAB

from interventions.vision.vlm import wrap_vlm

TEXT = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=128, max_position_embeddings=256)
VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
              image_size=16, patch_size=4)
SIDE = 16


def vlm_tokenizer(named: dict[str, str], extra: tuple[str, ...] = ()):
    """A word-level tokenizer over the words of ``tiny_models`` plus the architecture's image tokens
    (``named``: attribute -> token, e.g. image_token), which the tokenizer splits out as added tokens."""
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers

    specials = list(dict.fromkeys([*named.values(), *extra]))
    vocab = {"<pad>": 0, "<bos>": 1, "<eos>": 2, **{f"w{i}": i for i in range(3, VOCAB)},
             **{token: VOCAB + i for i, token in enumerate(specials)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in specials])
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", bos_token="<bos>",
                                                     eos_token="<eos>", **named)
    directory = tempfile.mkdtemp(prefix="tiny-vlm-tokenizer-")   # TransformerLens re-opens it from a directory
    tokenizer.save_pretrained(directory)
    return transformers.AutoTokenizer.from_pretrained(directory)


def _llava():
    tok = vlm_tokenizer({"image_token": "<image>"})
    config = transformers.LlavaConfig(
        vision_config=transformers.CLIPVisionConfig(**VISION, projection_dim=32),
        text_config=transformers.LlamaConfig(**TEXT), image_token_index=tok.convert_tokens_to_ids("<image>"),
        vision_feature_select_strategy="default", vision_feature_layer=-1)
    images = transformers.CLIPImageProcessorPil(size={"shortest_edge": SIDE}, crop_size={"height": SIDE, "width": SIDE})
    processor = transformers.LlavaProcessor(images, tok, patch_size=4, vision_feature_select_strategy="default",
                                            num_additional_image_tokens=1)
    return config, transformers.LlavaForConditionalGeneration, processor


def _gemma3():
    tok = vlm_tokenizer({"boi_token": "<start_of_image>", "image_token": "<image_soft_token>",
                         "eoi_token": "<end_of_image>"})
    ids = tok.convert_tokens_to_ids
    config = transformers.Gemma3Config(
        text_config=transformers.Gemma3TextConfig(**TEXT, head_dim=16, sliding_window=8, query_pre_attn_scalar=16),
        vision_config=transformers.SiglipVisionConfig(**VISION), mm_tokens_per_image=4,
        boi_token_index=ids("<start_of_image>"), eoi_token_index=ids("<end_of_image>"),
        image_token_index=ids("<image_soft_token>"))
    images = transformers.Gemma3ImageProcessorPil(size={"height": SIDE, "width": SIDE})
    processor = transformers.Gemma3Processor(images, tok, image_seq_length=4)
    return config, transformers.Gemma3ForConditionalGeneration, processor


def _idefics3():
    tok = vlm_tokenizer({"image_token": "<image>"}, ("<fake_token_around_image>", "<end_of_utterance>", "<global-img>"))
    config = transformers.Idefics3Config(vision_config=transformers.Idefics3VisionConfig(**VISION),
                                         text_config=transformers.LlamaConfig(**TEXT), scale_factor=2,
                                         image_token_id=tok.convert_tokens_to_ids("<image>"))
    images = transformers.Idefics3ImageProcessorPil(do_image_splitting=False, size={"longest_edge": SIDE},
                                                    max_image_size={"longest_edge": SIDE})
    processor = transformers.Idefics3Processor(images, tok, image_seq_len=4)
    return config, transformers.Idefics3ForConditionalGeneration, processor


def _qwen2_vl():
    tok = vlm_tokenizer({"image_token": "<|image_pad|>", "video_token": "<|video_pad|>"},
                        ("<|vision_start|>", "<|vision_end|>"))
    ids = tok.convert_tokens_to_ids
    text = {**TEXT, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0, "rope_parameters": {"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 10000.0}}
    config = transformers.Qwen2VLConfig(
        text_config=text, vision_config={"depth": 2, "embed_dim": 32, "hidden_size": 64, "num_heads": 2,
                                         "patch_size": 4, "spatial_merge_size": 2, "temporal_patch_size": 2,
                                         "mlp_ratio": 2},
        image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"))
    images = transformers.Qwen2VLImageProcessorPil(patch_size=4, merge_size=2, temporal_patch_size=2,
                                                   size={"shortest_edge": SIDE * SIDE, "longest_edge": SIDE * SIDE})
    processor = ImageOnlyQwen2VLProcessor(images, tok)
    return config, transformers.Qwen2VLForConditionalGeneration, processor


class ImageOnlyQwen2VLProcessor(transformers.Qwen2VLProcessor):
    """Qwen2-VL's processor without its video processor, which transformers cannot build without
    torchvision (not installed here); images and text are processed as by the original."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        self.image_token, self.video_token = tokenizer.image_token, tokenizer.video_token
        self.image_token_id, self.video_token_id = tokenizer.image_token_id, tokenizer.video_token_id
        transformers.ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)


ARCHITECTURES = {"llava": _llava, "gemma3": _gemma3, "idefics3": _idefics3, "qwen2_vl": _qwen2_vl}


def tiny_vlm(architecture: str, seed: int = 0):
    config, cls, processor = ARCHITECTURES[architecture]()
    config.architectures = [cls.__name__]
    torch.manual_seed(seed)
    return wrap_vlm(f"tiny-{architecture}", cls(config).eval(), processor)


def tiny_images(n: int = 2, seed: int = 0) -> list[Image.Image]:
    """Random-colour RGB images of SIDE x SIDE pixels."""
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8)) for _ in range(n)]

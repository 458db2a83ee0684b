"""Tiny random-weight models of the three families, built from transformers configs."""

from __future__ import annotations

import tempfile

import torch
import transformers

from interventions.models import wrap_model

VOCAB = 96


def tiny_tokenizer(word: str = "w"):
    """A word-level tokenizer over VOCAB made-up words (no hub needed); another ``word`` prefix gives
    a vocabulary of the same size that shares no word with the default one."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"<pad>": 0, "<bos>": 1, "<eos>": 2, **{f"{word}{i}": i for i in range(3, VOCAB)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>",
                                                     bos_token="<bos>", eos_token="<eos>")
    # TransformerLens re-opens the tokenizer from its directory, so give it one
    directory = tempfile.mkdtemp(prefix="tiny-tokenizer-")
    tokenizer.save_pretrained(directory)
    return transformers.AutoTokenizer.from_pretrained(directory)


def _config(family: str):
    common = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                  num_key_value_heads=2, vocab_size=VOCAB, max_position_embeddings=256)
    if family == "llama":
        return transformers.LlamaConfig(**common), transformers.LlamaForCausalLM
    if family == "gemma3":
        cfg = transformers.Gemma3TextConfig(**common, head_dim=16, sliding_window=8,
                                            query_pre_attn_scalar=16)
        return cfg, transformers.Gemma3ForCausalLM
    if family == "qwen2":
        return transformers.Qwen2Config(**common), transformers.Qwen2ForCausalLM
    raise ValueError(family)


def tiny_model(family: str, seed: int = 0, width: int | None = None):
    config, cls = _config(family)
    if width:
        config.hidden_size = width
    config.architectures = [cls.__name__]
    torch.manual_seed(seed)
    hf = cls(config).eval()
    return wrap_model(f"tiny-{family}", hf, tokenizer=tiny_tokenizer())


def padded_batch(lengths=(7, 5, 9), seed: int = 1) -> dict:
    """Left-padded random ids, as LoadedModel.encode would make them."""
    g = torch.Generator().manual_seed(seed)
    total = max(lengths)
    ids = torch.randint(3, VOCAB, (len(lengths), total), generator=g)
    mask = torch.zeros(len(lengths), total, dtype=torch.long)
    for row, n in enumerate(lengths):
        mask[row, total - n:] = 1
        ids[row, :total - n] = 0
    return {"input_ids": ids, "attention_mask": mask}

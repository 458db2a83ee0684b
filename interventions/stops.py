"""Ending a generated answer at a stop string, as lm-evaluation-harness's ``until`` does.

A base model prompted "…\\nAnswer:" answers and then writes the next "Answer:" or question itself
until the token budget runs out; scored on the whole text, that echo decides the answer, and it
costs the full budget. With stop strings a row stops once its text (after any leading whitespace,
so an answer may start on a new line) holds one, and the answer is the text before it.
"""

from __future__ import annotations

from typing import Sequence

import torch
from transformers import StoppingCriteria


def stop_at(text: str, stops: Sequence[str]) -> int | None:
    """Where the answer in ``text`` ends: the first stop string after its leading whitespace."""
    start = len(text) - len(text.lstrip())
    hits = [i for i in (text.find(s, start) for s in stops) if i >= 0]
    return min(hits) if hits else None


def tokens_to_stop(tokenizer, ids: torch.Tensor, stops: Sequence[str]) -> int:
    """The fewest leading ``ids`` whose text holds a stop (all of them when none does): where
    generation stopped. Holding a stop only grows with the prefix, so a bisection finds it."""
    holds = lambda n: stop_at(tokenizer.decode(ids[:n], skip_special_tokens=True), stops) is not None  # noqa: E731
    low, high = 1, len(ids)
    if not holds(high):
        return high
    while low < high:
        mid = (low + high) // 2
        low, high = (low, mid) if holds(mid) else (mid + 1, high)
    return low


class StopOnText(StoppingCriteria):
    """For ``generate``: a row is done once its new text holds a stop string."""

    def __init__(self, tokenizer, prompt_length: int, stops: Sequence[str]):
        self.tokenizer, self.prompt_length, self.stops = tokenizer, prompt_length, tuple(stops)

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        texts = self.tokenizer.batch_decode(input_ids[:, self.prompt_length:], skip_special_tokens=True)
        return torch.tensor([stop_at(t, self.stops) is not None for t in texts], device=input_ids.device)

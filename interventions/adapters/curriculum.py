"""The text-to-latent curriculum: B first reads the sender's plan as text, then as latents.

The plan is cut into S segments, one per latent step (S = L plan tokens, or K when compressing;
segment k covers the same share of the plan on both sides: plan states floor(kL/S) ..
floor((k+1)L/S) - 1 and plan tokens floor(kT/S) .. floor((k+1)T/S) - 1 of B's tokenization).
At mixing rate r, exactly round(r * S) segments, drawn uniformly at random (seeded), are fed as
their adapted latent, and every other segment as B's own embeddings of its plan tokens, in plan
order. r = 0 is the plan as text; r = 1 is the message as it is sent at evaluation.

Schedule: r rises linearly from 0 at the first step to 1 at ``ramp`` of the training steps
(step t of T has r = min(1, t / (ramp * (T - 1)))), then stays at 1, so the last steps train on
what evaluation feeds.
"""

from __future__ import annotations

import torch

from .module import segment_bounds


def mixing_rate(step: int, steps: int, ramp: float = 0.75) -> float:
    """r at ``step`` (0-based) of ``steps``: linear from 0 to 1 over the first ``ramp`` of training."""
    if steps <= 1 or ramp <= 0:
        return 1.0
    return min(1.0, step / (ramp * (steps - 1)))


def latent_segments(segments: int, rate: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """(segments,) bool: which segments are fed as latents at mixing rate ``rate``."""
    chosen = torch.zeros(segments, dtype=torch.bool)
    count = round(rate * segments)
    if count:
        chosen[torch.randperm(segments, generator=generator)[:count]] = True
    return chosen


def text_segments(text: torch.Tensor, segments: int) -> list[torch.Tensor]:
    """B's plan-token embeddings (T, d) cut into ``segments`` pieces (some empty when T < segments)."""
    return [text[start:stop] for start, stop in segment_bounds(len(text), segments)]


def mix(latents: torch.Tensor, text: torch.Tensor, chosen: torch.Tensor) -> torch.Tensor:
    """The message B reads: segment k is ``latents[k]`` where ``chosen[k]``, else its text tokens."""
    pieces = text_segments(text, len(latents))
    return torch.cat([latents[k:k + 1] if chosen[k] else pieces[k] for k in range(len(latents))])

"""Training the adapter on CPU with B frozen: B's cross-entropy on the gold answer given the
latents, under the text-to-latent curriculum (``curriculum``), plus two terms after Du et al. (2026):

- separation: B's answer distribution given an item's own message should differ from the one given
  the message of another item with a different answer: minus their Jensen-Shannon divergence,
  averaged over answer tokens (bounded by ln 2, so it cannot run away from the cross-entropy);
- alignment: B reading the latents should answer as B reading the plan as text: KL(text || latents)
  over answer tokens, plus 1 - cosine of B's last hidden states at those tokens (the text run is a
  frozen teacher, no gradient).

Left out: the paper fine-tunes the receiver itself and trains the sender's compression by
distillation into K autoregressive latent steps; here B and A stay frozen and only the adapter
learns (compression is the adapter's segment pooling).
"""

from __future__ import annotations

import math
import random
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .curriculum import latent_segments, mix, mixing_rate
from .module import LatentAdapter


@dataclass(frozen=True)
class TrainingConfig:
    steps: int = 120
    batch_size: int = 8
    lr: float = 1e-3
    ramp: float = 0.75            # share of the steps over which the mixing rate rises from 0 to 1
    separation: float = 0.1       # weight of the separation term
    alignment: float = 0.1        # weight of the alignment term
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Example:
    """One training item as B sees it, all in B's input-embedding space except the trajectory."""

    trajectory: torch.Tensor      # (L, d_A) A's last-layer states over its plan
    plan_text: torch.Tensor       # (T, d_B) B's embeddings of the plan's tokens
    head: torch.Tensor            # (h, d_B) B's prompt before the message, markers included
    tail: torch.Tensor            # (t, d_B) the rest of B's prompt, the closing marker first
    answer_ids: torch.Tensor      # (m,) gold answer tokens, m >= 1
    answer_embeds: torch.Tensor   # (m, d_B)
    answer: str                   # the gold answer, to pair mismatches with different answers


@contextmanager
def frozen(module: torch.nn.Module):
    """No gradients for ``module``'s parameters while inside; their flags restored afterwards."""
    flags = [(p, p.requires_grad) for p in module.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield module
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def answer_outputs(hf, examples: list[Example], messages: list[torch.Tensor]):
    """B's next-token logits (m_i, V) and last hidden states (m_i, d) at the positions that predict
    each example's answer tokens, with ``messages[i]`` between its head and tail."""
    sequences = [torch.cat([ex.head, msg.to(ex.head.dtype), ex.tail, ex.answer_embeds])
                 for ex, msg in zip(examples, messages)]
    width = max(len(s) for s in sequences)
    embeds = sequences[0].new_zeros(len(sequences), width, sequences[0].shape[-1])
    mask = torch.zeros(len(sequences), width, dtype=torch.long)
    for row, seq in enumerate(sequences):   # left-padded: every row ends at the last position
        embeds[row, width - len(seq):] = seq
        mask[row, width - len(seq):] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    keep = max(len(ex.answer_ids) for ex in examples) + 1
    out = hf(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, use_cache=False,
             output_hidden_states=True, logits_to_keep=keep)
    logits, hidden = out.logits.float(), out.hidden_states[-1][:, -keep:].float()
    picked = []
    for row, ex in enumerate(examples):   # position keep-1-m .. keep-2 predicts answer tokens 0 .. m-1
        m = len(ex.answer_ids)
        picked.append((logits[row, keep - 1 - m:keep - 1], hidden[row, keep - 1 - m:keep - 1]))
    return picked


def cross_entropy(picked, examples) -> torch.Tensor:
    logits = torch.cat([p[0] for p in picked])
    return F.cross_entropy(logits, torch.cat([ex.answer_ids for ex in examples]))


def js_divergence(logits_p: torch.Tensor, logits_q: torch.Tensor) -> torch.Tensor:
    """Jensen-Shannon divergence (nats) per row between two sets of next-token logits."""
    logp, logq = F.log_softmax(logits_p, -1), F.log_softmax(logits_q, -1)
    logm = torch.logsumexp(torch.stack([logp, logq]), 0) - math.log(2)
    return 0.5 * ((logp.exp() * (logp - logm)).sum(-1) + (logq.exp() * (logq - logm)).sum(-1))


def partners(examples: list[Example]) -> list[int | None]:
    """For each example, the next one in the batch with a different answer (None if all agree)."""
    n = len(examples)
    out = []
    for i, ex in enumerate(examples):
        others = [(i + s) % n for s in range(1, n) if examples[(i + s) % n].answer != ex.answer]
        out.append(others[0] if others else None)
    return out


def step_loss(adapter: LatentAdapter, hf, batch: list[Example], rate: float, config: TrainingConfig,
              generator: torch.Generator) -> tuple[torch.Tensor, dict]:
    messages = []
    for ex in batch:
        latents = adapter(ex.trajectory)
        messages.append(mix(latents, ex.plan_text, latent_segments(len(latents), rate, generator)))
    picked = answer_outputs(hf, batch, messages)
    ce = cross_entropy(picked, batch)
    loss, parts = ce, {"ce": ce.item()}
    if config.separation > 0:
        pairs = [(i, j) for i, j in enumerate(partners(batch)) if j is not None]
        if pairs:
            swapped = answer_outputs(hf, [batch[i] for i, _ in pairs], [messages[j] for _, j in pairs])
            js = torch.cat([js_divergence(picked[i][0], other[0]) for (i, _), other in zip(pairs, swapped)]).mean()
            loss = loss - config.separation * js
            parts["separation_js"] = js.item()
    if config.alignment > 0:
        with torch.no_grad():
            teacher = answer_outputs(hf, batch, [ex.plan_text for ex in batch])
        student_logits, teacher_logits = torch.cat([p[0] for p in picked]), torch.cat([t[0] for t in teacher])
        kl = F.kl_div(F.log_softmax(student_logits, -1), F.log_softmax(teacher_logits, -1), log_target=True,
                      reduction="batchmean")
        cosine = F.cosine_similarity(torch.cat([p[1] for p in picked]), torch.cat([t[1] for t in teacher]), -1).mean()
        loss = loss + config.alignment * (kl + (1 - cosine))
        parts.update(alignment_kl=kl.item(), alignment_cosine=cosine.item())
    return loss, parts


def train_adapter(adapter: LatentAdapter, hf, examples: list[Example], config: TrainingConfig,
                  progress: bool = True, desc: str = "interlat adapter") -> list[dict]:
    """Trains ``adapter`` in place (B = ``hf`` frozen); returns the curve, one record per step."""
    torch.manual_seed(config.seed)
    order = random.Random(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    optimizer = torch.optim.AdamW(adapter.parameters(), lr=config.lr, weight_decay=0.0)
    curve, queue = [], []
    adapter.train()
    start = time.perf_counter()
    with frozen(hf), tqdm(range(config.steps), desc=desc, disable=not progress) as bar:
        for step in bar:
            if len(queue) < config.batch_size:   # reshuffle the items each pass
                queue += order.sample(range(len(examples)), len(examples))
            batch = [examples[i] for i in queue[:config.batch_size]]
            del queue[:config.batch_size]
            rate = mixing_rate(step, config.steps, config.ramp)
            loss, parts = step_loss(adapter, hf, batch, rate, config, generator)
            if loss.requires_grad:   # at r = 0 no latent reaches B: nothing to learn from this step
                optimizer.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(adapter.parameters(), 1.0)
                optimizer.step()
            curve.append({"step": step, "rate": round(rate, 4), "loss": loss.item(), **parts,
                          "wall_s": round(time.perf_counter() - start, 2)})
            bar.set_postfix(rate=f"{rate:.2f}", loss=f"{curve[-1]['loss']:.3f}")
    adapter.eval()
    return curve

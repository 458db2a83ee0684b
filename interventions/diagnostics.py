"""Manifold diagnostics of a residual intervention: does the merged state look like one of B's own,
what does it do to B's next-token distribution, and what does the message say on its own?

Per row, against B's corpus statistics at the target block (``interventions.statistics``):

- ``mahalanobis``: distance of the merged state from B's mean under the shrinkage covariance, and
  ``mahalanobis_percentile``: percent of natural held-out states at most that far;
- ``norm_ratio``: merged norm / B's median natural norm, and ``norm_percentile``: percent of
  natural states with at most that norm;
- ``clean_mahalanobis``, ``clean_norm_ratio``: the same for B's own state at that site without the
  intervention. The natural states are the last tokens of corpus sentences, so a prompt that ends
  elsewhere (a chat template's assistant header) is far from them already: read the merged state's
  distance against B's own;
- ``kl``: KL(clean || intervened) of B's next-token distribution at the answer position (the last
  prompt position, which predicts the first generated token or a choice's first token), in nats;
- ``message_top_tokens``: the sent vector's top tokens under B's logit lens (final norm, unembedding).

``splice_diagnostics`` measures a ``Splice`` with one extra forward of B per batch: the merged state
is captured at the target site (a capture at an edited site reads the edited stream) together with
the last block, whose logit lens is B's output. B's clean states (every block, last token) take one
more forward the first time the session sees a prompt and are kept, so a sweep computes them once.
Nothing here is charged to rows.
"""

from __future__ import annotations

import torch

from .errors import InterventionError
from .inspection.lens import decode_each, lens_logits, logit_lens_topk
from .models.loaded import LoadedModel
from .spec import Site
from .statistics import LayerStats, layer_stats

TOP_TOKENS = 5


def _plain(value) -> float:
    """A row's number: six significant digits."""
    return float(f"{float(value):.6g}")


def kl_divergence(clean_logits: torch.Tensor, intervened_logits: torch.Tensor) -> torch.Tensor:
    """KL(clean || intervened) in nats per row, from (rows, vocab) logits."""
    clean = torch.log_softmax(clean_logits.double(), dim=-1)
    intervened = torch.log_softmax(intervened_logits.double(), dim=-1)
    return (clean.exp() * (clean - intervened)).sum(-1).clamp(min=0)


def manifold(stats: LayerStats, states: torch.Tensor) -> dict[str, torch.Tensor]:
    """Where (rows, d) states sit among B's natural ones: distance, norm, and their percentiles."""
    return {"mahalanobis": stats.mahalanobis(states),
            "mahalanobis_percentile": stats.distance_percentile(states),
            "norm_ratio": states.double().norm(dim=-1) / stats.median_norm,
            "norm_percentile": stats.norm_percentile(states)}


def top_tokens(model: LoadedModel, vectors: torch.Tensor, k: int = TOP_TOKENS) -> list[list[str]]:
    """Each (rows, d) vector's top-k tokens under ``model``'s logit lens."""
    ids, _ = logit_lens_topk(model, vectors, k)
    return [decode_each(model.tokenizer, row.tolist()) for row in ids]


def clean_states(session, role: str, prompts: list[str]) -> torch.Tensor:
    """(rows, n_layers, d): ``role``'s own last-token residual after every block, per prompt; one
    forward for the prompts the session has not seen, kept in ``session.memo`` for later protocols."""
    model = session.model(role)
    key = lambda prompt: ("clean_states", model.identity, prompt)  # noqa: E731
    missing = list(dict.fromkeys(p for p in prompts if key(p) not in session.memo))
    if missing:
        sites = [Site(role, block, -1) for block in range(model.n_layers)]
        captured = session.capture(role, missing, sites).captures
        for prompt, states in zip(missing, torch.cat([captured[site] for site in sites], dim=1)):
            session.memo[key(prompt)] = states
    return torch.stack([session.memo[key(p)] for p in prompts])


def splice_diagnostics(session, prompts: dict, splice, control: str = "none",
                       k: int = TOP_TOKENS) -> list[dict]:
    """Per row of ``prompts[splice.target.model]``: the diagnostics above for ``splice`` (with the
    same ``control`` the row ran under), as plain floats and token strings."""
    role = splice.target.model
    model = session.model(role)
    last = Site(role, -1, -1)
    sites = list(dict.fromkeys([splice.target, last]))
    with torch.inference_mode():
        # the message as the splice sends it: A's cached states, control and map applied, no forward
        sent = splice.sent(session.program(role, prompts, (), control))[:, -1].float()
        edited = session.capture(role, prompts, sites, [splice], control).captures
        clean = clean_states(session, role, list(prompts[role]))
        kl = kl_divergence(lens_logits(model, clean[:, -1]), lens_logits(model, edited[last][:, -1]))
    rows = [{"kl": _plain(value)} for value in kl]
    merged = edited[splice.target][:, -1].float()
    own = clean[:, model.resolve_layer(splice.target.layer)].float()
    for row, measures in zip(rows, _manifold_rows(model, splice, merged, own)):
        row.update(measures)
    if sent.shape[-1] == model.d_model:   # a message in B's space (not AC's trailing rule)
        for row, tokens in zip(rows, top_tokens(model, sent, k)):
            row["message_top_tokens"] = tokens
    return rows


def _manifold_rows(model: LoadedModel, splice, merged: torch.Tensor, own: torch.Tensor) -> list[dict]:
    """The statistics-based measures per row, or why they are missing (the statistics are of
    resid_post; fitting them needs the corpus)."""
    if splice.target.stream != "resid_post":
        return [{"manifold": f"not measured: corpus statistics are of resid_post, not {splice.target.stream}"}
                for _ in merged]
    try:
        stats = layer_stats(model, splice.target.layer, splice.align.n_sentences, splice.align.seed)
    except (InterventionError, ValueError) as error:
        return [{"manifold": f"not measured: {error}"} for _ in merged]
    clean = manifold(stats, own)
    measures = {**manifold(stats, merged), "clean_mahalanobis": clean["mahalanobis"],
                "clean_norm_ratio": clean["norm_ratio"]}
    return [{name: _plain(values[i]) for name, values in measures.items()} for i in range(len(merged))]

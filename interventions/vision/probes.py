"""The vision side's own words: linear probes on image latents predict each attribute label (per
quadrant: shape, colour, size or "none"), and the task's caption template renders the predictions.

One multinomial logistic regression per attribute, on standardised flattened latents, with an L2
penalty picked on a validation slice of the fit images; accuracy is judged on held-out fit images.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

PENALTIES = (1e-4, 1e-3, 1e-2, 1e-1)


@dataclass
class Probe:
    classes: list[str]
    weight: torch.Tensor      # (d, n_classes)
    bias: torch.Tensor
    penalty: float
    heldout_accuracy: float

    def predict(self, x: torch.Tensor) -> list[str]:
        return [self.classes[i] for i in (x @ self.weight + self.bias).argmax(-1).tolist()]


@dataclass
class CaptionProbes:
    mean: torch.Tensor
    scale: torch.Tensor
    probes: dict[str, Probe] = field(default_factory=dict)

    def standardise(self, features: torch.Tensor) -> torch.Tensor:
        return (features.flatten(1).float() - self.mean) / self.scale

    def predict(self, features: torch.Tensor) -> list[dict]:
        """One label dict per image from (N, k, d) latents."""
        x = self.standardise(features)
        columns = {name: probe.predict(x) for name, probe in self.probes.items()}
        return [{name: values[i] for name, values in columns.items()} for i in range(len(x))]

    def describe(self) -> dict:
        accuracies = {name: round(p.heldout_accuracy, 3) for name, p in self.probes.items()}
        return {"heldout_accuracy": accuracies,
                "mean_heldout_accuracy": round(sum(accuracies.values()) / max(1, len(accuracies)), 3)}


def _fit_softmax(x: torch.Tensor, y: torch.Tensor, n_classes: int, penalty: float, steps: int = 200) -> tuple:
    weight = torch.zeros(x.shape[1], n_classes, requires_grad=True)
    bias = torch.zeros(n_classes, requires_grad=True)
    optimiser = torch.optim.LBFGS([weight, bias], lr=1, max_iter=steps, line_search_fn="strong_wolfe")

    def loss():
        optimiser.zero_grad()
        value = F.cross_entropy(x @ weight + bias, y) + penalty * weight.pow(2).sum()
        value.backward()
        return value

    optimiser.step(loss)
    return weight.detach(), bias.detach()


def _accuracy(weight, bias, x, y) -> float:
    return float(((x @ weight + bias).argmax(-1) == y).float().mean())


def fit_probes(features: torch.Tensor, labels: list[dict], seed: int = 0, heldout: float = 0.2) -> CaptionProbes:
    """Probes for every attribute in ``labels`` from (N, k, d) latents of the same N images."""
    flat = features.flatten(1).float()
    perm = torch.randperm(len(flat), generator=torch.Generator().manual_seed(seed))
    n_held = max(1, int(len(flat) * heldout))
    held, train = perm[:n_held], perm[n_held:]
    n_val = max(1, len(train) // 5)
    mean, scale = flat[train].mean(0), flat[train].std(0).clamp(min=1e-6)
    x = (flat - mean) / scale
    result = CaptionProbes(mean, scale)
    for name in labels[0]:
        classes = sorted({row[name] for row in labels})
        y = torch.tensor([classes.index(row[name]) for row in labels])
        fit, val = train[n_val:], train[:n_val]
        scores = {p: _accuracy(*_fit_softmax(x[fit], y[fit], len(classes), p), x[val], y[val]) for p in PENALTIES}
        penalty = max(PENALTIES, key=lambda p: (scores[p], p))    # ties: the stronger penalty
        weight, bias = _fit_softmax(x[train], y[train], len(classes), penalty)
        result.probes[name] = Probe(classes, weight, bias, penalty, _accuracy(weight, bias, x[held], y[held]))
    return result

"""A new combine function: add A's state, weighted down by how far B's state already points along it.

Score it with one command:
    interventions eval examples/plugin_combine.py --task countries --pair smollm2-135m,smollm2-135m --n 50
"""
import torch

import interventions as iv


@iv.register_combine("cosine_gated")
def cosine_gated(target, source):  # (batch, positions, d) each, source already in B's space
    agreement = torch.cosine_similarity(target, source, dim=-1).clamp(min=0).unsqueeze(-1)
    return target + (1 - agreement) * source

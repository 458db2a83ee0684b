"""A new combine function: add only the part of A's state that B's state does not already point along.

Score it with one command:
    interventions eval examples/plugin_combine.py --task countries --pair smollm2-135m,smollm2-135m --n 50
"""
import interventions as iv


@iv.register_combine("orthogonal")
def orthogonal(target, source):  # (batch, positions, d) each, source already in B's space
    unit = target / target.norm(dim=-1, keepdim=True)
    return target + source - (source * unit).sum(-1, keepdim=True) * unit

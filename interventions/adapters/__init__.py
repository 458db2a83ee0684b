"""Adapters that carry one model's hidden-state trajectory into another's input embeddings
(the Interlat channel, Du et al., 2026): the trained adapter (``module``), its text-to-latent
curriculum (``curriculum``), its training (``training``), its checkpoints (``checkpoint``), and
the training-free ridge map (``embed_map``)."""

from .checkpoint import (
                     AdapterMismatchError,
                     adapter_path,
                     fingerprint,
                     load_adapter,
                     save_adapter,
)
from .curriculum import latent_segments, mix, mixing_rate, text_segments
from .embed_map import final_states, trajectory_map
from .module import (
                     AdapterConfig,
                     AdapterConfigError,
                     LatentAdapter,
                     clamp_norm,
                     pool_segments,
                     segment_bounds,
                     segment_count,
)
from .training import Example, TrainingConfig, frozen, train_adapter

__all__ = [
    "AdapterConfig", "AdapterConfigError", "AdapterMismatchError", "Example", "LatentAdapter", "TrainingConfig",
    "adapter_path", "clamp_norm", "final_states", "fingerprint", "frozen", "latent_segments", "load_adapter", "mix",
    "mixing_rate", "pool_segments", "save_adapter", "segment_bounds", "segment_count", "text_segments",
    "train_adapter", "trajectory_map",
]

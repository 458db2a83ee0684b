"""Per-layer inspection: residual stream, norms, logit lens, and layer similarity.

``inspect_prompt`` looks at one prompt on one model; ``compare_prompts`` (cosine) and
``compare_models`` (linear CKA) relate layers; ``write_inspection`` / ``inspect_to_dir``
write JSON and PNG heatmaps.
"""

from .lens import Inspection, final_norm, inspect_prompt, lens_logits, residual_stream
from .report import inspect_to_dir, probe_prompts, write_inspection, write_similarity
from .similarity import (Similarity, cka_matrix, compare_models, compare_prompts, cosine_matrix,
                         last_token_residuals, layer_similarity, linear_cka)

__all__ = [
    "Inspection", "Similarity", "cka_matrix", "compare_models", "compare_prompts", "cosine_matrix",
    "final_norm", "inspect_prompt", "inspect_to_dir", "last_token_residuals", "layer_similarity",
    "lens_logits", "linear_cka", "probe_prompts", "residual_stream", "write_inspection",
    "write_similarity",
]

"""``SoftTokens``: vectors placed into a model's input-embedding sequence.

The vectors go between optional marker texts (embedded with the reader's own tokenizer) at an
insertion point among the prompt's tokens. They come from the user (``vectors``, shared by every
row), from another model's states captured at run time (``source``), mapped into the reader's
input-embedding space by ``align`` when the widths differ, or from per-row vectors handed to the
request beside the prompts (``message``: ``prompts[message]`` holds one (n_r, d) tensor per row, or
one for all rows; the spec records only the name). The last is how a protocol sends what a model
produced while decoding: CIPHER's embedding mixtures, a thought trajectory. The attention mask and positions
follow, for one prompt or a left-padded batch; sites of other specs resolve against the
extended sequence.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..errors import SpecFormatError
from .base import Align, Site, SpecKind, register_kind


@register_kind("soft_tokens")
@dataclass(frozen=True)
class SoftTokens(SpecKind):
    model: str = "B"                                  # the role that reads the vectors
    vectors: tuple[tuple[float, ...], ...] = ()       # (n, d_embed) user vectors, or ...
    source: Site | None = None                        # ... another model's states (e.g. position "all"), or ...
    message: str = ""                                 # ... per-row vectors given as prompts[message]
    at: int | str = "end"      # insert before prompt token `at` (0 = first, -1 = last); "end" = after the last
    markers: tuple[str, str] = ("", "")               # texts embedded before and after the vectors
    align: Align = field(default_factory=Align)       # map into the input-embedding space

    phase = 0

    def __post_init__(self) -> None:
        vectors = self.vectors
        if isinstance(vectors, torch.Tensor):
            vectors = vectors.tolist()
        object.__setattr__(self, "vectors", tuple(tuple(float(x) for x in row) for row in vectors))
        object.__setattr__(self, "markers", tuple(self.markers))
        if sum((bool(self.vectors), self.source is not None, bool(self.message))) != 1:
            raise SpecFormatError("soft_tokens: give one of vectors (a list of d-wide rows), a source site, or "
                                  "message (the name of per-row vectors passed beside the prompts)")
        if len(self.markers) != 2:
            raise SpecFormatError("soft_tokens.markers: expected two texts, [before, after] (\"\" for none)")
        if not (isinstance(self.at, int) or self.at == "end"):
            raise SpecFormatError(f"soft_tokens.at: an int token index or 'end', got {self.at!r}")

    def roles(self) -> set[str]:
        return {self.model}

    def reads(self) -> set[str]:
        return {self.source.model} if self.source is not None else set()

    def compile(self, program) -> None:
        if self.source is not None:
            rows = [program.aligned(v[None], self.align, self.source, "embed")[0]
                    for v in program.message(self.source)]
        elif self.message:
            rows = program.given_message(self.message)
        else:
            vectors = program.check_width(torch.tensor(self.vectors), "soft_tokens.vectors", embedding=True)
            rows = program.messages_from(vectors)
        program.insert_embeddings(rows, self.at, self.markers)

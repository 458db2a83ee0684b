"""``Handoff``: one model (``source``, L) starts the answer, another (``model``, S) finishes it.

L writes greedily from its own prompt; the ``trigger`` reads L's next-token entropy trace and names the
step n at which S takes over. What S receives (``carry``):

- ``text``: L's n tokens as text, after S's own prompt, re-tokenized with S's tokenizer; S continues
  the text, and the answer is L's text followed by S's;
- ``latent``: L's last hidden states at those n steps (each the state that chose a token), mapped into
  S's input-embedding space and read as soft tokens between the ``markers``; the answer is S's text;
- ``both``: the soft tokens, then the text.

The ``map`` into S's embeddings is LatentMAS's training-free ridge from L's output embeddings to S's
input embeddings (``interventions.alignment.hidden_to_embedding``): through the shared vocabulary
(``vocabulary``: same-tokenizer pairs) or through the tokens both vocabularies spell alike
(``matched_tokens``: across families); ``auto`` picks the first when the two share a vocabulary, else
the second; ``none`` feeds the states as they are (one width only). A request's control (``random``,
``zero``) replaces the mapped states row by row.

L's generation is kept per prompt (``Session.leads``), so a sweep over n or triggers decodes L once;
each row is charged L's prompt and the n tokens it used (a fixed n = 0 is S alone: L does not run).
When L finishes before the trigger fires (n = "all", or n past L's end of sequence) L's answer stands
and S writes nothing. Every row records L's entropy trace, where the trigger fired (or that it fell
back), and how many tokens were handed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..alignment.hidden_to_embedding import hidden_to_embedding
from ..compute import Compute
from ..controls import apply_control
from ..errors import InterventionError, SpecFormatError, VocabularyMismatchError, WidthMismatchError
from .base import SpecKind, check_choice, register_kind
from .trigger import Firing, Trigger

CARRIES = ("text", "latent", "both")
MAPS = ("auto", "vocabulary", "matched_tokens", "none")


class HandoffError(InterventionError, ValueError):
    pass


@register_kind("handoff")
@dataclass(frozen=True)
class Handoff(SpecKind):
    source: str = "A"                                   # L: writes first
    model: str = "B"                                    # S: finishes
    trigger: Trigger = field(default_factory=Trigger)   # when S takes over
    carry: str = "text"
    map: str = "auto"                                   # latent and both: into S's input embeddings
    markers: tuple[str, str] = ("", "")                 # latent and both: texts around the soft tokens
    horizon: int = 256                                  # the most tokens L writes

    phase = 0

    def __post_init__(self) -> None:
        check_choice(self.carry, CARRIES, "handoff.carry")
        check_choice(self.map, MAPS, "handoff.map")
        object.__setattr__(self, "markers", tuple(self.markers))
        if self.source == self.model:
            raise SpecFormatError(f"handoff: source and model are both {self.model!r}; hand off between two roles")
        if self.horizon < 1:
            raise SpecFormatError(f"handoff.horizon: L writes at least 1 token, got {self.horizon}")
        for name in ("n", "max_tokens"):
            value = getattr(self.trigger, name)
            if isinstance(value, int) and value > self.horizon:
                raise SpecFormatError(f"handoff: trigger.{name}={value} is past the horizon of {self.horizon} "
                                      f"tokens L writes; raise handoff.horizon or lower trigger.{name}")

    def roles(self) -> set[str]:
        return {self.model}

    def reads(self) -> set[str]:
        return {self.source}

    def compile(self, program) -> None:
        if self.trigger.immediate:      # n = 0 is S alone: L never runs and costs nothing
            for notes in program.notes:
                notes["handoff"] = {"entropy": [], "trigger": Firing(0, True, "fixed").to_dict(), "handed_tokens": 0,
                                    "lead_tokens": 0, "lead_finished": False, "lead_text": ""}
            return
        session = program.session
        leads = session.leads(self.source, program.source_prompts(self.source), self.horizon)
        lead_model, shape = session.model(self.source), session.shape(self.source)
        texts, states = [], []
        for row, lead in enumerate(leads):
            firing = self.trigger.fire(lead.entropy, self.horizon)
            written = len(lead.ids)
            n = written if firing.at is None else min(firing.at, written)
            cost = Compute(wall_s=lead.wall_s * n / written)
            cost.add_generation(self.source, shape, lead.prompt_tokens, n)
            program.charges[row].merge(cost)
            text = lead_model.tokenizer.decode(lead.ids[:n], skip_special_tokens=True)
            program.notes[row]["handoff"] = {"entropy": [round(e, 4) for e in lead.entropy],
                                             "trigger": firing.to_dict(), "handed_tokens": n,
                                             "lead_tokens": written, "lead_finished": lead.finished,
                                             "lead_text": text}
            if n == written and (lead.finished or firing.at is None):
                program.settled[row] = text        # L's answer stands: it ended, or no handoff was asked for
            if self.carry != "latent":
                program.written[row] = text
            texts.append(text)
            states.append(lead.hidden[:n])
        if self.carry == "text":
            program.extend_prompts(texts)
        else:
            self._read_states(program, states, texts)

    def _read_states(self, program, states: list[torch.Tensor], texts: list[str]) -> None:
        """S reads L's states as soft tokens (then, with ``both``, the text as its own token embeddings)."""
        reader = program.model
        mapping = self._mapping(program.session.model(self.source), reader)
        rows = []
        with torch.inference_mode():
            after = reader.embed(reader.tokenizer(self.markers[1], add_special_tokens=False)["input_ids"]).float().cpu()
            for vectors, text, prompt in zip(states, texts, program.prompts[program.role]):
                parts = [apply_control(program.control, mapping(vectors).float(), prompt), after]
                if self.carry == "both":
                    parts.append(reader.embed(reader.tokenizer(text, add_special_tokens=False)["input_ids"]).float().cpu())
                rows.append(torch.cat(parts))
        program.insert_embeddings(rows, "end", (self.markers[0], ""))

    def _mapping(self, lead, reader):
        if self.map == "none":
            if lead.d_model != reader.d_model:
                raise WidthMismatchError(
                    f"handoff.map='none' feeds {lead.name}'s {lead.d_model}-wide states to {reader.name}, whose "
                    f"embeddings are {reader.d_model} wide; fit a map: map: vocabulary (one tokenizer) or "
                    "map: matched_tokens (any two vocabularies)")
            return lambda vectors: vectors
        by_strings = self.map == "matched_tokens" or (self.map == "auto" and not lead.shares_vocabulary(reader))
        try:
            return hidden_to_embedding(lead, reader, through="strings" if by_strings else "ids")
        except VocabularyMismatchError:
            raise VocabularyMismatchError(
                f"handoff.map='vocabulary' maps through one shared vocabulary, but {lead.name} and {reader.name} "
                "have different vocabularies; use map: matched_tokens (tokens both vocabularies spell alike), "
                "or carry: text") from None

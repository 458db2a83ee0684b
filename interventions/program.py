"""What a list of interventions compiles to for one request on one model.

A ``Program`` starts as the encoded prompts of the acting role. Each spec's ``compile`` adds to it:
input rewrites (soft tokens become ``inputs_embeds``, mask and positions follow), edits at
resolved sites, captures. Messages from other models are fetched through the session, which
caches them and charges their compute to the rows that use them; a control, when set, replaces
every message (see ``interventions.controls``). A ``KVTransfer`` sets a key/value prefix: the
session then runs the batch that ``inputs`` gives (the sender's cache as past, the combined mask,
positions after the sender's) inside ``running()`` (which masks the prefix on unchosen layers).
"""

from __future__ import annotations

from contextlib import nullcontext

import torch

from .alignment import width_mismatch
from .controls import apply_control
from .errors import InterventionError, MissingRoleError, WidthMismatchError
from .compute import Compute
from .sites import Edit, ResolvedSite, padded_positions, resolve_site


class SoftTokenError(InterventionError, ValueError):
    pass


class Program:
    def __init__(self, session, role: str, prompts: dict[str, list[str]], control: str = "none"):
        self.session = session
        self.role = role
        self.model = session.model(role)
        if role not in prompts:
            raise MissingRoleError(f"no prompts for model role {role!r}; got prompts for {sorted(prompts)}")
        self.prompts = prompts
        self.control = control
        self.batch = self.model.encode(prompts[role])
        self.edits: list[Edit] = []
        self.captures: list = []           # (Site, ResolvedSite)
        self.charges = [Compute() for _ in range(self.rows)]
        self.maps: list = []               # the maps the specs went through (each can describe() itself)
        self.prefix = None                 # a KVPrefix (spec/kv_transfer.py) when the model reads another's cache
        # a handoff (spec/handoff.py): another model wrote the start of each row's answer
        self.written = [""] * self.rows    # per row: the text before what this model generates
        self.settled: dict[int, str] = {}  # rows whose answer was complete before this model runs
        self.notes = [{} for _ in range(self.rows)]   # per row: what the specs record (entropy traces, ...)

    @property
    def rows(self) -> int:
        return self.batch["attention_mask"].shape[0]

    @property
    def mask(self) -> torch.Tensor:
        """Which positions of this model's own (left-padded) prompts are real."""
        return self.batch["attention_mask"]

    # ------------------------------------------------------------------ a key/value prefix

    def set_prefix(self, prefix) -> None:
        if self.prefix is not None:
            raise InterventionError(f"role {self.role!r} is given two kv_transfer specs in one request; give one")
        self.prefix = prefix

    @property
    def full_mask(self) -> torch.Tensor:
        """The attention mask over [sender prefix | prompt]: what generation extends step by step."""
        return self.mask if self.prefix is None else torch.cat([self.prefix.mask.to(self.mask.dtype), self.mask], 1)

    @property
    def offsets(self) -> torch.Tensor:
        """(rows,): where each row's prompt positions start (after its sender's tokens; 0 without one)."""
        return torch.zeros(self.rows, dtype=torch.long) if self.prefix is None else self.prefix.lengths

    def positions(self) -> torch.Tensor:
        """Position ids of the prompt: padding-aware, counted after the sender's tokens."""
        return padded_positions(self.mask) + self.offsets[:, None]

    def batch_with(self, prefix, **extra) -> dict:
        batch = {**self.batch, **extra}
        if prefix is None:
            return batch
        return {**batch, "attention_mask": torch.cat([prefix.mask.to(self.mask.dtype), self.mask], 1),
                "position_ids": padded_positions(self.mask) + prefix.lengths[:, None],
                "past_key_values": prefix.cache()}

    def inputs(self, **extra) -> dict:
        """The batch to run: the prompts plus ``extra``, with the prefix's cache, mask and positions."""
        return self.batch_with(self.prefix, **extra)

    def running(self, rows: torch.Tensor | None = None):
        """Open around every forward of this program (``rows``: the program row of each batch row)."""
        if self.prefix is None:
            return nullcontext()
        return self.prefix.masking(self.model, self.session.backend.name, rows)

    def kv_message(self, role: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per row, ``role``'s (keys, values) cache of its prompt, each (layers, kv_heads, n, head_dim);
        charged to the rows; control applied to every layer's keys and values by position."""
        prompts = self.source_prompts(role)
        caches, costs = self.session.kv_cache(role, prompts)
        for charge, cost in zip(self.charges, costs):
            charge.merge(cost)
        return [tuple(self._controlled_cache(t, f"{prompt}|{name}") for t, name in zip(kv, "kv"))
                for kv, prompt in zip(caches, prompts)]

    def _controlled_cache(self, cache: torch.Tensor, key: str) -> torch.Tensor:
        if self.control == "none":
            return cache
        layers, heads, n, dim = cache.shape
        flat = cache.permute(0, 2, 1, 3).reshape(layers, n, heads * dim)   # a position's vector per layer
        out = torch.stack([apply_control(self.control, flat[layer], f"{key}{layer}") for layer in range(layers)])
        return out.reshape(layers, n, heads, dim).permute(0, 2, 1, 3).contiguous()

    def charge_forward(self, elapsed: float) -> None:
        """Charge every row one more forward of its own prompt (e.g. a calibration pass)."""
        shape = self.session.shape(self.role)
        for charge, n in zip(self.charges, self.mask.sum(1).tolist()):
            charge.merge(Compute(wall_s=elapsed / self.rows))
            charge.add_prefill(self.role, shape, n)

    def compile(self, specs) -> "Program":
        for role in {r for spec in specs for r in spec.roles()} - set(self.session.models):
            raise MissingRoleError(f"a spec acts on model role {role!r}, but the session has "
                                   f"{sorted(self.session.models)}")
        for spec in sorted((s for s in specs if self.role in s.roles()), key=lambda s: s.phase):
            spec.compile(self)
        return self

    # ------------------------------------------------------------------ for spec kinds

    def resolve(self, site) -> ResolvedSite:
        return resolve_site(site, self.model, self.mask)

    def add_edit(self, edit: Edit) -> None:
        self.edits.append(edit)

    def add_capture(self, site) -> None:
        self.captures.append((site, self.resolve(site)))

    def message(self, site) -> list[torch.Tensor]:
        """Per row, the (n_pos, d) state of another model at ``site``, read from that role's prompts
        (one per row, or one shared by all rows); charged to the rows; control applied."""
        prompts = self.source_prompts(site.model)
        states, costs = self.session.states(site, prompts)
        for charge, cost in zip(self.charges, costs):
            charge.merge(cost)
        return [apply_control(self.control, s, key) for s, key in zip(states, prompts)]

    def source_prompts(self, role: str) -> list[str]:
        """``role``'s prompts, one per row of this program (a single one is shared by every row)."""
        return self.per_row(role, "prompts", f"the spec reads from model role {role!r}, but prompts were given "
                                             f"for {sorted(self.prompts)} only")

    def per_row(self, name: str, what: str, missing: str) -> list:
        """``prompts[name]`` with one entry per row: a single entry is shared by every row."""
        if name not in self.prompts:
            raise MissingRoleError(missing)
        given = list(self.prompts[name])
        if len(given) == 1 and self.rows > 1:
            given = given * self.rows
        if len(given) != self.rows:
            raise InterventionError(f"{name!r} has {len(given)} {what} for {self.rows} rows of role {self.role!r}: "
                                    f"give one per {self.role!r} prompt, or a single one that every row shares")
        return given

    def given_message(self, name: str, embedding: bool = True) -> list[torch.Tensor]:
        """Per row, the (n, d) vectors handed over as ``prompts[name]`` (one per row, or one shared),
        in this model's input-embedding (or residual) width; control applied, seeded by the row's prompt."""
        given = self.per_row(name, "tensors", f"soft_tokens.message={name!r}: pass the vectors beside the prompts, "
                                              f"as prompts[{name!r}] (one (n, d) tensor per row); got {sorted(self.prompts)}")
        return [apply_control(self.control, self.check_width(torch.as_tensor(v), f"prompts[{name!r}]",
                                                             embedding=embedding), prompt)
                for v, prompt in zip(given, self.prompts[self.role])]

    def messages_from(self, vectors: torch.Tensor) -> list[torch.Tensor]:
        """User-given (n, d) vectors as every row's message, control applied (seeded by the row's
        own prompt, so a row's control does not depend on its batch)."""
        return [apply_control(self.control, vectors, prompt) for prompt in self.prompts[self.role]]

    @staticmethod
    def stacked(states: list[torch.Tensor], what: str) -> torch.Tensor:
        if len({tuple(s.shape) for s in states}) > 1:
            raise InterventionError(f"{what}: rows have different numbers of positions "
                                    f"({sorted({s.shape[0] for s in states})}); use a fixed position")
        return torch.stack(states)

    def aligned(self, acts: torch.Tensor, align, source_site, target_layer) -> torch.Tensor:
        """``acts`` from ``source_site``'s model mapped into this model's space at ``target_layer``
        (a block, or "embed" for the input embeddings); width mismatches refused unless allowed."""
        source = self.session.model(source_site.model)
        mapping = self.session.alignment(align, source, source_site.layer, self.model, target_layer)
        self.maps.append(mapping)
        acts = mapping(acts)
        if acts.shape[-1] != self.model.d_model and not getattr(mapping, "trailing", False):
            raise width_mismatch(acts.shape[-1], self.model.d_model)
        return acts

    def check_width(self, vectors: torch.Tensor, what: str, embedding: bool = False) -> torch.Tensor:
        if vectors.shape[-1] != self.model.d_model:
            space = "input-embedding" if embedding else "residual"
            raise WidthMismatchError(
                f"{what}: width {vectors.shape[-1]} differs from {self.model.name}'s {space} width "
                f"{self.model.d_model}. Give {self.model.d_model}-wide vectors, or take them from a source site "
                "with align: {kind: linear} to fit a map.")
        return vectors

    def extend_prompts(self, texts: list[str]) -> None:
        """Row r's prompt becomes ``prompts[role][r] + texts[r]``, re-tokenized with this model's tokenizer."""
        if "inputs_embeds" in self.batch:
            raise InterventionError("text cannot follow input embeddings: put the spec that extends the prompt "
                                    "text first (a handoff's phase is 0)")
        self.batch = self.model.encode([p + t for p, t in zip(self.prompts[self.role], texts)])

    def insert_embeddings(self, rows: list[torch.Tensor], at, markers: tuple[str, str]) -> None:
        """Place ``rows[r]`` (n_r, d) into row r's input embeddings before token ``at`` (or at the
        end), between the marker texts; re-left-pad; mask and positions follow."""
        model, batch = self.model, self.batch
        with torch.inference_mode():
            embeds = batch.get("inputs_embeds")
            if embeds is None:
                embeds = model.embed(batch["input_ids"])
            before, after = (model.embed(model.tokenizer(m, add_special_tokens=False)["input_ids"])
                             if m else embeds.new_zeros(0, embeds.shape[-1]) for m in markers)
        lengths = self.mask.sum(1).tolist()
        total = embeds.shape[1]
        sequences = []
        for r, n in enumerate(lengths):
            real = embeds[r, total - n:]
            cut = n if at == "end" else (at if at >= 0 else n + at)
            if not 0 <= cut <= n:
                raise SoftTokenError(f"soft_tokens.at={at} is outside row {r}'s prompt of {n} tokens")
            vectors = rows[r].to(real.device, real.dtype)
            sequences.append(torch.cat([real[:cut], before, vectors, after, real[cut:]]))
        width = max(len(s) for s in sequences)
        limit = model.max_positions
        if limit is not None and width > limit:
            raise SoftTokenError(f"with the soft tokens the prompt is {width} positions long, past "
                                 f"{model.name}'s context of {limit}; send fewer vectors or shorten the prompt")
        padded = embeds.new_zeros(len(sequences), width, embeds.shape[-1])
        mask = torch.zeros(len(sequences), width, dtype=self.mask.dtype)
        for r, seq in enumerate(sequences):
            padded[r, width - len(seq):] = seq
            mask[r, width - len(seq):] = 1
        self.batch = {"inputs_embeds": padded, "attention_mask": mask}

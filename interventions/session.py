"""The one executor: a session holds the models of a run, the backend, the caches and the compute.

Every request (``forward``, ``capture``, ``generate``, ``loglikelihood``, ``decode``) takes any list
of interventions, compiles them into a ``Program`` for the acting role, runs it on the backend, and
returns per-row results with their ``Compute`` (tokens per role, analytic FLOPs, wall time)
already charged, sources included. ``iv.run`` and every harness protocol go through here.

``prompts`` is a list of prompts for the acting role, or a dict mapping roles to prompt lists
when interventions read other models (a splice's source role reads its own prompts); a dict may
also carry per-row vectors under a name that a ``SoftTokens(message=name)`` reads.

With a ``KVTransfer`` the acting role runs after the sender's cache: every request passes the
program's ``inputs`` (cache, combined mask, positions after the sender's) inside its ``running()``.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from transformers import StoppingCriteriaList

from .alignment import MAPS
from .backends import DEFAULT_BACKEND, get_backend
from .compute import Compute, ModelShape
from .errors import InterventionError, MissingRoleError
from .models.loaded import LoadedModel, output_cache
from .program import Program
from .sampling import filtered
from .sites import Edit, ResolvedSite, decode_positions, padded_positions, resolve_positions
from .spec import Capture
from .stops import StopOnText, stop_at, tokens_to_stop


@dataclass
class Forward:
    logits: torch.Tensor | None           # (rows, seq, vocab); None when stopped after the captures
    captures: dict                        # Site -> (rows, n_pos, d)
    attention_mask: torch.Tensor          # (rows, seq): which positions of a padded batch are real
    compute: list[Compute]
    maps: list = field(default_factory=list)   # maps the interventions went through (describe())


@dataclass
class Generation:
    texts: list[str]
    ids: torch.Tensor                     # (rows, new tokens)
    prompt_tokens: list[int]
    new_tokens: list[int]                 # up to and including end-of-sequence
    compute: list[Compute]
    maps: list = field(default_factory=list)   # maps the interventions went through (describe())
    notes: list = field(default_factory=list)  # per row: what the interventions recorded (e.g. a handoff's)


@dataclass
class ChoiceScores:
    logliks: list[list[float]]            # per item, per choice: summed log-prob of the continuation
    tokens: list[int]                     # tokens processed per item (context and all choices)
    compute: list[Compute]
    maps: list = field(default_factory=list)   # maps the interventions went through (describe())


@dataclass
class Step:
    """What a decoding policy sees at one step: the next-token logits of every row."""

    index: int
    logits: torch.Tensor                  # (rows, vocab), float32
    hidden: torch.Tensor | None           # (rows, d) last hidden state, when the policy asks for it
    finished: torch.Tensor                # (rows,) bool: rows that already ended (end-of-sequence, a stop string)


@dataclass
class Decoded(Generation):
    entropy: torch.Tensor | None = None   # (rows, steps) next-token entropy in nats
    logits: torch.Tensor | None = None    # (rows, steps, vocab), when keep_logits
    hidden: torch.Tensor | None = None    # (rows, steps, d), when the policy needs hidden states
    cache: object = None                  # the KV cache after the last fed step (of the rows still run)


@dataclass
class Lead:
    """What a model wrote alone from one prompt, greedily, up to a horizon: kept, so that a handoff at
    any step is a slice of it (a sweep over handoff points decodes the prompt once)."""

    ids: torch.Tensor           # (m,) the tokens, up to and including end-of-sequence
    entropy: list[float]        # (m,) per step: the entropy (nats) of the distribution each token came from
    logprob: list[float]        # (m,) per step: the log-probability of the token chosen
    hidden: torch.Tensor        # (m, d) per step: the last hidden state (after the final norm) that chose it
    finished: bool              # it ended with end-of-sequence within the horizon
    prompt_tokens: int
    wall_s: float               # the decode's wall time, this prompt's share


Policy = Callable[[Step], torch.Tensor]   # returns token ids (rows,) or input embeddings (rows, d)


def greedy(step: Step) -> torch.Tensor:
    return step.logits.argmax(-1)


class Sampler:
    """Sampling at ``temperature`` (with ``top_k`` and nucleus ``top_p`` filtering when given), with one
    generator per row seeded by ``seeds``: a row's tokens do not depend on which other rows share its
    batch. Finished rows draw nothing."""

    def __init__(self, temperature: float, seeds: list[int], top_k: int | None = None, top_p: float | None = None):
        self.temperature, self.top_k, self.top_p = temperature, top_k, top_p
        self.generators = [torch.Generator().manual_seed(s) for s in seeds]

    def __call__(self, step: Step) -> torch.Tensor:
        tokens = greedy(step)
        live = (~step.finished).nonzero().flatten().tolist()
        if self.temperature <= 0 or not live:
            return tokens
        probs, ids = filtered(step.logits[live], self.temperature, self.top_k, self.top_p)
        probs = probs.cpu()
        for i, row in enumerate(live):
            pick = int(torch.multinomial(probs[i], 1, generator=self.generators[row]))
            tokens[row] = pick if ids is None else ids[i, pick]
        return tokens

    @classmethod
    def for_prompts(cls, prompts: Sequence[str], seed: int | None, temperature: float = 1.0, **filters) -> Sampler:
        """One generator per prompt, seeded by ``seed`` and the prompt's text: a row draws the same
        tokens in any batch, and every request that prompts a model alike (the same item under two
        protocols) draws from the same random stream (paired comparisons see less noise)."""
        base = int(torch.randint(1 << 31, ())) if seed is None else seed
        seeds = [int(hashlib.sha256(f"{base}:{prompt}".encode()).hexdigest()[:8], 16) for prompt in prompts]
        return cls(temperature, seeds, **filters)


def _spread(values: torch.Tensor, live: torch.Tensor, rows: int) -> torch.Tensor:
    """``values`` of the ``live`` rows placed in a batch of ``rows``; zeros for rows no longer run."""
    if len(live) == rows:
        return values
    full = values.new_zeros(rows, *values.shape[1:])
    full[live.to(values.device)] = values
    return full


def entropy(logits: torch.Tensor) -> torch.Tensor:
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)


def tokens_until_eos(row: torch.Tensor, eos: int | None) -> int:
    if eos is None:
        return len(row)
    hits = (row == eos).nonzero()
    return int(hits[0]) + 1 if len(hits) else len(row)


KV_CACHE_BYTES = 1 << 30   # sender caches kept per session (least recently used dropped first)
LEAD_BYTES = 1 << 31       # kept generations' hidden states, per process: sessions of other pairs reuse them
_LEADS: OrderedDict = OrderedDict()


def forget_leads() -> None:
    """Drop the generations kept for handoffs, so the next sweep decodes its own (as a benchmark must)."""
    _LEADS.clear()


class Session:
    def __init__(self, models: dict[str, LoadedModel] | LoadedModel, backend=DEFAULT_BACKEND):
        if isinstance(models, LoadedModel):
            models = {"A": models, "B": models}
        self.models = dict(models)
        self.backend = get_backend(backend)
        self.total = Compute()            # everything this session has charged
        self.memo: dict = {}              # for protocols' own reusable work (e.g. sender completions)
        self._states: dict = {}
        self._kv: OrderedDict = OrderedDict()
        self._maps: dict = {}
        self._shapes: dict = {}

    # ------------------------------------------------------------------ models and caches

    def model(self, role: str) -> LoadedModel:
        if role not in self.models:
            raise MissingRoleError(f"model role {role!r} is needed, but the session has {sorted(self.models)}")
        return self.models[role]

    def shape(self, role: str) -> ModelShape:
        if role not in self._shapes:  # counting parameters walks the whole model: do it once
            self._shapes[role] = ModelShape.from_hf(self.model(role).hf)
        return self._shapes[role]

    def program(self, role: str, prompts, interventions=(), control: str = "none") -> Program:
        if not isinstance(prompts, dict):
            prompts = {role: [prompts] if isinstance(prompts, str) else list(prompts)}
        prompts = {r: [p] if isinstance(p, str) else list(p) for r, p in prompts.items()}
        return Program(self, role, prompts, control).compile(list(interventions))

    def states(self, site, prompts: list[str]) -> tuple[list[torch.Tensor], list[Compute]]:
        """``site``'s (n_pos, d) state for each prompt, read by a forward stopped after its block;
        computed once per prompt and kept. Every row is charged the forward, cached or not."""
        model = self.model(site.model)
        block = model.resolve_layer(site.layer)
        keys = [(site.model, model.identity, p, block, site.stream, site.position) for p in prompts]

        def read(missing):
            batch = model.encode([k[2] for k in missing])
            mask = batch["attention_mask"]
            resolved = ResolvedSite(block, site.stream, resolve_positions(site.position, mask))
            # messages travel in fp32 through host memory: maps, controls and statistics live there,
            # and the receiver (on its own device) takes them where it needs them
            acts = self.backend.forward(model, batch, captures=[resolved], stop_after_captures=True).captures[0].cpu()
            lengths = mask.sum(1).tolist()
            # "all" keeps only the real (unpadded) positions
            return {key: (acts[i, acts.shape[1] - lengths[i]:] if site.position == "all" else acts[i], lengths[i])
                    for i, key in enumerate(missing)}

        found, walls = self._once(self._states, keys, read)
        costs = []
        for (_, n), wall in zip(found, walls):
            cost = Compute(wall_s=wall)
            cost.add_prefill(site.model, self.shape(site.model), n, upto_layer=block)
            costs.append(cost)
        return [state for state, _ in found], costs

    @torch.inference_mode()
    def kv_cache(self, role: str, prompts: list[str]) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], list[Compute]]:
        """``role``'s key/value cache of each prompt: (keys, values), each (layers, kv_heads, n, head_dim),
        at positions 0..n-1; computed once per prompt and kept (up to ``KV_CACHE_BYTES``). Every row is
        charged the sender's forward, cached or not."""
        model = self.model(role)
        keys = [(role, model.identity, p) for p in prompts]

        def read(missing):
            batch = model.encode([k[2] for k in missing])
            mask = batch["attention_mask"]
            out = model.hf(**model.on_device({**batch, "position_ids": padded_positions(mask)}), use_cache=True,
                           logits_to_keep=1)
            layers = output_cache(out).layers
            total, lengths = mask.shape[1], mask.sum(1).tolist()
            return {key: (torch.stack([layer.keys[i, :, total - lengths[i]:] for layer in layers]),   # real positions
                          torch.stack([layer.values[i, :, total - lengths[i]:] for layer in layers]), lengths[i])
                    for i, key in enumerate(missing)}

        found, walls = self._once(self._kv, keys, read)
        for key in keys:
            self._kv.move_to_end(key)
        while len(self._kv) > 1 and sum(2 * k.numel() * k.element_size() for k, _, _ in self._kv.values()) \
                > KV_CACHE_BYTES:
            self._kv.popitem(last=False)
        costs = []
        for (_, _, n), wall in zip(found, walls):
            cost = Compute(wall_s=wall)
            cost.add_prefill(role, self.shape(role), n, include_unembed=False)
            costs.append(cost)
        return [(k, v) for k, v, _ in found], costs

    def leads(self, role: str, prompts: list[str], horizon: int) -> list[Lead]:
        """``role``'s greedy generation from each prompt, up to ``horizon`` tokens, with its entropy trace
        and hidden states; decoded once per prompt (in one batch for those missing) and kept for the
        process (up to ``LEAD_BYTES``), so another pair with the same model reuses them. Nothing is
        charged here: a handoff charges each row the part it uses."""
        model = self.model(role)
        keys = [(model.identity, self.backend.name, p, horizon) for p in prompts]

        def read(missing):
            chosen = []

            def policy(step):
                logprobs = torch.log_softmax(step.logits, -1).max(-1)
                chosen.append(logprobs.values.cpu())
                return logprobs.indices

            start = time.perf_counter()
            out = self.decode(role, [k[2] for k in missing], max_new_tokens=horizon, policy=policy, needs_hidden=True)
            wall = (time.perf_counter() - start) / len(missing)
            logprob = torch.stack(chosen, 1)
            return {key: Lead(out.ids[r, :n].cpu(), out.entropy[r, :n].tolist(), logprob[r, :n].tolist(),
                              out.hidden[r, :n].float().cpu(),
                              n < out.ids.shape[1] or bool(out.ids[r, n - 1] == model.tokenizer.eos_token_id),
                              out.prompt_tokens[r], wall)
                    for r, (key, n) in enumerate(zip(missing, out.new_tokens))}

        found = self._once(_LEADS, keys, read)[0]
        for key in keys:
            _LEADS.move_to_end(key)
        while len(_LEADS) > 1 and sum(lead.hidden.nbytes for lead in _LEADS.values()) > LEAD_BYTES:
            _LEADS.popitem(last=False)
        return found

    @staticmethod
    def _once(store: dict, keys: list, read) -> tuple[list, list[float]]:
        """The stored value of every key, ``read`` in one batch for those missing; and each key's share
        of that read's wall time (charged once, to the first row that needed it)."""
        missing = list(dict.fromkeys(k for k in keys if k not in store))
        first_use: dict = {}
        if missing:
            start = time.perf_counter()
            store.update(read(missing))
            first_use = dict.fromkeys(missing, (time.perf_counter() - start) / len(missing))
        return [store[k] for k in keys], [first_use.pop(k, 0.0) for k in keys]

    def alignment(self, align, source: LoadedModel, source_layer, target: LoadedModel, target_layer):
        """The map ``align`` names, from source block to target block (or "embed"); fitted once."""
        k = source.resolve_layer(source_layer)
        j = target_layer if target_layer == "embed" else target.resolve_layer(target_layer)
        key = (align, source.identity, k, target.identity, j)
        if key not in self._maps:
            self._maps[key] = MAPS.get(align.kind)(source, k, target, j, align)
        return self._maps[key]

    def _charged(self, program: Program, elapsed: float, charge) -> list[Compute]:
        """Per row: the program's source charges, this request's own charge, a share of the wall time."""
        out = []
        for row, sources in enumerate(program.charges):
            cost = Compute(wall_s=elapsed / program.rows).merge(sources)
            charge(row, cost)
            self.total.merge(cost)
            out.append(cost)
        return out

    # ------------------------------------------------------------------ requests

    def forward(self, role: str, prompts, interventions=(), control: str = "none",
                stop_early: bool = False) -> Forward:
        """One forward pass; with ``stop_early`` it ends after the last capture (no logits)."""
        program = self.program(role, prompts, interventions, control)
        start = time.perf_counter()
        with program.running():
            out = self.backend.forward(program.model, program.inputs(), captures=[r for _, r in program.captures],
                                       edits=program.edits, stop_after_captures=stop_early)
        elapsed = time.perf_counter() - start
        upto = max((r.block for _, r in program.captures), default=None) if out.logits is None else None
        lengths = program.mask.sum(1).tolist()
        compute = self._charged(program, elapsed,
                                lambda row, c: c.add_prefill(role, self.shape(role), lengths[row], upto_layer=upto))
        captures = {site: value for (site, _), value in zip(program.captures, out.captures)}
        return Forward(out.logits, captures, program.mask, compute, program.maps)

    def capture(self, role: str, prompts, sites, interventions=(), control: str = "none",
                stop_early: bool = True) -> Forward:
        """Activations at ``sites`` of ``role``: ``captures[site]`` is (rows, n_pos, d); with
        position "all" the padded positions are included and ``attention_mask`` says which are real."""
        return self.forward(role, prompts, [*interventions, Capture(tuple(sites))], control, stop_early)

    def generate(self, role: str, prompts, interventions=(), max_new_tokens: int = 16, control: str = "none",
                 seed: int | None = None, stop: Sequence[str] = (), **sampling) -> Generation:
        """Batched generation with the KV cache: greedy, or with ``do_sample=True`` sampled at
        ``temperature`` with ``top_k``/``top_p`` filtering when given, each row seeded by ``seed`` and
        its prompt (``Sampler.for_prompts``). A row also ends at a ``stop`` string; its text is what
        came before it (see ``stops``). Greedy generation runs transformers' ``generate``; sampling
        (and reading a kv prefix) decodes step by step, where finished rows leave the batch."""
        program = self.program(role, prompts, interventions, control)
        if len(program.settled) == program.rows:   # e.g. a handoff that never happened: nothing to write
            return self._generation(Generation, program, torch.zeros(program.rows, 0, dtype=torch.long), 0.0)
        if sampling.pop("do_sample", False):
            unknown = set(sampling) - {"temperature", "top_k", "top_p"}
            if unknown:
                raise InterventionError(f"sampled generation takes temperature, top_k and top_p; got also "
                                        f"{sorted(unknown)}")
            policy = Sampler.for_prompts(program.prompts[role], seed, **sampling)
            return self._decode(program, max_new_tokens, policy, False, False, True, stop)
        if program.prefix is not None:  # transformers' generate cannot start from a foreign cache: decode
            if sampling:
                raise InterventionError(f"generate with a kv_transfer decodes greedily or samples "
                                        f"(do_sample=True); it takes no {sorted(sampling)}")
            return self._decode(program, max_new_tokens, greedy, False, False, True, stop)
        model = program.model
        start = time.perf_counter()
        if stop:
            prompt_length = program.batch["input_ids"].shape[1] if "input_ids" in program.batch else 0
            sampling["stopping_criteria"] = StoppingCriteriaList([StopOnText(model.tokenizer, prompt_length, stop)])
        ids = self.backend.generate(model, program.batch, program.edits, max_new_tokens, **sampling)
        elapsed = time.perf_counter() - start
        return self._generation(Generation, program, ids, elapsed, stop=stop)

    def _generation(self, cls, program: Program, ids: torch.Tensor, elapsed: float, stop_at_eos: bool = True,
                    stop: Sequence[str] = (), **extra):
        model, role = program.model, program.role
        prompt_tokens = program.mask.sum(1).tolist()
        eos = model.tokenizer.eos_token_id if stop_at_eos else None
        new = [0 if row in program.settled else tokens_until_eos(ids[row], eos) for row in range(program.rows)]
        decoded = model.tokenizer.batch_decode(ids, skip_special_tokens=True)
        for row, text in enumerate(decoded):
            cut = stop_at(text, stop) if stop and row not in program.settled else None
            if cut is not None:   # charged the tokens up to the stop, answered the text before it
                decoded[row], new[row] = text[:cut], tokens_to_stop(model.tokenizer, ids[row, :new[row]], stop)

        def charge(row: int, cost: Compute) -> None:
            if row not in program.settled:      # a settled row's answer was written before this model ran
                cost.add_generation(role, self.shape(role), prompt_tokens[row], new[row])

        compute = self._charged(program, elapsed, charge)
        texts = [program.settled.get(row, written + text) for row, (written, text) in
                 enumerate(zip(program.written, decoded))]
        return cls(texts, ids, prompt_tokens, new, compute, program.maps, program.notes, **extra)

    @torch.inference_mode()
    def loglikelihood(self, role: str, prompts, choices: list[tuple[str, ...]], interventions=(),
                      control: str = "none", items_per_forward: int = 8) -> ChoiceScores:
        """lm-evaluation-harness style: each context (``role``'s prompt) and " choice" tokenized
        separately, then joined. Each context runs once, with the interventions, and its KV cache is
        shared by all of its choices, which run on the plain model."""
        contexts = prompts[role] if isinstance(prompts, dict) else list(prompts)
        logliks, tokens, compute, maps = [], [], [], []
        for start in range(0, len(contexts), items_per_forward):
            stop = start + items_per_forward
            chunk = {r: (p[start:stop] if len(p) > 1 else p) for r, p in prompts.items()} \
                if isinstance(prompts, dict) else contexts[start:stop]
            part = self._chunk_logliks(role, chunk, choices[start:stop], interventions, control)
            logliks += part.logliks
            tokens += part.tokens
            compute += part.compute
            maps = part.maps
        return ChoiceScores(logliks, tokens, compute, maps)

    def _chunk_logliks(self, role, prompts, choices, interventions, control) -> ChoiceScores:
        program = self.program(role, prompts, interventions, control)
        model, tok = program.model, program.model.tokenizer
        start = time.perf_counter()
        pad = model.pad_token_id
        mask = program.mask
        # pass 1: the contexts, with the interventions; keep the cache and the last logits.
        # padding-aware positions (as generate uses), passed explicitly so every backend agrees
        with program.running():
            first = self.backend.forward(model, program.inputs(position_ids=program.positions(), use_cache=True,
                                                               logits_to_keep=1), edits=program.edits)
        first_lp = torch.log_softmax(first.logits[:, -1].float(), dim=-1)
        # pass 2: every choice continues its context's cache (right-padded; pads come after)
        cont_ids = [[tok(" " + o, add_special_tokens=False)["input_ids"] for o in opts] for opts in choices]
        rows = [(i, c) for i, conts in enumerate(cont_ids) for c in conts]
        width = max(len(c) for _, c in rows)
        cont = torch.full((len(rows), width), pad, dtype=torch.long)
        cont_mask = torch.zeros_like(cont)
        for r, (_, c) in enumerate(rows):
            cont[r, :len(c)] = torch.tensor(c)
            cont_mask[r, :len(c)] = 1
        owner = torch.tensor([i for i, _ in rows])
        cache = first.cache
        cache.reorder_cache(owner.to(model.device))
        cont_positions = (program.offsets + mask.sum(1))[owner, None] + torch.arange(width)
        with program.running(rows=owner):
            second = model.hf(**model.on_device({"input_ids": cont, "position_ids": cont_positions,
                                                 "attention_mask": torch.cat([program.full_mask[owner], cont_mask], 1),
                                                 "past_key_values": cache}), use_cache=True)
        later_lp = torch.log_softmax(second.logits[:, :-1].float(), dim=-1)
        out: list[list[float]] = [[] for _ in cont_ids]
        for r, (i, c) in enumerate(rows):
            total = float(first_lp[i, c[0]])
            if len(c) > 1:
                total += float(later_lp[r, torch.arange(len(c) - 1), torch.tensor(c[1:])].sum())
            out[i].append(total)
        elapsed = time.perf_counter() - start
        lengths = mask.sum(1).tolist()
        tokens = [n + sum(len(c) for c in conts) for n, conts in zip(lengths, cont_ids)]
        compute = self._charged(program, elapsed,
                                lambda row, c: c.add_prefill(role, self.shape(role), tokens[row]))
        return ChoiceScores(out, tokens, compute, program.maps)

    @torch.inference_mode()
    def decode(self, role: str, prompts, interventions=(), max_new_tokens: int = 16, policy: Policy = greedy,
               control: str = "none", keep_logits: bool = False, needs_hidden: bool = False,
               stop_at_eos: bool = True) -> Decoded:
        """Step-wise decoding with the KV cache. At each step ``policy(Step)`` returns the next token
        ids (rows,) or input embeddings (rows, d) to feed. Records every step's next-token entropy
        (and logits, hidden states when asked). Greedy decoding gives ``generate``'s tokens. A row
        that ends leaves the batch unless logits or hidden states are kept: its later steps read
        zero logits and entropy. Without ``stop_at_eos`` every row runs all ``max_new_tokens`` steps
        (latent thinking, where an end-of-sequence reading means nothing) and is charged all of them."""
        program = self.program(role, prompts, interventions, control)
        return self._decode(program, max_new_tokens, policy, keep_logits, needs_hidden, stop_at_eos)

    def _decode(self, program: Program, max_new_tokens: int, policy: Policy, keep_logits: bool,
                needs_hidden: bool, stop_at_eos: bool, stop: Sequence[str] = ()) -> Decoded:
        with torch.inference_mode(), program.running():
            return self._decode_steps(program, max_new_tokens, policy, keep_logits, needs_hidden, stop_at_eos, stop)

    def _decode_steps(self, program, max_new_tokens, policy, keep_logits, needs_hidden, stop_at_eos,
                      stop=()) -> Decoded:
        model, tok = program.model, program.model.tokenizer
        start = time.perf_counter()
        rows = program.rows
        eos = tok.eos_token_id
        pad = model.pad_token_id
        mask = program.full_mask      # the sender's prefix (if any) and the prompt; grows by one per step
        position = program.positions()
        out = self.backend.forward(model, program.inputs(position_ids=position, use_cache=True, logits_to_keep=1,
                                                         output_hidden_states=needs_hidden),
                                   edits=program.edits)
        # after the prompt, edits that apply at every step act on the one new position
        step_edits = [Edit(ResolvedSite(e.site.block, e.site.stream, decode_positions(rows)), e.fn)
                      for e in program.edits if e.every_step]
        # a finished row leaves the batch, so that a batch costs what its unfinished rows cost, not what
        # its longest row does; not when something after the prompt reads rows by index (a kv prefix
        # masks by row, a step edit may hold a vector per row) or the caller keeps every step's logits or
        # hidden states. The policy still sees every row, a finished one with zero logits
        shrink = stop_at_eos and program.prefix is None and not step_edits and not (keep_logits or needs_hidden)
        stopper = StopOnText(tok, 0, stop) if stop else None
        finished = torch.zeros(rows, dtype=torch.bool, device=out.logits.device)
        live = torch.arange(rows)   # the rows the model still runs, in batch order
        ids, entropies, logits_kept, hidden_kept = [], [], [], []
        position = position[:, -1:]
        for index in range(max_new_tokens):
            logits = _spread(out.logits[:, -1].float(), live, rows)
            hidden = out.hidden[:, -1] if needs_hidden else None
            chosen = policy(Step(index, logits, hidden, finished.clone())).to(logits.device)
            as_embeds = chosen.is_floating_point()
            # an embedding step is recorded as the token the logits favour (its text reading, and EOS)
            token = logits.argmax(-1) if as_embeds else chosen.long()
            if stop_at_eos:
                token = torch.where(finished, torch.full_like(token, pad), token)
            ids.append(token)
            entropies.append(_spread(entropy(out.logits[:, -1].float()), live, rows))
            if keep_logits:
                logits_kept.append(logits)
            if needs_hidden:
                hidden_kept.append(hidden)
            if stop_at_eos:
                finished |= token == eos
                if stopper is not None and not bool(finished.all()):
                    open_rows = (~finished).nonzero().flatten()
                    finished[open_rows] |= stopper(torch.stack(ids, 1)[open_rows], None).to(finished.device)
            if bool(finished.all()) or index == max_new_tokens - 1:
                break
            if shrink and bool(finished[live].any()):
                keep = (~finished[live]).nonzero().flatten().cpu()
                out.cache.reorder_cache(keep)
                live, mask, position = live[keep], mask[keep], position[keep]
            mask = torch.cat([mask, torch.ones(len(live), 1, dtype=mask.dtype)], 1)
            position = position + 1
            feed = ({"inputs_embeds": chosen[live.to(chosen.device), None].to(model.dtype)} if as_embeds
                    else {"input_ids": token[live.to(token.device), None]})
            out = self.backend.forward(model, {**feed, "attention_mask": mask, "position_ids": position,
                                               "past_key_values": out.cache, "use_cache": True,
                                               "output_hidden_states": needs_hidden}, edits=step_edits)
        elapsed = time.perf_counter() - start
        stack = lambda xs: torch.stack(xs, 1) if xs else None  # noqa: E731
        ids = stack(ids) if ids else torch.zeros(rows, 0, dtype=torch.long)
        return self._generation(Decoded, program, ids, elapsed, stop_at_eos, stop, entropy=stack(entropies),
                                logits=stack(logits_kept), hidden=stack(hidden_kept), cache=out.cache)

"""Experiment files: a small YAML in experiments/, validated by schema and expanded into protocols.

The top level and each task entry are pydantic models; each protocol entry is validated against
its own kind's fields. Lists in a protocol entry expand to their product (``k: [4, 8]``), except
for fields whose own type is a list. ``plugins:`` names Python files or modules to import first,
so their combine functions, maps, protocols and tasks can be used by name.
"""

from __future__ import annotations

import fnmatch
import itertools
import typing
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, ValidationError, field_validator

from ..errors import InterventionError, suggest
from .plugins import load_plugins
from .protocols import PROTOCOLS, Protocol


class ExperimentFormatError(InterventionError, ValueError):
    pass


class TaskEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    n: PositiveInt | None = None
    options: dict = Field(default_factory=dict)


class Sampling(BaseModel):
    """Nucleus sampling for every generated answer, once per seed over the same items (greedy when an
    experiment has none). Each seed is its own work item, so a run resumes per (item, seed); tasks
    scored by choice log-likelihoods run once, since nothing is sampled."""

    model_config = ConfigDict(extra="forbid")
    top_p: float = Field(0.9, gt=0, le=1)
    # none: the nucleus alone (transformers' generate would also keep only the 50 most likely tokens)
    top_k: PositiveInt | None = None
    temperature: float = Field(1.0, gt=0)
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2], min_length=1)
    # where an answer of a model prompted without a chat template ends (a chat model ends its turn)
    stop: list[str] = Field(default_factory=list)

    def generation(self, seed: int) -> dict:
        """The keyword arguments ``Session.generate`` samples with for one seed (part of each work key)."""
        return {"do_sample": True, "top_p": self.top_p, "temperature": self.temperature, "seed": seed,
                **({"top_k": self.top_k} if self.top_k else {}), **({"stop": self.stop} if self.stop else {})}


class ExperimentFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str | None = None
    description: str = ""
    seed: int = 0
    backend: str = "torch"
    device: str = "cpu"        # cpu, cuda, cuda:N, mps, auto (spread over the GPUs)
    dtype: str = "fp32"        # fp32, bf16, fp16; maps, statistics and captures stay fp32
    max_new_tokens: PositiveInt = 16
    batch_size: PositiveInt = 16
    sampling: Sampling | None = None
    pairs: list[dict[Literal["A", "B"], str]] = Field(min_length=1)
    tasks: list[TaskEntry] = Field(min_length=1)
    protocols: list[dict] = Field(min_length=1)
    baseline: str | dict | None = None
    reference: list[str] = Field(default_factory=list)   # protocols whose best the report compares all others with
    notes: str = ""
    plugins: list[str] = Field(default_factory=list)

    @field_validator("tasks", mode="before")
    @classmethod
    def _task_names(cls, value):
        """A bare task name is short for ``{name: ...}``."""
        return [{"name": t} if isinstance(t, str) else t for t in value] if isinstance(value, list) else value


class Experiment(BaseModel):
    model_config = ConfigDict(arbitrary_types_allowed=True)
    name: str
    pairs: list[dict[str, str]]
    tasks: list[TaskEntry]
    protocols: list[Protocol]
    protocol_tasks: dict = Field(default_factory=dict)   # Protocol -> task names it is limited to (None: all)
    protocol_pairs: dict = Field(default_factory=dict)   # Protocol -> pair names (A>B) it is limited to (None: all)
    seed: int = 0
    backend: str = "torch"
    device: str = "cpu"
    dtype: str = "fp32"
    max_new_tokens: int = 16
    batch_size: int = 16
    sampling: Sampling | None = None
    baseline: str | dict | None = None
    reference: list[str] = Field(default_factory=list)
    description: str = ""
    notes: str = ""
    plugins: list[str] = Field(default_factory=list)
    path: Path | None = None

    def samples(self) -> list[int | None]:
        """The sampling seeds each item runs under; [None] for greedy decoding."""
        return list(self.sampling.seeds) if self.sampling else [None]

    def only(self, tasks: list[str] | None = None, pairs: list[str] | None = None,
             protocols: list[str] | None = None) -> Experiment:
        """This experiment restricted to some tasks, pairs (a pair named ``A>B``) and protocols (names or
        glob patterns such as ``single_*``), so a long run can do its cheap part first; work keys do not
        depend on what else an experiment holds, so a later full run resumes around what this one saved."""
        update = {}
        if tasks:
            known = [entry.name for entry in self.tasks]
            _check_names(tasks, known, "task")
            update["tasks"] = [entry for entry in self.tasks if entry.name in tasks]
        if pairs:
            known = [pair_name(pair) for pair in self.pairs]
            _check_names(pairs, known, "pair")
            update["pairs"] = [pair for pair, name in zip(self.pairs, known) if name in pairs]
        if protocols:
            known = [protocol.name for protocol in self.protocols]
            unmatched = [p for p in protocols if not any(fnmatch.fnmatchcase(name, p) for name in known)]
            _check_names(unmatched, known, "protocol")
            update["protocols"] = [protocol for protocol in self.protocols
                                   if any(fnmatch.fnmatchcase(protocol.name, p) for p in protocols)]
        return self.model_copy(update=update)


def pair_name(pair: dict) -> str:
    """How ``--pairs`` and a protocol entry's ``pairs:`` name a pair: ``A>B`` (one model: its name)."""
    return ">".join(pair[role] for role in ("A", "B") if role in pair)


def _check_names(names: list[str], known: list[str], what: str, where: str = "") -> None:
    for name in names:
        if name not in known:
            raise ExperimentFormatError(f"{where}this experiment has no {what} {name!r}.{suggest(name, known)} "
                                        f"Its {what}s: {', '.join(known)}.")


def describe_errors(error: ValidationError, where: str, fields: list[str]) -> str:
    """One line per problem, naming the field; unknown keys get close names and the allowed ones."""
    lines = []
    for problem in error.errors():
        loc = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in problem["loc"])
        if problem["type"] == "extra_forbidden":
            key = str(problem["loc"][-1])
            lines.append(f"{where}{loc}: unknown key {key!r}.{suggest(key, fields)} Allowed: {', '.join(fields)}.")
        elif problem["type"] == "missing":
            lines.append(f"{where}{loc}: required field missing")
        else:
            message = problem["msg"].removeprefix("Value error, ")
            lines.append(f"{where}{loc}: {message} (got {problem.get('input')!r})")
    return "\n".join(lines)


def _expands(cls: type[Protocol], key: str) -> bool:
    field = cls.model_fields.get(key)
    return field is None or typing.get_origin(field.annotation) not in (list, tuple)


def expand_protocol(entry: dict, where: str, base_dir: Path | None = None) -> list[Protocol]:
    """One protocol entry (``tasks:`` and ``pairs:`` aside) to its instances; lists expand to their product."""
    if not isinstance(entry, dict) or "kind" not in entry:
        raise ExperimentFormatError(f"{where}: a protocol entry needs a 'kind'. Known: {', '.join(PROTOCOLS)}.")
    entry = {k: v for k, v in entry.items() if k not in ("tasks", "pairs")}
    cls = PROTOCOLS.get(entry.pop("kind"))
    keys = list(entry)
    values = [v if isinstance(v, list) and _expands(cls, k) else [v] for k, v in entry.items()]
    fields = [*cls.model_fields, "kind", "tasks", "pairs"]
    out = []
    for combo in itertools.product(*values):
        try:
            out.append(cls.model_validate(dict(zip(keys, combo)), context={"base_dir": base_dir}))
        except ValidationError as error:
            raise ExperimentFormatError(describe_errors(error, f"{where} ({cls.kind})", fields)) from None
    return out


def find_experiment(name_or_path: str) -> Path:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.exists():
            raise ExperimentFormatError(f"experiment file {path} does not exist")
        return path
    for root in (Path.cwd() / "experiments", Path(__file__).resolve().parents[2] / "experiments"):
        candidate = root / f"{name_or_path}.yaml"
        if candidate.exists():
            return candidate
        known = sorted(p.stem for p in root.glob("*.yaml")) if root.exists() else []
        if known:
            raise ExperimentFormatError(f"no experiment named {name_or_path!r}.{suggest(name_or_path, known)} "
                                        f"Catalog: {', '.join(known)}.")
    raise ExperimentFormatError(f"no experiment named {name_or_path!r} and no experiments/ directory found")


def build_experiment(data, where: str, base_dir: Path | None = None, path: Path | None = None) -> Experiment:
    if not isinstance(data, dict):
        raise ExperimentFormatError(f"{where}: expected a mapping at the top level")
    try:
        parsed = ExperimentFile.model_validate(data)
    except ValidationError as error:
        raise ExperimentFormatError(describe_errors(error, where, list(ExperimentFile.model_fields))) from None
    load_plugins(parsed.plugins, base_dir)
    tasks = parsed.tasks
    pair_names = [pair_name(pair) for pair in parsed.pairs]
    protocols, protocol_tasks, protocol_pairs = [], {}, {}
    for i, entry in enumerate(parsed.protocols):
        if isinstance(entry, dict) and "pairs" in entry:
            _check_names(entry["pairs"], pair_names, "pair", f"{where}: protocols[{i}].pairs: ")
        for protocol in expand_protocol(entry, f"{where}: protocols[{i}]", base_dir):
            # entries may overlap (a sweep containing the headline setting): run each once,
            # on the union of the tasks and pairs its entries ask for (None = every one)
            if protocol not in protocol_tasks:
                protocols.append(protocol)
            for limits, key in ((protocol_tasks, "tasks"), (protocol_pairs, "pairs")):
                limit = tuple(entry[key]) if key in entry else None
                before = limits.get(protocol, ())
                limits[protocol] = None if before is None or limit is None else before + limit
    names = [p.name for p in protocols]
    for name in parsed.reference:
        if name not in names:
            raise ExperimentFormatError(f"{where}.reference: no protocol is named {name!r}.{suggest(name, names)}")
    fields = parsed.model_dump(exclude={"tasks", "protocols", "name", "sampling"})
    fields["sampling"] = parsed.sampling
    return Experiment(name=parsed.name or (path.stem if path else "experiment"), tasks=tasks, protocols=protocols,
                      protocol_tasks=protocol_tasks, protocol_pairs=protocol_pairs, path=path, **fields)


def load_experiment(name_or_path: str) -> Experiment:
    path = find_experiment(name_or_path)
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ExperimentFormatError(f"{path}: not valid YAML: {error}") from None
    return build_experiment(data, str(path), path.parent, path)

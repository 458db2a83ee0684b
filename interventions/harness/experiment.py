"""Experiment files: a small YAML in experiments/, expanded into protocol instances."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..errors import InterventionError, suggest
from .protocols import Protocol, UnknownProtocolError


class ExperimentFormatError(InterventionError, ValueError):
    pass


TOP_KEYS = ("name", "description", "seed", "backend", "max_new_tokens", "batch_size", "pairs", "tasks",
            "protocols", "baseline", "notes")
TASK_KEYS = ("name", "n", "options")
PROTOCOL_KEYS = (*Protocol.__dataclass_fields__, "tasks")  # tasks: restrict an entry to some tasks


@dataclass
class TaskEntry:
    name: str
    n: int | None = None
    options: dict = field(default_factory=dict)


@dataclass
class Experiment:
    name: str
    pairs: list[dict[str, str]]
    tasks: list[TaskEntry]
    protocols: list[Protocol]
    protocol_tasks: dict = field(default_factory=dict)   # Protocol -> task names it is limited to
    seed: int = 0
    backend: str = "torch"
    max_new_tokens: int = 16
    batch_size: int = 16
    baseline: str | None = None
    description: str = ""
    notes: str = ""
    path: Path | None = None


def _check_keys(data: dict, allowed: tuple[str, ...], where: str) -> None:
    for key in data:
        if key not in allowed:
            raise ExperimentFormatError(f"{where}: unknown key {key!r}.{suggest(key, allowed)} "
                                        f"Allowed: {', '.join(allowed)}.")


def expand_protocol(entry: dict, where: str) -> list[Protocol]:
    """Lists in a protocol entry (k: [4, 8], combine: [sum, mean]) expand to their product."""
    _check_keys(entry, PROTOCOL_KEYS, where)
    entry = {k: v for k, v in entry.items() if k != "tasks"}
    keys = list(entry)
    values = [v if isinstance(v, list) else [v] for v in entry.values()]
    try:
        return [Protocol(**dict(zip(keys, combo))) for combo in itertools.product(*values)]
    except UnknownProtocolError as error:
        raise UnknownProtocolError(f"{where}: {error}") from None
    except TypeError as error:
        raise ExperimentFormatError(f"{where}: {error}") from None


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


def load_experiment(name_or_path: str) -> Experiment:
    path = find_experiment(name_or_path)
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ExperimentFormatError(f"{path}: not valid YAML: {error}") from None
    if not isinstance(data, dict):
        raise ExperimentFormatError(f"{path}: expected a mapping at the top level")
    _check_keys(data, TOP_KEYS, str(path))
    for required in ("pairs", "tasks", "protocols"):
        if required not in data:
            raise ExperimentFormatError(f"{path}: missing required key {required!r}")
    tasks = []
    for i, entry in enumerate(data["tasks"]):
        entry = {"name": entry} if isinstance(entry, str) else entry
        _check_keys(entry, TASK_KEYS, f"{path}: tasks[{i}]")
        tasks.append(TaskEntry(**entry))
    protocols, protocol_tasks = [], {}
    for i, entry in enumerate(data["protocols"]):
        for protocol in expand_protocol(entry, f"{path}: protocols[{i}]"):
            # entries may overlap (a sweep containing the headline setting): run each once,
            # on the union of the tasks its entries ask for (None = every task)
            limit = tuple(entry["tasks"]) if "tasks" in entry else None
            if protocol in protocol_tasks:
                before = protocol_tasks[protocol]
                protocol_tasks[protocol] = None if before is None or limit is None else before + limit
            else:
                protocols.append(protocol)
                protocol_tasks[protocol] = limit
    for i, pair in enumerate(data["pairs"]):
        _check_keys(pair, ("A", "B"), f"{path}: pairs[{i}]")
    return Experiment(
        name=data.get("name", path.stem), pairs=data["pairs"], tasks=tasks, protocols=protocols,
        protocol_tasks=protocol_tasks,
        seed=data.get("seed", 0), backend=data.get("backend", "torch"),
        max_new_tokens=data.get("max_new_tokens", 16), batch_size=data.get("batch_size", 16),
        baseline=data.get("baseline"), description=data.get("description", ""), notes=data.get("notes", ""),
        path=path,
    )

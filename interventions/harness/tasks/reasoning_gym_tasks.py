"""`rg/<generator>`: any reasoning-gym procedural dataset, scored by the generator's own
score_answer().

Entries are stored JSON-ified in meta["entry"], plus the (seed, size, index) that produced
them: at scoring time we regenerate the original entry when it still matches, because some
scorers (arc_agi, rearc) compare tuples that a JSON round trip turns into lists.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json

from .base import Task, content_hash
from .datafiles import PIP_SPECS
from .errors import MissingDataPackageError, UnknownTaskError
from .item import TaskItem
from .registry import register_task


def _rg():
    if importlib.util.find_spec("reasoning_gym") is None:
        raise MissingDataPackageError("reasoning_gym", *PIP_SPECS["reasoning_gym"])
    import reasoning_gym  # slow (~2 s), so only imported when an rg task is used

    return reasoning_gym


def rg_generators() -> list[str]:
    _rg()
    from reasoning_gym.factory import DATASETS

    return sorted(DATASETS)


def to_jsonable(obj):
    """JSON-compatible copy: tuples -> lists, sets -> sorted lists, numpy scalars -> Python, rest -> str."""

    def conv(o):
        if isinstance(o, (set, frozenset)):
            try:
                return sorted(o)
            except TypeError:
                return list(o)
        if hasattr(o, "tolist"):  # numpy arrays and scalars
            return o.tolist()
        return str(o)

    return json.loads(json.dumps(obj, default=conv))


def extract_rg_answer(generated: str, gold: str | None) -> str:
    """First line of the stripped generation; as many lines as the gold has when it spans
    several (grid answers of sudoku, matrices, ...), which a first line could never match."""
    n_lines = max(1, len(gold.splitlines())) if gold else 1
    return "\n".join((generated or "").strip().splitlines()[:n_lines]).strip()  # inner spacing kept: grids


class ReasoningGymTask(Task):
    scoring, info_split = "generator", "shared_question"

    def __init__(self, generator: str, default_n: int = 100, **config):
        known = rg_generators()
        if generator not in known:
            raise UnknownTaskError(f"rg/{generator}", [f"rg/{g}" for g in known], kind="reasoning-gym task")
        self.generator, self.default_n, self.config = generator, default_n, to_jsonable(config)
        self._config_raw = config
        self.name = f"rg/{generator}"
        version = importlib.metadata.version("reasoning-gym")
        cfg = f" config={json.dumps(self.config, sort_keys=True)}" if config else ""
        self.source = f"reasoning_gym {version} generator {generator!r}{cfg}"
        self._datasets: dict[tuple[int, int], object] = {}
        self._dataset(1, 0)  # fail now on bad config keys

    def _dataset(self, size: int, seed: int):
        key = (max(1, size), seed)
        if key not in self._datasets:
            self._datasets[key] = _rg().create_dataset(self.generator, size=key[0], seed=seed, **self._config_raw)
        return self._datasets[key]

    def all_items(self) -> list[TaskItem]:
        return self.items()

    def items(self, n: int | None = None, seed: int = 0) -> list[TaskItem]:
        n = self.default_n if n is None else n
        if n < 0:
            raise ValueError(f"n must be >= 0 or None, got {n}")
        ds, out = self._dataset(n, seed), []
        cfg_tag = f"{content_hash(json.dumps(self.config, sort_keys=True), n=6)}/" if self.config else ""
        for i in range(n):
            entry = ds[i]
            q, gold = entry["question"], entry.get("answer")
            # answer None: the generator accepts several answers and checks them itself
            out.append(TaskItem(
                f"{self.name}/{cfg_tag}s{seed}-{i}-{content_hash(q, n=6)}", q, "" if gold is None else str(gold),
                meta={"generator": self.generator, "seed": seed, "size": n, "index": i,
                      "config": self.config, "entry": to_jsonable(entry)}))
        return out

    def _entry_for(self, item: TaskItem) -> tuple[object, dict]:
        """(dataset, entry) that produced the item; the stored JSON copy if it cannot be rebuilt."""
        m = item.meta
        try:
            ds = self._dataset(m["size"], m["seed"])
            entry = ds[m["index"]]
            if entry["question"] == item.question:
                return ds, entry
        except Exception:  # item from another config or version
            pass
        return self._dataset(1, 0), m["entry"]

    def score(self, item: TaskItem, generated: str) -> float:
        ds, entry = self._entry_for(item)
        answer = extract_rg_answer(generated, entry.get("answer"))
        try:
            return float(ds.score_answer(answer, entry))
        except Exception:  # some scorers raise on malformed answers; that is a wrong answer
            return 0.0

    def answer_instruction(self) -> str:
        return "Give only the final answer on the first line."


register_task("rg/*", list_members=rg_generators)(ReasoningGymTask)

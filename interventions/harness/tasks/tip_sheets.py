"""Tip Sheets coordination game (Ramesh & Li 2025): A privately sees a tip sheet on three
fictional companies, exactly one with clearly positive tips; B sees only the three names and
must pick one to invest in.

Item k of the pool is generated from its own seed-free RNG ("tip_sheets-v1-<k>"), so ids and
contents are stable; items(n, seed) shuffles the pool indices with `seed`.
"""

from __future__ import annotations

import random

from .base import Task, content_hash, shuffled_prefix
from .item import TaskItem
from .registry import register_task
from .scoring import single_choice

# First words are distinct within an item, so B may answer with the first word alone.
NAME_HEADS = (
    "Acme", "Borealis", "Cobalt", "Dynamo", "Everest", "Falcon", "Granite", "Helix", "Indigo",
    "Juniper", "Keystone", "Lumen", "Meridian", "Nimbus", "Orion", "Pinnacle", "Quasar", "Redwood",
    "Sterling", "Titan", "Umbra", "Vertex", "Willow", "Xenon", "Yellowstone", "Zephyr", "Aurora",
    "Beacon", "Cascade", "Delta", "Ember", "Fjord", "Glacier", "Harbor", "Ironclad", "Jade",
    "Kestrel", "Lattice", "Monarch", "Nova",
)
NAME_TAILS = (
    "Robotics", "Foods", "Mining", "Pharmaceuticals", "Airlines", "Software", "Energy", "Textiles",
    "Logistics", "Biotech", "Motors", "Telecom", "Shipping", "Semiconductors", "Retail", "Insurance",
    "Steel", "Media", "Solar", "Chemicals",
)
POSITIVE = (
    "revenue growing fast", "strong management team", "record profits last quarter",
    "just won a major government contract", "market share rising steadily", "healthy balance sheet with no debt",
    "new product selling out everywhere", "analysts expect earnings to double", "expanding into profitable new markets",
    "customer satisfaction at an all-time high", "patent approved for its breakthrough technology",
    "cash flow stronger than ever",
)
NEGATIVE = (
    "facing several lawsuits", "CEO under investigation for fraud", "revenue falling for three years",
    "heavily in debt", "losing customers to competitors", "recalled its main product",
    "auditors found accounting irregularities", "key factory shut down by regulators",
    "top engineers leaving", "credit rating just downgraded", "sales collapsing in its main market",
    "warned investors of big losses ahead",
)
MIXED = (
    "stable but slow growth", "new CEO with an unproven record", "sales flat this year",
    "expanding, but costs are rising", "popular brand, thin profit margins", "plans a risky merger",
)
POOL_SIZE = 5000


def _company_line(name: str, tips: list[str]) -> str:
    return f"{name}: {', '.join(tips)}."


def make_tip_sheet(k: int) -> TaskItem:
    """The k-th item of the pool (deterministic, independent of any run seed)."""
    rng = random.Random(f"tip_sheets-v1-{k}")
    heads, tails = rng.sample(NAME_HEADS, 3), rng.sample(NAME_TAILS, 3)
    names = [f"{h} {t}" for h, t in zip(heads, tails)]
    good = rng.randrange(3)
    lines = []
    for i, name in enumerate(names):
        if i == good:
            tips = rng.sample(POSITIVE, 2)
        else:  # bad: at least one negative tip, the other negative or mixed
            first = rng.choice(NEGATIVE)
            tips = [first, rng.choice([t for t in NEGATIVE + MIXED if t != first])]
            rng.shuffle(tips)
        lines.append(_company_line(name, tips))
    context = "Tip sheet:\n" + "\n".join(lines)
    question = (f"Which of these companies should you invest in: {names[0]}, {names[1]} or {names[2]}? "
                "Answer with the company name.")
    return TaskItem(f"tip_sheets/{k}-{content_hash(context, names[good])}", question, names[good],
                    context=context, choices=tuple(names), answer_index=good)


class TipSheetsTask(Task):
    name, scoring, info_split = "tip_sheets", "exact", "private_context"
    source = f"template generator v1 ({len(NAME_HEADS)}x{len(NAME_TAILS)} company names, pool of {POOL_SIZE})"

    def __init__(self, default_n: int = 70):
        self.default_n = default_n

    def all_items(self) -> list[TaskItem]:
        return [make_tip_sheet(k) for k in range(POOL_SIZE)]

    def items(self, n: int | None = None, seed: int = 0) -> list[TaskItem]:
        # generate only the chosen indices; same result as shuffling all_items()
        ks = shuffled_prefix(range(POOL_SIZE), self.default_n if n is None else n, seed)
        return [make_tip_sheet(k) for k in ks]

    def parse(self, item: TaskItem, generated: str) -> dict:
        """Which companies the answer names (full name, or its distinctive first word, ignoring case)."""
        return single_choice(generated, {name: [name, name.split()[0]] for name in item.choices})

    def score(self, item: TaskItem, generated: str) -> float:
        """1.0 if the answer names the gold company and no other: an answer that names two or three
        (an echo of the question's option list) made no choice."""
        return float(self.parse(item, generated)["pick"] == item.answer)

    def answer_instruction(self) -> str:
        return "Answer with the company name."


register_task("tip_sheets")(TipSheetsTask)

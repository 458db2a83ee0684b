"""Answer-matching helpers shared by tasks, plus lm-evaluation-harness style choice accuracy."""

from __future__ import annotations

import math
import re
import string
from decimal import Decimal
from typing import Sequence

# A number: optional sign (not when glued to a word/digit, so "5-3" yields 3), then either
# comma-grouped thousands ("1,234") or plain digits, with an optional decimal part.
_NUMBER = re.compile(r"(?:(?<![\w.])-)?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|(?:(?<![\w.])-)?\.\d+")


def extract_number(text: str) -> str | None:
    """Last number in `text`, commas removed ("The answer is 1,234." -> "1234"), or None."""
    found = _NUMBER.findall(text or "")
    if not found:
        return None
    num = found[-1].replace(",", "")
    return "-0" + num[1:] if num.startswith("-.") else ("0" + num if num.startswith(".") else num)


def answer_key(scoring: str, prediction: str, parsed: dict | None = None) -> str:
    """What two answers must share to be the same answer (a debate's vote, a debate's final answer
    against a model's own): the one option a "choose one of" answer picks, the number of a numeric
    task ("18", "18.00" and "It is 18." are one), else the normalised text."""
    if parsed and parsed.get("pick") is not None:
        return str(parsed["pick"])
    number = extract_number(prediction) if scoring == "numeric" else None
    if number is not None:
        return format(Decimal(number).normalize(), "f")
    return normalize_answer(prediction)


def is_number(text: str) -> bool:
    """Is ``text`` one number and nothing else ("1,234", "-3.5")?"""
    return _NUMBER.fullmatch(str(text).strip()) is not None


def _to_float(s: str) -> float | None:
    try:
        return float(s.replace(",", "").strip())
    except ValueError:
        return None


def numeric_match(generated: str, gold: str, rel_tol: float = 1e-6) -> bool:
    """Does the last number in the generation equal the gold number ("18.00" == "18")?"""
    pred, want = extract_number(generated), _to_float(str(gold))
    if pred is None or want is None:
        return False
    return math.isclose(float(pred), want, rel_tol=rel_tol, abs_tol=1e-9)


def normalize_answer(s: str) -> str:
    """SQuAD / lm-eval normalisation: lowercase, drop punctuation and articles, squeeze spaces."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in set(string.punctuation))
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def exact_match(generated: str, gold: str) -> bool:
    return normalize_answer(generated) == normalize_answer(gold)


def first_line(text: str) -> str:
    """First non-empty line, stripped: models often add explanations after the answer."""
    for line in (text or "").strip().splitlines():
        if line.strip():
            return line.strip()
    return ""


def _mentions(text: str, candidates: dict[str, list[str]], case_sensitive: set[str]):
    """(start, -len(alias), key) for every alias the text names as whole words; aliases in
    ``case_sensitive`` (e.g. "US") are matched as written, others ignoring case."""
    for key, aliases in candidates.items():
        for alias in aliases:
            flags = 0 if alias in case_sensitive else re.IGNORECASE
            m = re.search(r"(?<!\w)" + re.escape(alias) + r"(?!\w)", text or "", flags)
            if m:
                yield m.start(), -len(alias), key


def earliest_match(text: str, candidates: dict[str, list[str]], case_sensitive: set[str] = frozenset()) -> str | None:
    """Key of the candidate whose alias occurs first in `text` (whole-word match), or None; ties at the
    same position go to the longer alias ("South Africa" over "South")."""
    return min(_mentions(text, candidates, case_sensitive), key=lambda m: m[:2], default=(0, 0, None))[2]


def named_choices(text: str, candidates: dict[str, list[str]], case_sensitive: set[str] = frozenset()) -> list[str]:
    """Keys of every candidate the text names (any alias, whole words), in order of first mention."""
    first: dict[str, int] = {}
    for start, _, key in _mentions(text, candidates, case_sensitive):
        first[key] = min(start, first.get(key, start))
    return sorted(first, key=first.get)


def single_choice(text: str, candidates: dict[str, list[str]], case_sensitive: set[str] = frozenset()) -> dict:
    """How a "choose one of these" answer parses: ``pick`` is the choice only when exactly one is named.

    ``rule`` is ``one``, ``none`` (nothing named: no valid choice) or ``several`` (more than one named,
    as when the answer echoes the option list: no valid choice either, so an echo never scores).
    """
    named = named_choices(text, candidates, case_sensitive)
    rule = {0: "none", 1: "one"}.get(len(named), "several")
    return {"pick": named[0] if rule == "one" else None, "rule": rule, "named": named}


def choice_accuracy(choice_logprobs: Sequence[float], choice_lengths: Sequence[int | str], answer_index: int) -> dict:
    """lm-evaluation-harness multiple-choice metrics for one question.

    acc: argmax of the summed log-likelihood of each choice.
    acc_norm: argmax of log-likelihood / len(choice continuation in characters), as lm-eval
    does. To mirror lm-eval exactly, pass the continuation strings you scored (including
    the leading space, e.g. " Paris") or their lengths.
    """
    if len(choice_logprobs) != len(choice_lengths) or not choice_logprobs:
        raise ValueError(f"need one length per choice, got {len(choice_logprobs)} log-probs and {len(choice_lengths)} lengths")
    if not 0 <= answer_index < len(choice_logprobs):
        raise ValueError(f"answer_index {answer_index} out of range for {len(choice_logprobs)} choices")
    lengths = [len(x) if isinstance(x, str) else int(x) for x in choice_lengths]
    if min(lengths) <= 0:
        raise ValueError("choice lengths must be positive")
    normed = [lp / n for lp, n in zip(choice_logprobs, lengths)]
    # max(range, key) returns the first maximum, like numpy.argmax used by lm-eval
    pred = max(range(len(choice_logprobs)), key=lambda i: choice_logprobs[i])
    pred_norm = max(range(len(normed)), key=lambda i: normed[i])
    return {"acc": float(pred == answer_index), "acc_norm": float(pred_norm == answer_index),
            "pred": pred, "pred_norm": pred_norm}

"""``Trigger``: when to act during generation, read from the acting model's next-token entropy.

A trigger looks at a generation's entropy trace ``e`` (``e[t]``: the entropy, in nats, of the
distribution token t was chosen from) and names the step ``n`` at which to act: the first ``n``
tokens stand, and from token ``n`` on the action takes over (in a handoff, another model writes it).

Kinds (``TRIGGERS``; a new rule is one registered function of the trace and the trigger):

- ``fixed``: at ``n`` tokens; ``n="all"`` never acts (the model finishes alone).
- ``entropy_below``: at the first t where the entropy (the mean over the last ``window`` steps)
  falls below ``threshold``: the model has become confident, the rest is routine.
- ``entropy_drop``: at the first t where it falls ``margin`` below the running mean of the earlier
  steps.

Every kind waits ``min_tokens``. An entropy trigger that has not fired by ``max_tokens`` (or by the
end of the trace) falls back to acting at ``max_tokens`` (the stated rule), and says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Union

from ..errors import SpecFormatError
from ..registry import Registry


@dataclass(frozen=True)
class Firing:
    at: int | None          # tokens that stand before acting; None: never acts (the model finishes alone)
    fired: bool             # the trigger's own rule fired (False: the fallback acted, or nothing did)
    rule: str               # what decided: the kind, "fallback: max_tokens", or "never"

    def to_dict(self) -> dict:
        return {"at": self.at, "fired": self.fired, "rule": self.rule}


TRIGGERS: Registry[Callable] = Registry("trigger kind", SpecFormatError,
                                        "Add one with @register_trigger(name) on a function (trace, trigger) -> "
                                        "the first step it fires at, or None.")


register_trigger = TRIGGERS.register


def windowed(trace: list[float], t: int, window: int) -> float:
    """The mean entropy of the ``window`` steps ending at step t (fewer at the start)."""
    part = trace[max(0, t - window + 1):t + 1]
    return sum(part) / len(part)


@register_trigger("entropy_below")
def _below(trace: list[float], trigger: "Trigger") -> int | None:
    return next((t for t in range(trigger.min_tokens, len(trace))
                 if windowed(trace, t, trigger.window) < trigger.threshold), None)


@register_trigger("entropy_drop")
def _drop(trace: list[float], trigger: "Trigger") -> int | None:
    for t in range(max(1, trigger.min_tokens), len(trace)):
        running = sum(trace[:t]) / t
        if windowed(trace, t, trigger.window) < running - trigger.margin:
            return t
    return None


@register_trigger("fixed")
def _fixed(trace: list[float], trigger: "Trigger") -> int | None:
    return None if trigger.n == "all" else max(trigger.n, trigger.min_tokens)


@dataclass(frozen=True)
class Trigger:
    kind: str = "fixed"
    n: Union[int, str] = "all"               # fixed: tokens before acting, or "all" (never act)
    threshold: float = 0.5                   # entropy_below: nats
    margin: float = 0.5                      # entropy_drop: nats below the running mean
    window: int = 1                          # entropy kinds: steps averaged (1 = the step alone)
    min_tokens: int = 0                      # never act before this many tokens
    max_tokens: int | None = None            # entropy kinds: act here when the rule has not fired

    def __post_init__(self) -> None:
        TRIGGERS.get(self.kind)
        if not (self.n == "all" or (isinstance(self.n, int) and not isinstance(self.n, bool) and self.n >= 0)):
            raise SpecFormatError(f"trigger.n: a token count >= 0 or 'all', got {self.n!r}")
        if self.window < 1:
            raise SpecFormatError(f"trigger.window: at least 1 step, got {self.window}")
        if self.min_tokens < 0 or (self.max_tokens is not None and self.max_tokens < self.min_tokens):
            raise SpecFormatError(f"trigger: need 0 <= min_tokens <= max_tokens, got {self.min_tokens} and "
                                  f"{self.max_tokens}")

    @property
    def label(self) -> str:
        """Short and unique per setting, for tables: ``n32``, ``below0.5w4``, ``drop1``."""
        if self.kind == "fixed":
            return f"n{self.n}"
        value = self.threshold if self.kind == "entropy_below" else self.margin
        window = f"w{self.window}" if self.window > 1 else ""
        return f"{self.kind.removeprefix('entropy_')}{value:g}{window}"

    @property
    def immediate(self) -> bool:
        """Acts at step 0 without reading a trace: the model it would read never has to run."""
        return self.kind == "fixed" and self.n == 0 and self.min_tokens == 0

    def fire(self, trace: list[float], horizon: int | None = None) -> Firing:
        """Where to act on ``trace`` (one generation's per-step entropies); ``horizon``: the most tokens
        the generation could have run, for the fallback when ``max_tokens`` is not set."""
        at = TRIGGERS.get(self.kind)(list(trace), self)
        if self.kind == "fixed":
            return Firing(at, at is not None, "fixed" if at is not None else "never")
        limit = self.max_tokens if self.max_tokens is not None else horizon
        if at is not None and (limit is None or at <= limit):
            return Firing(at, True, self.kind)
        if limit is None:
            return Firing(None, False, "never")
        return Firing(limit, False, "fallback: max_tokens")

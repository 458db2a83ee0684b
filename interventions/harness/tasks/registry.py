"""Task registry: names -> factories. A name ending in "/*" registers a family
(e.g. "rg/*"), whose factory receives the part after the prefix as its first argument."""

from __future__ import annotations

import inspect
from typing import Callable

from ...errors import suggest
from ...registry import Registry
from .base import Task
from .errors import TaskOptionError, UnknownTaskError

_TASKS: Registry[Callable[..., Task]] = Registry("task")
_FAMILIES: Registry[tuple[Callable[..., Task], Callable[[], list[str]] | None]] = Registry("task family")


def register_task(name: str, list_members: Callable[[], list[str]] | None = None):
    """Decorator registering `factory(**kwargs) -> Task` under `name`.

    For a family name "prefix/*", the factory is called as factory(member, **kwargs) and
    `list_members()` (optional) names the members, for available_tasks() and suggestions.
    """

    def deco(factory):
        if name.endswith("/*"):
            _FAMILIES.register(name[:-1], (factory, list_members), origin=_origin(factory))
        else:
            _TASKS.register(name, factory)
        return factory

    return deco


def _origin(factory) -> str:
    return f"{getattr(factory, '__module__', '?')}:{getattr(factory, '__qualname__', '?')}"


def _family_members(prefix: str) -> list[str]:
    lister = _FAMILIES[prefix][1]
    try:
        return [prefix + m for m in lister()] if lister else []
    except ImportError:  # family's data package missing: list nothing rather than fail
        return []


def available_tasks(include_families: bool = True) -> list[str]:
    """Registered task names, plus every family member (e.g. all "rg/<generator>") if asked."""
    names = set(_TASKS)
    if include_families:
        for prefix in _FAMILIES:
            names.update(_family_members(prefix))
    return sorted(names)


def _built(name: str, factory, *args, **options) -> Task:
    """``factory(*args, **options)``, with unknown or missing options named before it runs."""
    signature = inspect.signature(factory)
    accepted = [p for p in signature.parameters.values() if p.kind is not p.VAR_KEYWORD][len(args):]
    names = [p.name for p in accepted]
    if not any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values()):
        for key in options:
            if key not in names:
                raise TaskOptionError(f"task {name!r}: unknown option {key!r}.{suggest(key, names)} "
                                      f"Options: {', '.join(names) or 'none'}.")
    for param in accepted:
        if param.default is param.empty and param.kind is not param.VAR_POSITIONAL and param.name not in options:
            raise TaskOptionError(f"task {name!r} needs the option {param.name!r} "
                                  f"(options: {{{param.name}: ...}} in the task entry)")
    return factory(*args, **options)


def get_task(name: str, **kwargs) -> Task:
    if name in _TASKS:
        return _built(name, _TASKS.get(name), **kwargs)
    for prefix, (factory, _) in _FAMILIES.items():
        if name.startswith(prefix) and len(name) > len(prefix):
            return _built(name, factory, name[len(prefix):], **kwargs)
    # Suggest among everything, but list only the fixed names plus family patterns (short message).
    shown = sorted(_TASKS) + [p + "<name>" for p in sorted(_FAMILIES)]
    raise UnknownTaskError(name, available_tasks(), shown=shown)

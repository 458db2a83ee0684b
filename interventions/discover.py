"""Import every module of a package, so a new protocol or spec kind is one new file that
registers itself, with no import list to edit."""

from __future__ import annotations

import importlib
import pkgutil


def import_all(package_name: str, package_path) -> None:
    for module in sorted(pkgutil.iter_modules(package_path), key=lambda m: m.name):
        if not module.name.startswith("_"):
            importlib.import_module(f"{package_name}.{module.name}")

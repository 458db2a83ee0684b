"""Where a model runs and in what precision: device and dtype requests, checked against this machine.

Devices: ``cpu``, ``cuda``, ``cuda:N``, ``mps``, ``auto`` (accelerate's ``device_map="auto"``,
which spreads a model that does not fit one device over all of them, then the CPU). Dtypes: fp32, bf16, fp16 (or their torch names).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch

from ..errors import InterventionError, suggest

DTYPES = {"fp32": torch.float32, "float32": torch.float32, "float": torch.float32,
          "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
          "fp16": torch.float16, "float16": torch.float16, "half": torch.float16}
DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


class PlacementError(InterventionError, ValueError):
    pass


@dataclass(frozen=True)
class Placement:
    device: str                # "cpu", "cuda:0", "mps", or "auto"
    dtype: torch.dtype
    note: str | None = None    # a fallback that was taken; rows record it

    @property
    def device_map(self):
        """What ``from_pretrained`` takes: None loads on the CPU as before."""
        if self.device == "cpu":
            return None
        return "auto" if self.device == "auto" else {"": self.device}

    @property
    def dtype_name(self) -> str:
        return DTYPE_NAMES[self.dtype]


def available_devices() -> list[str]:
    devices = ["cpu"]
    if torch.cuda.is_available():
        devices += ["cuda"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        devices.append("mps")
    return devices + ["auto"]


def resolve_dtype(dtype) -> torch.dtype:
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        if dtype not in DTYPE_NAMES:
            raise PlacementError(f"dtype {dtype} is not supported; use fp32, bf16 or fp16")
        return dtype
    key = str(dtype).lower().removeprefix("torch.")
    if key not in DTYPES:
        raise PlacementError(f"unknown dtype {dtype!r}; use fp32, bf16 or fp16.{suggest(key, DTYPES)}")
    return DTYPES[key]


def resolve_device(device) -> str:
    name = "cpu" if device is None else str(device)
    if name == "cuda" and torch.cuda.is_available():
        name = f"cuda:{torch.cuda.current_device()}"
    if name not in available_devices():
        raise PlacementError(f"device {name!r} is not available here; available: {', '.join(available_devices())}")
    if name == "auto" and not torch.cuda.is_available():
        return "cpu"   # nothing to spread over
    return name


def placement(device=None, dtype=None) -> Placement:
    """Check a device and dtype request; bf16 on a GPU without it falls back to fp32 with a warning."""
    device, dtype = resolve_device(device), resolve_dtype(dtype)
    note = None
    if dtype == torch.bfloat16 and device.startswith("cuda") and not torch.cuda.is_bf16_supported():
        note = f"bf16 requested but {torch.cuda.get_device_name(device)} has no bf16; running in fp32"
        warnings.warn(note, stacklevel=3)
        dtype = torch.float32
    return Placement(device, dtype, note)


def weights_identity(sha256: str, dtype_name: str = "fp32") -> str:
    """What a result's work key says of a model: its weight hash, and the precision when not fp32
    (so a bf16 run never resumes into fp32 rows, and fp32 keys stay what they were)."""
    return sha256 if dtype_name == "fp32" else f"{sha256}/{dtype_name}"

"""Which torch device a command runs on (``--device``)."""

from __future__ import annotations

import re

import torch

__all__ = ["DeviceError", "resolve_device"]


class DeviceError(ValueError):
    """The requested device is not on this machine."""


def resolve_device(name: str) -> str:
    """``auto`` -> ``cuda`` when a GPU is there, else ``cpu``; another name, or a CUDA device that is not
    there, is an error."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if not re.fullmatch(r"cpu|cuda(:\d+)?", name):
        raise DeviceError(f"--device must be auto, cpu, cuda or cuda:N, got {name!r}")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise DeviceError(f"--device {name}: no CUDA GPU is available here (use --device cpu or auto)")
        index = int(name.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise DeviceError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return name

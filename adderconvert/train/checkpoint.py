"""Checkpoints that rebuild their model: architecture, conversion plan, weights and training state.

Files are written atomically (a temporary file renamed into place) and read with ``weights_only=True``.
"""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = ["FORMAT_VERSION", "load", "load_checkpoint", "rng_state", "save_checkpoint", "set_rng_state"]

FORMAT_VERSION = 1


def rng_state() -> dict[str, Any]:
    """Python, NumPy and torch RNG states in types ``weights_only`` loading accepts."""
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(tuple(tuple(s) if isinstance(s, list) else s for s in state["python"]))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> Path:
    """Write ``payload`` (plus the format version) to ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save({"format": FORMAT_VERSION, **payload}, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT_VERSION:
        raise ValueError(f"{path} is not an adderconvert checkpoint (format {FORMAT_VERSION})")
    return payload


def load(path: str | os.PathLike) -> nn.Module:
    """Rebuild the adder model stored in a checkpoint: architecture, conversion and weights."""
    from adderconvert.conversion import restore
    from adderconvert.models import build_model

    payload = load_checkpoint(path)
    meta = payload["meta"]
    model = build_model(meta["model_name"], meta["num_classes"])
    if meta.get("conversion") is not None:
        restore(model, meta["conversion"])
    model.load_state_dict(payload["model"])
    model.eval()
    return model

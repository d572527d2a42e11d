"""What a training run leaves in its folder after each epoch: ``last.pt``, ``best.pt`` and ``metrics.csv``,
plus the RNG states that make a resumed run continue exactly."""

from __future__ import annotations

import csv
import io
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from adderconvert.checkpoint import CheckpointMeta, remove_stale_temporaries, save_checkpoint, write_atomic

__all__ = ["CheckpointSaver", "rng_state", "seed_everything", "set_rng_state"]


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's generators (every CUDA device's too): call it before a model is
    built, so that its initial weights follow from ``seed``."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # seeds every CUDA device as well


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


class CheckpointSaver:
    """Owns a run folder's ``last.pt``, ``best.pt`` and ``metrics.csv``.

    ``last.pt`` is written first and ``metrics.csv`` after it, so the CSV never lists an epoch the
    checkpoint lacks. ``best.pt`` is a hard link to the ``last.pt`` of the best epoch (a copy only where
    the file system has no hard links): when ``last.pt`` is replaced, ``best.pt`` keeps the old file.
    ``metric`` names the task's metric: the CSV's ``test_top1`` column is ``test_METRIC`` for another one
    (``test_miou``, ``test_map``), and a ``train_top1`` the task does not have (None) is left out.
    """

    def __init__(self, folder: str | os.PathLike, meta: CheckpointMeta, metric: str = "top1") -> None:
        self.folder = Path(folder)
        self.meta = meta
        self.metric = metric
        self.folder.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(self.folder)

    @property
    def last(self) -> Path:
        return self.folder / "last.pt"

    @property
    def best(self) -> Path:
        return self.folder / "best.pt"

    def save(self, state: dict[str, Any], history: list[dict[str, Any]], is_best: bool) -> None:
        """Write ``last.pt`` (``state`` plus meta and history), link it as ``best.pt`` when ``is_best``,
        then rewrite ``metrics.csv`` from ``history``."""
        save_checkpoint(self.last, {"meta": self.meta, **state, "history": history})
        if is_best:
            self._link_best()
        rows = [_csv_row(row, self.metric) for row in history]
        write_atomic(self.folder / "metrics.csv", lambda f: f.write(_csv_bytes(rows)))

    def _link_best(self) -> None:
        tmp = self.folder / ".best.pt.link.tmp"
        tmp.unlink(missing_ok=True)
        try:
            os.link(self.last, tmp)
        except OSError:  # no hard links here (some network and FAT file systems)
            shutil.copyfile(self.last, tmp)
        os.replace(tmp, self.best)


def _csv_row(row: dict[str, Any], metric: str) -> dict[str, Any]:
    if metric == "top1":
        return row
    renamed = {(f"test_{metric}" if key == "test_top1" else key): value for key, value in row.items()}
    if renamed.get("train_top1", 0) is None:
        del renamed["train_top1"]
    return renamed


def _csv_bytes(history: list[dict[str, Any]]) -> bytes:
    text = io.StringIO()
    if history:
        writer = csv.DictWriter(text, fieldnames=list(history[0]))
        writer.writeheader()
        writer.writerows(history)
    return text.getvalue().encode()

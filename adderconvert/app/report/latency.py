"""ONNX Runtime latency of the CNN and adder models, per provider and batch size (the cost report's timings)."""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from adderconvert.app.saved_models import first_line
from adderconvert.deploy.runtime import available_providers, make_session

__all__ = ["LATENCY_BUDGET_S", "fixed_batch", "latency_table", "measure_latency", "ratio"]

# Latency of each model and batch is the median of repeated runs within this many seconds.
LATENCY_BUDGET_S = 2.0


def measure_latency(
    path: str | os.PathLike,
    input_shape: tuple[int, ...],
    provider: str = "CPUExecutionProvider",
    budget_s: float = LATENCY_BUDGET_S,
) -> float:
    """Median milliseconds of one ONNX Runtime run of ``path`` on a random input of ``input_shape``.

    One warm-up run, then runs until ``budget_s`` has passed (at least 3, at most 200).
    """
    session = make_session(path, providers=[provider])
    feed = {session.get_inputs()[0].name: np.random.default_rng(0).standard_normal(input_shape, dtype=np.float32)}
    session.run(None, feed)
    times: list[float] = []
    deadline = time.perf_counter() + budget_s
    while len(times) < 3 or (time.perf_counter() < deadline and len(times) < 200):
        start = time.perf_counter()
        session.run(None, feed)
        times.append(1000 * (time.perf_counter() - start))
    return statistics.median(times)


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """``numerator / denominator``, or None when either is missing (or the denominator is 0)."""
    return numerator / denominator if numerator is not None and denominator else None


def fixed_batch(path: str | os.PathLike) -> int | None:
    """The one batch size the ONNX model at ``path`` takes (an R-CNN exports with a fixed batch); None for a
    dynamic batch."""
    batch = make_session(path, providers=["CPUExecutionProvider"]).get_inputs()[0].shape[0]
    return batch if isinstance(batch, int) else None


def latency_table(
    paths: dict[str, Path | None], image_size: int, batches: list[int], budget_s: float, notes: list[str]
) -> list[dict[str, Any]]:
    """One row per provider and batch: ``{label}_ms`` for each of ``paths`` and the adder/CNN ``ratio``;
    what cannot run is a note (its error's first line), not an error. Models of a fixed batch (an R-CNN's) are
    measured at that batch only, in place of ``batches``: those rows say ``"fixed_batch": True``."""
    try:
        providers = available_providers()
    except Exception as e:  # onnxruntime or the custom-op library missing
        notes.append(f"latency not measured: {type(e).__name__}: {first_line(e)}")
        return []
    paths, fixed = dict(paths), {}
    for label, path in paths.items():
        try:
            fixed[label] = fixed_batch(path) if path else None
        except Exception as e:  # a file ONNX Runtime cannot load: its cells read n/a
            notes.append(f"{label} ONNX not measured: {type(e).__name__}: {first_line(e)}")
            paths[label] = None
    fixed_batches = sorted({b for b in fixed.values() if b is not None})
    if fixed_batches:
        labels = ", ".join(label for label, b in fixed.items() if b is not None)
        sizes = " and ".join(map(str, fixed_batches))
        notes.append(f"the {labels} ONNX model(s) take a fixed batch of {sizes}: latency measured at that batch only")
        batches = fixed_batches
    rows = []
    for provider in providers:
        for batch in batches:
            row: dict[str, Any] = {"provider": provider, "batch": batch, "fixed_batch": batch in fixed_batches}
            for label, path in paths.items():
                row[f"{label}_ms"] = None
                if path is None or fixed[label] not in (None, batch):  # a model of another fixed batch
                    continue
                try:
                    row[f"{label}_ms"] = measure_latency(path, (batch, 3, image_size, image_size), provider, budget_s)
                except Exception as e:  # a model that does not run on this provider: recorded, not raised
                    notes.append(f"{label} ONNX on {provider} at batch {batch}: {type(e).__name__}: {first_line(e)}")
            row["ratio"] = ratio(row.get("adder_ms"), row.get("cnn_ms"))
            rows.append(row)
    return rows

"""Helpers shared by the benchmarks: timing and peak-memory measurement in a child process."""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from adderconvert.deploy.runtime import CPU_PROVIDER

REPO = Path(__file__).resolve().parents[1]


def rss_mb() -> float:
    """Current resident set size of this process in MiB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def peak_rss_mb() -> float:
    """High-water mark of the resident set size of this process in MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def time_call(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    """Median wall time of ``fn`` in milliseconds."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return sorted(times)[len(times) // 2]


def run_child(script: Path, args: list[str]) -> dict:
    """Run ``script --child ARGS`` in a fresh interpreter (so its peak memory is its own) and parse its JSON."""
    out = subprocess.run(
        [sys.executable, str(script), "--child", *args], check=True, capture_output=True, text=True, cwd=REPO
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def ort_cpu_session(path: Path, library: str | None, threads: int, spin: bool):
    """A CPU session of ``path`` with ``library`` registered (none: a model of standard ops only)."""
    import onnxruntime as ort  # only the ONNX Runtime benchmarks need it

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    if library is not None:
        options.register_custom_ops_library(library)
    return ort.InferenceSession(str(path), sess_options=options, providers=[CPU_PROVIDER])


def interleaved_latency_samples_ms(
    sessions: dict, feeds: dict, repeats: int, cpu_ms: dict[str, list[float]] | None = None
) -> dict[str, list[float]]:
    """ms of each of ``repeats`` runs of each session, taking turns run by run so that they share the same load.
    With ``cpu_ms`` (a dict), it also gets each run's CPU time of this process in ms (all its threads)."""
    for session in sessions.values():
        for _ in range(2):
            session.run(None, feeds)
    times: dict[str, list[float]] = {name: [] for name in sessions}
    if cpu_ms is not None:
        cpu_ms.update({name: [] for name in sessions})
    for _ in range(repeats):
        for name, session in sessions.items():
            cpu_start, start = time.process_time(), time.perf_counter()
            session.run(None, feeds)
            times[name].append((time.perf_counter() - start) * 1e3)
            if cpu_ms is not None:
                cpu_ms[name].append((time.process_time() - cpu_start) * 1e3)
    return times


def interleaved_latency_ms(sessions: dict, feeds: dict, repeats: int) -> dict[str, float]:
    """Median ms of one run of each session, runs interleaved (:func:`interleaved_latency_samples_ms`)."""
    return {name: float(np.median(t)) for name, t in interleaved_latency_samples_ms(sessions, feeds, repeats).items()}

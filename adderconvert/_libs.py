"""Locating the compiled libraries that `pip install` builds from custom_ops/ into adderconvert/_lib."""

from __future__ import annotations

import sysconfig
from pathlib import Path

ORT_LIBRARY = "libadderconvert_ort.so"
CPU_LIBRARY = "libadderconvert_cpu.so"
CUDA_LIBRARY = "libadderconvert_cuda.so"


def find_library(name: str) -> Path:
    """Return the path of a library built into ``adderconvert/_lib``.

    Editable installs keep the Python sources in the checkout while the built libraries land in
    site-packages, so both places are searched.
    """
    candidates = [Path(__file__).parent / "_lib" / name]
    for scheme_path in {sysconfig.get_paths()["platlib"], sysconfig.get_paths()["purelib"]}:
        candidates.append(Path(scheme_path) / "adderconvert" / "_lib" / name)
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    searched = "\n  ".join(str(c) for c in candidates)
    raise FileNotFoundError(
        f"{name} was not found; the package's native part is built by `pip install` "
        f"(run `make` or `pip install -e .`). Searched:\n  {searched}"
    )

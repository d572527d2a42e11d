"""The ctypes declarations of adderconvert.nn._kernels and adderconvert_ort against the C prototypes in
custom_ops/."""

import ctypes
import re
from pathlib import Path

import pytest

import adderconvert_ort
from adderconvert._libs import CPU_LIBRARY, CUDA_LIBRARY
from adderconvert.nn import _kernels

ORT_LIBRARY = adderconvert_ort.LIBRARY

SOURCES = {
    CPU_LIBRARY: "custom_ops/cpu/c_api.cc",
    CUDA_LIBRARY: "custom_ops/cuda/c_api.cc",
    ORT_LIBRARY: "custom_ops/register.cc",
}
# What each C type is passed as; pointers to data are plain addresses.
CTYPES = {
    "int": ctypes.c_int,
    "int64_t": ctypes.c_int64,
    "size_t": ctypes.c_size_t,
    "char*": ctypes.c_char_p,
    "const char*": ctypes.c_char_p,
    "const int64_t*": ctypes.POINTER(ctypes.c_int64),
    "void*": ctypes.c_void_p,
    "const void*": ctypes.c_void_p,
    "float*": ctypes.c_void_p,
    "const float*": ctypes.c_void_p,
    "const uint8_t*": ctypes.c_void_p,
    "float": ctypes.c_float,
}
ROOT = Path(__file__).resolve().parents[2]
DECLARED = {**_kernels.C_API, ORT_LIBRARY: adderconvert_ort.C_API}


def _exported(source: str) -> dict[str, tuple[str, list[str]]]:
    """function -> (return type, parameter types) of every ADDERCONVERT_EXPORT definition in ``source``."""
    text = (ROOT / source).read_text()
    found = {}
    pattern = r"ADDERCONVERT_EXPORT\s+([\w\s\*]+?)\s*(?:ORT_API_CALL\s+)?(\w+)\(([^)]*)\)\s*\{"
    for restype, name, params in re.findall(pattern, text):
        types = [" ".join(p.split()[:-1]).replace(" *", "*") for p in params.split(",") if p.strip()]
        found[name] = (restype.strip().replace(" *", "*"), types)
    return found


@pytest.mark.parametrize("library", list(SOURCES))
def test_declarations_match_the_c_prototypes(library):
    exported = _exported(SOURCES[library])
    for name, (restype, argtypes) in DECLARED[library].items():
        assert name in exported, f"{name} is not exported by {SOURCES[library]}"
        c_restype, c_params = exported[name]
        assert restype is CTYPES[c_restype], name
        assert argtypes == [CTYPES[t] for t in c_params], name


@pytest.mark.parametrize("library", [CPU_LIBRARY, CUDA_LIBRARY])
def test_every_entry_point_of_the_kernel_apis_is_declared(library):
    assert set(_exported(SOURCES[library])) == set(DECLARED[library])


def test_every_entry_point_of_the_ort_library_but_registration_is_declared():
    assert set(_exported(SOURCES[ORT_LIBRARY])) - {"RegisterCustomOps"} == set(DECLARED[ORT_LIBRARY])


def test_parser_reads_the_prototypes():
    restype, params = _exported(SOURCES[CPU_LIBRARY])["adderconvert_cpu_forward"]
    assert restype == "int" and len(params) == 14 and params[1] == "const void*" and params[5] == "const int64_t*"


def test_a_refused_call_raises_the_kernel_message():
    import torch

    x, w = torch.zeros(1, 3, 4, 4), torch.zeros(2, 3, 3, 3)
    with pytest.raises(RuntimeError, match="X has 3 channels but W expects 6"):
        _kernels.cpu_forward(x, torch.zeros(2, 6, 3, 3), None, (1, 1), (0, 0, 0, 0), (1, 1), 1)
    out = _kernels.cpu_forward(x, w, None, (1, 1), (0, 0, 0, 0), (1, 1), 1)
    assert out.shape == (1, 2, 2, 2) and float(out.abs().max()) == 0.0

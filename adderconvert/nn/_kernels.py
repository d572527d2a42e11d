"""ctypes declarations of the native libraries' C entry points, and the calls into them.

Each entry point is declared once, in :data:`C_API`, with its C prototype beside it: libadderconvert_cpu
(``custom_ops/cpu/c_api.cc``), libadderconvert_cuda (``custom_ops/cuda/c_api.cc``) and the ONNX Runtime
library's information functions (``custom_ops/register.cc``). A declaration that does not match its C
function corrupts memory silently; ``tests/nn/test_kernels.py`` checks every one against the C sources.
"""

from __future__ import annotations

import ctypes
import functools
from ctypes import POINTER, c_char_p, c_int, c_int64, c_size_t, c_void_p

import torch

from adderconvert._libs import CPU_LIBRARY, CUDA_LIBRARY, ORT_LIBRARY, find_library

__all__ = [
    "C_API",
    "cpu_backward_input",
    "cpu_forward",
    "cpu_isa",
    "cuda_backward_input",
    "cuda_forward",
    "has_cuda_library",
    "ort_build_info",
]

_DIMS = POINTER(c_int64)  # const int64_t*
# Shared tails: the geometry of x_dims, w_dims, strides, pads, dilations, group; and the error buffer.
_GEOMETRY = [_DIMS, _DIMS, _DIMS, _DIMS, _DIMS, c_int64]
_ERROR = [c_char_p, c_size_t]

# library -> {function: (restype, argtypes)}
C_API: dict[str, dict[str, tuple[type | None, list[type]]]] = {
    CPU_LIBRARY: {
        # int adderconvert_cpu_forward(int dtype, const void* x, const void* w, const void* bias, void* y,
        #     const int64_t* x_dims, const int64_t* w_dims, const int64_t* strides, const int64_t* pads,
        #     const int64_t* dilations, int64_t group, int threads, char* error, size_t error_len)
        "adderconvert_cpu_forward": (
            c_int,
            [c_int, c_void_p, c_void_p, c_void_p, c_void_p, *_GEOMETRY, c_int, *_ERROR],
        ),
        # int adderconvert_cpu_backward_input(int dtype, const void* x, const void* w, const void* grad_y,
        #     void* grad_x, const int64_t* x_dims, const int64_t* w_dims, const int64_t* strides,
        #     const int64_t* pads, const int64_t* dilations, int64_t group, int threads, char* error,
        #     size_t error_len)
        "adderconvert_cpu_backward_input": (
            c_int,
            [c_int, c_void_p, c_void_p, c_void_p, c_void_p, *_GEOMETRY, c_int, *_ERROR],
        ),
        # const char* adderconvert_cpu_isa()
        "adderconvert_cpu_isa": (c_char_p, []),
    },
    CUDA_LIBRARY: {
        # int adderconvert_cuda_forward(void* stream, const float* x, const float* w, const float* bias, float* y,
        #     const int64_t* x_dims, const int64_t* w_dims, const int64_t* strides, const int64_t* pads,
        #     const int64_t* dilations, int64_t group, char* error, size_t error_len)
        "adderconvert_cuda_forward": (c_int, [c_void_p, c_void_p, c_void_p, c_void_p, c_void_p, *_GEOMETRY, *_ERROR]),
        # int64_t adderconvert_cuda_grad_columns_size(const int64_t* x_dims, const int64_t* w_dims,
        #     const int64_t* strides, const int64_t* pads, const int64_t* dilations, int64_t group)
        "adderconvert_cuda_grad_columns_size": (c_int64, [*_GEOMETRY]),
        # int adderconvert_cuda_backward_input(void* stream, const float* x, const float* w, const float* grad_y,
        #     float* grad_cols, float* grad_x, const int64_t* x_dims, const int64_t* w_dims,
        #     const int64_t* strides, const int64_t* pads, const int64_t* dilations, int64_t group,
        #     char* error, size_t error_len)
        "adderconvert_cuda_backward_input": (
            c_int,
            [c_void_p, c_void_p, c_void_p, c_void_p, c_void_p, c_void_p, *_GEOMETRY, *_ERROR],
        ),
    },
    ORT_LIBRARY: {
        # const char* AdderConvertBuildInfo()
        "AdderConvertBuildInfo": (c_char_p, []),
        # const char* AdderConvertCpuIsa()
        "AdderConvertCpuIsa": (c_char_p, []),
    },
}

_DTYPES = {torch.float32: 0, torch.float64: 1}  # the CPU API's dtype codes


@functools.cache
def _library(name: str) -> ctypes.CDLL:
    """The library ``name`` with every entry point of :data:`C_API` declared."""
    lib = ctypes.CDLL(str(find_library(name)))
    for function, (restype, argtypes) in C_API[name].items():
        getattr(lib, function).restype = restype
        getattr(lib, function).argtypes = argtypes
    return lib


def cpu_isa() -> str:
    """Instruction set the CPU kernel dispatched to on this machine."""
    return _library(CPU_LIBRARY).adderconvert_cpu_isa().decode()


def ort_build_info() -> tuple[str, str]:
    """The ONNX Runtime library's build description (``key=value`` pairs) and the CPU kernel's instruction set."""
    lib = _library(ORT_LIBRARY)
    return lib.AdderConvertBuildInfo().decode(), lib.AdderConvertCpuIsa().decode()


def has_cuda_library() -> bool:
    """True when the CUDA kernel library was built (and loads)."""
    try:
        _library(CUDA_LIBRARY)
    except (FileNotFoundError, OSError):
        return False
    return True


def _geometry(x_shape, w_shape, stride, padding, dilation, groups) -> list:
    dims = [(c_int64 * len(v))(*v) for v in (x_shape, w_shape, stride, padding, dilation)]
    return [*dims, groups]


def _pointers(*tensors: torch.Tensor | None) -> list[int | None]:
    return [t.data_ptr() if t is not None else None for t in tensors]


def _check(status: int, error: ctypes.Array) -> None:
    if status != 0:
        raise RuntimeError(error.value.decode())


def _cpu_call(function: str, x, weight, tensors, stride, padding, dilation, groups) -> None:
    error = ctypes.create_string_buffer(512)
    geometry = _geometry(x.shape, weight.shape, stride, padding, dilation, groups)
    call = getattr(_library(CPU_LIBRARY), function)
    _check(call(_DTYPES[x.dtype], *_pointers(*tensors), *geometry, torch.get_num_threads(), error, len(error)), error)


def cpu_forward(x, weight, bias, out, stride, padding, dilation, groups) -> None:
    """Fill ``out`` with the adder convolution of contiguous CPU tensors (padding: top, left, bottom, right)."""
    _cpu_call("adderconvert_cpu_forward", x, weight, (x, weight, bias, out), stride, padding, dilation, groups)


def cpu_backward_input(x, weight, grad_out, grad_x, stride, padding, dilation, groups) -> None:
    """Fill ``grad_x`` with sum HardTanh(W - X) * grad_out for contiguous CPU tensors."""
    tensors = (x, weight, grad_out, grad_x)
    _cpu_call("adderconvert_cpu_backward_input", x, weight, tensors, stride, padding, dilation, groups)


def _cuda_call(function: str, x: torch.Tensor, tensors, geometry) -> None:
    error = ctypes.create_string_buffer(512)
    with torch.cuda.device(x.device):
        stream = torch.cuda.current_stream(x.device).cuda_stream
        call = getattr(_library(CUDA_LIBRARY), function)
        _check(call(stream, *_pointers(*tensors), *geometry, error, len(error)), error)


def cuda_forward(x, weight, bias, out, stride, padding, dilation, groups) -> None:
    """Fill ``out`` with the adder convolution of contiguous float32 CUDA tensors, on the current stream."""
    geometry = _geometry(x.shape, weight.shape, stride, padding, dilation, groups)
    _cuda_call("adderconvert_cuda_forward", x, (x, weight, bias, out), geometry)


def cuda_backward_input(x, weight, grad_out, grad_x, stride, padding, dilation, groups) -> None:
    """Fill ``grad_x`` with sum HardTanh(W - X) * grad_out for contiguous float32 CUDA tensors."""
    geometry = _geometry(x.shape, weight.shape, stride, padding, dilation, groups)
    scratch = x.new_empty(_library(CUDA_LIBRARY).adderconvert_cuda_grad_columns_size(*geometry))
    _cuda_call("adderconvert_cuda_backward_input", x, (x, weight, grad_out, scratch, grad_x), geometry)

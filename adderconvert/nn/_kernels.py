"""ctypes declarations of the native libraries' C entry points, and the calls into them.

Each entry point is declared once, in :data:`C_API`, with its C prototype beside it: libadderconvert_cpu
(``custom_ops/cpu/c_api.cc``), libadderconvert_cuda (``custom_ops/cuda/c_api.cc``) and the ONNX Runtime
library's information functions (``custom_ops/register.cc``). A declaration that does not match its C
function corrupts memory silently; ``tests/nn/test_kernels.py`` checks every one against the C sources.
"""

from __future__ import annotations

import ctypes
import functools
from ctypes import POINTER, c_char_p, c_float, c_int, c_int64, c_size_t, c_void_p

import torch

from adderconvert._libs import CPU_LIBRARY, CUDA_LIBRARY, find_library
from adderconvert.nn.geometry import output_size

__all__ = [
    "C_API",
    "cpu_backward_input",
    "cpu_forward",
    "cpu_isa",
    "cpu_quantized_forward",
    "cpu_quantized_isa",
    "cuda_backward_input",
    "cuda_forward",
    "has_cuda_library",
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
        # int adderconvert_cpu_quantized_forward(const float* x, const uint8_t* w, const float* alpha,
        #     const float* beta, float* y, const int64_t* x_dims, const int64_t* w_dims, const int64_t* strides,
        #     const int64_t* pads, const int64_t* dilations, int64_t group, float x_scale, int64_t x_zero_point,
        #     int relu, int threads, char* error, size_t error_len)
        "adderconvert_cpu_quantized_forward": (
            c_int,
            [c_void_p, c_void_p, c_void_p, c_void_p, c_void_p, *_GEOMETRY, c_float, c_int64, c_int, c_int, *_ERROR],
        ),
        # const char* adderconvert_cpu_quantized_isa()
        "adderconvert_cpu_quantized_isa": (c_char_p, []),
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


def cpu_quantized_isa() -> str:
    """Instruction set the INT8 (QuantizedAdderConv) CPU kernel dispatched to on this machine."""
    return _library(CPU_LIBRARY).adderconvert_cpu_quantized_isa().decode()


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


def _forward_tensors(x, weight, bias, stride, padding, dilation) -> tuple:
    """The kernels' forward arguments: contiguous x, weight and bias, and the output to fill."""
    out = x.new_empty(
        x.shape[0], weight.shape[0], *output_size(x.shape[2:], weight.shape[2:], stride, padding, dilation)
    )
    return x.contiguous(), weight.contiguous(), bias.contiguous() if bias is not None else None, out


def _backward_input_tensors(x, weight, grad_out) -> tuple:
    """The kernels' input-gradient arguments: contiguous x, weight and grad_out, and the gradient to fill."""
    grad_x = torch.empty_like(x, memory_format=torch.contiguous_format)
    return x.contiguous(), weight.contiguous(), grad_out.contiguous(), grad_x


def _cpu_call(function: str, tensors, stride, padding, dilation, groups) -> torch.Tensor:
    """Run ``function`` on ``tensors`` (x, weight, ..., the output last) and return the output."""
    x, weight, out = tensors[0], tensors[1], tensors[-1]
    error = ctypes.create_string_buffer(512)
    geometry = _geometry(x.shape, weight.shape, stride, padding, dilation, groups)
    call = getattr(_library(CPU_LIBRARY), function)
    _check(call(_DTYPES[x.dtype], *_pointers(*tensors), *geometry, torch.get_num_threads(), error, len(error)), error)
    return out


def cpu_forward(x, weight, bias, stride, padding, dilation, groups) -> torch.Tensor:
    """The adder convolution (plus bias) of CPU tensors; padding is (top, left, bottom, right)."""
    tensors = _forward_tensors(x, weight, bias, stride, padding, dilation)
    return _cpu_call("adderconvert_cpu_forward", tensors, stride, padding, dilation, groups)


def cpu_backward_input(grad_out, x, weight, stride, padding, dilation, groups) -> torch.Tensor:
    """sum HardTanh(W - X) * grad_out for CPU tensors."""
    tensors = _backward_input_tensors(x, weight, grad_out)
    return _cpu_call("adderconvert_cpu_backward_input", tensors, stride, padding, dilation, groups)


def cpu_quantized_forward(
    x, weight, alpha, beta, stride, padding, dilation, groups, x_scale: float, x_zero_point: int, relu: bool
) -> torch.Tensor:
    """The QuantizedAdderConv kernel on CPU tensors (float32 x, uint8 weight, float32 alpha and beta):
    ``alpha * sum|q(x) - W| + beta`` (then ReLU), exactly as the ONNX Runtime op computes it."""
    x, weight, _, out = _forward_tensors(x, weight, None, stride, padding, dilation)
    error = ctypes.create_string_buffer(512)
    status = _library(CPU_LIBRARY).adderconvert_cpu_quantized_forward(
        *_pointers(x, weight, alpha.contiguous(), beta.contiguous(), out),
        *_geometry(x.shape, weight.shape, stride, padding, dilation, groups),
        x_scale,
        x_zero_point,
        int(relu),
        torch.get_num_threads(),
        error,
        len(error),
    )
    _check(status, error)
    return out


def _cuda_call(function: str, tensors, stride, padding, dilation, groups, scratch: bool = False) -> torch.Tensor:
    """Run ``function`` on ``tensors`` (x, weight, ..., the output last) on the current stream; with
    ``scratch``, the grad-columns buffer goes before the output. Returns the output."""
    x, weight, out = tensors[0], tensors[1], tensors[-1]
    lib = _library(CUDA_LIBRARY)
    geometry = _geometry(x.shape, weight.shape, stride, padding, dilation, groups)
    if scratch:
        tensors = (*tensors[:-1], x.new_empty(lib.adderconvert_cuda_grad_columns_size(*geometry)), out)
    error = ctypes.create_string_buffer(512)
    with torch.cuda.device(x.device):
        stream = torch.cuda.current_stream(x.device).cuda_stream
        _check(getattr(lib, function)(stream, *_pointers(*tensors), *geometry, error, len(error)), error)
    return out


def cuda_forward(x, weight, bias, stride, padding, dilation, groups) -> torch.Tensor:
    """The adder convolution (plus bias) of float32 CUDA tensors, on the current stream."""
    tensors = _forward_tensors(x, weight, bias, stride, padding, dilation)
    return _cuda_call("adderconvert_cuda_forward", tensors, stride, padding, dilation, groups)


def cuda_backward_input(grad_out, x, weight, stride, padding, dilation, groups) -> torch.Tensor:
    """sum HardTanh(W - X) * grad_out for float32 CUDA tensors, on the current stream."""
    tensors = _backward_input_tensors(x, weight, grad_out)
    return _cuda_call("adderconvert_cuda_backward_input", tensors, stride, padding, dilation, groups, scratch=True)

"""ctypes bindings of the kernel libraries: CPU (custom_ops/cpu/c_api.cc) and CUDA (custom_ops/cuda/c_api.cc)."""

from __future__ import annotations

import ctypes
import functools

import torch

from adderconvert._libs import CPU_LIBRARY, CUDA_LIBRARY, find_library

_DTYPES = {torch.float32: 0, torch.float64: 1}
_I64x4 = ctypes.c_int64 * 4
_I64x2 = ctypes.c_int64 * 2


@functools.cache
def _library() -> ctypes.CDLL:
    lib = ctypes.CDLL(str(find_library(CPU_LIBRARY)))
    args = [ctypes.c_int] + [ctypes.c_void_p] * 4 + [ctypes.c_void_p] * 5
    args += [ctypes.c_int64, ctypes.c_int, ctypes.c_char_p, ctypes.c_size_t]
    for name in ("adderconvert_cpu_forward", "adderconvert_cpu_backward_input"):
        getattr(lib, name).argtypes = args
        getattr(lib, name).restype = ctypes.c_int
    lib.adderconvert_cpu_isa.restype = ctypes.c_char_p
    return lib


def cpu_isa() -> str:
    """Instruction set the CPU kernel dispatched to on this machine."""
    return _library().adderconvert_cpu_isa().decode()


def _call(name: str, x, weight, pointers, stride, padding, dilation, groups) -> None:
    error = ctypes.create_string_buffer(512)
    geometry = _geometry(x.shape, weight.shape, stride, padding, dilation, groups)
    status = getattr(_library(), name)(
        _DTYPES[x.dtype], *pointers, *geometry, torch.get_num_threads(), error, len(error)
    )
    if status != 0:
        raise RuntimeError(error.value.decode())


def _pointers(*tensors) -> list[int | None]:
    return [t.data_ptr() if t is not None else None for t in tensors]


def forward(x, weight, bias, out, stride, padding, dilation, groups) -> None:
    """Fill ``out`` with the adder convolution of contiguous CPU tensors (padding: top, left, bottom, right)."""
    _call("adderconvert_cpu_forward", x, weight, _pointers(x, weight, bias, out), stride, padding, dilation, groups)


def backward_input(x, weight, grad_out, grad_x, stride, padding, dilation, groups) -> None:
    """Fill ``grad_x`` with sum HardTanh(W - X) * grad_out for contiguous CPU tensors."""
    pointers = _pointers(x, weight, grad_out, grad_x)
    _call("adderconvert_cpu_backward_input", x, weight, pointers, stride, padding, dilation, groups)


@functools.cache
def _cuda_library() -> ctypes.CDLL | None:
    try:
        lib = ctypes.CDLL(str(find_library(CUDA_LIBRARY)))
    except (FileNotFoundError, OSError):
        return None
    dims = [ctypes.c_void_p] * 5 + [ctypes.c_int64]
    lib.adderconvert_cuda_forward.argtypes = [ctypes.c_void_p] * 5 + dims + [ctypes.c_char_p, ctypes.c_size_t]
    lib.adderconvert_cuda_backward_input.argtypes = [ctypes.c_void_p] * 6 + dims + [ctypes.c_char_p, ctypes.c_size_t]
    lib.adderconvert_cuda_grad_columns_size.argtypes = dims
    lib.adderconvert_cuda_grad_columns_size.restype = ctypes.c_int64
    for name in ("adderconvert_cuda_forward", "adderconvert_cuda_backward_input"):
        getattr(lib, name).restype = ctypes.c_int
    return lib


def has_cuda_kernels(x: torch.Tensor) -> bool:
    """True when ``x`` is a float32 CUDA tensor and the CUDA kernel library was built."""
    return x.is_cuda and x.dtype == torch.float32 and _cuda_library() is not None


def _geometry(x_shape, w_shape, stride, padding, dilation, groups):
    return (_I64x4(*x_shape), _I64x4(*w_shape), _I64x2(*stride), _I64x4(*padding), _I64x2(*dilation), groups)


def _cuda_call(name: str, x: torch.Tensor, pointers, geometry) -> None:
    error = ctypes.create_string_buffer(512)
    with torch.cuda.device(x.device):
        stream = torch.cuda.current_stream(x.device).cuda_stream
        status = getattr(_cuda_library(), name)(stream, *pointers, *geometry, error, len(error))
    if status != 0:
        raise RuntimeError(error.value.decode())


def cuda_forward(x, weight, bias, out, stride, padding, dilation, groups) -> None:
    """Fill ``out`` with the adder convolution of contiguous float32 CUDA tensors, on the current stream."""
    geometry = _geometry(x.shape, weight.shape, stride, padding, dilation, groups)
    _cuda_call("adderconvert_cuda_forward", x, _pointers(x, weight, bias, out), geometry)


def cuda_backward_input(x, weight, grad_out, grad_x, stride, padding, dilation, groups) -> None:
    """Fill ``grad_x`` with sum HardTanh(W - X) * grad_out for contiguous float32 CUDA tensors."""
    geometry = _geometry(x.shape, weight.shape, stride, padding, dilation, groups)
    scratch = x.new_empty(_cuda_library().adderconvert_cuda_grad_columns_size(*geometry))
    _cuda_call("adderconvert_cuda_backward_input", x, _pointers(x, weight, grad_out, scratch, grad_x), geometry)

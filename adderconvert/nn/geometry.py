"""Convolution geometry on the Python side: Conv2d-style arguments and the output size.

The C++ side has its own single home for the same formula, ``ResolveShape`` in ``custom_ops/adder_conv.h``.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["output_length", "output_size", "pair", "resolve_padding"]


def pair(value: int | Sequence[int], name: str) -> tuple[int, int]:
    """``value`` as a pair of ints (an int is used for both axes); ``name`` is for the error message."""
    if isinstance(value, int):
        return (value, value)
    values = tuple(int(v) for v in value)
    if len(values) != 2:
        raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
    return values  # type: ignore[return-value]


def resolve_padding(
    padding: str | int | Sequence[int],
    kernel_size: tuple[int, int],
    stride: tuple[int, int],
    dilation: tuple[int, int],
) -> tuple[int, int, int, int]:
    """Turn Conv2d-style padding (int, pair, ``'same'`` or ``'valid'``) into (top, left, bottom, right)."""
    if isinstance(padding, str):
        if padding == "valid":
            return (0, 0, 0, 0)
        if padding != "same":
            raise ValueError(f"Invalid padding string {padding!r}, should be one of {{'valid', 'same'}}")
        if stride != (1, 1):
            raise ValueError("padding='same' is not supported for strided convolutions")
        total = [d * (k - 1) for d, k in zip(dilation, kernel_size)]
        return (total[0] // 2, total[1] // 2, total[0] - total[0] // 2, total[1] - total[1] // 2)
    ph, pw = pair(padding, "padding")
    if ph < 0 or pw < 0:
        raise ValueError(f"padding must be non-negative, got {padding!r}")
    return (ph, pw, ph, pw)


def output_length(size: int, kernel: int, stride: int, pad_begin: int, pad_end: int, dilation: int) -> int:
    """Outputs along one axis: windows of ``dilation * (kernel - 1) + 1`` inputs, ``stride`` apart, in the
    padded input (less than 1 when the window does not fit)."""
    return (size + pad_begin + pad_end - dilation * (kernel - 1) - 1) // stride + 1


def output_size(
    in_hw: Sequence[int],
    kernel_hw: Sequence[int],
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
) -> tuple[int, int]:
    """(height, width) of the output; ``padding`` is (top, left, bottom, right)."""
    return tuple(
        output_length(size, k, s, padding[axis], padding[axis + 2], d)
        for axis, (size, k, s, d) in enumerate(zip(in_hw, kernel_hw, stride, dilation))
    )  # type: ignore[return-value]

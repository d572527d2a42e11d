"""Conv2d-style arguments and the output-size formula, against torch's own convolution."""

import itertools

import pytest
import torch
import torch.nn.functional as F

from adderconvert.nn.geometry import output_length, output_size, pair, resolve_padding


def test_output_size_matches_conv2d():
    x = torch.zeros(1, 1, 9, 7)
    for kernel, stride, dilation, pads in itertools.product(
        [(1, 1), (3, 2), (4, 5)], [(1, 1), (2, 3)], [(1, 1), (2, 1)], [(0, 0, 0, 0), (1, 2, 1, 2), (2, 0, 1, 3)]
    ):
        top, left, bottom, right = pads
        padded = F.pad(x, (left, right, top, bottom))
        if any(d * (k - 1) + 1 > s for d, k, s in zip(dilation, kernel, padded.shape[2:])):
            assert min(output_size(x.shape[2:], kernel, stride, pads, dilation)) < 1
            continue
        y = F.conv2d(padded, torch.zeros(1, 1, *kernel), stride=stride, dilation=dilation)
        assert output_size(x.shape[2:], kernel, stride, pads, dilation) == tuple(y.shape[2:])


def test_output_length_by_hand():
    # 10 inputs + 1 + 2 padding, a 3-tap kernel dilated by 2 spans 5: windows start at 0, 3, 6 (stride 3).
    assert output_length(10, 3, 3, 1, 2, 2) == 3


@pytest.mark.parametrize("kernel", [(3, 3), (4, 2), (1, 5)])
@pytest.mark.parametrize("dilation", [(1, 1), (2, 3)])
def test_same_padding_keeps_the_size(kernel, dilation):
    pads = resolve_padding("same", kernel, (1, 1), dilation)
    assert output_size((11, 8), kernel, (1, 1), pads, dilation) == (11, 8)
    assert resolve_padding("valid", kernel, (1, 1), dilation) == (0, 0, 0, 0)


def test_bad_arguments_are_refused():
    assert pair(3, "stride") == (3, 3) and pair([1, 2], "stride") == (1, 2)
    with pytest.raises(ValueError, match="stride must be an int or a pair of ints"):
        pair((1, 2, 3), "stride")
    with pytest.raises(ValueError, match="padding='same' is not supported for strided"):
        resolve_padding("same", (3, 3), (2, 1), (1, 1))
    with pytest.raises(ValueError, match="Invalid padding string 'full'"):
        resolve_padding("full", (3, 3), (1, 1), (1, 1))
    with pytest.raises(ValueError, match="padding must be non-negative"):
        resolve_padding(-1, (3, 3), (1, 1), (1, 1))

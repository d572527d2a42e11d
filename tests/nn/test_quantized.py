"""QuantizedAdderConv2d: its integer sums bit for bit against a plain int64 reference of the kernel's contract
(written here, loops over taps), the clamp-and-fold identity, the quantiser's rounding edges and bad input."""

import numpy as np
import pytest
import torch

from adderconvert.nn import AdderConv2d
from adderconvert.nn.quantized import QuantizedAdderConv2d, quantize_values, quantized_adder_conv2d
from adderconvert.nn.reference import reference_adder_conv2d

RNG = np.random.default_rng(5)


def int_quantize(x: np.ndarray, x_scale: float, zero_point: int) -> np.ndarray:
    """The contract in NumPy: float32 product with float32(1/x_scale), rint (halves to even), NaN -> zero point."""
    inv = np.float32(1.0) / np.float32(x_scale)
    with np.errstate(over="ignore", invalid="ignore"):
        v = np.rint((x.astype(np.float32) * inv).astype(np.float64))
    v = np.where(np.isnan(v), 0.0, v)
    return np.clip(v + zero_point, 0, 255).astype(np.int64)


def int_sums(x, w, x_scale, zero_point, strides, pads, dilations, group):
    """S[n, m, oh, ow] = sum |qx - W| in int64, the padded taps read the zero point."""
    q = int_quantize(x, x_scale, zero_point)
    q = np.pad(q, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])), constant_values=zero_point)
    n, _, hp, wp = q.shape
    m, cg, kh, kw = w.shape
    oh = (hp - dilations[0] * (kh - 1) - 1) // strides[0] + 1
    ow = (wp - dilations[1] * (kw - 1) - 1) // strides[1] + 1
    rows = m // group
    out = np.zeros((n, m, oh, ow), np.int64)
    for o in range(m):
        g = o // rows
        for i in range(kh):
            for j in range(kw):
                top, left = i * dilations[0], j * dilations[1]
                patch = q[:, g * cg : (g + 1) * cg, top : top + strides[0] * (oh - 1) + 1 : strides[0]]
                patch = patch[..., left : left + strides[1] * (ow - 1) + 1 : strides[1]]
                out[:, o] += np.abs(patch - w[o, :, i, j].astype(np.int64)[None, :, None, None]).sum(1)
    return out


# (x shape, w shape, strides, pads (top, left, bottom, right), dilations, group)
CASES = [
    ((1, 1, 7, 7), (3, 1, 3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1),  # batch 1, one channel
    ((2, 12, 9, 8), (8, 12, 3, 3), (2, 2), (1, 1, 1, 1), (1, 1), 1),  # stride
    ((1, 6, 11, 10), (9, 2, 3, 2), (1, 2), (2, 0, 1, 3), (2, 1), 3),  # groups, dilation, asymmetric pads
    ((2, 16, 8, 8), (16, 1, 3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 16),  # depthwise
    ((3, 40, 5, 5), (24, 40, 1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 1),  # 1x1
    ((1, 3, 13, 13), (5, 3, 7, 7), (2, 2), (3, 3, 3, 3), (1, 1), 1),  # stem-like
    ((1, 256, 4, 4), (4, 256, 3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1),  # 2,304 taps: S up to ~590k
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"x{c[0]}-w{c[1]}-g{c[5]}")
@pytest.mark.parametrize("zero_point", [0, 77, 255])
def test_integer_sums_match_an_int64_reference(case, zero_point):
    x_shape, w_shape, strides, pads, dilations, group = case
    x = (RNG.normal(size=x_shape) * 3).astype(np.float32)
    w = RNG.integers(0, 256, size=w_shape, dtype=np.uint8)
    x_scale = float(np.float32(RNG.uniform(0.01, 0.05)))
    m = w_shape[0]
    got = quantized_adder_conv2d(
        torch.from_numpy(x),
        torch.from_numpy(w),
        torch.ones(m),
        torch.zeros(m),
        strides,
        pads,
        dilations,
        group,
        x_scale,
        zero_point,
    )
    expected = int_sums(x, w, x_scale, zero_point, strides, pads, dilations, group)
    assert got.dtype == torch.float32
    np.testing.assert_array_equal(got.numpy(), expected.astype(np.float32))
    assert np.array_equal(got.numpy().astype(np.int64), expected)  # integers below 2^24: the cast is exact


def test_large_layer_sums_are_exact():
    # ResNet-50's last 3x3 (4,608 taps) with inputs and weights at opposite ends of the grid: S near 10^6.
    x = RNG.uniform(-1.5, 1, size=(1, 512, 5, 5)).astype(np.float32)
    w = RNG.integers(160, 256, size=(7, 512, 3, 3), dtype=np.uint8)
    got = quantized_adder_conv2d(
        torch.from_numpy(x), torch.from_numpy(w), torch.ones(7), torch.zeros(7), (1, 1), (1, 1, 1, 1), (1, 1), 1,
        0.025, 40,
    )  # fmt: skip
    expected = int_sums(x, w, 0.025, 40, (1, 1), (1, 1, 1, 1), (1, 1), 1)
    assert expected.max() > 500_000
    np.testing.assert_array_equal(got.numpy().astype(np.int64), expected)


def test_epilogue_and_relu():
    x = RNG.normal(size=(2, 4, 6, 6)).astype(np.float32)
    w = RNG.integers(0, 256, size=(5, 4, 3, 3), dtype=np.uint8)
    alpha = torch.from_numpy(RNG.normal(size=5).astype(np.float32)) * 1e-3
    beta = torch.from_numpy(RNG.normal(size=5).astype(np.float32))
    args = ((1, 1), (1, 1, 1, 1), (1, 1), 1, 0.03, 120)
    s = int_sums(x, w, 0.03, 120, *args[:4]).astype(np.float64)
    expected = alpha.double().numpy()[None, :, None, None] * s + beta.double().numpy()[None, :, None, None]
    y = quantized_adder_conv2d(torch.from_numpy(x), torch.from_numpy(w), alpha, beta, *args)
    np.testing.assert_allclose(y.numpy(), expected, rtol=1e-6)
    r = quantized_adder_conv2d(torch.from_numpy(x), torch.from_numpy(w), alpha, beta, *args, relu=True)
    np.testing.assert_array_equal(r.numpy(), np.maximum(y.numpy(), 0))
    assert (r == 0).any() and (r > 0).any()


def test_quantize_values_rounds_halves_to_even_and_clamps():
    x = torch.tensor([0.25, 0.75, 1.25, -0.25, -0.75, 63.75, 1e30, -1e30, float("inf"), -float("inf"), float("nan")])
    q = quantize_values(x, 0.5, 10)  # x * 2: 0.5, 1.5, 2.5, -0.5, -1.5, 127.5, ...
    assert q.tolist() == [10, 12, 12, 10, 8, 138, 255, 0, 255, 0, 10]
    np.testing.assert_array_equal(q.numpy(), int_quantize(x.numpy(), 0.5, 10))
    # x_scale whose float32 reciprocal rounds: the product uses float32(1/x_scale), not x / x_scale.
    x = torch.from_numpy(RNG.normal(size=10_000).astype(np.float32))
    np.testing.assert_array_equal(quantize_values(x, 0.0137, 128).numpy(), int_quantize(x.numpy(), 0.0137, 128))


def test_clamp_and_fold_is_exact_for_inputs_on_the_grid():
    # x_scale a power of two: grid values are exact floats, so the quantised layer on on-grid inputs must give the
    # float adder's output, with weights inside the grid on grid points and the others far beyond its edges.
    x_scale, zero_point = 1 / 32, 64  # grid [-2, 5.96875]
    layer = AdderConv2d(6, 8, 3, padding=1, stride=2, bias=True).double()
    with torch.no_grad():
        q = torch.from_numpy(RNG.integers(0, 256, size=layer.weight.shape)).double()
        w = x_scale * (q - zero_point)
        beyond = torch.from_numpy(RNG.random(size=layer.weight.shape) < 0.4)
        far = torch.from_numpy(RNG.uniform(6, 40, size=layer.weight.shape))
        w = torch.where(beyond, torch.where(torch.from_numpy(RNG.random(layer.weight.shape) < 0.5), far, -far), w)
        layer.weight.copy_(w)
    x = x_scale * (torch.from_numpy(RNG.integers(0, 256, size=(2, 6, 9, 9))).double() - zero_point)
    quantized = QuantizedAdderConv2d.from_adder(layer, x_scale, zero_point)
    assert quantized.grid() == (-2.0, 255 / 32 - 2)
    clamped = w.clamp(*quantized.grid())
    assert (clamped != w).float().mean() > 0.3
    # The identity itself, tap by tap: |x - w| = |x - clamp(w)| + |w - clamp(w)| for x on the grid.
    xs = x.flatten()[:, None]
    torch.testing.assert_close(
        (xs - w.flatten()).abs(), (xs - clamped.flatten()).abs() + (w - clamped).flatten().abs(), rtol=0, atol=1e-12
    )
    expected = reference_adder_conv2d(x, layer.weight, layer.bias, (2, 2), (1, 1, 1, 1), (1, 1), 1)
    got = quantized(x.float()).double()
    torch.testing.assert_close(got, expected, rtol=2e-7, atol=2e-7 * expected.abs().max().item())
    # Without the fold (weights only clamped) the output is off by the excess.
    excess = (w - clamped).abs().flatten(1).sum(1)
    assert excess.min() > 1
    torch.testing.assert_close(quantized.beta.double(), layer.bias.detach() - excess, rtol=1e-6, atol=1e-5)
    assert torch.equal(quantized.alpha, torch.full((8,), -x_scale))


def test_zero_padding_is_the_quantised_zero():
    # A padded tap must cost |zp - W|, i.e. what an input of exactly 0 costs.
    layer = AdderConv2d(3, 4, 3, padding=1)
    quantized = QuantizedAdderConv2d.from_adder(layer, 0.02, 100)
    x = torch.randn(1, 3, 6, 6)
    x[..., 0, :] = 0  # the first row is 0: the top outputs see zeros above and in the row itself
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1))  # explicit zeros, no padding in the layer
    unpadded = QuantizedAdderConv2d(
        quantized.weight, quantized.alpha, quantized.beta, x_scale=quantized.x_scale, x_zero_point=100
    )
    torch.testing.assert_close(quantized.integer_sums(x), unpadded.integer_sums(padded), rtol=0, atol=0)


def test_from_adder_keeps_geometry_and_float32_scale():
    layer = AdderConv2d(4, 6, (3, 2), stride=(2, 1), padding=(1, 0), dilation=(1, 2), groups=2)
    quantized = QuantizedAdderConv2d.from_adder(layer, 0.1, 3)
    assert quantized.weight.dtype == torch.uint8 and quantized.weight.shape == layer.weight.shape
    assert quantized.pads == layer.pads and quantized.stride == layer.stride and quantized.groups == 2
    assert quantized.x_scale == float(np.float32(0.1))
    x = torch.randn(2, 4, 9, 9)
    assert quantized(x).shape == layer(x).shape
    assert "x_zero_point=3" in repr(quantized)


@pytest.mark.parametrize(
    ("x_scale", "zero_point", "match"),
    [
        (0.0, 0, "x_scale must be positive"),
        (-1.0, 0, "x_scale must be positive"),
        (float("nan"), 0, "x_scale must be positive"),
        (float("inf"), 0, "x_scale must be positive"),
        (1e-45, 0, "1/x_scale finite"),
        (0.1, 256, "x_zero_point must be an integer in 0..255"),
        (0.1, -1, "x_zero_point must be an integer in 0..255"),
    ],
)
def test_bad_grids_are_refused(x_scale, zero_point, match):
    with pytest.raises(ValueError, match=match):
        QuantizedAdderConv2d.from_adder(AdderConv2d(2, 2, 1), x_scale, zero_point)


def test_bad_weights_are_refused():
    with pytest.raises(TypeError, match="weight must be uint8"):
        quantized_adder_conv2d(torch.zeros(1, 2, 3, 3), torch.zeros(2, 2, 1, 1), torch.ones(2), torch.zeros(2))
    with pytest.raises(ValueError, match="4-D uint8"):
        QuantizedAdderConv2d(torch.zeros(2, 2, 1), torch.ones(2), torch.zeros(2), x_scale=1.0, x_zero_point=0)
    with pytest.raises(ValueError, match="alpha must have shape"):
        w = torch.zeros(2, 2, 1, 1, dtype=torch.uint8)
        QuantizedAdderConv2d(w, torch.ones(3), torch.zeros(2), x_scale=1.0, x_zero_point=0)

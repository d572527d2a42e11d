"""AdderConv2d forward and the paper's gradients against the official-style reference, in float64."""

import pytest
import torch
from hypothesis import assume, given, settings

from adderconvert.deploy.ops import adder_conv_reference
from adderconvert.nn.functional import adder_conv2d
from adderconvert.nn.reference import reference_adder_conv2d
from tests._special_values import GEOMETRIES, assert_same_specials, special_inputs
from tests.nn._configs import conv_configs, fits, make_inputs


def _assert_matches(cfg, device="cpu"):
    (x, w, *b), pads = make_inputs(cfg, device)
    bias = b[0] if b else None
    y = adder_conv2d(x, w, bias, cfg["stride"], cfg["padding"], cfg["dilation"], cfg["groups"])
    y_ref = reference_adder_conv2d(x, w, bias, cfg["stride"], pads, cfg["dilation"], cfg["groups"])
    assert y.shape == y_ref.shape
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
    grad = torch.randn_like(y)
    inputs = [x, w] + b
    got = torch.autograd.grad(y, inputs, grad)
    want = torch.autograd.grad(y_ref, inputs, grad)
    for g, r in zip(got, want):
        torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-10)


@settings(max_examples=150, deadline=None)
@given(conv_configs())
def test_matches_reference_cpu(cfg):
    assume(fits(cfg))
    _assert_matches(cfg)


@settings(max_examples=40, deadline=None)
@given(conv_configs(small_maps=True))
def test_small_maps_in_large_batches_match_reference_cpu(cfg):
    assume(fits(cfg))
    _assert_matches(cfg)


def test_float32_matches_float64():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(4, 16, 14, 14, generator=gen)
    w = torch.randn(32, 16, 3, 3, generator=gen) * 6
    y32 = adder_conv2d(x, w, padding=1)
    y64 = adder_conv2d(x.double(), w.double(), padding=1)
    assert (y32.double() - y64).abs().max() <= 1e-5 * y64.abs().max()


@pytest.mark.parametrize("isa", ["avx2", "generic"])
def test_narrower_instruction_sets_match(isa, tmp_path):
    """The kernel picks its ISA once per process, so each cap runs in a child process."""
    import subprocess
    import sys

    code = (
        "import torch\n"
        "from adderconvert.nn import _kernels\n"
        "from adderconvert.nn.functional import adder_conv2d\n"
        "from adderconvert.nn.reference import reference_adder_conv2d\n"
        f"assert _kernels.cpu_isa() == {isa!r}, _kernels.cpu_isa()\n"
        "x = torch.randn(2, 6, 9, 9, dtype=torch.float64, requires_grad=True)\n"
        "w = torch.randn(10, 3, 3, 3, dtype=torch.float64, requires_grad=True)\n"
        "y = adder_conv2d(x, w, padding=1, groups=2)\n"
        "r = reference_adder_conv2d(x, w, None, (1, 1), (1, 1, 1, 1), (1, 1), 2)\n"
        "torch.testing.assert_close(y, r)\n"
        "g = torch.randn_like(y)\n"
        "torch.testing.assert_close(torch.autograd.grad(y, x, g)[0], torch.autograd.grad(r, x, g)[0])\n"
    )
    env = {**__import__("os").environ, "ADDERCONVERT_CPU_ISA": isa}
    subprocess.run(
        [sys.executable, "-c", code], check=True, env=env, cwd=str(__import__("pathlib").Path(__file__).parents[2])
    )


def test_hand_checked_values():
    # One 1x1 output: -(|1-0| + |2-3| + |0-(-1)| + |(-1)-2|) = -(1 + 1 + 1 + 3) = -6
    x = torch.tensor([[[[1.0, 2.0], [0.0, -1.0]]]])
    w = torch.tensor([[[[0.0, 3.0], [-1.0, 2.0]]]])
    assert adder_conv2d(x, w).item() == -6.0
    # Zero padding: a padded tap contributes -|w|. 1x1 input, 3x3 kernel of ones, padding 1, x = 1:
    # centre tap |1 - 1| = 0, eight padded taps |0 - 1| = 1 each.
    y = adder_conv2d(torch.ones(1, 1, 1, 1), torch.ones(1, 1, 3, 3), padding=1)
    assert y.item() == -8.0


def test_unbatched_input():
    x = torch.randn(3, 8, 8, dtype=torch.float64)
    w = torch.randn(5, 3, 3, 3, dtype=torch.float64)
    torch.testing.assert_close(adder_conv2d(x, w), adder_conv2d(x[None], w)[0])


def test_torch_compile_and_export_see_one_op():
    from adderconvert.nn import AdderConv2d

    layer = AdderConv2d(3, 4, 3, padding=1)
    x = torch.randn(2, 3, 8, 8)
    exported = torch.export.export(layer, (x,))
    targets = {str(n.target) for n in exported.graph.nodes if n.op == "call_function"}
    assert "adderconvert.adder_conv2d.default" in targets
    compiled = torch.compile(layer, backend="eager", fullgraph=True)
    torch.testing.assert_close(compiled(x), layer(x))


def test_opcheck():
    x = torch.randn(2, 4, 7, 7, dtype=torch.float64, requires_grad=True)
    w = torch.randn(6, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    torch.library.opcheck(
        torch.ops.adderconvert.adder_conv2d.default,
        (x, w, None, [1, 1], [1, 1, 1, 1], [1, 1], 2),
        test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_dynamic"),
    )


@pytest.mark.parametrize(("x_shape", "w_shape", "pads"), GEOMETRIES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_infinities_and_nan_as_the_reference(x_shape, w_shape, pads, dtype):
    """-inf inputs give -inf (not inf - inf = NaN), NaN stays NaN, in the CPU kernel."""
    x, w = special_inputs(x_shape, w_shape)
    bias = torch.linspace(-1, 1, w_shape[0], dtype=dtype)
    y = adder_conv2d(torch.from_numpy(x).to(dtype), torch.from_numpy(w).to(dtype), bias, padding=pads[0])
    expected = adder_conv_reference(x, w, pads=pads) + bias.double().numpy()[None, :, None, None]
    assert_same_specials(y.numpy(), expected, rtol=1e-5 if dtype == torch.float32 else 1e-12)


@pytest.mark.parametrize(("input_grad", "weight_grad"), [(True, False), (False, True)])
def test_backward_op_computes_only_the_requested_gradients(input_grad, weight_grad):
    x, w = torch.randn(1, 2, 5, 5, dtype=torch.float64), torch.randn(3, 2, 3, 3, dtype=torch.float64)
    grad = torch.randn(1, 3, 3, 3, dtype=torch.float64)
    args = ([1, 1], [0, 0, 0, 0], [1, 1], 1)
    gx, gw = torch.ops.adderconvert.adder_conv2d_backward(grad, x, w, *args, input_grad, weight_grad)
    assert (gx.shape == x.shape) == input_grad and (gx.numel() == 0) == (not input_grad)
    assert (gw.shape == w.shape) == weight_grad and (gw.numel() == 0) == (not weight_grad)
    xr, wr = x.clone().requires_grad_(), w.clone().requires_grad_()
    ref = torch.autograd.grad(reference_adder_conv2d(xr, wr, None, *args), [xr, wr], grad)
    torch.testing.assert_close(gx if input_grad else gw, ref[0] if input_grad else ref[1])

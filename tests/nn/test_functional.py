"""AdderConv2d forward and the paper's gradients against the official-style reference, in float64."""

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from adderconvert.nn import functional as AF
from adderconvert.nn.functional import adder_conv2d, resolve_padding
from tests.reference import reference_adder_conv2d


@st.composite
def conv_configs(draw, small_maps: bool = False):
    """Random geometries; ``small_maps``: 1-4 pixel maps in batches of 40-100, where the CPU kernel tiles
    by output position and skips padded taps."""
    groups = draw(st.sampled_from([1, 1, 2, 3]))
    depthwise = draw(st.booleans()) and groups == 1
    cg = draw(st.integers(1, 3))
    channels = cg * groups
    if depthwise:
        groups = channels = draw(st.integers(2, 6))
        out = channels * draw(st.integers(1, 2))
    else:
        out = groups * draw(st.integers(1, 6))
    kernel = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    padding = draw(st.sampled_from([0, 1, 2, (1, 0), (0, 2), "valid"] + (["same"] if stride == (1, 1) else [])))
    sizes = st.integers(1, 4) if small_maps else st.integers(5, 11)
    size = (draw(sizes), draw(sizes))
    return dict(
        batch=draw(st.integers(40, 100) if small_maps else st.integers(1, 3)),
        channels=channels,
        out=out,
        kernel=kernel,
        stride=stride,
        dilation=dilation,
        padding=padding,
        groups=groups,
        size=size,
        bias=draw(st.booleans()),
    )


def _run(cfg, device="cpu", impl=adder_conv2d):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(cfg["batch"], cfg["channels"], *cfg["size"], dtype=torch.float64, generator=gen)
    w = torch.randn(cfg["out"], cfg["channels"] // cfg["groups"], *cfg["kernel"], dtype=torch.float64, generator=gen)
    b = torch.randn(cfg["out"], dtype=torch.float64, generator=gen) if cfg["bias"] else None
    pads = resolve_padding(cfg["padding"], cfg["kernel"], cfg["stride"], cfg["dilation"])
    tensors = [t.to(device).requires_grad_() for t in (x, w) + ((b,) if b is not None else ())]
    return tensors, pads


def _fits(cfg) -> bool:
    pads = resolve_padding(cfg["padding"], cfg["kernel"], cfg["stride"], cfg["dilation"])
    return all(
        d * (k - 1) + 1 <= size + pads[a] + pads[a + 2]
        for a, (d, k, size) in enumerate(zip(cfg["dilation"], cfg["kernel"], cfg["size"]))
    )


def _assert_matches(cfg, device="cpu"):
    (x, w, *b), pads = _run(cfg, device)
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
    assume(_fits(cfg))
    _assert_matches(cfg)


@settings(max_examples=40, deadline=None)
@given(conv_configs(small_maps=True))
def test_small_maps_in_large_batches_match_reference_cpu(cfg):
    assume(_fits(cfg))
    _assert_matches(cfg)


@settings(max_examples=40, deadline=None)
@given(conv_configs())
def test_device_agnostic_path_matches_reference(cfg):
    """The path used for non-CPU tensors, run here on CPU tensors through its helpers."""
    assume(_fits(cfg))
    (x, w, *b), pads = _run(cfg)
    args = (cfg["stride"], pads, cfg["dilation"], cfg["groups"])
    y_ref = reference_adder_conv2d(x, w, None, *args)
    y = AF._forward_chunked(x.detach(), w.detach(), *args).view_as(y_ref)
    torch.testing.assert_close(y, y_ref.detach(), rtol=1e-10, atol=1e-10)
    grad = torch.randn_like(y_ref)
    (gx_ref,) = torch.autograd.grad(y_ref, [x], grad)
    gx = AF._backward_input_chunked(grad, x.detach(), w.detach(), *args)
    torch.testing.assert_close(gx, gx_ref, rtol=1e-10, atol=1e-10)


def test_device_agnostic_path_chunks_output_channels(monkeypatch):
    monkeypatch.setattr(AF, "_CHUNK_ELEMENTS", 1)  # one output channel per chunk
    cfg = dict(
        batch=2,
        channels=4,
        out=6,
        kernel=(3, 3),
        stride=(1, 1),
        dilation=(1, 1),
        padding=1,
        groups=2,
        size=(6, 7),
        bias=False,
    )
    (x, w), pads = _run(cfg)
    args = ((1, 1), pads, (1, 1), 2)
    y_ref = reference_adder_conv2d(x, w, None, *args)
    torch.testing.assert_close(AF._forward_chunked(x, w, *args).view_as(y_ref), y_ref)


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
        "from tests.reference import reference_adder_conv2d\n"
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

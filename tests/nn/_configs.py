"""Random adder convolution geometries (hypothesis) and their float64 inputs, shared by the op's tests."""

import torch
from hypothesis import strategies as st

from adderconvert.nn.geometry import output_size, resolve_padding


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


def make_inputs(cfg, device="cpu"):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(cfg["batch"], cfg["channels"], *cfg["size"], dtype=torch.float64, generator=gen)
    w = torch.randn(cfg["out"], cfg["channels"] // cfg["groups"], *cfg["kernel"], dtype=torch.float64, generator=gen)
    b = torch.randn(cfg["out"], dtype=torch.float64, generator=gen) if cfg["bias"] else None
    pads = resolve_padding(cfg["padding"], cfg["kernel"], cfg["stride"], cfg["dilation"])
    tensors = [t.to(device).requires_grad_() for t in (x, w) + ((b,) if b is not None else ())]
    return tensors, pads


def fits(cfg) -> bool:
    """Whether the (dilated) kernel fits in the padded input, i.e. there is at least one output."""
    pads = resolve_padding(cfg["padding"], cfg["kernel"], cfg["stride"], cfg["dilation"])
    return min(output_size(cfg["size"], cfg["kernel"], (1, 1), pads, cfg["dilation"])) >= 1

"""The device-agnostic implementation (the op's default), run on CPU tensors, against the float64 references."""

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings

from adderconvert.deploy.ops import adder_conv_reference
from adderconvert.nn.backends import chunked
from adderconvert.nn.reference import reference_adder_conv2d
from tests._special_values import GEOMETRIES, assert_same_specials, special_inputs
from tests.nn._configs import conv_configs, fits, make_inputs


@settings(max_examples=40, deadline=None)
@given(conv_configs())
def test_matches_reference(cfg):
    assume(fits(cfg))
    (x, w, *b), pads = make_inputs(cfg)
    bias = b[0] if b else None
    args = (cfg["stride"], pads, cfg["dilation"], cfg["groups"])
    y_ref = reference_adder_conv2d(x, w, bias, *args)
    y = chunked.forward(x.detach(), w.detach(), None if bias is None else bias.detach(), *args)
    torch.testing.assert_close(y, y_ref.detach(), rtol=1e-10, atol=1e-10)
    grad = torch.randn_like(y_ref)
    gx_ref, gw_ref = torch.autograd.grad(y_ref, [x, w], grad)
    gx = chunked.backward_input(grad, x.detach(), w.detach(), *args)
    gw = chunked.grad_weight(grad, x.detach(), w.detach(), *args)
    torch.testing.assert_close(gx, gx_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(gw, gw_ref, rtol=1e-10, atol=1e-10)


def test_chunks_output_channels(monkeypatch):
    monkeypatch.setattr(chunked, "CHUNK_ELEMENTS", 1)  # one output channel per chunk
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
    (x, w), pads = make_inputs(cfg)
    args = ((1, 1), pads, (1, 1), 2)
    y_ref = reference_adder_conv2d(x, w, None, *args)
    torch.testing.assert_close(chunked.forward(x, w, None, *args), y_ref)
    grad = torch.randn_like(y_ref)
    gx_ref = torch.autograd.grad(y_ref, x, grad)[0]
    torch.testing.assert_close(chunked.backward_input(grad, x.detach(), w.detach(), *args), gx_ref)


@pytest.mark.parametrize(("x_shape", "w_shape", "pads"), GEOMETRIES)
def test_infinities_and_nan_as_the_reference(x_shape, w_shape, pads):
    x, w = special_inputs(x_shape, w_shape)
    y = chunked.forward(torch.from_numpy(x), torch.from_numpy(w), None, (1, 1), pads, (1, 1), 1)
    assert_same_specials(y.numpy(), adder_conv_reference(x, w, pads=pads), rtol=1e-5)
    assert np.isneginf(y.numpy()).any()

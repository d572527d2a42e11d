import math

import pytest
import torch
from torch import nn

from adderconvert.nn import AdderConv2d, adder_weights, scale_adder_gradients_


def test_scaling_matches_formula():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), AdderConv2d(4, 6, 3), AdderConv2d(6, 2, 1))
    model(torch.randn(2, 3, 9, 9)).sum().backward()
    before = {id(p): p.grad.clone() for p in model.parameters()}
    scale_adder_gradients_(model, eta=0.3)
    for p in adder_weights(model):
        g = before[id(p)]
        expected = 0.3 * math.sqrt(g.numel()) * g / g.norm()
        torch.testing.assert_close(p.grad, expected)
        assert p.grad.norm().item() == pytest.approx(0.3 * math.sqrt(g.numel()), rel=1e-5)
    # Multiplicative layers are untouched.
    assert torch.equal(model[0].weight.grad, before[id(model[0].weight)])


def test_zero_and_missing_gradients_are_left_alone():
    model = nn.Sequential(AdderConv2d(1, 1, 1), AdderConv2d(1, 1, 1))
    model[0].weight.grad = torch.zeros_like(model[0].weight)
    scale_adder_gradients_(model)
    assert torch.equal(model[0].weight.grad, torch.zeros_like(model[0].weight))
    assert model[1].weight.grad is None


def test_eta_must_be_positive():
    with pytest.raises(ValueError, match="eta must be positive"):
        scale_adder_gradients_(nn.Sequential(), eta=0)


def test_unaffected_by_gradient_accumulation_split():
    """Scaling after accumulation equals scaling the full-batch gradient (the official in-backward scaling doesn't)."""
    torch.manual_seed(0)
    layer = AdderConv2d(2, 3, 3)
    x = torch.randn(8, 2, 7, 7)
    layer(x).square().mean().backward()
    full = layer.weight.grad.clone()
    layer.weight.grad = None
    for part in x.chunk(2):
        (layer(part).square().mean() / 2).backward()
    scale_adder_gradients_(layer)
    torch.testing.assert_close(layer.weight.grad, 0.2 * math.sqrt(full.numel()) * full / full.norm())

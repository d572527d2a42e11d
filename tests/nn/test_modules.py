"""AdderConv2d as a drop-in for nn.Conv2d: constructor, from_conv, repr and bad input."""

import pytest
import torch
from torch import nn

from adderconvert.nn import AdderConv2d
from adderconvert.nn.functional import adder_conv2d
from adderconvert.nn.modules import combining_conv, interleaved_bases
from adderconvert.nn.reference import reference_adder_conv2d


def test_constructor_matches_conv2d_parameters():
    conv = nn.Conv2d(6, 9, (3, 2), stride=2, padding=(1, 0), dilation=(2, 1), groups=3, bias=True)
    layer = AdderConv2d(6, 9, (3, 2), stride=2, padding=(1, 0), dilation=(2, 1), groups=3, bias=True)
    assert layer.weight.shape == conv.weight.shape
    assert layer.bias.shape == conv.bias.shape
    x = torch.randn(2, 6, 11, 10)
    assert layer(x).shape == conv(x).shape


@pytest.mark.parametrize("padding", ["same", "valid", 1, (2, 1)])
def test_padding_forms_give_conv2d_shapes(padding):
    conv = nn.Conv2d(3, 4, (4, 3), padding=padding, dilation=(1, 2))
    layer = AdderConv2d.from_conv(conv)
    x = torch.randn(1, 3, 9, 10)
    assert layer(x).shape == conv(x).shape


def test_from_conv_copies_weights_and_bias():
    conv = nn.Conv2d(4, 8, 3, stride=2, padding=1, bias=True).double()
    layer = AdderConv2d.from_conv(conv)
    assert torch.equal(layer.weight, conv.weight) and torch.equal(layer.bias, conv.bias)
    assert layer.weight.dtype == torch.float64
    x = torch.randn(2, 4, 9, 9, dtype=torch.float64)
    ref = reference_adder_conv2d(x, conv.weight, conv.bias, (2, 2), (1, 1, 1, 1), (1, 1), 1)
    torch.testing.assert_close(layer(x), ref)
    fresh = AdderConv2d.from_conv(conv, copy_weights=False)
    assert not torch.equal(fresh.weight, conv.weight)


def test_extra_repr():
    layer = AdderConv2d(16, 32, 3, stride=2, padding=1, groups=2)
    assert repr(layer) == "AdderConv2d(16, 32, kernel_size=(3, 3), stride=(2, 2), padding=(1, 1), groups=2, bias=False)"


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="in_channels must be divisible by groups"):
        AdderConv2d(5, 4, 3, groups=2)
    with pytest.raises(ValueError, match="out_channels must be divisible by groups"):
        AdderConv2d(4, 5, 3, groups=2)
    with pytest.raises(NotImplementedError, match="padding_mode='zeros'"):
        AdderConv2d(4, 4, 3, padding_mode="reflect")
    with pytest.raises(ValueError, match="not supported for strided"):
        AdderConv2d(4, 4, 3, stride=2, padding="same")
    with pytest.raises(ValueError, match="Invalid padding string"):
        AdderConv2d(4, 4, 3, padding="full")


def test_bad_inputs_give_conv2d_like_errors():
    layer = AdderConv2d(3, 4, 3)
    with pytest.raises(RuntimeError, match="to have 3 channels, but got 5 channels instead"):
        layer(torch.randn(1, 5, 8, 8))
    with pytest.raises(RuntimeError, match="Kernel size can't be greater than actual input size"):
        layer(torch.randn(1, 3, 2, 8))
    with pytest.raises(RuntimeError, match="Expected 3D \\(unbatched\\) or 4D"):
        layer(torch.randn(2, 1, 3, 8, 8))
    with pytest.raises(TypeError, match="float32 and float64"):
        layer(torch.randn(1, 3, 8, 8).half())
    with pytest.raises(TypeError, match="same dtype"):
        layer(torch.randn(1, 3, 8, 8, dtype=torch.float64))
    with pytest.raises(RuntimeError, match="must be divisible by groups"):
        adder_conv2d(torch.randn(1, 4, 8, 8), torch.randn(3, 2, 3, 3), groups=2)


def test_trains_with_sgd():
    """A tiny regression: the paper's gradients decrease the loss."""
    torch.manual_seed(0)
    model = nn.Sequential(
        AdderConv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 1)
    )
    x, target = torch.randn(32, 2, 6, 6), torch.randn(32, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    losses = []
    for _ in range(30):
        loss = nn.functional.mse_loss(model(x), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.75 * losses[0]


def test_to_conv_is_the_inverse_of_from_conv():
    conv = torch.nn.Conv2d(6, 4, (3, 1), stride=(2, 1), padding=(1, 0), dilation=(1, 2), groups=2, bias=True)
    back = AdderConv2d.from_conv(conv).to_conv()
    for attr in ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups"):
        assert getattr(back, attr) == getattr(conv, attr), attr
    assert torch.equal(back.weight, conv.weight) and torch.equal(back.bias, conv.bias)
    x = torch.randn(2, 6, 9, 9)
    torch.testing.assert_close(back(x), conv(x))
    fresh = AdderConv2d.from_conv(conv).to_conv(copy_weights=False)
    assert fresh.weight.shape == conv.weight.shape and not torch.equal(fresh.weight, conv.weight)


@pytest.mark.parametrize("groups", [1, 2])
def test_several_bases_add_up_their_single_base_layers(groups):
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(4, 6, 3, padding=1, groups=groups, bias=True)
    layer = AdderConv2d.from_conv(conv, bases=2)
    assert layer.weight.shape == (12, 4 // groups, 3, 3) and "bases=2" in repr(layer)
    torch.testing.assert_close(layer.base_weight(1), conv.weight)  # every base a copy of the conv's weights
    second = torch.randn_like(conv.weight)
    layer.set_base_weight(1, second)
    torch.testing.assert_close(layer.base_weight(0), conv.weight)
    with torch.no_grad():
        layer.base_scale.copy_(torch.randn(1, 6))
        layer.base_shift.copy_(torch.randn(6))
    x = torch.randn(2, 4, 5, 5)
    first_alone = AdderConv2d.from_conv(conv)
    second_alone = AdderConv2d.from_conv(conv)
    with torch.no_grad():
        second_alone.weight.copy_(second)
    second_alone.bias = None
    expected = first_alone(x) + layer.base_scale[0].view(1, -1, 1, 1) * second_alone(x)
    torch.testing.assert_close(layer(x), expected + layer.base_shift.view(1, -1, 1, 1))
    torch.testing.assert_close(layer.to_conv().weight, conv.weight)  # the CNN it stands for


def test_interleaved_bases_put_each_channels_bases_side_by_side_within_its_group():
    # Stacked layout, groups 2, bases 2, 2 channels per group: g0 b0 (c0, c1), g0 b1 (c0, c1), g1 b0 (c2, c3), ...
    assert interleaved_bases(2, 2, 4).tolist() == [0, 2, 1, 3, 4, 6, 5, 7]
    assert interleaved_bases(1, 3, 2).tolist() == [0, 2, 4, 1, 3, 5]
    assert interleaved_bases(1, 1, 3).tolist() == [0, 1, 2]


@pytest.mark.parametrize("groups, bases", [(1, 2), (2, 3), (6, 4)])
def test_the_combining_conv_on_interleaved_filters_is_the_layer(groups, bases):
    torch.manual_seed(0)
    layer = AdderConv2d(6, 6, 3, padding=1, groups=groups, bias=True, bases=bases)
    with torch.no_grad():
        layer.base_scale.normal_()
        layer.base_shift.normal_()
    single = AdderConv2d(6, bases * 6, 3, padding=1, groups=groups)
    with torch.no_grad():
        single.weight.copy_(layer.weight[interleaved_bases(groups, bases, 6)])
    combine = combining_conv(layer.base_scale.detach(), (layer.base_shift + layer.bias).detach())
    x = torch.randn(2, 6, 5, 5)
    with torch.no_grad():
        torch.testing.assert_close(combine(single(x)), layer(x))


def test_extra_bases_add_nothing_until_fitted():
    conv = torch.nn.Conv2d(3, 4, 1)
    x = torch.randn(2, 3, 4, 4)
    torch.testing.assert_close(AdderConv2d.from_conv(conv, bases=3)(x), AdderConv2d.from_conv(conv)(x))
    with pytest.raises(ValueError, match="bases"):
        AdderConv2d(3, 4, 1, bases=0)

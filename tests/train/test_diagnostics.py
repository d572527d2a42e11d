"""Adder weight diagnostics, checked against hand-computed ranges, saturations and stds."""

import statistics

import pytest
import torch
from torch import nn

from adderconvert.nn import AdderConv2d
from adderconvert.train.diagnostics import adder_weight_stats, saturation_summary


def _layer(weights, **kwargs) -> AdderConv2d:
    layer = AdderConv2d(**kwargs)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor(weights, dtype=torch.float32).view_as(layer.weight))
    return layer


def test_one_by_one_layer_ranges_are_per_input_channel():
    # Channel 0 takes values in [0, 1], channel 1 in [-1, 2].
    x = torch.tensor([[[[0.0, 1.0]], [[-1.0, 2.0]]]])
    # Rows: output channels; columns: input channels. 0.5 and -1.0 are inside their channel's range;
    # 3.0 is above channel 1's, -0.2 below channel 0's, 2.0 at channel 1's maximum (linear too).
    weights = [[0.5, 3.0], [-0.2, 2.0], [1.0, -1.0]]
    model = nn.Sequential(_layer(weights, in_channels=2, out_channels=3, kernel_size=1))
    (row,) = adder_weight_stats(model, [x])
    assert row["name"] == "0"
    assert row["saturated"] == 5 and row["weights"] == 6  # only 0.5 lies strictly inside its range
    assert row["saturation"] == pytest.approx(5 / 6)
    flat = [w for ws in weights for w in ws]
    assert row["weight_std"] == pytest.approx(statistics.pstdev(flat), rel=1e-6)
    assert (row["input_min"], row["input_max"]) == (-1.0, 2.0)


def test_padded_taps_read_zeros_and_the_centre_tap_does_not():
    x = torch.full((1, 1, 3, 3), 1.0)
    x[0, 0, 1, 1] = 2.0
    # 3x3 kernel, padding 1 on a 3x3 input: every tap but the centre reads padding at some position.
    model = nn.Sequential(_layer([0.5] * 9, in_channels=1, out_channels=1, kernel_size=3, padding=1))
    (row,) = adder_weight_stats(model, [x])
    assert row["saturated"] == 1  # the centre tap reads only [1, 2]; 0.5 is below it
    assert (row["input_min"], row["input_max"]) == (0.0, 2.0)


def test_a_stride_skipping_a_value_leaves_it_out_of_the_range():
    x = torch.zeros(1, 1, 3, 3)
    x[0, 0, 1, 1] = 100.0  # a 1x1 kernel with stride 2 reads only the corners
    x[0, 0, 2, 2] = 1.0
    model = nn.Sequential(_layer([5.0], in_channels=1, out_channels=1, kernel_size=1, stride=2))
    (row,) = adder_weight_stats(model, [x])
    assert row["input_max"] == 1.0 and row["saturation"] == 1.0


def test_grouped_layer_outputs_read_their_own_group():
    x = torch.tensor([[[[0.0, 1.0]], [[5.0, 6.0]]]])  # channel 0 in [0, 1], channel 1 in [5, 6]
    # Outputs 0, 1 read channel 0; outputs 2, 3 read channel 1.
    model = nn.Sequential(_layer([0.5, 5.5, 5.5, 0.5], in_channels=2, out_channels=4, kernel_size=1, groups=2))
    (row,) = adder_weight_stats(model, [x])
    assert row["saturated"] == 2 and row["saturation"] == 0.5


def test_ranges_accumulate_over_batches_and_the_model_is_left_as_it_was():
    model = nn.Sequential(_layer([-2.0], in_channels=1, out_channels=1, kernel_size=1)).train()
    first = (torch.tensor([[[[0.0, 1.0]]]]), torch.tensor([0]))  # (inputs, labels) pairs are accepted
    second = torch.tensor([[[[-3.0, 0.0]]]])
    assert adder_weight_stats(model, [first])[0]["saturation"] == 1.0
    both = adder_weight_stats(model, [first, second])[0]
    assert both["saturation"] == 0.0 and (both["input_min"], both["input_max"]) == (-3.0, 1.0)
    assert model.training
    assert not model[0]._forward_pre_hooks


def test_layers_follow_execution_order_with_the_ranges_they_see():
    first = _layer([1.0], in_channels=1, out_channels=1, kernel_size=1)
    second = _layer([10.0], in_channels=1, out_channels=1, kernel_size=1)
    model = nn.Sequential(nn.Conv2d(1, 1, 1), first, second)
    with torch.no_grad():
        model[0].weight.fill_(2.0)
        model[0].bias.fill_(0.0)
    x = torch.tensor([[[[0.0, 1.5]]]])  # conv: {0, 3}; first: -|0 - 1| = -1, -|3 - 1| = -2
    rows = adder_weight_stats(model, [x])
    assert [r["name"] for r in rows] == ["1", "2"]
    assert (rows[0]["input_min"], rows[0]["input_max"]) == (0.0, 3.0) and rows[0]["saturation"] == 0.0
    assert (rows[1]["input_min"], rows[1]["input_max"]) == (-2.0, -1.0) and rows[1]["saturation"] == 1.0


def test_summary_weights_layers_and_taps_as_documented():
    stats = [
        {"name": "a", "weight_std": 1.0, "saturation": 1.0, "saturated": 1, "weights": 1},
        {"name": "b", "weight_std": 3.0, "saturation": 0.0, "saturated": 0, "weights": 3},
    ]
    summary = saturation_summary(stats)
    assert summary == {"layers": 2, "mean_saturation": 0.5, "saturated_fraction": 0.25, "max_weight_std": 3.0}
    assert saturation_summary([])["layers"] == 0


def test_no_batches_is_a_clear_error():
    model = nn.Sequential(_layer([1.0], in_channels=1, out_channels=1, kernel_size=1))
    with pytest.raises(ValueError, match="at least one batch"):
        adder_weight_stats(model, [])

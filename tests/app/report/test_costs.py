"""The cost report's accounting: operation counts against hand-computed values, the energy table."""

import pytest
import torch
from torch import nn

from adderconvert.app.report.costs import ENERGY_PJ, cnn_twin, count_operations, deployed_int8_energy_pj, energy_pj
from adderconvert.nn import AdderConv2d


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)  # 3x8x8 -> 4x8x8, bias
        self.bn1 = nn.BatchNorm2d(4)  # folds into conv
        self.adder = AdderConv2d(4, 6, 3, stride=2, padding=1, groups=2)  # -> 6x4x4
        self.bn2 = nn.BatchNorm2d(6)  # after an adder layer: a real scale and shift
        self.bn3 = nn.BatchNorm2d(6)  # right after bn2: merges into it
        self.fc = nn.Linear(6, 5)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv(x)))
        x = self.bn3(self.bn2(self.adder(x)))
        return self.fc(x.mean((2, 3)))


def test_counts_match_hand_computed_values():
    counts = count_operations(Tiny(), (3, 8, 8))
    rows = {layer.name: layer for layer in counts.layers}
    assert [layer.name for layer in counts.layers] == ["conv", "adder", "fc"]
    conv, adder, fc = rows["conv"], rows["adder"], rows["fc"]
    # conv: 4*8*8 outputs x 3*3*3 taps; bias adds one addition per output.
    assert (conv.kind, conv.output_shape, conv.weight_shape) == ("conv", [4, 8, 8], [4, 3, 3, 3])
    assert (conv.macs, conv.multiplications, conv.additions) == (6912, 6912, 6912 + 256)
    # adder: 6*4*4 outputs x (4/2)*3*3 taps; |x - w| and its accumulation are two additions.
    assert (adder.kind, adder.output_shape) == ("adder", [6, 4, 4])
    assert (adder.macs, adder.multiplications, adder.additions) == (1728, 0, 3456)
    assert (fc.kind, fc.macs, fc.multiplications, fc.additions) == ("linear", 30, 30, 35)
    assert (counts.multiplications, counts.additions) == (6942, 10659)
    assert (counts.bn_multiplications, counts.bn_additions) == (96, 96)  # bn2 only
    twin = count_operations(cnn_twin(Tiny()), (3, 8, 8))
    assert [layer.kind for layer in twin.layers] == ["conv", "conv", "linear"]
    assert (twin.multiplications, twin.additions, twin.bn_multiplications) == (8670, 8931, 0)


def test_energy_table():
    assert ENERGY_PJ["fp32"] == {"multiplication": 3.7, "addition": 0.9}
    assert ENERGY_PJ["int8"] == {"multiplication": 0.2, "addition": 0.03}
    assert ENERGY_PJ["int32"] == {"multiplication": 3.1, "addition": 0.1}
    assert energy_pj(10, 100) == pytest.approx(10 * 3.7 + 100 * 0.9)
    assert energy_pj(10, 100, "int8") == pytest.approx(10 * 0.2 + 100 * 0.03)


def test_an_adder_layer_with_two_bases_counts_both_and_their_combination():
    model = Tiny()
    model.adder = AdderConv2d(4, 6, 3, stride=2, padding=1, groups=2, bases=2)
    adder = {layer.name: layer for layer in count_operations(model, (3, 8, 8)).layers}["adder"]
    # Twice the 1728 taps, two additions each; per output (96) one scale and two additions (scaled base, shift).
    assert (adder.macs, adder.multiplications, adder.additions) == (3456, 96, 2 * 3456 + 2 * 96)
    assert adder.combine_additions == 2 * 96
    twin = {layer.name: layer for layer in count_operations(cnn_twin(model), (3, 8, 8)).layers}["adder"]
    assert (twin.kind, twin.macs) == ("conv", 1728)  # the CNN it stands for has one filter per output


def test_three_bases_add_two_scaled_bases_and_one_shift_and_combine_in_fp32_under_int8():
    model = nn.Sequential(AdderConv2d(4, 2, 1, bases=3), nn.Flatten())
    (adder,) = count_operations(model, (4, 2, 2)).layers
    outputs, macs = 2 * 2 * 2, 3 * 2 * 2 * 2 * 4
    # Per output: two extra bases, each a scale and a sum, and one shift.
    assert (adder.macs, adder.multiplications, adder.combine_additions) == (macs, 2 * outputs, 3 * outputs)
    assert adder.additions == 2 * macs + 3 * outputs
    fp32, int8, int32 = ENERGY_PJ["fp32"], ENERGY_PJ["int8"], ENERGY_PJ["int32"]
    counts = count_operations(model, (4, 2, 2))
    # |x - w| on 8 bits with a 32-bit sum; the bases' combination after dequantisation in FP32.
    expected = macs * (int8["addition"] + int32["addition"]) + 2 * outputs * fp32["multiplication"]
    expected += 3 * outputs * fp32["addition"]
    assert deployed_int8_energy_pj(counts, ("adder",)) == pytest.approx(expected)

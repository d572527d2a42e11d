"""Exported models carry their valid input sizes: dynamic H and W only where the model takes other sizes
(its smallest recorded as ``min_image_size``); a model of one size (a fixed-window average pool, a Linear on
the flattened map) is refused, with the reason."""

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from adderconvert.architectures.official import load
from adderconvert.deploy.export import dynamic_hw_sizes, export_onnx, read_metadata
from adderconvert.deploy.runtime import make_session
from adderconvert.nn import AdderConv2d

OFFICIAL = Path(__file__).parents[1] / "data" / "ResNet20-AdderNet.pth"


class _Adaptive(nn.Module):
    """Takes any size from 5x5 (a 5x5 adder layer without padding), global pooling before the classifier."""

    def __init__(self):
        super().__init__()
        self.adder = AdderConv2d(3, 4, 5)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 10)

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.adder(x))).mean((2, 3)))


def test_a_model_of_any_size_records_the_smallest(tmp_path):
    torch.manual_seed(0)
    model = _Adaptive().eval()
    path = export_onnx(model, tmp_path / "m.onnx", torch.rand(2, 3, 16, 16), dynamic_hw=True)
    metadata = read_metadata(path)
    assert metadata["dynamic_hw"] is True and metadata["min_image_size"] == 5
    session = make_session(path)
    for size in (5, 40):
        x = torch.rand(1, 3, size, size)
        with torch.no_grad():
            expected = model(x).numpy()
        np.testing.assert_allclose(session.run(None, {"input": x.numpy()})[0], expected, rtol=1e-4, atol=1e-4)
    with pytest.raises(RuntimeError):  # below the recorded size the model itself has no output
        model(torch.rand(1, 3, 4, 4))


def test_a_static_export_says_so(tmp_path):
    path = export_onnx(_Adaptive().eval(), tmp_path / "m.onnx", torch.rand(2, 3, 16, 16))
    metadata = read_metadata(path)
    assert metadata["dynamic_hw"] is False and "min_image_size" not in metadata


def test_a_linear_on_the_flattened_map_is_refused(tmp_path):
    """torch.export makes H and W dynamic here, but the graph only runs at the example's size."""
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Flatten(), nn.Linear(4 * 16 * 16, 10)).eval()
    with pytest.raises(ValueError, match="cannot take dynamic H and W: at 32x32 it fails.*16x16 input size"):
        export_onnx(model, tmp_path / "m.onnx", torch.rand(2, 3, 16, 16), dynamic_hw=True)
    assert not (tmp_path / "m.onnx").exists()


def test_the_official_resnet20_is_refused():
    """Why 11: its 8x8 average pool made ORT die of SIGFPE at 28x28 and give 810 outputs at 64x64."""
    model = load(OFFICIAL, arch="resnet20")
    with pytest.raises(ValueError, match=r"at 64x64 it gives outputs of shape \[810\], not \[10\]"):
        dynamic_hw_sizes(model, torch.rand(2, 3, 32, 32))


def test_an_output_that_depends_on_h_and_w_is_refused(tmp_path, monkeypatch):
    """The exported graph is checked as well: its output may not change size with H and W."""
    import adderconvert.deploy.export as export

    monkeypatch.setattr(export, "dynamic_hw_sizes", lambda model, example: None)  # the PyTorch probe skipped
    with pytest.raises(ValueError, match="size of its output 'output' depends on them"):
        export_onnx(load(OFFICIAL, arch="resnet20"), tmp_path / "m.onnx", torch.rand(2, 3, 32, 32), dynamic_hw=True)
    assert not (tmp_path / "m.onnx").exists()

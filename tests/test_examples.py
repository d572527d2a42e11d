"""The examples run as a user would run them."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision

from adderconvert.conversion import convert
from adderconvert.data import FASHION_MNIST_DIR
from adderconvert.export import export_onnx

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(not FASHION_MNIST_DIR.is_dir(), reason="dataset-fashion-mnist not installed")


def test_ort_inference_example(tmp_path):
    model = torchvision.models.resnet18(num_classes=10)
    x = torch.randn(2, 3, 28, 28)
    convert(model, x)
    path = export_onnx(model.eval(), tmp_path / "m.onnx", x)
    out = subprocess.run(
        [sys.executable, "examples/ort_inference.py", str(path), "--images", "300"],
        cwd=REPO,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert "top-1 on 300 test images" in out


@pytest.mark.slow
def test_convert_finetune_example():
    out = subprocess.run(
        [sys.executable, "examples/convert_finetune.py", "--steps", "3", "--batch-size", "32"],
        cwd=REPO,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert "CNN top-1" in out and "AdderNet top-1" in out and "become additions" in out

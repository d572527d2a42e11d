"""Why 11: exported models carry their valid input sizes. `export --dynamic-hw` of a model that takes one
size is refused with the reason, and `evaluate` checks a file's sizes before ONNX Runtime runs it."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from adderconvert.app.cli import main
from adderconvert.architectures.official import load
from adderconvert.deploy.export import export_onnx, input_metadata
from tests.app.test_cli import _fake_fashion_mnist, _input_error
from tests.deploy.test_dynamic_hw import _Adaptive

OFFICIAL = Path(__file__).parents[1] / "data" / "ResNet20-AdderNet.pth"


@pytest.mark.slow  # a subprocess import and export (10 s)
def test_dynamic_hw_export_of_the_official_resnet20_is_refused(tmp_path):
    imp = tmp_path / "imp"
    result = CliRunner().invoke(main, ["import-official", str(OFFICIAL), "--arch", "resnet20", "--output", str(imp)])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(main, ["export", str(imp / "best.pt"), "-o", str(tmp_path / "d.onnx"), "--dynamic-hw"])
    _input_error(result, "cannot take dynamic H and W", "[810]", "32x32", "without --dynamic-hw")
    assert not (tmp_path / "d.onnx").exists()
    result = CliRunner().invoke(main, ["export", str(imp / "best.pt"), "-o", str(tmp_path / "s.onnx")])
    assert result.exit_code == 0, result.output


def test_evaluate_refuses_an_older_dynamic_export_of_a_one_size_model(tmp_path, monkeypatch):
    """A file such a model's dynamic export wrote before: ONNX Runtime died of SIGFPE on it at 28x28."""
    import adderconvert.deploy.export as export

    monkeypatch.setattr(export, "dynamic_hw_sizes", lambda model, example: None)
    monkeypatch.setattr(export, "_check_dynamic_output", lambda proto: None)
    path = export_onnx(
        load(OFFICIAL, arch="resnet20"),
        tmp_path / "old.onnx",
        torch.rand(2, 3, 32, 32),
        dynamic_hw=True,
        metadata=input_metadata(image_size=32, dataset="cifar10"),
    )
    data = _fake_fashion_mnist(tmp_path)
    args = ["evaluate", str(path), "--dataset", "fashion-mnist", "--data", str(data), "--image-size", "28"]
    # In a process of its own: were the file handed to ONNX Runtime, SIGFPE would end this one.
    result = subprocess.run(
        [sys.executable, "-m", "adderconvert.app.cli", *args], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "Error:" in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert "changes size with them" in result.stderr and "without --dynamic-hw" in result.stderr


def test_evaluate_refuses_a_size_below_the_recorded_one(tmp_path):
    class _Large(_Adaptive):  # a 17x17 adder layer without padding: 17x17 inputs or more
        def __init__(self):
            super().__init__()
            self.adder = type(self.adder)(3, 4, 17)

    path = export_onnx(
        _Large().eval(),
        tmp_path / "m.onnx",
        torch.rand(2, 3, 28, 28),
        dynamic_hw=True,
        metadata=input_metadata(image_size=28, dataset="fashion-mnist"),
    )
    data = _fake_fashion_mnist(tmp_path)
    args = ["evaluate", str(path), "--data", str(data)]
    _input_error(CliRunner().invoke(main, [*args, "--image-size", "16"]), "17x17 or more", "--image-size 16")
    result = CliRunner().invoke(main, [*args, "--image-size", "20"])
    assert result.exit_code == 0 and "top-1" in result.output, result.output

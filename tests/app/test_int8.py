"""INT8 in the application: an adder checkpoint exported as MODEL_adder_int8.onnx (calibrated on its training set),
evaluated by `adderconvert evaluate`, compared with its FP32 export; bad inputs refused with a message."""

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner

from adderconvert.app.cli import main
from adderconvert.app.int8 import calibration_batches, compare_onnx, export_checkpoint_int8, int8_path
from adderconvert.architectures.cnn import build_model
from adderconvert.checkpoint import CheckpointMeta, save_checkpoint
from adderconvert.conversion import convert, plan_conversion
from adderconvert.data import FASHION_MNIST_CLASSES, load_dataset
from adderconvert.deploy.export import export_onnx, read_metadata
from tests.app.test_cli import _fake_fashion_mnist


@pytest.fixture(scope="module")
def adder_checkpoint(tmp_path_factory):
    root = tmp_path_factory.mktemp("int8")
    data = _fake_fashion_mnist(root)
    torch.manual_seed(0)
    model = build_model("resnet18", 10)
    example = torch.randn(4, 3, 28, 28)
    report = plan_conversion(model, example)
    convert(model, example, report=report)
    model.eval()
    meta = CheckpointMeta(
        model_name="resnet18",
        num_classes=10,
        stage="adder",
        dataset="fashion-mnist",
        image_size=28,
        classes=list(FASHION_MNIST_CLASSES),
        mean=[0.45] * 3,
        std=[0.226] * 3,
        conversion=report.to_dict(),
    )
    path = save_checkpoint(root / "best.pt", {"meta": meta, "model": model.state_dict()})
    return path, data, model


def test_export_checkpoint_int8_and_evaluate(adder_checkpoint, tmp_path):
    checkpoint, data, model = adder_checkpoint
    path = export_checkpoint_int8(checkpoint, tmp_path / "m_int8.onnx", batches=2, method="minmax", data=str(data))
    proto = onnx.load(path)
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count("QuantizedAdderConv") == 19 and "AdderConv" not in ops and "FusedAdderConv" not in ops
    stored = read_metadata(path)
    assert stored["adder_precision"] == "int8" and stored["image_size"] == [28, 28]
    assert stored["quantization"]["method"] == "minmax"
    result = CliRunner().invoke(main, ["evaluate", str(path), "--data", str(data)])
    assert result.exit_code == 0 and "ONNX Runtime" in result.output, result.output
    # Top-1 and agreement against the FP32 export of the same checkpoint.
    splits = load_dataset("fashion-mnist", data, 28)
    fp32 = export_onnx(model, tmp_path / "m.onnx", torch.zeros(2, 3, 28, 28))
    same = compare_onnx(fp32, fp32, splits.test)
    assert same["int8_agreement"] == 100.0 and same["int8_images"] == 64
    result_top1 = float(result.output.split("top-1 ")[1].split("%")[0])
    assert compare_onnx(path, fp32, splits.test, batch_size=16)["int8_top1"] == pytest.approx(result_top1, abs=0.006)


def test_export_command_int8_default_path(adder_checkpoint):
    checkpoint, data, _ = adder_checkpoint
    result = CliRunner().invoke(
        main, ["export", str(checkpoint), "--int8", "--calibration-batches", "1", "--data", str(data)]
    )
    assert result.exit_code == 0, result.output
    expected = int8_path(checkpoint.parent, "resnet18")
    assert expected.name == "resnet18_adder_int8.onnx" and expected.is_file() and str(expected) in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--calibration-batches", "0"], "--calibration-batches must be >= 1"),
        (["--portable"], "--int8 and --portable exclude each other"),
        (["--calibration-method", "mse"], "--calibration-method"),
    ],
)
def test_export_command_int8_bad_input(adder_checkpoint, tmp_path, args, message):
    checkpoint, data, _ = adder_checkpoint
    out = tmp_path / "x.onnx"
    result = CliRunner().invoke(main, ["export", str(checkpoint), "--int8", "-o", str(out), "--data", str(data), *args])
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output, result.output
    assert not out.exists()


def test_a_cnn_checkpoint_is_refused(tmp_path):
    meta = CheckpointMeta(model_name="resnet18", num_classes=10, stage="teacher", image_size=28)
    save_checkpoint(tmp_path / "cnn.pt", {"meta": meta, "model": build_model("resnet18", 10).state_dict()})
    result = CliRunner().invoke(main, ["export", str(tmp_path / "cnn.pt"), "--int8"])
    assert result.exit_code == 2 and "needs an adder model" in result.output, result.output


def test_calibration_batches_are_seeded_training_batches(adder_checkpoint):
    _, data, _ = adder_checkpoint
    splits = load_dataset("fashion-mnist", data, 28)
    a = calibration_batches(splits.train, 2, seed=1)
    assert len(a) == 2 and a[0].shape == (64, 3, 28, 28)
    assert len(calibration_batches(splits.train, 100)) == 3  # 192 images: 3 batches of 64
    with pytest.raises(ValueError, match="must be >= 1"):
        calibration_batches(splits.train, 0)
    assert np.isfinite(a[0].numpy()).all()

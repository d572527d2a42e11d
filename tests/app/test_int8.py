"""INT8 in the application: an adder checkpoint exported as MODEL_adder_int8.onnx (calibrated on its training set),
evaluated by `adderconvert evaluate`, compared with its FP32 export; segmentation and detection models too (trained
in the test on the built-in scenes); bad inputs refused with a message."""

import json

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner

import adderconvert.app.pipeline as pipeline
import adderconvert.data_scenes as data_scenes
from adderconvert.app.cli import main
from adderconvert.app.int8 import calibration_batches, compare_onnx, export_checkpoint_int8, int8_path
from adderconvert.app.saved_models import evaluate_file, export_checkpoint, load_data
from adderconvert.architectures.cnn import build_model
from adderconvert.checkpoint import CheckpointMeta, save_checkpoint
from adderconvert.conversion import plan_conversion, swap_layers
from adderconvert.data import FASHION_MNIST_CLASSES, load_dataset
from adderconvert.deploy.dense import DETECTION_OUTPUTS
from adderconvert.deploy.export import export_onnx, read_metadata
from adderconvert.quantization import DEFAULT_METHOD, METHODS
from tests.app.test_cli import _fake_fashion_mnist


@pytest.fixture(scope="module")
def adder_checkpoint(tmp_path_factory):
    root = tmp_path_factory.mktemp("int8")
    data = _fake_fashion_mnist(root)
    torch.manual_seed(0)
    model = build_model("resnet18", 10)
    example = torch.randn(4, 3, 28, 28)
    report = plan_conversion(model, example)
    swap_layers(model, example, report=report)
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


@pytest.mark.slow  # test_export_checkpoint_int8_and_evaluate covers the fast tier
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
        (["--calibration-batches", "1000000"], "the 192 training images make 3 batches of 64"),
        (["--portable"], "--int8 and --portable exclude each other"),
        (["--calibration-method", "entropy"], "--calibration-method"),
    ],
)
def test_export_command_int8_bad_input(adder_checkpoint, tmp_path, args, message):
    checkpoint, data, _ = adder_checkpoint
    out = tmp_path / "x.onnx"
    result = CliRunner().invoke(main, ["export", str(checkpoint), "--int8", "-o", str(out), "--data", str(data), *args])
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output, result.output
    assert not out.exists()


@pytest.mark.parametrize("flag", [["--calibration-method", "mse"], ["--calibration-batches", "2"], ["--data", "x"]])
def test_export_refuses_int8_options_without_int8(adder_checkpoint, tmp_path, flag):
    checkpoint = adder_checkpoint[0]
    result = CliRunner().invoke(main, ["export", str(checkpoint), "-o", str(tmp_path / "x.onnx"), *flag])
    assert result.exit_code == 2 and "only apply with --int8" in result.output, result.output
    assert not (tmp_path / "x.onnx").exists()


def test_the_cli_offers_every_calibration_method_and_the_default():
    option = next(p for p in main.commands["export"].params if p.name == "calibration_method")
    assert sorted(option.type.choices) == sorted(METHODS) and option.default == DEFAULT_METHOD


def test_a_cnn_checkpoint_is_refused(tmp_path):
    meta = CheckpointMeta(model_name="resnet18", num_classes=10, stage="teacher", image_size=28)
    save_checkpoint(tmp_path / "cnn.pt", {"meta": meta, "model": build_model("resnet18", 10).state_dict()})
    result = CliRunner().invoke(main, ["export", str(tmp_path / "cnn.pt"), "--int8"])
    assert result.exit_code == 2 and "needs an adder model" in result.output, result.output


# INT8 against FP32 on a dense model trained in the test: how far its metric may move (points), and the share of
# pixels (%) on which a segmentation model's INT8 and FP32 argmax must agree. The test's models train for seconds
# (the LR-ASPP to about 9% mIoU, the SSDlite to about 0.2% mAP): their logits are close to ties, which a step of an
# INT8 grid flips, so the bounds are wider than the goal for trained models (0.5 point). Measured on the
# Intel Xeon: mIoU 10.02% INT8 / 8.99% FP32, argmax agreement 98.73%.
DENSE_TOLERANCE = {"miou": 2.0, "map": 0.5}
MIN_PIXEL_AGREEMENT = 97.0
_COUNTS = {"train": 64, "test": 16}  # the scenes of the dense runs
_DENSE = {
    "segmentation": ("lraspp_mobilenet_v3_large", "miou"),
    "detection": ("ssdlite320_mobilenet_v3_large", "map"),
}


@pytest.fixture(scope="module")
def dense_runs(tmp_path_factory):
    """Trains a segmentation or a detection run on first use, on few scenes of a fake Fashion-MNIST's items (64 px,
    four CNN epochs and one adder epoch of batch 8): task -> (run folder, data folder)."""
    root = tmp_path_factory.mktemp("dense_int8")
    data = _fake_fashion_mnist(root, n_train=64, n_test=16)
    runs = {}

    def run(task: str) -> tuple:
        if task not in runs:
            with pytest.MonkeyPatch.context() as patch:
                patch.setattr(data_scenes, "DEFAULT_COUNTS", _COUNTS)
                patch.setattr(pipeline, "CALIBRATION_IMAGES", 16)
                out, model = root / task, _DENSE[task][0]
                args = [model, "--data", str(data), "--weights", "none", "--pretrain-epochs", "4", "--image-size"]
                args += ["64", "--epochs", "1", "--batch-size", "8", "--quiet", "--output", str(out), "--no-export"]
                result = CliRunner().invoke(main, [*args, "--reconstruct", "none"])
                assert result.exit_code == 0, result.output
            runs[task] = out, data
        return runs[task]

    return run


@pytest.mark.slow  # 45 s and 80 s; the fast tier checks INT8 on classifiers
@pytest.mark.parametrize("task", ["segmentation", "detection"])
def test_a_dense_checkpoint_exports_int8_close_to_fp32(dense_runs, tmp_path, monkeypatch, task):
    """`export --int8` calibrates a segmentation or detection model on its own scenes (the run's seed), exports
    QuantizedAdderConv layers (a detector with its post-processing graph), and ONNX Runtime scores it within
    DENSE_TOLERANCE of the FP32 export; a segmentation model's argmax agrees on MIN_PIXEL_AGREEMENT of the pixels."""
    (out, data), (model, metric) = dense_runs(task), _DENSE[task]
    monkeypatch.setattr(data_scenes, "DEFAULT_COUNTS", _COUNTS)  # the run's scenes
    int8 = export_checkpoint_int8(out / "best.pt", tmp_path / "int8.onnx", batches=1, data=str(data))
    fp32 = export_checkpoint(out / "best.pt", tmp_path / "fp32.onnx")
    ops = {n.op_type for n in onnx.load(int8).graph.node}
    assert "QuantizedAdderConv" in ops and not ops & {"AdderConv", "FusedAdderConv"}
    assert read_metadata(int8)["task"] == task and read_metadata(int8)["seed"] == 0
    if task == "detection":
        assert "NonMaxSuppression" in ops and [o.name for o in onnx.load(int8).graph.output] == list(DETECTION_OUTPUTS)
    splits = load_data("fashion-mnist", data, 64, model)
    result = compare_onnx(int8, fp32, splits.test, batch_size=8, task=task)
    reference = evaluate_file(fp32, data=str(data))["scores"]
    assert result["int8_images"] == 16 and set(result) >= {f"int8_{name}" for name in reference}
    assert abs(result[f"int8_{metric}"] - reference[metric]) <= DENSE_TOLERANCE[metric], (result, reference)
    if task == "detection":
        assert result["int8_agreement"] is None
        return
    assert result["int8_agreement"] >= MIN_PIXEL_AGREEMENT, result
    # the CLI's export --int8 takes it too, writing MODEL_adder_int8.onnx beside the checkpoint
    cli = CliRunner().invoke(main, ["export", str(out / "best.pt"), "--int8", "--calibration-batches", "1"])
    assert cli.exit_code == 0 and (out / f"{model}_adder_int8.onnx").is_file(), cli.output


def test_a_dense_checkpoint_of_user_data_needs_its_folder(tmp_path, monkeypatch):
    """A COCO run's checkpoint calibrates on the run's folder (its config.yaml names it, a relative path from the run
    folder); without one, or with a config.yaml that cannot say, one error line asks for --data."""
    run = tmp_path / "run"
    run.mkdir()
    meta = CheckpointMeta(
        model_name="ssdlite320_mobilenet_v3_large", num_classes=3, stage="adder", dataset="coco", image_size=64
    )
    save_checkpoint(run / "det.pt", {"meta": meta, "model": {}})
    monkeypatch.chdir(tmp_path)  # a relative data: is not taken from here

    def error(config: str | None) -> str:
        if config is not None:
            (run / "config.yaml").write_text(config)
        result = CliRunner().invoke(main, ["export", str(run / "det.pt"), "--int8"])
        lines = result.output.strip().splitlines()
        assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("Error: "), result.output
        return lines[0]

    assert "--dataset coco needs --data DIR" in error(None)
    assert f"config.yaml in {run} names data folder {run / 'gone'}, which does not exist: pass --data DIR" in error(
        f"dataset: coco\ndata: {run / 'gone'}\n"
    )
    (tmp_path / "coco").mkdir()  # beside the working directory, not the run folder
    assert f"config.yaml in {run} names data folder coco, which does not exist: pass --data DIR" in error(
        "dataset: coco\ndata: coco\n"
    )
    (run / "coco").mkdir()  # the run's own: read (an empty folder, which the COCO reader refuses by its path)
    assert str(run / "coco") in error(None)
    assert f"config.yaml in {run} names data folder [1, 2], not a path: pass --data DIR" in error(
        "dataset: coco\ndata: [1, 2]\n"
    )
    assert f"cannot read config.yaml in {run} (ScannerError): pass --data DIR" in error("dataset: coco\ndata: [\t\n")


def test_export_calibrates_with_the_runs_seed(adder_checkpoint, tmp_path):
    """`export --int8` draws the calibration batches of the run's seed (its recipe's), as the main job's --int8 did:
    the same INT8 model, byte for byte."""
    from dataclasses import replace

    from adderconvert.app.int8 import export_int8
    from adderconvert.app.saved_models import deployment_metadata
    from adderconvert.checkpoint import load_checkpoint

    checkpoint, data, model = adder_checkpoint
    state = load_checkpoint(checkpoint)
    meta = replace(state["meta"], recipe={"seed": 3})
    seeded = save_checkpoint(tmp_path / "seed3.pt", {"meta": meta, "model": state["model"]})
    exported = export_checkpoint_int8(seeded, tmp_path / "export.onnx", batches=1, method="minmax", data=str(data))
    train = load_dataset("fashion-mnist", data, 28).train
    metadata = deployment_metadata(meta)
    runs = {
        seed: export_int8(model, tmp_path / f"run{seed}.onnx", calibration_batches(train, 1, seed), metadata, "minmax")
        for seed in (3, 0)
    }
    assert exported.read_bytes() == runs[3].read_bytes()
    assert runs[0].read_bytes() != runs[3].read_bytes()  # the seed matters


def test_calibration_batches_are_seeded_training_batches(adder_checkpoint):
    _, data, _ = adder_checkpoint
    splits = load_dataset("fashion-mnist", data, 28)
    a, b = calibration_batches(splits.train, 2, seed=1), calibration_batches(splits.train, 2, seed=1)
    assert len(a) == 2 and a[0].shape == (64, 3, 28, 28)
    assert all(torch.equal(x, y) for x, y in zip(a, b))  # reproducible: seeded order, no random flips
    assert splits.train.flip  # the training split itself keeps its augmentation
    assert not torch.equal(calibration_batches(splits.train, 1, seed=2)[0], a[0])
    assert len(calibration_batches(splits.train, 3)) == 3  # 192 images: 3 batches of 64
    with pytest.raises(ValueError, match="ask for at most 3"):
        calibration_batches(splits.train, 100)
    with pytest.raises(ValueError, match="must be >= 1"):
        calibration_batches(splits.train, 0)
    assert np.isfinite(a[0].numpy()).all()


@pytest.mark.slow  # a whole main job with --int8 (90 s)
def test_main_job_int8_summary_and_report(tmp_path):
    data = _fake_fashion_mnist(tmp_path)
    out = tmp_path / "run"
    args = ["resnet18", "--data", str(data), "--weights", "none", "--pretrain-epochs", "1", "--epochs", "1"]
    args += ["--batch-size", "32", "--output", str(out), "--quiet", "--int8", "--calibration-batches", "1"]
    result = CliRunner().invoke(main, [*args, "--calibration-method", "minmax"])
    assert result.exit_code == 0, result.output
    props = {p.key: p.value for p in onnx.load(out / "resnet18_adder_int8.onnx").metadata_props}
    assert json.loads(props["quantization"])["method"] == "minmax"  # --calibration-method reached the export
    summary = json.loads((out / "summary.json").read_text())
    assert summary["int8_path"] == "resnet18_adder_int8.onnx" and (out / summary["int8_path"]).is_file()
    assert summary["int8_images"] == 64 and 0 <= summary["int8_top1"] <= 100
    assert 0 <= summary["int8_agreement"] <= 100
    assert "AdderNet INT8 (ONNX Runtime)" in result.output and "INT8 ONNX Runtime top-1" in result.output
    report = json.loads((out / "report.json").read_text())
    assert report["accuracy"]["int8_top1"] == summary["int8_top1"]
    assert all(row["int8_ms"] > 0 and row["int8_ratio"] > 0 for row in report["latency_ms"])
    deployed = report["energy_pj_int8_deployed"]
    assert deployed["cnn"] > 0 and deployed["adder"] > 0
    assert "AdderNet INT8 ms" in (out / "report.html").read_text()


def test_deployed_int8_energy_by_hand():
    from torch import nn

    from adderconvert.app.report.costs import ENERGY_PJ, count_operations, deployed_int8_energy_pj
    from adderconvert.nn import AdderConv2d

    model = nn.Sequential(
        nn.Conv2d(3, 4, 1, bias=False), AdderConv2d(4, 2, 1, bias=True), nn.Flatten(), nn.Linear(8, 3)
    )
    counts = count_operations(model, (3, 2, 2))
    fp32, int8, int32 = ENERGY_PJ["fp32"], ENERGY_PJ["int8"], ENERGY_PJ["int32"]
    conv_macs, adder_macs, linear_macs = 4 * 4 * 3, 2 * 4 * 4, 3 * 8
    # The INT8 AdderNet: conv and linear FP32, adder |x - w| on 8 bits + 32-bit sums, its bias a 32-bit addition.
    adder_model = (
        conv_macs * (fp32["multiplication"] + fp32["addition"])
        + adder_macs * (int8["addition"] + int32["addition"])
        + 8 * int32["addition"]
        + linear_macs * (fp32["multiplication"] + fp32["addition"])
        + 3 * fp32["addition"]
    )
    assert deployed_int8_energy_pj(counts, ("adder",)) == pytest.approx(adder_model)
    # Everything but the adder layer on 8 bits (the INT8 CNN's rule applied to this model).
    cnn_rule = (
        conv_macs * (int8["multiplication"] + int32["addition"])
        + adder_macs * (fp32["addition"] * 2)
        + 8 * fp32["addition"]
        + linear_macs * (int8["multiplication"] + int32["addition"])
        + 3 * int32["addition"]
    )
    assert deployed_int8_energy_pj(counts, ("conv", "linear")) == pytest.approx(cnn_rule)

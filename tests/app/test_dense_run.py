"""The main job on segmentation and detection models: trained, converted, fine-tuned and exported on the built-in
scenes at a tiny budget, with their metric (mIoU, mAP) in summary.json and metrics.csv; `evaluate` on their
checkpoints and ONNX files; resume of an interrupted run; bad input as one ``Error:`` line and exit status 2."""

import json

import pytest
import torch
from click.testing import CliRunner
from PIL import Image

import adderconvert.app.pipeline as pipeline
import adderconvert.data_scenes as data_scenes
import adderconvert.train.loop as loop
from adderconvert.app.cli import main
from adderconvert.checkpoint import load_checkpoint
from adderconvert.deploy.export import export_onnx, input_metadata
from tests.app.test_cli import _fake_fashion_mnist, _input_error
from tests.conversion._dense import small_deeplab
from tests.deploy._dense_models import small_ssd
from tests.test_data_formats import _write_coco, _write_voc


@pytest.fixture
def small(monkeypatch, tmp_path):
    """Few scenes (of a fake Fashion-MNIST's items) and few calibration images: a run takes seconds."""
    monkeypatch.setattr(data_scenes, "DEFAULT_COUNTS", {"train": 32, "test": 8})
    monkeypatch.setattr(pipeline, "CALIBRATION_IMAGES", 16)
    return _fake_fashion_mnist(tmp_path, n_train=64, n_test=16)


def _args(model, data, out, *extra):
    args = [model, "--data", str(data), "--weights", "none", "--pretrain-epochs", "1", "--image-size", "64"]
    return [*args, "--max-steps", "2", "--batch-size", "4", "--quiet", "--output", str(out), *extra]  # extra wins


def _run(*args):
    result = CliRunner().invoke(main, list(args))
    assert result.exit_code == 0, result.output
    return result


_MODELS = pytest.mark.parametrize(
    ("model", "metric", "other", "extra"),
    [
        ("lraspp_mobilenet_v3_large", "miou", "pixel_accuracy", []),
        ("ssdlite320_mobilenet_v3_large", "map", "map_50", ["--reconstruct", "none"]),  # in seconds
    ],
)


@_MODELS
def test_a_dense_run_writes_its_metric(small, tmp_path, model, metric, other, extra):
    out = tmp_path / "run"
    _run(*_args(model, small, out, *extra, "--no-export"))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["metric"] == metric and summary["task"] in ("segmentation", "detection")
    for stage in ("cnn", "zero_step", "adder"):
        for name in (metric, other):
            assert 0 <= summary[f"{stage}_{name}"] <= 100, (stage, name, summary)
    assert summary[f"onnx_{metric}"] is None and summary[f"int8_{metric}"] is None and "cnn_top1" not in summary
    header = (out / "metrics.csv").read_text().splitlines()[0].split(",")
    assert f"test_{metric}" in header and "test_top1" not in header and "train_top1" not in header
    for folder in (out, out / "teacher"):
        assert {"last.pt", "best.pt", "metrics.csv"} <= {p.name for p in folder.iterdir()}
    assert "batch_size: 4\n" in (out / "config.yaml").read_text()
    # evaluate scores the checkpoint as the run did (the same scenes: the run's seed is in its recipe)
    evaluated = _run("evaluate", str(out / "last.pt"), "--data", str(small))
    assert f"{summary[f'adder_{metric}']:.2f}%" in evaluated.output, (evaluated.output, summary)
    assert "on 8 built-in test scenes (PyTorch" in evaluated.output, evaluated.output


def test_a_run_built_in_python_takes_its_tasks_batch(small, tmp_path):
    """A RunConfig without a batch (a Python caller of pipeline.run, as the CLI without --batch-size) trains a dense
    model at its task's batch, the one config.yaml then records."""
    from adderconvert.train.dense import SEGMENTATION

    config = pipeline.RunConfig(
        model="lraspp_mobilenet_v3_large", data=str(small), weights=None, image_size=64, output=str(tmp_path / "run")
    )
    resolved, prepared = pipeline._prepare(config, world_size=1)
    assert config.batch_size is None and resolved.batch_size == SEGMENTATION.batch_size == prepared.task.batch_size
    # A dense model has two bases whatever its convs (no note: its task's plain default); config.yaml gets the values.
    assert (resolved.epochs, resolved.bases) == (1, 2) and prepared.defaults_note == ""
    assert all(f"{key}\n" in resolved.to_yaml() for key in ("batch_size: 16", "epochs: 1", "bases: 2"))


@pytest.mark.slow  # the ONNX export (15-20 s each)
@_MODELS
def test_a_dense_run_exports_and_scores_in_onnx_runtime(small, tmp_path, model, metric, other, extra):
    out = tmp_path / "run"
    result = _run(*_args(model, small, out, *extra, "--int8", "--calibration-batches", "1"))
    assert f"cost report: {out / 'report.html'}" in result.output
    summary = json.loads((out / "summary.json").read_text())
    # ONNX Runtime scores the exported model as PyTorch does (segmentation argmax, detections after NMS)
    assert summary["onnx_path"] == f"{model}_adder.onnx" and (out / summary["onnx_path"]).is_file()
    assert summary[f"onnx_{metric}"] == pytest.approx(summary[f"adder_{metric}"], abs=0.5)
    # INT8 on the run's own scenes (tests/app/test_int8.py bounds it against FP32)
    assert summary["int8_path"] == f"{model}_adder_int8.onnx" and 0 <= summary[f"int8_{metric}"] <= 100
    assert f"INT8 ONNX Runtime {'mIoU' if metric == 'miou' else 'mAP'}" in result.output
    evaluated = _run("evaluate", str(out / summary["onnx_path"]), "--data", str(small))
    assert f"{summary[f'onnx_{metric}']:.2f}%" in evaluated.output and "ONNX Runtime" in evaluated.output


def test_an_interrupted_dense_run_resumes_exactly(small, tmp_path, monkeypatch):
    args = ("lraspp_mobilenet_v3_large", "--epochs", "2", "--no-export", "--reconstruct", "none", "--image-size", "32")
    _run(*_args(args[0], small, tmp_path / "whole", *args[1:]))

    original = loop.train_one_epoch

    def interrupted(net, loader, optimizer, scheduler, config, **k):
        if config.desc == "adder" and k["epoch"] == 1:  # the adder model's second epoch
            raise KeyboardInterrupt
        return original(net, loader, optimizer, scheduler, config, **k)

    monkeypatch.setattr(loop, "train_one_epoch", interrupted)
    result = CliRunner().invoke(main, _args(args[0], small, tmp_path / "cut", *args[1:]))
    assert result.exit_code == 1 and "interrupted; continue with:" in result.output, result.output
    assert load_checkpoint(tmp_path / "cut" / "last.pt")["epoch"] == 0
    monkeypatch.setattr(loop, "train_one_epoch", original)
    _run(args[0], "--resume", "--output", str(tmp_path / "cut"), "--data", str(small), "--quiet")

    whole, cut = (load_checkpoint(tmp_path / name / "last.pt") for name in ("whole", "cut"))
    assert cut["epoch"] == whole["epoch"] == 1
    for key, value in whole["model"].items():
        torch.testing.assert_close(cut["model"][key], value, rtol=0, atol=0, msg=key)
    summaries = [json.loads((tmp_path / name / "summary.json").read_text()) for name in ("whole", "cut")]
    for key in ("cnn_miou", "zero_step_miou", "adder_miou", "adder_pixel_accuracy"):
        assert summaries[0][key] == summaries[1][key], key


def test_bad_input_is_one_error_line(small, tmp_path):
    out = tmp_path / "run"
    base = ["--weights", "none", "--pretrain-epochs", "1", "--output", str(out)]
    # a detection model given classification data, or segmentation data
    folder = tmp_path / "images"
    for split in ("train", "test"):
        for name in ("a", "b"):  # ImageFolder classes: a folder each, one image
            (folder / split / name).mkdir(parents=True)
            Image.new("RGB", (8, 8)).save(folder / split / name / "x.png")
    cases = [
        (["ssdlite320_mobilenet_v3_large", "--dataset", "imagefolder", "--data", str(folder)], ["detection model"]),
        (["fasterrcnn_mobilenet_v3_large_320_fpn", "--dataset", "voc", "--data", str(small)], ["JPEGImages"]),
        (["lraspp_mobilenet_v3_large", "--dataset", "coco", "--data", str(small)], ["instances_train"]),
        (["lraspp_mobilenet_v3_large", "--dataset", "coco"], ["--data DIR"]),
        (["lraspp_mobilenet_v3_large", "--dataset", "voc", "--data", str(tmp_path / "nowhere")], ["does not exist"]),
        (["keypointrcnn_resnet50_fpn", "--data", str(small)], ["keypoint"]),
        (["lraspp_mobilenet_v3_large", "--dataset", "mnist"], ["--dataset", "coco"]),
    ]
    for args, fragments in cases:
        _input_error(CliRunner().invoke(main, [*args, *base]), *fragments)
        assert not out.exists(), args


@pytest.mark.parametrize(
    ("model", "dataset", "write", "classes"),
    [
        ("lraspp_mobilenet_v3_large", "voc", _write_voc, 3),  # masks with ignored (255) borders and padding
        ("ssdlite320_mobilenet_v3_large", "coco", _write_coco, 3),  # an image without objects among them
    ],
)
@pytest.mark.filterwarnings("ignore:1 of 2 images in .* have no annotations")
def test_users_data_through_the_main_job(small, tmp_path, model, dataset, write, classes):
    data = write(tmp_path / dataset)
    out = tmp_path / "run"
    args = [model, "--dataset", dataset, "--data", str(data), "--weights", "none", "--pretrain-epochs", "1"]
    args += ["--image-size", "64", "--max-steps", "1", "--batch-size", "2", "--no-export"]
    _run(*args, "--quiet", "--output", str(out))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["dataset"] == dataset and summary["converted_layers"] > 0
    assert load_checkpoint(out / "last.pt")["meta"].num_classes == classes  # the background and two classes


@pytest.mark.parametrize(
    ("build", "model"),
    [
        (lambda: small_deeplab(num_classes=3), "lraspp_mobilenet_v3_large"),
        (lambda: small_ssd(64, num_classes=3), "ssdlite320_mobilenet_v3_large"),
    ],
)
def test_evaluate_refuses_a_dense_onnx_file_of_other_classes(small, tmp_path, build, model):
    """An ONNX file whose metadata records 3 classes, scored on the scenes' 11: one Error line, exit status 2."""
    metadata = input_metadata(image_size=64, classes=["background", "a", "b"], dataset="fashion-mnist")
    path = export_onnx(
        build().eval(), tmp_path / "m.onnx", torch.zeros(2, 3, 64, 64), metadata=metadata | {"model_name": model}
    )
    result = CliRunner().invoke(main, ["evaluate", str(path), "--data", str(small)])
    _input_error(result, "has 3 classes but fashion-mnist has 11", "--dataset")


@pytest.mark.parametrize("model", ["deeplabv3_mobilenet_v3_large", "ssdlite320_mobilenet_v3_large"])
def test_a_batch_of_one_is_refused_where_batchnorm_sees_one_value(small, tmp_path, model):
    """DeepLabV3's pooled ASPP branch and SSDlite's last extra layer (1x1 maps) train BatchNorm on one value per
    channel in a batch of one image: refused before the run starts, not a traceback in its first step."""
    out = tmp_path / "run"
    result = CliRunner().invoke(main, _args(model, small, out, "--batch-size", "1"))
    _input_error(result, "--batch-size 1", "2 or more")
    assert not out.exists()


@pytest.mark.slow  # 20 s
def test_a_dense_run_scores_each_model_once(small, tmp_path, monkeypatch):
    """The CNN and the adder model are scored by fit() after their last epoch, and that score is the summary's: one
    evaluation per epoch and one of the zero-step model, none again."""
    from adderconvert.train.dense import SegmentationTask

    calls = []
    original = SegmentationTask.evaluate

    def counted(self, *args, **kwargs):
        calls.append(kwargs.get("desc"))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(SegmentationTask, "evaluate", counted)
    out = tmp_path / "run"
    _run(*_args("lraspp_mobilenet_v3_large", small, out, "--epochs", "2", "--no-export", "--reconstruct", "none"))
    assert len(calls) == 4, calls  # the CNN's epoch, the zero-step model, the adder model's two epochs
    summary = json.loads((out / "summary.json").read_text())
    rows = (out / "metrics.csv").read_text().splitlines()
    header, last = rows[0].split(","), rows[-1].split(",")
    assert float(last[header.index("test_miou")]) == pytest.approx(summary["adder_miou"])

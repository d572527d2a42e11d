"""The command line: subcommands, the main job on a small data set, and usage errors without tracebacks."""

import gzip
import json
import os
import struct
import subprocess
import sys
import urllib.error

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from adderconvert.app.cli import main


def _fake_fashion_mnist(root, n_train=192, n_test=64):
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = rng.integers(0, 10, n)
        images = (rng.integers(0, 60, (n, 28, 28)) + labels[:, None, None] * 19).astype(np.uint8)
        for kind, array in (("images-idx3", images), ("labels-idx1", labels.astype(np.uint8))):
            header = struct.pack(">BBBB", 0, 0, 8, array.ndim) + b"".join(struct.pack(">I", d) for d in array.shape)
            with gzip.open(root / f"{prefix}-{kind}-ubyte.gz", "wb") as f:
                f.write(header + array.tobytes())
    return root


def test_list():
    result = CliRunner().invoke(main, ["list"])
    assert result.exit_code == 0
    names = result.output.split()
    assert "resnet50" in names and "mobilenet_v3_small" in names and "vit_b_16" not in names


def test_unknown_model_is_a_usage_error():
    result = CliRunner().invoke(main, ["resnet5O", "--finetune"])
    assert result.exit_code == 2
    assert "unknown model 'resnet5O'" in result.output and "resnet50" in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    "args, message",
    [
        (["resnet18", "--epochs", "0"], "--epochs"),
        (["resnet18", "--dataset", "mnist9"], "--dataset"),
        (["resnet18", "--resume", "/nonexistent/last.pt"], "--resume"),
        (["resnet18", "--include", "layer9.*", "--dry-run"], "include rule 'layer9.*' matches no Conv2d"),
        (["resnet18", "--lr", "nan"], "lr: must be a finite number"),
        (["resnet18", "--seed", "-1"], "seed: must be >= 0"),
        (["resnet18", "--init", "fresh", "--reconstruct", "signs"], "with init 'fresh' pass none"),
        (["evaluate", "model.onnx", "--image-size", "4"], "4 is not in the range 16<=x<=1024"),
    ],
)
def test_bad_options(args, message):
    result = CliRunner().invoke(main, args)
    assert result.exit_code in (1, 2) and message in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def _input_error(result, *fragments):
    """Bad input: exit status 2, one clear ``Error:`` line naming the problem, no traceback."""
    assert result.exit_code == 2, result.output
    assert "Error:" in result.output and "Traceback" not in result.output, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    for fragment in fragments:
        assert fragment in result.output, (fragment, result.output)


@pytest.mark.parametrize(
    "text, fragments",
    [
        ("epochz: 3\n", ["epochz", "unknown option"]),
        ("- epochs\n- 3\n", ["must be a mapping"]),
        ("epochs: abc\n", ["epochs", "must be an integer"]),
        ('kd: "no"\n', ["kd", "true or false"]),
        ("image_size: 3\n", ["image_size", ">= 16"]),
        ("device: gpu\n", ["device", "auto, cpu, cuda or cuda:N"]),
        ("include: [1, 2]\n", ["include", "wildcard"]),
    ],
)
def test_bad_config_file(tmp_path, text, fragments):
    config = tmp_path / "c.yaml"
    config.write_text(text)
    _input_error(CliRunner().invoke(main, ["resnet18", "-c", str(config)]), str(config), *fragments)


def test_config_wildcard_is_one_pattern_not_letters(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("include: 'layer4.*'\n")
    result = CliRunner().invoke(main, ["resnet18", "-c", str(config), "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "include 'layer4.*'" in result.output and "not included" in result.output


def _offline_args(data, out, *extra):
    return ["--data", str(data), "--weights", "none", "--pretrain-epochs", "1", "--output", str(out), *extra]


@pytest.mark.parametrize(
    "args, fragments",
    [
        (["vgg11"], ["vgg11 cannot take 28x28", "--image-size"]),
        (["alexnet"], ["alexnet cannot take 28x28", "--image-size"]),
        (["densenet121"], ["densenet121 cannot take 28x28", "--image-size"]),
        (["vit_b_16"], ["not a CNN"]),
        (["resnet18", "--device", "gpu"], ["--device", "auto, cpu, cuda or cuda:N"]),
        (["resnet18", "--batch-size", "1", "--image-size", "32"], ["--batch-size 1", "2 or more"]),
        (["resnet18", "--exclude", "*"], ["nothing was converted"]),
        (["resnet18", "--epochs", "0"], ["--epochs", ">= 1"]),
        (["resnet18", "--int8", "--calibration-batches", "1000000"], ["192 training images make 3 batches"]),
    ],
)
def test_inputs_are_checked_before_anything_is_written(tmp_path, args, fragments):
    data = _fake_fashion_mnist(tmp_path)
    out = tmp_path / "run"
    _input_error(CliRunner().invoke(main, [*args, *_offline_args(data, out)]), *fragments)
    assert not out.exists()  # no half folder


def test_output_that_cannot_be_created(tmp_path):
    data = _fake_fashion_mnist(tmp_path)
    (tmp_path / "file").write_text("x")
    _input_error(
        CliRunner().invoke(main, ["resnet18", *_offline_args(data, tmp_path / "file" / "run")]), "cannot be created"
    )


def test_corrupt_weights_and_resume_files(tmp_path):
    data = _fake_fashion_mnist(tmp_path)
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x00not a checkpoint" * 20)
    args = ["resnet18", "--data", str(data), "--output", str(tmp_path / "o")]
    result = CliRunner().invoke(main, [*args, "--weights", str(bad)])
    _input_error(result, "not a readable PyTorch file")
    assert "weights_only" not in result.output


def test_unreadable_image_is_named_and_leaves_no_half_folder(tmp_path):
    from PIL import Image

    for split in ("train", "val"):
        for cls in ("a", "b"):
            folder = tmp_path / "images" / split / cls
            folder.mkdir(parents=True)
            for i in range(4):
                Image.new("RGB", (40, 40), (60 * i, 0, 0)).save(folder / f"{i}.png")
    (tmp_path / "images" / "train" / "a" / "broken.jpg").write_bytes(b"not a jpeg")
    out = tmp_path / "run"
    args = ["resnet18", "--dataset", "imagefolder", "--data", str(tmp_path / "images"), "--image-size", "32"]
    result = CliRunner().invoke(main, [*args, "--weights", "none", "--batch-size", "4", "--output", str(out)])
    _input_error(result, "broken.jpg is not a readable image")
    assert not out.exists()


def test_weights_of_another_architecture_or_stage_are_refused(tmp_path):
    import torch
    import torchvision

    data = _fake_fashion_mnist(tmp_path)
    torch.save(torchvision.models.resnet34(num_classes=10).state_dict(), tmp_path / "r34.pt")
    args = ["resnet18", "--data", str(data), "--output", str(tmp_path / "o")]
    _input_error(CliRunner().invoke(main, [*args, "--weights", str(tmp_path / "r34.pt")]), "are not resnet18 weights")


def test_missing_dataset_message(tmp_path):
    result = CliRunner().invoke(main, ["resnet18", "--data", str(tmp_path), "--pretrain-epochs", "1"])
    _input_error(result, "dataset-fashion-mnist")


def test_dry_run_prints_the_report():
    result = CliRunner().invoke(main, ["resnet18", "--dry-run", "--exclude", "layer4.*"])
    assert result.exit_code == 0, result.output
    assert "stem kept" in result.output and "exclude 'layer4.*'" in result.output
    assert "become additions" in result.output


def test_offline_weights_message(monkeypatch, tmp_path):
    import torchvision.models._api

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    # Also offline where the weights happen to be cached.
    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", offline)
    data = _fake_fashion_mnist(tmp_path)
    result = CliRunner().invoke(main, ["resnet18", "--finetune", "--data", str(data), "--output", str(tmp_path / "o")])
    _input_error(result, "--weights PATH", "--pretrain-epochs")


@pytest.mark.slow
def test_main_job_end_to_end(tmp_path):
    data = _fake_fashion_mnist(tmp_path)
    out = tmp_path / "run"
    args = [
        "resnet18",
        "--finetune",
        "--data",
        str(data),
        "--pretrain-epochs",
        "1",
        "--epochs",
        "1",
        "--batch-size",
        "32",
        "--output",
        str(out),
        "--quiet",
    ]
    result = CliRunner().invoke(main, [*args, "--max-drop", "100"])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    for key in ("model", "dataset", "converted_layers", "cnn_top1", "adder_top1", "onnx_top1", "epochs", "seconds"):
        assert key in summary
    assert summary["converted_layers"] == 19 and summary["epochs"] == 1
    layers = summary["adder_weights"]["per_layer"]
    assert len(layers) == 19 and all(row["weight_std"] > 0 and 0 <= row["saturation"] <= 1 for row in layers)
    # ONNX Runtime and PyTorch classify the test set alike.
    assert abs(summary["onnx_top1"] - summary["adder_top1"]) <= 100 / 64 + 1e-9
    assert yaml.safe_load((out / "config.yaml").read_text())["model"] == "resnet18"
    for name in ("last.pt", "best.pt", "metrics.csv", "resnet18_adder.onnx", "teacher/last.pt", "report.html"):
        assert (out / name).is_file(), name
    assert "AdderNet (ONNX Runtime)" in result.output
    assert "CNN epoch 1/1" in result.output and "adder epoch 1/1" in result.output  # --quiet keeps them

    # The run folder is not clobbered by a second run.
    best = (out / "best.pt").read_bytes()
    _input_error(CliRunner().invoke(main, args), "already holds a run", "--resume", "--overwrite")
    assert (out / "best.pt").read_bytes() == best

    # A longer --epochs on resume would restart the cosine schedule: refused (teacher/last.pt names the run).
    teacher = CliRunner().invoke(main, [*args[:-3], "--resume", str(out / "teacher" / "last.pt"), "--epochs", "2"])
    _input_error(teacher, "epochs 1 -> 2")

    # A corrupt last.pt is named, not loaded.
    teacher_bytes = (out / "teacher" / "last.pt").read_bytes()
    (tmp_path / "copy").mkdir()
    (tmp_path / "copy" / "config.yaml").write_text("model: resnet18\n")
    (tmp_path / "copy" / "last.pt").write_bytes(b"\x00truncated" * 8)
    _input_error(
        CliRunner().invoke(main, [*args[:-3], "--resume", str(tmp_path / "copy" / "last.pt")]),
        "not a readable PyTorch file",
    )

    # --resume of a finished run trains nothing more, and --max-drop can fail the run.
    result = CliRunner().invoke(
        main, [*args[:-3], "--quiet", "--max-drop", "0", "--resume", "--output", str(out), "--no-export"]
    )
    assert "already done" in result.output and "training the resnet18 CNN" in result.output
    assert (out / "teacher" / "last.pt").read_bytes() == teacher_bytes  # the teacher was not trained again
    summary = json.loads((out / "summary.json").read_text())
    if summary["adder_top1"] < summary["cnn_top1"]:
        assert result.exit_code == 1 and "below the CNN" in result.output
    else:
        assert result.exit_code == 0, result.output

    # Saved models: evaluate the checkpoint and its ONNX export; export with the metadata.
    result = CliRunner().invoke(main, ["evaluate", str(out / "best.pt"), "--data", str(data)])
    assert result.exit_code == 0, result.output
    assert f"top-1 {summary['adder_top1']:.2f}%" in result.output
    from adderconvert.deploy.export import read_metadata

    stored = read_metadata(out / "resnet18_adder.onnx")
    assert stored["image_size"] == [28, 28] and stored["classes"][9] == "Ankle boot" and len(stored["mean"]) == 3
    result = CliRunner().invoke(main, ["export", str(out / "best.pt"), "-o", str(tmp_path / "m.onnx")])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(main, ["export", str(out / "best.pt"), "-o", str(tmp_path / "hw.onnx"), "--dynamic-hw"])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(
        main, ["evaluate", str(tmp_path / "hw.onnx"), "--data", str(data), "--image-size", "36"]
    )
    assert result.exit_code == 0 and "top-1" in result.output, result.output
    result = CliRunner().invoke(main, ["evaluate", str(tmp_path / "m.onnx"), "--data", str(data)])
    assert result.exit_code == 0 and "ONNX Runtime" in result.output, result.output
    onnx_top1 = float(result.output.split("top-1 ")[1].split("%")[0])
    assert abs(onnx_top1 - summary["adder_top1"]) <= 100 / 64 + 1e-9

    # --overwrite replaces it.
    result = CliRunner().invoke(main, [*args, "--overwrite", "--no-finetune", "--no-export"])
    assert result.exit_code == 0, result.output
    assert not (out / "best.pt").exists() and (out / "teacher" / "last.pt").is_file()


def test_weights_refuse_an_adder_checkpoint(tmp_path):
    from adderconvert.checkpoint import CheckpointMeta, save_checkpoint

    data = _fake_fashion_mnist(tmp_path)
    meta = CheckpointMeta(model_name="resnet18", num_classes=10, stage="adder")
    save_checkpoint(tmp_path / "adder.pt", {"meta": meta, "model": {}})
    args = ["resnet18", "--data", str(data), "--output", str(tmp_path / "o"), "--weights", str(tmp_path / "adder.pt")]
    _input_error(
        CliRunner().invoke(main, args), "--weights takes CNN weights", "resnet18 adder model", "stage 'teacher'"
    )


def test_resume_refuses_a_checkpoint_of_another_stage(tmp_path):
    """--resume teacher/last.pt would load the CNN into the adder model: refused, naming both."""
    import torch

    from adderconvert.checkpoint import CheckpointMeta, save_checkpoint

    data = _fake_fashion_mnist(tmp_path)
    out = tmp_path / "run"
    (out / "teacher").mkdir(parents=True)
    (out / "config.yaml").write_text("model: resnet18\n")
    meta = CheckpointMeta(model_name="resnet18", num_classes=10, stage="teacher")
    save_checkpoint(out / "last.pt", {"meta": meta, "model": {}, "epoch": 0, "best_top1": 0.0})
    _input_error(
        CliRunner().invoke(main, ["resnet18", *_offline_args(data, out), "--resume"]),
        "resnet18 CNN",
        "needs stage 'adder'",
    )
    assert torch.load(out / "last.pt", weights_only=True)["meta"]["stage"] == "teacher"  # untouched


@pytest.mark.slow  # test_official_run covers import-official in the fast tier
def test_import_official_then_report(tmp_path):
    from pathlib import Path

    official = Path(__file__).parents[1] / "data" / "ResNet20-AdderNet.pth"
    out = tmp_path / "r20"
    result = CliRunner().invoke(main, ["import-official", str(official), "--arch", "resnet20", "--output", str(out)])
    assert result.exit_code == 0, result.output
    assert (out / "best.pt").is_file() and (out / "report.html").is_file()
    (out / "report.html").unlink()
    result = CliRunner().invoke(main, ["report", str(out)])
    assert result.exit_code == 0 and (out / "report.html").is_file(), result.output
    report = json.loads((out / "report.json").read_text())
    assert report["energy_ratio"] > 1  # additions are cheaper than multiplications
    _input_error(
        CliRunner().invoke(main, ["import-official", str(official), "--output", str(out)]), "already holds a run"
    )
    _input_error(
        CliRunner().invoke(main, ["import-official", str(official), "--arch", "vgg", "--output", str(tmp_path / "v")]),
        "--arch",
    )
    _input_error(CliRunner().invoke(main, ["report", str(tmp_path / "missing")]), "not found")


def test_evaluate_and_export_errors(tmp_path):
    _input_error(CliRunner().invoke(main, ["evaluate", str(tmp_path / "none.pt")]), "no such file")
    (tmp_path / "x.onnx").write_bytes(b"garbage")
    _input_error(CliRunner().invoke(main, ["evaluate", str(tmp_path / "x.onnx")]), "not a readable ONNX file")
    (tmp_path / "x.pt").write_bytes(b"garbage")
    _input_error(CliRunner().invoke(main, ["export", str(tmp_path / "x.pt")]), "not a readable PyTorch file")


def test_doctor():
    result = CliRunner().invoke(main, ["doctor"])
    assert result.exit_code == 0, result.output
    assert "AdderConv, CPUExecutionProvider: ok" in result.output and "ort_api: 21" in result.output
    assert "QuantizedAdderConv (INT8), CPUExecutionProvider: ok" in result.output
    assert "CPU kernel path: " in result.output and "ADDERCONVERT_CPU_ISA" in result.output


def test_doctor_with_an_unknown_isa_says_it_once():
    code = "from adderconvert.app.cli import main; main(['doctor'])"
    env = {**os.environ, "ADDERCONVERT_CPU_ISA": "bogus"}
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert run.returncode == 2 and run.stderr.count("ADDERCONVERT_CPU_ISA='bogus'") == 1, run.stderr
    assert run.stderr.startswith("Error: ") and "FAILED" not in run.stdout and "Traceback" not in run.stderr


@pytest.mark.parametrize("flags", [[], ["--int8"]])
def test_export_of_an_onnx_model_says_export_takes_a_checkpoint(tmp_path, flags):
    from onnx import TensorProto, helper, save

    values = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", 3, 8, 8]) for n in ("x", "y")]
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "relu", values[:1], values[1:])
    save(helper.make_model(graph), tmp_path / "model.onnx")
    result = CliRunner().invoke(main, ["export", str(tmp_path / "model.onnx"), *flags])
    _input_error(result, "is already an ONNX model; export takes a .pt checkpoint (evaluate takes .onnx files)")
    assert "name it .onnx" not in result.output


def test_the_main_job_keeps_its_data_folder_absolute(tmp_path, monkeypatch):
    """config.yaml (the run's RunConfig) names --data from anywhere: `export --int8` finds the folder from the run."""
    import adderconvert.app.pipeline as pipeline

    configs = []

    def run(config):  # the options the main job gets, without running it
        configs.append(config)
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "run", run)
    monkeypatch.chdir(tmp_path)
    CliRunner().invoke(main, ["resnet18", "--data", "fmnist", "--output", "out", "--quiet"])
    assert configs[0].data == str(tmp_path / "fmnist") and configs[0].output == "out"

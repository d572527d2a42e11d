"""The command line: subcommands, the main job on a small data set, and usage errors without tracebacks."""

import gzip
import json
import struct
import urllib.error

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from adderconvert.cli import main


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
    ],
)
def test_bad_options(args, message):
    result = CliRunner().invoke(main, args)
    assert result.exit_code in (1, 2) and message in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_bad_config_file(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("epochz: 3\n")
    result = CliRunner().invoke(main, ["resnet18", "-c", str(config)])
    assert result.exit_code == 2 and "unknown keys" in result.output


def test_missing_dataset_message(tmp_path):
    result = CliRunner().invoke(main, ["resnet18", "--data", str(tmp_path), "--pretrain-epochs", "1"])
    assert result.exit_code == 1 and "dataset-fashion-mnist" in result.output


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
    assert result.exit_code == 1
    assert "--weights PATH" in result.output and "--pretrain-epochs" in result.output


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
        "--max-drop",
        "100",
    ]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    for key in ("model", "dataset", "converted_layers", "cnn_top1", "adder_top1", "onnx_top1", "epochs", "seconds"):
        assert key in summary
    assert summary["converted_layers"] == 19 and summary["epochs"] == 1
    # ONNX Runtime and PyTorch classify the test set alike.
    assert abs(summary["onnx_top1"] - summary["adder_top1"]) <= 100 / 64 + 1e-9
    assert yaml.safe_load((out / "config.yaml").read_text())["model"] == "resnet18"
    for name in ("last.pt", "best.pt", "metrics.csv", "resnet18_adder.onnx", "teacher/last.pt"):
        assert (out / name).is_file(), name
    assert "AdderNet (ONNX Runtime)" in result.output

    # --resume of a finished run continues without training more, and --max-drop can fail the run.
    result = CliRunner().invoke(main, args[:-2] + ["--max-drop", "0", "--resume", str(out / "last.pt"), "--no-export"])
    summary = json.loads((out / "summary.json").read_text())
    if summary["adder_top1"] < summary["cnn_top1"]:
        assert result.exit_code == 1 and "below the CNN" in result.output
    else:
        assert result.exit_code == 0


def test_doctor():
    result = CliRunner().invoke(main, ["doctor"])
    assert result.exit_code == 0, result.output
    assert "CPUExecutionProvider: ok" in result.output and "ort_api: 21" in result.output

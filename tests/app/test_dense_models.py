"""Segmentation and detection models on the command line: listed by task, planned by ``--dry-run`` with the MACs of
each part, data of another task refused with a clear error; their weights from a file or (offline, with a clear
error) from torchvision. Their main job: tests/app/test_dense_run.py."""

import json
import urllib.error

import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from adderconvert.app.cli import main
from adderconvert.app.weights import WeightsError, load_weights
from adderconvert.architectures.registry import build
from tests.app.test_cli import _fake_fashion_mnist, _input_error


def test_list_groups_models_by_task():
    result = CliRunner().invoke(main, ["list"])
    assert result.exit_code == 0, result.output
    sections = {
        block.splitlines()[0]: block.split()[2:] for block in result.output.strip().split("\n\n")
    }  # "task (count):" then the names
    assert [header.split()[0] for header in sections] == ["classification", "segmentation", "detection"]
    by_task = {header.split()[0]: names for header, names in sections.items()}
    assert "resnet50" in by_task["classification"] and "fcn_resnet50" in by_task["segmentation"]
    assert "fasterrcnn_mobilenet_v3_large_320_fpn" in by_task["detection"]
    listed = json.loads(CliRunner().invoke(main, ["list", "--json"]).output)
    assert listed == by_task


@pytest.mark.parametrize(
    ("model", "size", "parts", "bases"),
    [
        ("fcn_resnet50", 16, ("backbone", "head"), 2),
        # a detector with depthwise convs: four bases, and every depthwise conv kept (no keep ceiling)
        ("fasterrcnn_mobilenet_v3_large_320_fpn", 32, ("backbone", "neck", "head"), 4),
    ],
)
def test_dry_run_shows_the_macs_of_each_part(tmp_path, model, size, parts, bases):
    data = _fake_fashion_mnist(tmp_path)
    args = [model, "--dry-run", "--weights", "none", "--image-size", str(size), "--data", str(data)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    for part in parts:
        assert any(line.startswith(f"{part}:") and "multiply-accumulates" in line for line in lines), part
    assert "prediction conv kept (keep_classifier)" in result.output or "classifier kept" in result.output
    assert f"adder x{bases} bases" in result.output and "over keep_ceiling" not in result.output
    assert ("depthwise kept (keep)" in result.output) == (bases == 4)
    # --weights none: the run trains the CNN first (one epoch by default), and the note says so
    assert "note: planned on the CNN before its 1 epoch(s) of training" in result.output


def test_dry_run_plans_on_the_tasks_scenes_and_refuses_classification_data(tmp_path):
    data = _fake_fashion_mnist(tmp_path)
    args = ["lraspp_mobilenet_v3_large", "--dry-run", "--weights", "none", "--image-size", "32", "--data", str(data)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    # The scenes' 11 classes (background + 10): the classifier convs end in 11 channels.
    assert "->11" in result.output.replace(" ", ""), result.output
    folder = tmp_path / "images"
    for split in ("train", "test"):
        for name in ("a", "b"):  # ImageFolder classes: a folder each, one image
            (folder / split / name).mkdir(parents=True)
            Image.new("RGB", (8, 8)).save(folder / split / name / "x.png")
    for dry_run in (["--dry-run"], []):  # the plan and the main job alike
        args = ["lraspp_mobilenet_v3_large", *dry_run, "--weights", "none", "--dataset", "imagefolder"]
        args += ["--data", str(folder), "--output", str(tmp_path / "run")]
        _input_error(CliRunner().invoke(main, args), "segmentation model", "classification")
    assert not (tmp_path / "run").exists()


def test_an_unknown_name_is_refused_with_the_close_ones():
    result = CliRunner().invoke(main, ["fcn_resnet5O"])
    _input_error(result, "unknown model 'fcn_resnet5O'", "fcn_resnet50")


def test_weights_from_a_file_load_but_the_heads_of_other_classes(tmp_path):
    source = build("lraspp_mobilenet_v3_large", 21, 64)
    path = tmp_path / "lraspp.pt"
    torch.save(source.state_dict(), path)
    model = build("lraspp_mobilenet_v3_large", 3, 64)
    assert not load_weights(model, "lraspp_mobilenet_v3_large", str(path))  # the 21-class heads are not loaded
    torch.testing.assert_close(model.backbone["0"][0].weight, source.backbone["0"][0].weight)
    assert model.classifier.low_classifier.out_channels == 3


def test_default_weights_offline_give_a_clear_error(monkeypatch):
    import torchvision.models._api

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", offline)
    model = build("fasterrcnn_mobilenet_v3_large_320_fpn", 3, 64)
    with pytest.raises(WeightsError, match="could not get torchvision's pretrained weights.*--weights PATH"):
        load_weights(model, "fasterrcnn_mobilenet_v3_large_320_fpn", "DEFAULT")

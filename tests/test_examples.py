"""The examples run as a user would run them."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision

from adderconvert.conversion import swap_layers
from adderconvert.data import FASHION_MNIST_DIR
from adderconvert.deploy.export import export_onnx

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(not FASHION_MNIST_DIR.is_dir(), reason="dataset-fashion-mnist not installed")


def test_ort_inference_example(tmp_path):
    model = torchvision.models.resnet18(num_classes=10)
    x = torch.randn(2, 3, 28, 28)
    swap_layers(model, x)
    path = export_onnx(model.eval(), tmp_path / "m.onnx", x)
    out = subprocess.run(
        [sys.executable, "examples/ort_inference.py", str(path), "--images", "300"],
        cwd=REPO,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert "top-1 on 300 test images" in out


@pytest.mark.parametrize(
    ("case", "message", "code"),
    [
        ("missing", "error: ONNX model not found", 1),
        ("folder", "is a folder, not an ONNX model", 1),
        ("text", "error: [ONNXRuntimeError]", 1),
        ("no_images", "argument --images: must be 1 or more, not 0", 2),  # was a ValueError from np.concatenate
        ("negative_images", "argument --images: must be 1 or more, not -9990", 2),  # was a ValueError too
        ("negative_threads", "argument --threads: must be 0 or more, not -1", 2),
    ],
)
def test_ort_inference_example_refuses_bad_input_with_a_message(tmp_path, case, message, code):
    (tmp_path / "text.onnx").write_text("hello")
    model = {"missing": tmp_path / "missing.onnx", "folder": tmp_path, "text": tmp_path / "text.onnx"}.get(case, "m")
    options = {"no_images": ["--images", "0"], "negative_images": ["--images", "-9990"]}.get(case, [])
    options += ["--threads", "-1"] if case == "negative_threads" else []
    command = [sys.executable, "examples/ort_inference.py", str(model), *options]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    assert result.returncode == code and message in result.stderr and "Traceback" not in result.stderr, result.stderr


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
    assert "AdderNet top-1 before any step" in out


def _tiny_adder_model() -> torch.nn.Module:
    from adderconvert.nn import AdderConv2d

    return torch.nn.Sequential(
        AdderConv2d(3, 8, 3, stride=2),
        torch.nn.BatchNorm2d(8),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(8, 10),
    ).eval()


@pytest.mark.parametrize(("portable", "dataset"), [(True, "fashion-mnist"), (False, "cifar10")])
def test_ort_inference_example_reads_metadata(tmp_path, portable, dataset):
    from adderconvert.deploy.export import input_metadata

    metadata = input_metadata(
        image_size=32, mean=[0.5] * 3, std=[0.25] * 3, classes=list("ABCDEFGHIJ"), dataset=dataset
    )
    path = export_onnx(
        _tiny_adder_model(), tmp_path / "m.onnx", torch.randn(2, 3, 32, 32), portable=portable, metadata=metadata
    )
    result = subprocess.run(
        [sys.executable, "examples/ort_inference.py", str(path), "--images", "100"],
        cwd=REPO,
        check=True,
        capture_output=True,
        text=True,
    )
    assert f"form {'portable' if portable else 'custom_op'}" in result.stdout
    assert "input ['batch', 3, 32, 32]" in result.stdout and "top-1 on 100 test images" in result.stdout
    assert "first predictions: " in result.stdout and result.stdout.split("first predictions: ")[1][0] in "ABCDEFGHIJ"
    warned = "trained on 'cifar10'" in result.stderr
    assert warned == (dataset == "cifar10")
    assert "no normalisation metadata" not in result.stderr


def _scene_models(tmp_path: Path) -> dict[str, Path]:
    """A small segmentation model and a small detector of the scenes' 11 classes, exported at 64 px."""
    from adderconvert.deploy.export import input_metadata
    from tests.conversion._dense import small_deeplab
    from tests.deploy._dense_models import score_spread, small_ssd

    torch.manual_seed(0)
    metadata = input_metadata(image_size=64, classes=[f"class {i}" for i in range(11)], dataset="scenes")
    images = torch.randn(2, 3, 64, 64)
    return {
        task: export_onnx(model, tmp_path / f"{task}.onnx", images, metadata=metadata)
        for task, model in (("segmentation", small_deeplab(11).eval()), ("detection", score_spread(small_ssd(64))))
    }


@pytest.fixture(scope="module")
def scene_models(tmp_path_factory):
    return _scene_models(tmp_path_factory.mktemp("scene_models"))


def _run_example(monkeypatch, capsys, script: str, *arguments: str) -> tuple[int, str, str]:
    """Run examples/SCRIPT.py in this process (as its ``__main__``; a new Python takes seconds to import torch):
    its exit code, stdout and stderr."""
    import runpy

    monkeypatch.syspath_prepend(str(REPO / "examples"))
    monkeypatch.setattr(sys, "argv", [f"examples/{script}.py", *arguments])
    with pytest.raises(SystemExit) as exit_:
        runpy.run_path(str(REPO / "examples" / f"{script}.py"), run_name="__main__")
    out, err = capsys.readouterr()
    return exit_.value.code, out, err


@pytest.mark.parametrize(
    ("script", "task", "printed"), [("segment_scenes", "segmentation", "mIoU"), ("detect_scenes", "detection", "mAP")]
)
def test_scene_examples_draw_their_outputs(scene_models, tmp_path, monkeypatch, capsys, script, task, printed):
    arguments = [str(scene_models[task]), "--images", "3", "--output", str(tmp_path / "out"), "--threads", "1"]
    code, out, err = _run_example(monkeypatch, capsys, script, *arguments)
    assert code == 0, err
    assert printed in out and "wrote 3 PNGs" in out
    pictures = sorted((tmp_path / "out").glob("*.png"))
    assert [p.name for p in pictures] == ["scene_0000.png", "scene_0001.png", "scene_0002.png"]
    from PIL import Image

    assert Image.open(pictures[0]).height == 3 * 64  # --scale 3


@pytest.mark.slow
def test_detect_scenes_example_as_a_user_runs_it(scene_models, tmp_path):
    command = [sys.executable, "examples/detect_scenes.py", str(scene_models["detection"]), "--images", "2"]
    result = subprocess.run([*command, "--output", str(tmp_path)], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0 and "wrote 2 PNGs" in result.stdout, result.stderr


@pytest.mark.parametrize(
    ("script", "case", "message", "code"),
    [
        ("detect_scenes", "segmentation", "is a segmentation model (outputs ['logits']), not a detection model", 1),
        ("segment_scenes", "detection", "is a detection model", 1),
        ("segment_scenes", "missing", "error: ONNX model not found", 1),
        ("detect_scenes", "output_file", "is a file, not a folder", 1),
        ("segment_scenes", "no_images", "argument --images: must be 1 or more, not 0", 2),
        ("detect_scenes", "too_many", "--images: at most 1000 test scenes, not 1001", 1),
        ("detect_scenes", "min_score", "argument --min-score: must be between 0 and 1, not 2.0", 2),
    ],
)
def test_scene_examples_refuse_bad_input_with_a_message(
    scene_models, tmp_path, monkeypatch, capsys, script, case, message, code
):
    (tmp_path / "file").write_text("")
    model = scene_models.get(case, tmp_path / "missing.onnx")
    if case in ("output_file", "no_images", "too_many", "min_score"):
        model = scene_models["detection" if script == "detect_scenes" else "segmentation"]
    options = {
        "output_file": ["--output", str(tmp_path / "file" / "out")],
        "no_images": ["--images", "0"],
        "too_many": ["--images", "1001"],
        "min_score": ["--min-score", "2"],
    }.get(case, ["--output", str(tmp_path / "out")])
    got, _, err = _run_example(monkeypatch, capsys, script, str(model), *options)
    assert got == code and message in err, err

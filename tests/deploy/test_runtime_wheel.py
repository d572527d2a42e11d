"""The runtime wheel (adderconvert-ort, `make runtime-wheel`): built from this repository, installed into a
fresh virtual environment without PyTorch, it runs every exported form with the full package's outputs; its
``run_dense`` runs exported segmentation and detection models in a process that never imports torch."""

import importlib.util
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

import adderconvert_ort
from adderconvert import convert, export_onnx
from adderconvert.deploy import runtime
from tests._onnx_models import small_adder_network
from tests.conversion._dense import scenes, small_deeplab
from tests.deploy._dense_models import score_spread, small_ssd

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("runtime_wheel_check", ROOT / "benchmarks" / "runtime_wheel.py")
runtime_wheel_check = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(runtime_wheel_check)


@pytest.fixture(scope="module")
def runtime_wheel() -> Path:
    subprocess.run(["make", "-C", str(ROOT), "runtime-wheel"], check=True, capture_output=True, text=True)
    return runtime_wheel_check.newest_wheel()


@pytest.mark.slow
def test_the_wheel_holds_the_library_and_module_only(runtime_wheel):
    assert "-py3-none-manylinux_2_" in runtime_wheel.name and runtime_wheel.name.endswith("_x86_64.whl")
    names = zipfile.ZipFile(runtime_wheel).namelist()
    package = sorted(n for n in names if not n.startswith("adderconvert_ort-") and not n.endswith("/"))
    assert package == [
        "adderconvert_ort/__init__.py",
        "adderconvert_ort/_lib/libadderconvert_ort.so",
        "adderconvert_ort/_version.py",
    ]
    metadata = zipfile.ZipFile(runtime_wheel).read(
        f"adderconvert_ort-{adderconvert_ort.__version__}.dist-info/METADATA"
    )
    requires = [line for line in metadata.decode().splitlines() if line.startswith("Requires-Dist:")]
    assert not any("torch" in line for line in requires)
    assert any(line.startswith("Requires-Dist: numpy") for line in requires)


@pytest.mark.slow
def test_the_library_exports_its_c_api_only(runtime_wheel, tmp_path):
    zipfile.ZipFile(runtime_wheel).extract("adderconvert_ort/_lib/libadderconvert_ort.so", tmp_path)
    listing = subprocess.run(
        ["nm", "-D", "--defined-only", str(tmp_path / "adderconvert_ort/_lib/libadderconvert_ort.so")],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    exported = {line.split()[-1] for line in listing.splitlines() if line.strip()}
    assert exported == {"RegisterCustomOps", *adderconvert_ort.C_API}


@pytest.mark.slow
def test_a_fresh_environment_without_torch_runs_every_form(runtime_wheel, tmp_path):
    torch.manual_seed(0)
    x = torch.randn(4, 3, 12, 12)
    forms = runtime_wheel_check.export_forms(small_adder_network(), x, torch.randn(16, 3, 12, 12), tmp_path)
    python = runtime_wheel_check.fresh_environment(runtime_wheel, tmp_path / "venv")
    results = runtime_wheel_check.compare(forms, x.numpy(), python, tmp_path)
    assert results["torch_importable"] is False
    assert results["build_info"]["cpu_isa"] == adderconvert_ort.build_info()["cpu_isa"]
    for form, result in results["forms"].items():
        assert result["equal"], f"{form}: outputs differ from the full package's by {result['max_abs_difference']}"
    assert results["forms"]["portable"]["adder_form"] == "portable"
    assert results["forms"]["fused"]["adder_form"] == "custom_op"


def test_importing_the_runtime_package_loads_no_torch():
    code = "import sys, adderconvert_ort; adderconvert_ort.build_info(); print('torch' in sys.modules)"
    run = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    assert run.stdout.strip() == "False"


def test_a_missing_onnxruntime_is_named_with_the_extras(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(ImportError, match=r"adderconvert-ort\[onnxruntime\].*onnxruntime-gpu") as raised:
        adderconvert_ort.make_session(tmp_path / "model.onnx")
    # what pip installs anywhere: adderconvert-ort is on no package index ("No matching distribution found")
    assert "pip install onnxruntime for CPUs, or onnxruntime-gpu for CUDA" in str(raised.value)


def test_both_packages_have_one_version():
    from importlib.metadata import version

    assert adderconvert_ort.__version__ == version("adderconvert")


# Runs without torch: argv = inputs.npz, then the ONNX files; writes outputs.npz beside inputs.npz (per model: the
# logits, or each image's boxes, scores and labels) and prints whether torch was imported.
_DENSE_RUN = """
import sys, numpy as np, adderconvert_ort
x, outputs = np.load(sys.argv[1])["x"], {}
for number, path in enumerate(sys.argv[2:]):
    found = adderconvert_ort.run_dense(adderconvert_ort.make_session(path, intra_op_num_threads=1), x)
    if isinstance(found, np.ndarray):
        outputs[f"{number}_logits"] = found
    else:
        outputs |= {f"{number}_{i}_{k}": v for i, image in enumerate(found) for k, v in image.items()}
np.savez(sys.argv[1].replace("inputs", "outputs"), **outputs)
print("torch" in sys.modules)
"""


def test_run_dense_without_torch_gives_the_full_packages_outputs(tmp_path):
    """adderconvert_ort.run_dense (numpy) on an adder segmentation model and a detector with its post-processing,
    in a process that never imports torch: the arrays of what adderconvert.deploy.runtime.run_dense gives as
    tensors, exactly (one implementation, the torch one converts around it)."""
    torch.manual_seed(0)
    images = scenes(5, 64, seed=0)[0]
    segmenter = convert(small_deeplab(num_classes=3).eval(), images).eval()
    detector = score_spread(small_ssd(64))
    paths = [export_onnx(model, tmp_path / f"{n}.onnx", images[:2]) for n, model in enumerate((segmenter, detector))]
    np.savez(tmp_path / "inputs.npz", x=images.numpy())
    run = subprocess.run(
        [sys.executable, "-c", _DENSE_RUN, str(tmp_path / "inputs.npz"), *map(str, paths)],
        check=True,
        capture_output=True,
        text=True,
    )
    assert run.stdout.strip() == "False"
    got = dict(np.load(tmp_path / "outputs.npz"))
    logits = runtime.run_dense(runtime.make_session(paths[0], intra_op_num_threads=1), images)
    assert isinstance(logits, torch.Tensor) and logits.shape == (5, 3, 64, 64)
    np.testing.assert_array_equal(got.pop("0_logits"), logits.numpy())
    detections = runtime.run_dense(runtime.make_session(paths[1], intra_op_num_threads=1), list(images))
    assert len(detections) == 5 and sum(len(d["scores"]) for d in detections) > 0
    for i, image in enumerate(detections):
        assert image["labels"].dtype == torch.int64 and image["boxes"].shape[1:] == (4,)
        for key, value in image.items():
            np.testing.assert_array_equal(got.pop(f"1_{i}_{key}"), value.numpy())
    assert not got


class _FixedBatchDetector:
    """A session stand-in of a detection graph of batch size 2 (an R-CNN's): each image's first pixel is its one
    detection's score; it records the batches it was given."""

    def __init__(self):
        self.batches = []

    def get_inputs(self):
        return [type("Input", (), {"name": "images", "shape": [2, 3, 4, 4]})]

    def get_outputs(self):
        return [type("Output", (), {"name": name}) for name in adderconvert_ort.DETECTION_OUTPUTS]

    def run(self, names, feed):
        x = feed["images"]
        self.batches.append(x)
        count = len(x)
        boxes = np.tile(np.array([[0, 0, 2, 2]], np.float32), (count, 1))
        return [boxes, x[:, 0, 0, 0].copy(), np.ones(count, np.int64), np.arange(count, dtype=np.int64)]


def test_run_dense_runs_a_fixed_batch_graph_in_pieces_and_refuses_a_classifier():
    session = _FixedBatchDetector()
    images = np.arange(3, dtype=np.float32)[:, None, None, None] + np.zeros((3, 3, 4, 4), np.float32)
    found = adderconvert_ort.run_dense(session, list(images))
    assert [float(d["scores"][0]) for d in found] == [0.0, 1.0, 2.0] and all(len(d["boxes"]) == 1 for d in found)
    assert [len(b) for b in session.batches] == [2, 2] and not session.batches[1][1].any()  # the last one padded
    classifier = type("Session", (), {"get_outputs": lambda self: [type("O", (), {"name": "output"})],
                                      "get_inputs": lambda self: [type("I", (), {"name": "input"})]})()  # fmt: skip
    with pytest.raises(ValueError, match="not a segmentation or detection model"):
        adderconvert_ort.run_dense(classifier, images)

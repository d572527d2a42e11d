"""examples/cpp: built with CMake as its comment says, it classifies raw tensors and netpbm images as Python
does (ONNX Runtime's C++ API, the custom-op library registered), and refuses bad input with a message."""

import glob
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

import adderconvert_ort
from adderconvert import export_onnx
from adderconvert.deploy.export import input_metadata
from tests._onnx_models import small_adder_network

REPO = Path(__file__).resolve().parents[1]
CLASSES = ["zero", "one", 'two "2"', "three", "four", "five"]
MEAN, STD = [0.4, 0.5, 0.6], [0.2, 0.25, 0.3]

pytestmark = pytest.mark.slow  # compiles the example


@pytest.fixture(scope="module")
def classify(tmp_path_factory) -> Path:
    build = tmp_path_factory.mktemp("cpp-example")
    options = [f"-DPython3_EXECUTABLE={sys.executable}"]
    headers = glob.glob(str(REPO / "build" / "*" / "ort-headers" / "onnxruntime_cxx_api.h"))
    if headers:  # the library's build fetched them already
        options.append(f"-DORT_INCLUDE_DIR={Path(headers[0]).parent}")
    subprocess.run(["cmake", "-S", str(REPO / "examples" / "cpp"), "-B", str(build), *options], check=True)
    subprocess.run(["cmake", "--build", str(build)], check=True)
    return build / "adderconvert_classify"


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> Path:
    model = small_adder_network(num_classes=len(CLASSES))
    metadata = input_metadata(image_size=12, mean=MEAN, std=STD, classes=CLASSES)
    x = torch.randn(2, 3, 12, 12)
    return export_onnx(model, tmp_path_factory.mktemp("model") / "m.onnx", x, dynamic_hw=True, metadata=metadata)


def _python_logits(model_path: Path, x: np.ndarray) -> np.ndarray:
    session = adderconvert_ort.make_session(model_path, intra_op_num_threads=1)
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def _python_classes(model_path: Path, x: np.ndarray) -> list[int]:
    return _python_logits(model_path, x).argmax(1).tolist()


def _run(classify: Path, *args) -> subprocess.CompletedProcess:
    command = [str(classify), *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True)


def _lines(stdout: str) -> list[tuple[int, int, str]]:
    rows = [line.split("\t") for line in stdout.splitlines()]
    return [(int(i), int(c), name) for i, c, name in rows]


def test_a_raw_tensor_is_classified_as_python_does(classify, model_path, tmp_path):
    x = np.random.default_rng(0).normal(size=(70, 3, 12, 12)).astype(np.float32)  # more than one batch of 64
    x.astype("<f4").tofile(tmp_path / "x.f32")
    library = adderconvert_ort.get_library_path()
    run = _run(classify, model_path, library, tmp_path / "x.f32", "--threads", 1, "--logits", tmp_path / "y.f32")
    assert run.returncode == 0, run.stderr
    expected = _python_logits(model_path, x)
    assert _lines(run.stdout) == [(i, c, CLASSES[c]) for i, c in enumerate(expected.argmax(1).tolist())]
    logits = np.fromfile(tmp_path / "y.f32", dtype="<f4").reshape(expected.shape)
    np.testing.assert_allclose(logits, expected, rtol=1e-6, atol=1e-6)


def test_netpbm_images_are_resized_and_normalised_as_torch_does(classify, model_path, tmp_path):
    rng = np.random.default_rng(1)
    paths, images = [], []
    for i in range(6):
        rgb = i % 2 == 0
        pixels = rng.integers(0, 256, size=(10, 9, 3) if rgb else (10, 9), dtype=np.uint8)
        path = tmp_path / f"image{i}.{'ppm' if rgb else 'pgm'}"
        header = f"{'P6' if rgb else 'P5'}\n# a comment\n9 10\n255\n".encode()
        path.write_bytes(header + pixels.tobytes())
        chw = pixels.transpose(2, 0, 1) if rgb else np.repeat(pixels[None], 3, axis=0)
        paths.append(path)
        images.append(chw.astype(np.float32) / 255)
    resized = torch.nn.functional.interpolate(torch.from_numpy(np.stack(images)), size=(12, 12), mode="bilinear")
    x = ((resized - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None]).numpy()
    run = _run(classify, model_path, adderconvert_ort.get_library_path(), *paths)
    assert run.returncode == 0, run.stderr
    assert [c for _, c, _ in _lines(run.stdout)] == _python_classes(model_path, x)


def test_a_netpbm_sample_is_a_share_of_its_maxval(classify, model_path, tmp_path):
    """Netpbm's maxval is white: a 4-bit image (maxval 15) reads as the same image at maxval 255 (was /255 for any
    maxval: 15 times darker, silently)."""
    pixels = np.random.default_rng(2).integers(0, 16, size=(10, 9), dtype=np.uint8)
    (tmp_path / "four_bit.pgm").write_bytes(b"P5 9 10 15\n" + pixels.tobytes())
    (tmp_path / "eight_bit.pgm").write_bytes(b"P5 9 10 255\n" + (pixels * 17).tobytes())
    logits = []
    for name in ("four_bit", "eight_bit"):
        out = tmp_path / f"{name}.f32"
        run = _run(classify, model_path, adderconvert_ort.get_library_path(), tmp_path / f"{name}.pgm", "--logits", out)
        assert run.returncode == 0, run.stderr
        logits.append(np.fromfile(out, dtype="<f4"))
    np.testing.assert_allclose(logits[0], logits[1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("case", "message", "code"),
    [
        ("no_input", "usage:", 2),
        ("bad_threads", "--threads must be 0", 2),
        ("threads_not_a_number", "--threads must be 0 (ONNX Runtime's default) or more, not 'abc'", 2),
        ("threads_too_many", "not '99999999999'", 2),
        ("unknown_option", "unknown option --thread", 2),
        ("two_tensors", "must be the only INPUT", 2),
        ("partial_tensor", "is not a whole number of float32 3x12x12 images", 1),
        ("text_image", "not a binary PGM (P5) or PPM (P6) image", 1),
        ("truncated_image", "truncated pixel data", 1),
        ("header_not_a_number", "a netpbm header needs width, height and maxval, found 'x'", 1),
        ("folder", "is a folder, not a file", 1),
        ("missing_library", "error:", 1),
    ],
)
def test_bad_input_gets_a_message(classify, model_path, tmp_path, case, message, code):
    library = adderconvert_ort.get_library_path()
    (tmp_path / "partial.f32").write_bytes(b"\0" * (3 * 12 * 12 * 4 + 4))
    (tmp_path / "text.pgm").write_text("hello")
    (tmp_path / "truncated.pgm").write_bytes(b"P5 9 10 255\n" + b"\0" * 20)
    (tmp_path / "header.pgm").write_bytes(b"P5 9 x 255\n" + b"\0" * 90)
    (tmp_path / "folder.f32").mkdir()
    tensor = tmp_path / "partial.f32"
    args = {
        "no_input": [model_path, library],
        "bad_threads": [model_path, library, tensor, "--threads", -1],
        "threads_not_a_number": [model_path, library, tensor, "--threads", "abc"],  # was taken as 0
        "threads_too_many": [model_path, library, tensor, "--threads", "99999999999"],
        "unknown_option": [model_path, library, tensor, "--thread", "2"],  # was taken as an input file
        "two_tensors": [model_path, library, tensor, tensor],
        "partial_tensor": [model_path, library, tmp_path / "partial.f32"],
        "text_image": [model_path, library, tmp_path / "text.pgm"],
        "truncated_image": [model_path, library, tmp_path / "truncated.pgm"],
        "header_not_a_number": [model_path, library, tmp_path / "header.pgm"],  # was "error: stoll"
        "folder": [model_path, library, tmp_path / "folder.f32"],  # was "9223372036854775807 bytes is not ..."
        "missing_library": [model_path, tmp_path / "nothing.so", tensor],
    }[case]
    run = _run(classify, *args)
    assert run.returncode == code and message in run.stderr and "terminate" not in run.stderr


def test_a_relative_python_executable_is_taken_from_the_working_folder(tmp_path):
    """The documented `cmake ... -DPython3_EXECUTABLE=.venv/bin/python`: FindPython dropped a relative path and
    found another Python (one without onnxruntime, or with another one)."""
    options = [f"-DPython3_EXECUTABLE={os.path.relpath(sys.executable, tmp_path)}"]
    headers = glob.glob(str(REPO / "build" / "*" / "ort-headers" / "onnxruntime_cxx_api.h"))
    if headers:
        options.append(f"-DORT_INCLUDE_DIR={Path(headers[0]).parent}")
    command = ["cmake", "-S", str(REPO / "examples" / "cpp"), "-B", "build", *options]
    run = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    library = Path(ort.__file__).parent / "capi"
    assert f"adderconvert_classify: ONNX Runtime {library}/libonnxruntime.so" in run.stdout

"""The runtime wheel (adderconvert-ort, `make runtime-wheel`): built from this repository, installed into a
fresh virtual environment without PyTorch, it runs every exported form with the full package's outputs."""

import json
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import adderconvert_ort
from adderconvert import export_onnx, quantize
from adderconvert.nn import AdderConv2d

ROOT = Path(__file__).resolve().parents[2]


def _model() -> nn.Module:
    """A small adder network: a multiplicative stem and head, plain, strided and grouped adder layers."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        AdderConv2d(8, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        AdderConv2d(16, 16, 3, stride=2, padding=1, groups=4),
        nn.BatchNorm2d(16),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 10),
    )
    with torch.no_grad():
        model(torch.randn(32, 3, 12, 12))  # BatchNorm statistics of adder outputs
    return model.eval()


def _export_forms(folder: Path) -> tuple[dict[str, Path], np.ndarray]:
    model, x = _model(), torch.randn(4, 3, 12, 12)
    forms = {
        "custom_op": export_onnx(model, folder / "custom_op.onnx", x, fuse_bn=False),
        "fused": export_onnx(model, folder / "fused.onnx", x),
        "int8": export_onnx(quantize(model, [torch.randn(16, 3, 12, 12)], "minmax"), folder / "int8.onnx", x),
        "portable": export_onnx(model, folder / "portable.onnx", x, portable=True),
    }
    return forms, x.numpy()


@pytest.fixture(scope="module")
def runtime_wheel() -> Path:
    subprocess.run(["make", "-C", str(ROOT), "runtime-wheel"], check=True, capture_output=True, text=True)
    wheels = sorted((ROOT / "dist").glob(f"adderconvert_ort-{adderconvert_ort.__version__}-*.whl"))
    assert wheels, "make runtime-wheel wrote no wheel of this version into dist/"
    return wheels[-1]


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
    forms, x = _export_forms(tmp_path)
    expected = {}
    for form, path in forms.items():
        session = adderconvert_ort.make_session(path, intra_op_num_threads=1)
        expected[form] = session.run(None, {session.get_inputs()[0].name: x})[0]
    np.savez(tmp_path / "expected.npz", x=x, **expected)

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    import onnxruntime

    subprocess.run(
        [
            python,
            "-m",
            "pip",
            "install",
            "-q",
            "--disable-pip-version-check",
            str(runtime_wheel),
            f"onnxruntime=={onnxruntime.__version__}",
        ],  # fmt: skip
        check=True,
    )
    script = textwrap.dedent(
        """
        import importlib.util, json, sys
        import numpy as np
        import adderconvert_ort

        data = np.load(sys.argv[1])
        results = {"torch": importlib.util.find_spec("torch") is not None, "info": adderconvert_ort.build_info()}
        for form in sys.argv[2:]:
            session = adderconvert_ort.make_session(f"{form}.onnx", intra_op_num_threads=1)
            got = session.run(None, {session.get_inputs()[0].name: data["x"]})[0]
            results[form] = bool(np.array_equal(got, data[form]))
            results[form + "_form"] = adderconvert_ort.model_metadata(session)["adder_form"]
        print(json.dumps(results))
        """
    )
    run = subprocess.run(
        [python, "-c", script, str(tmp_path / "expected.npz"), *forms],
        cwd=tmp_path,
        check=True,
        capture_output=True,
        text=True,
    )
    results = json.loads(run.stdout)
    assert results["torch"] is False
    assert results["info"]["cpu_isa"] == adderconvert_ort.build_info()["cpu_isa"]
    for form in forms:
        assert results[form] is True, f"{form}: outputs differ from the full package's"
    assert results["portable_form"] == "portable" and results["fused_form"] == "custom_op"


def test_importing_the_runtime_package_loads_no_torch():
    code = "import sys, adderconvert_ort; adderconvert_ort.build_info(); print('torch' in sys.modules)"
    run = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    assert run.stdout.strip() == "False"


def test_a_missing_onnxruntime_is_named_with_the_extras(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(ImportError, match=r"adderconvert-ort\[onnxruntime\].*onnxruntime-gpu"):
        adderconvert_ort.make_session(tmp_path / "model.onnx")


def test_both_packages_have_one_version():
    from importlib.metadata import version

    assert adderconvert_ort.__version__ == version("adderconvert")

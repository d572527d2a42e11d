"""The runtime wheel (adderconvert-ort, `make runtime-wheel`): built from this repository, installed into a
fresh virtual environment without PyTorch, it runs every exported form with the full package's outputs."""

import importlib.util
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

import adderconvert_ort
from tests._onnx_models import small_adder_network

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

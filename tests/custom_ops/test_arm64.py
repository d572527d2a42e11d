"""ARM64: `make test-arm64` cross-compiles the CPU kernels' native tests with Debian's aarch64 toolchain and runs
them under qemu-user with ADDERCONVERT_CPU_ISA=neon and =generic (FP32 within float rounding of the naive loops and
of the generic tiles, INT8 sums bit-exact); `make arm64-ort` cross-compiles the ONNX Runtime library and the C++
example against the aarch64 onnxruntime wheel, which run exported models here under qemu. Correctness only: speed
under emulation is not measured."""

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

import adderconvert_ort
from adderconvert import export_onnx, quantize
from tests._onnx_models import small_adder_network

REPO = Path(__file__).resolve().parents[2]
TOOLS = ("aarch64-linux-gnu-g++", "qemu-aarch64", "cmake", "make")


def _skip_without_tools() -> None:
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed (apt-get install g++-aarch64-linux-gnu qemu-user)")


@pytest.mark.slow
def test_native_kernel_tests_pass_under_qemu():
    _skip_without_tools()
    result = subprocess.run(
        ["make", "--no-print-directory", "test-arm64"], cwd=REPO, capture_output=True, text=True, timeout=1200
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    for isa in ("neon", "generic"):
        assert f" 0 failed (kernel isa: {isa})" in output, output
        assert f" 0 failed (quantized kernel isa: {isa})" in output, output


def _arm64_root(folder: Path) -> Path:
    """qemu-user's -L prefix: Debian's aarch64 libraries, plus a /proc/cpuinfo of a two-core Cortex-A72.

    ONNX Runtime reads the CPU's description from /proc/cpuinfo as it loads; qemu-user 7 passes the x86 host's
    file through, in which the ARM parser finds no processor, and the library crashes before main. qemu looks up
    absolute paths under the prefix first, so this one is read instead."""
    (folder / "proc").mkdir(parents=True)
    for entry in Path("/usr/aarch64-linux-gnu").iterdir():
        (folder / entry.name).symlink_to(entry)
    core = (
        "processor\t: {}\nFeatures\t: fp asimd evtstrm crc32 cpuid\nCPU implementer\t: 0x41\n"
        "CPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: 0xd08\nCPU revision\t: 3\n\n"
    )
    (folder / "proc" / "cpuinfo").write_text(core.format(0) + core.format(1))
    return folder


@pytest.mark.slow
def test_exported_models_run_under_onnx_runtime_for_arm64(tmp_path):
    _skip_without_tools()
    result = subprocess.run(["make", "--no-print-directory", "arm64-ort"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    build = REPO / "build" / "arm64" / "ort"
    library, classify = build / "lib" / "libadderconvert_ort.so", build / "example" / "adderconvert_classify"
    root = _arm64_root(tmp_path / "root")

    model, example = small_adder_network(), torch.randn(2, 3, 12, 12)
    forms = {
        "custom_op": export_onnx(model, tmp_path / "custom_op.onnx", example, fuse_bn=False),
        "fused": export_onnx(model, tmp_path / "fused.onnx", example),
        "int8": export_onnx(quantize(model, [torch.randn(16, 3, 12, 12)], "minmax"), tmp_path / "int8.onnx", example),
    }
    for batch in (1, 7):  # batch 1, and a batch the kernels' pixel blocks do not divide
        x = np.random.default_rng(batch).normal(size=(batch, 3, 12, 12)).astype("<f4")
        x.tofile(tmp_path / "x.f32")
        for form, path in forms.items():
            session = adderconvert_ort.make_session(path, intra_op_num_threads=1)
            x86 = session.run(None, {session.get_inputs()[0].name: x})[0]
            outputs = {}
            for isa in ("neon", "generic"):
                logits = tmp_path / f"{form}_{isa}.f32"
                run = subprocess.run(
                    [
                        "qemu-aarch64",
                        "-L",
                        str(root),
                        str(classify),
                        str(path),
                        str(library),
                        str(tmp_path / "x.f32"),
                        "--logits",
                        str(logits),
                    ],  # fmt: skip
                    env={**os.environ, "ADDERCONVERT_CPU_ISA": isa},
                    capture_output=True,
                    text=True,
                    timeout=600,
                )
                assert run.returncode == 0, run.stderr
                outputs[isa] = np.fromfile(logits, dtype="<f4").reshape(x86.shape)
            scale = float(np.abs(x86).max())
            if form == "int8":  # the sums are integers: NEON and generic give the same bits
                np.testing.assert_array_equal(outputs["neon"], outputs["generic"])
            else:
                np.testing.assert_allclose(outputs["neon"], outputs["generic"], rtol=0, atol=1e-5 * scale)
            np.testing.assert_allclose(outputs["neon"], x86, rtol=0, atol=1e-4 * scale)

"""The CPU kernels' native test suites (AdderConv, QuantizedAdderConv), built with AddressSanitizer and UBSan and
run for every ISA path."""

import platform
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def sanitized_build(tmp_path_factory):
    if shutil.which("cmake") is None:
        pytest.skip("cmake not installed")
    build = tmp_path_factory.mktemp("asan")
    subprocess.run(
        [
            "cmake",
            "-S",
            str(REPO / "custom_ops"),
            "-B",
            str(build),
            "-DADDERCONVERT_ORT=OFF",
            "-DADDERCONVERT_SANITIZE=ON",
            "-DCMAKE_BUILD_TYPE=Debug",
        ],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        ["cmake", "--build", str(build), "--target", "cpu_kernel_test", "quantized_kernel_test", "-j2"],
        check=True,
        capture_output=True,
    )
    return build


# Every value of ADDERCONVERT_CPU_ISA on this processor's architecture (custom_ops/cpu/isa.h); the FP32 tiles of
# avx512ifma are avx512's, so the FP32 test skips it.
ARM64 = platform.machine() in ("aarch64", "arm64")
ISAS = ("neon", "generic") if ARM64 else ("avx512ifma", "avx512", "avx2", "generic")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("binary", "isa"),
    [("cpu_kernel_test", isa) for isa in ISAS if isa != "avx512ifma"]
    + [("quantized_kernel_test", isa) for isa in ISAS],
)
def test_cpu_kernel_under_asan_and_ubsan(sanitized_build, binary, isa):
    env = {
        "ADDERCONVERT_CPU_ISA": isa,
        "ASAN_OPTIONS": "detect_leaks=1:abort_on_error=1",
        "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1",
    }
    result = subprocess.run([str(sanitized_build / binary)], capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert " 0 failed" in result.stdout
    assert "runtime error" not in result.stderr and "AddressSanitizer" not in result.stderr

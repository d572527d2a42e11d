"""ARM64: `make test-arm64` cross-compiles the CPU kernels' native tests with Debian's aarch64 toolchain and runs
them under qemu-user with ADDERCONVERT_CPU_ISA=neon and =generic (FP32 within float rounding of the naive loops and
of the generic tiles, INT8 sums bit-exact). Correctness only: speed under emulation is not measured."""

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TOOLS = ("aarch64-linux-gnu-g++", "qemu-aarch64", "cmake", "make")


@pytest.mark.slow
def test_native_kernel_tests_pass_under_qemu():
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed (apt-get install g++-aarch64-linux-gnu qemu-user)")
    result = subprocess.run(
        ["make", "--no-print-directory", "test-arm64"], cwd=REPO, capture_output=True, text=True, timeout=1200
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    for isa in ("neon", "generic"):
        assert f" 0 failed (kernel isa: {isa})" in output, output
        assert f" 0 failed (quantized kernel isa: {isa})" in output, output

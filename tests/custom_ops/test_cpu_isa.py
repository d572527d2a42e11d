"""One instruction-set choice for the FP32 and INT8 CPU kernels (custom_ops/cpu/isa.h): ADDERCONVERT_CPU_ISA caps
both, unknown values are refused with the valid ones named, and every op's errors name the op."""

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from adderconvert.deploy.ops import quantized_node_model, single_node_model
from adderconvert.deploy.runtime import get_library_path

REPO = Path(__file__).resolve().parents[2]
ERRORS = (
    ort.capi.onnxruntime_pybind11_state.Fail,
    ort.capi.onnxruntime_pybind11_state.InvalidArgument,
    ort.capi.onnxruntime_pybind11_state.RuntimeException,
    ort.capi.onnxruntime_pybind11_state.InvalidGraph,
)
X86 = platform.machine() in ("x86_64", "AMD64")
# This build's rows, widest first, with the /proc/cpuinfo flags each needs (isa.cc).
ROWS = (
    [
        ("avx512ifma", {"avx512f", "avx512bw", "avx512vl", "avx512dq", "fma", "avx512ifma"}),
        ("avx512", {"avx512f", "avx512bw", "avx512vl", "avx512dq", "fma"}),
        ("avx2", {"avx2", "fma"}),
        ("generic", set()),
    ]
    if X86
    else [("neon", set()), ("generic", set())]
)
FP32_NAME = {"avx512ifma": "avx512"}  # the FP32 tiles of avx512ifma are avx512's


def _cpu_flags() -> set[str]:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith(("flags", "Features")):
            return set(line.split(":", 1)[1].split())
    return set()


def _expected(cap: str) -> str:
    flags = _cpu_flags()
    names = [name for name, _ in ROWS]
    return next(name for name, needs in ROWS[names.index(cap) :] if needs <= flags)


SHAPE = ("N", "C", 8, 8)  # channels left open, so that the kernel (not ORT's shape check) sees a mismatch


def _models():
    rng = np.random.default_rng(3)
    w = rng.normal(size=(4, 3, 3, 3))
    q = rng.integers(0, 256, size=(4, 3, 3, 3), dtype=np.uint8)
    one = np.ones(4)
    return {
        "AdderConv": lambda **a: single_node_model(SHAPE, w, **a),
        "FusedAdderConv": lambda **a: single_node_model(SHAPE, w, scale=one, shift=one, **a),
        "QuantizedAdderConv": lambda **a: quantized_node_model(SHAPE, q, one, one, x_scale=0.1, **a),
    }


def _session(model) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.register_custom_ops_library(get_library_path())
    return ort.InferenceSession(model.SerializeToString(), sess_options=options, providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("op", ["AdderConv", "FusedAdderConv", "QuantizedAdderConv"])
def test_errors_name_the_op_that_failed(op):
    make = _models()[op]
    x = np.zeros((1, 3, 8, 8), np.float32)
    with pytest.raises(ERRORS, match=f"{op}: attribute 'pads' must have 4 values, got 2"):
        _session(make(pads=[1, 1])).run(None, {"X": x})
    with pytest.raises(ERRORS, match=f"{op}: strides must be positive"):
        _session(make(strides=[0, 1])).run(None, {"X": x})
    with pytest.raises(ERRORS, match=f"{op}: X has 5 channels but W expects 3"):
        _session(make()).run(None, {"X": np.zeros((1, 5, 8, 8), np.float32)})


# The choice is made once per process: each value runs in a child.
CHILD = """
import json, numpy as np
from adderconvert.nn import _kernels
from adderconvert.deploy.runtime import build_info
import torch
from adderconvert.nn.functional import adder_conv2d
out = {"torch_fp32": _kernels.cpu_isa(), "torch_int8": _kernels.cpu_quantized_isa()}
info = build_info()
out.update(ort_fp32=info["cpu_isa"], ort_int8=info["cpu_quantized_isa"])
try:
    adder_conv2d(torch.ones(1, 2, 4, 4), torch.ones(3, 2, 3, 3))
    out["torch_error"] = None
except Exception as e:
    out["torch_error"] = str(e)
print(json.dumps(out))
"""


def _child(isa: str) -> dict:
    env = {**os.environ, "ADDERCONVERT_CPU_ISA": isa}
    result = subprocess.run(
        [sys.executable, "-c", CHILD], capture_output=True, text=True, env=env, cwd=REPO, timeout=300, check=True
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("cap", [name for name, _ in ROWS])
def test_one_variable_caps_both_kernels(cap):
    chosen = _expected(cap)
    got = _child(cap)
    assert got["torch_int8"] == got["ort_int8"] == chosen
    assert got["torch_fp32"] == got["ort_fp32"] == FP32_NAME.get(chosen, chosen)
    assert got["torch_error"] is None


def test_unknown_value_is_refused_naming_the_valid_ones():
    got = _child("avx-512")
    valid = ", ".join(name for name, _ in ROWS)
    message = f"ADDERCONVERT_CPU_ISA='avx-512' is not an instruction set of this build; use one of {valid}"
    assert got["torch_fp32"].startswith(message) and got["torch_int8"].startswith(message)
    assert got["ort_fp32"].startswith(message)
    assert message in got["torch_error"]
    # ORT sessions of every op fail to load, naming the op.
    code = (
        "import sys, numpy as np\n"
        "from tests.custom_ops.test_cpu_isa import _models, _session\n"
        "for op, make in _models().items():\n"
        "    try:\n"
        "        _session(make()).run(None, {'X': np.zeros((1, 3, 8, 8), np.float32)})\n"
        "        print(op, 'ran')\n"
        "    except Exception as e:\n"
        "        print(str(e).splitlines()[-1] if str(e) else repr(e))\n"
    )
    env = {**os.environ, "ADDERCONVERT_CPU_ISA": "avx-512"}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO, timeout=300, check=True
    )
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 3, result.stdout
    for op, line in zip(["AdderConv", "FusedAdderConv", "QuantizedAdderConv"], lines, strict=True):
        assert f"{op}: {message}" in line, line

"""adderconvert.deploy.runtime: the library path, its build description, providers and make_session's checks."""

import os
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import adderconvert_ort
from adderconvert.deploy.ops import adder_conv_reference, single_node_model
from adderconvert.deploy.runtime import CPU_PROVIDER, available_providers, build_info, get_library_path, make_session
from adderconvert_ort import ISA_VARIABLE


@pytest.fixture
def one_node_path(tmp_path):
    w = np.random.default_rng(0).normal(size=(4, 3, 3, 3))
    path = tmp_path / "one_node.onnx"
    onnx.save(single_node_model(("N", 3, 8, 8), w, pads=[1, 1, 1, 1]), str(path))
    return path, w


def test_library_and_build_info():
    assert get_library_path().endswith("libadderconvert_ort.so")
    info = build_info()
    assert info["ort_api"] == "21" and info["cuda"] in ("0", "1")
    assert info["cpu_isa"] in ("avx512", "avx2", "generic")


def test_cpu_is_always_available():
    providers = available_providers()
    assert providers[-1] == CPU_PROVIDER and set(providers) <= set(ort.get_available_providers())


def test_make_session_runs_with_options(one_node_path):
    path, w = one_node_path
    session = make_session(path, intra_op_num_threads=1)
    x = np.random.default_rng(1).normal(size=(2, 3, 8, 8)).astype(np.float32)
    expected = adder_conv_reference(x, w.astype(np.float32), pads=(1, 1, 1, 1))
    np.testing.assert_allclose(session.run(None, {"X": x})[0], expected, rtol=1e-5, atol=1e-4)
    assert session.get_session_options().intra_op_num_threads == 1


def test_make_session_errors(one_node_path, tmp_path):
    path, _ = one_node_path
    with pytest.raises(FileNotFoundError, match="ONNX model not found"):
        make_session(tmp_path / "missing.onnx")
    with pytest.raises(TypeError, match="no attribute 'no_such_option'"):
        make_session(path, no_such_option=1)
    with pytest.raises(TypeError, match="no attribute 'add_session_config_entry'"):  # a method: was AttributeError
        make_session(path, add_session_config_entry=1)
    with pytest.raises(IsADirectoryError, match="is a folder, not an ONNX model"):  # was "ONNX model not found"
        make_session(tmp_path)
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        with pytest.raises(ValueError, match="onnxruntime-gpu"):
            make_session(path, providers=["CUDAExecutionProvider"])


def test_make_session_takes_one_provider_by_name(one_node_path):
    path, _ = one_node_path  # a str was taken as a list of its letters: "provider(s) ['C', 'P', 'U', ...]"
    assert make_session(path, providers=CPU_PROVIDER).get_providers() == [CPU_PROVIDER]


def test_kernel_path_names_the_int8_isa_where_it_differs(monkeypatch):
    monkeypatch.delenv(ISA_VARIABLE, raising=False)
    monkeypatch.setattr(
        adderconvert_ort, "build_info", lambda: {"cpu_isa": "avx512", "cpu_quantized_isa": "avx512ifma"}
    )
    assert adderconvert_ort.kernel_path().startswith("avx512, INT8 avx512ifma (the widest")  # was "avx512 (the ..."


@pytest.mark.parametrize("cap", [None, "generic", "no_such_isa"])
def test_kernel_path_says_which_isa_runs_and_why(cap):
    env = {k: v for k, v in os.environ.items() if k != ISA_VARIABLE}
    if cap is not None:
        env[ISA_VARIABLE] = cap
    code = (
        "import adderconvert_ort\ntry:\n    print(adderconvert_ort.kernel_path())\n"
        "except ValueError as e:\n    print('ValueError:', e)"
    )
    said = subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True, text=True).stdout
    if cap is None:
        info = build_info()
        isa = info["cpu_isa"] + ("" if info["cpu_quantized_isa"] == info["cpu_isa"] else ", INT8 ")
        assert said.startswith(isa) and info["cpu_quantized_isa"] in said
        assert "(the widest instruction set of this build" in said
    elif cap == "generic":
        assert said.strip() == "generic (ADDERCONVERT_CPU_ISA=generic caps it)"
    else:
        assert said.startswith("ValueError: ADDERCONVERT_CPU_ISA='no_such_isa' is not an instruction set of this build")

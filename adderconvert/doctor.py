"""``adderconvert doctor``: versions, build configuration and a one-node AdderConv check per provider."""

from __future__ import annotations

import platform
import tempfile
from pathlib import Path

import numpy as np

__all__ = ["one_node_model", "run_doctor"]


def one_node_model(path: Path, strides=(1, 1), pads=(1, 1, 1, 1), group: int = 1) -> Path:
    """Write a model holding one ``AdderConv`` node: input X (dynamic N, 4, 9, 9), W an initializer."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from adderconvert.onnx_ops import DOMAIN, OPSET_VERSION

    w = np.random.default_rng(0).normal(size=(6, 4 // group, 3, 3)).astype(np.float32)
    node = helper.make_node(
        "AdderConv", ["X", "W"], ["Y"], domain=DOMAIN, strides=list(strides), pads=list(pads), group=group
    )
    graph = helper.make_graph(
        [node],
        "adderconv",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", 4, 9, 9])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(w, "W")],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid(DOMAIN, OPSET_VERSION)], ir_version=10
    )
    onnx.save(model, str(path))
    return path


def run_doctor() -> int:
    """Print the report; return 0 when every available provider matches the NumPy reference."""
    import onnx
    import onnxruntime as ort
    import torch

    import adderconvert
    from adderconvert.nn import _kernels
    from adderconvert.onnx_ops import adder_conv_reference
    from adderconvert.runtime import available_providers, build_info, get_library_path, make_session

    print(f"adderconvert {adderconvert.__version__}, Python {platform.python_version()}")
    print(
        f"torch {torch.__version__} (CUDA available: {torch.cuda.is_available()}), onnx {onnx.__version__}, "
        f"onnxruntime {ort.__version__} (providers: {', '.join(ort.get_available_providers())})"
    )
    print(f"custom-op library: {get_library_path()}")
    for key, value in build_info().items():
        print(f"  {key}: {value}")
    print(f"PyTorch CPU kernel ISA: {_kernels.cpu_isa()}")
    failures = 0
    with tempfile.TemporaryDirectory() as tmp:
        path = one_node_model(Path(tmp) / "one_node.onnx")
        x = np.random.default_rng(1).normal(size=(2, 4, 9, 9)).astype(np.float32)
        w = onnx.numpy_helper.to_array(onnx.load(str(path)).graph.initializer[0])
        expected = adder_conv_reference(x, w, pads=(1, 1, 1, 1))
        for provider in available_providers():
            try:
                got = make_session(path, providers=[provider]).run(None, {"X": x})[0]
                err = float(np.abs(got - expected).max() / np.abs(expected).max())
                ok = err < 1e-5
                print(f"{provider}: {'ok' if ok else 'MISMATCH'} (max error {err:.1e} of max |y|)")
            except Exception as e:  # report and go on to the next provider
                ok = False
                print(f"{provider}: FAILED ({type(e).__name__}: {e})")
            failures += not ok
    return 1 if failures else 0

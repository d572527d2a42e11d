"""The CUDA kernel through ONNX Runtime's CUDAExecutionProvider (needs onnxruntime-gpu and a GPU)."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from adderconvert.deploy.ops import AdderConv, FusedAdderConv, adder_conv_reference
from adderconvert.deploy.runtime import CUDA_PROVIDER, available_providers, get_library_path
from tests._onnx_models import CASES, FORMS, case_model, one_node
from tests._special_values import GEOMETRIES, assert_same_specials, special_inputs

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(CUDA_PROVIDER not in ort.get_available_providers(), reason="needs onnxruntime-gpu"),
]


def _cuda_session(model: onnx.ModelProto | str, tmp_path=None):
    """A session whose every node must run on the CUDA EP (no silent CPU fallback)."""
    if isinstance(model, onnx.ModelProto):
        path = tmp_path / "m.onnx"
        onnx.save(model, str(path))
        model = str(path)
    options = ort.SessionOptions()
    options.register_custom_ops_library(get_library_path())
    options.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    # TF32 off: the CNN parts (stem Conv, Gemm) must compute in FP32 to compare at 1e-5.
    return ort.InferenceSession(model, sess_options=options, providers=[(CUDA_PROVIDER, {"use_tf32": "0"})])


def test_cuda_is_picked_by_default():
    assert available_providers()[0] == CUDA_PROVIDER


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("form", FORMS)
def test_cuda_ep_matches_numpy_reference(case, form, tmp_path):
    model, x = case_model(case, form, np.random.default_rng(0))
    got = _cuda_session(model, tmp_path).run(None, {"X": x})[0]
    expected = onnx.reference.ReferenceEvaluator(model, new_ops=[AdderConv, FusedAdderConv]).run(None, {"X": x})[0]
    assert np.abs(got - expected).max() <= 1e-5 * max(np.abs(expected).max(), 1e-6)


@pytest.mark.parametrize(("x_shape", "w_shape", "pads"), GEOMETRIES)
def test_cuda_ep_infinities_and_nan_as_the_reference(x_shape, w_shape, pads, tmp_path):
    x, w = special_inputs(x_shape, w_shape)
    got = _cuda_session(one_node(x.shape, w, pads=list(pads)), tmp_path).run(None, {"X": x})[0]
    assert_same_specials(got, adder_conv_reference(x, w, pads=pads), rtol=1e-5)


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_small"])
def test_exported_models_match_pytorch(name, tmp_path):
    """CUDA EP vs PyTorch in float64: as accurate as PyTorch's own float32 CPU run.

    The CUDA kernel sums |x - w| in another order than the CPU kernel, and BatchNorms after adder layers
    (inputs near -10^3, std 1-15) amplify float32 rounding, so both float32 runs are held to the
    float64 result rather than to each other.
    """
    import copy

    from adderconvert.deploy.export import export_onnx
    from tests.test_export import MODELS

    model, x = MODELS[name]()
    x3 = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        exact = copy.deepcopy(model).double()(x3.double()).numpy()
        cpu32 = model(x3).numpy()
    scale = np.abs(exact).max()
    cpu_error = np.abs(cpu32 - exact).max() / scale
    for fuse in (False, True):
        path = export_onnx(model, tmp_path / f"{name}{int(fuse)}.onnx", x[:2], fuse_bn=fuse)
        got = _cuda_session(str(path)).run(None, {"input": x3.numpy()})[0]
        cuda_error = np.abs(got - exact).max() / scale
        print(f"{name} fuse_bn={fuse}: CUDA EP error {cuda_error:.1e}, PyTorch CPU float32 error {cpu_error:.1e}")
        assert cuda_error <= max(3 * cpu_error, 1e-5)


def test_bad_input_refused_on_cuda(tmp_path):
    w = np.ones((4, 3, 3, 3), np.float32)
    model = one_node((1, 5, 8, 8), w)
    with pytest.raises(Exception, match="X has 5 channels but W expects 3"):
        _cuda_session(model, tmp_path).run(None, {"X": np.ones((1, 5, 8, 8), np.float32)})


@pytest.mark.parametrize("form", ["bias", "fused_relu"])
def test_cuda_graph_replay_with_io_binding(form, tmp_path):
    """Compute neither synchronises nor allocates outside ORT: ORT captures it in a CUDA graph, and each
    replay reads the new input bound in place."""
    rng = np.random.default_rng(1)
    model, x = case_model(CASES[3], form, rng)
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    options = ort.SessionOptions()
    options.register_custom_ops_library(get_library_path())
    options.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    provider = (CUDA_PROVIDER, {"enable_cuda_graph": "1", "use_tf32": "0"})
    session = ort.InferenceSession(str(path), sess_options=options, providers=[provider])
    reference = onnx.reference.ReferenceEvaluator(model, new_ops=[AdderConv, FusedAdderConv])
    x_device = ort.OrtValue.ortvalue_from_numpy(x, "cuda", 0)
    y_shape = reference.run(None, {"X": x})[0].shape
    y_device = ort.OrtValue.ortvalue_from_shape_and_type(y_shape, np.float32, "cuda", 0)
    binding = session.io_binding()
    binding.bind_ortvalue_input("X", x_device)
    binding.bind_ortvalue_output("Y", y_device)
    for _ in range(4):  # the first runs capture the graph, the later ones replay it
        x = rng.normal(size=x.shape).astype(np.float32)
        x_device.update_inplace(x)
        session.run_with_iobinding(binding)
        expected = reference.run(None, {"X": x})[0]
        assert np.abs(y_device.numpy() - expected).max() <= 1e-5 * np.abs(expected).max()

"""Export round trips: PyTorch -> ONNX (AdderConv / FusedAdderConv) -> ONNX Runtime CPU and onnx.reference."""

import copy
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torchvision
from torch import nn

from adderconvert.conversion import swap_layers
from adderconvert.deploy.export import combine_bases_by_conv, export_onnx, input_metadata, make_portable, read_metadata
from adderconvert.deploy.ops import DOMAIN, AdderConv, FusedAdderConv, adder_conv_reference, single_node_model
from adderconvert.deploy.runtime import make_session
from adderconvert.nn import AdderConv2d


class Geometry(nn.Module):
    """Dilation, non-square kernels, stride > 1, groups, bias, and an adder output that is a graph output."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 12, 3, padding=1)
        self.a = AdderConv2d(12, 12, (3, 1), stride=(2, 1), padding=(2, 0), dilation=(2, 1), groups=3, bias=True)
        self.bn_a = nn.BatchNorm2d(12)
        self.b = AdderConv2d(12, 8, (1, 3), stride=2, padding=(0, 1))
        self.bn_b = nn.BatchNorm2d(8)
        self.c = AdderConv2d(8, 8, 3, padding="same", dilation=2, groups=8)

    def forward(self, x):
        x = torch.relu(self.bn_a(self.a(self.stem(x))))
        x = self.bn_b(self.b(x))
        return self.c(x)


def _calibrated(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """Give BatchNorms the running statistics of real adder outputs (means around -10^2..-10^3)."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = None
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(x)
    return model.eval()


def _converted(name: str, size: int, init: str = "fresh") -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None, num_classes=10)
    x = torch.randn(4, 3, size, size)
    swap_layers(model, x, init=init)
    return _calibrated(model, x), x


MODELS = {
    "resnet18": lambda: _converted("resnet18", 32),
    # Untrained, with non-negative fresh weights, this model is chaotic in float32 (PyTorch float32 is
    # 70% of max|y| away from float64 on new inputs), which leaves nothing to compare; rescaled conv
    # weights keep it well-conditioned.
    "mobilenet_v3_small": lambda: _converted("mobilenet_v3_small", 32, init="rescale"),
    "geometry": lambda: (_calibrated(Geometry(), torch.randn(4, 3, 17, 15)), torch.randn(4, 3, 17, 15)),
}


# ORT is held to 1e-4 of max|y| from float64 PyTorch, or to 3x PyTorch float32's own error where that
# is larger (mobilenet_v3_small: its hard-swish/SE layers amplify float32 rounding to ~2e-4). Float32 sums
# in another order (our kernels, ORT's own ops in the portable form) land up to ~6e-5 of max|y| from
# float64 through these untrained models: resnet18 on four inputs, custom op 4e-7 to 6.2e-5,
# portable form 6e-6 to 4.4e-5, PyTorch float32 3e-7 to 1.2e-5 (AMD EPYC, AVX2). A wrong tap, pad or
# epilogue is off by far more (1e-2 of max|y| and up).
ORT_TOLERANCE = 1e-4


# MobileNetV3-Small's conversion and export take 36 s: the full tier.
@pytest.fixture(
    scope="module", params=[pytest.param(m, marks=pytest.mark.slow) if m == "mobilenet_v3_small" else m for m in MODELS]
)
def exported(request, tmp_path_factory):
    model, x = MODELS[request.param]()
    out = tmp_path_factory.mktemp(request.param)
    paths = {fuse: export_onnx(model, out / f"fuse{int(fuse)}.onnx", x[:2], fuse_bn=fuse) for fuse in (False, True)}
    paths["portable"] = export_onnx(model, out / "portable.onnx", x[:2], portable=True)
    return request.param, model, paths


@pytest.mark.parametrize("fuse", [False, True])
def test_ort_matches_pytorch_at_another_batch_size(exported, fuse):
    name, model, paths = exported
    torch.manual_seed(1)
    shape = {"geometry": (3, 3, 17, 15)}.get(name, (3, 3, 32, 32))  # exported at batch 2, run at 3
    x = torch.randn(shape)
    with torch.no_grad():
        expected = copy.deepcopy(model).double()(x.double()).numpy()
        float32_error = np.abs(model(x).numpy() - expected).max()
    got = make_session(paths[fuse], providers=["CPUExecutionProvider"]).run(None, {"input": x.numpy()})[0]
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() <= max(ORT_TOLERANCE * np.abs(expected).max(), 3 * float32_error)


def test_ort_matches_onnx_reference(exported):
    name, _, paths = exported
    x = np.random.default_rng(2).normal(size={"geometry": (2, 3, 17, 15)}.get(name, (2, 3, 32, 32))).astype(np.float32)
    for path in (paths[False], paths[True]):
        model = onnx.load(str(path))
        ref = onnx.reference.ReferenceEvaluator(model, new_ops=[AdderConv, FusedAdderConv]).run(None, {"input": x})[0]
        got = make_session(path, providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
        # float32 kernels vs a float64 reference through up to 50 layers whose pre-BN values reach -10^3.
        assert np.abs(got - ref).max() <= 5e-4 * np.abs(ref).max()


def test_graph_contents(exported):
    name, model, paths = exported
    adders = sum(isinstance(m, AdderConv2d) for m in model.modules())
    plain, fused = (onnx.load(str(paths[f])) for f in (False, True))
    ops = lambda m: [(n.domain, n.op_type) for n in m.graph.node]  # noqa: E731
    assert ops(plain).count((DOMAIN, "AdderConv")) == adders
    assert (DOMAIN, "FusedAdderConv") not in ops(plain)
    fused_ops = ops(fused)
    assert fused_ops.count((DOMAIN, "AdderConv")) + fused_ops.count((DOMAIN, "FusedAdderConv")) == adders
    assert fused_ops.count((DOMAIN, "FusedAdderConv")) >= 1
    assert ("", "BatchNormalization") not in fused_ops
    meta = {p.key: p.value for p in fused.metadata_props}
    assert meta["adderconvert_version"]
    assert fused.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    onnx.checker.check_model(fused, full_check=True)
    # One self-contained file.
    assert sorted(p.name for p in paths[True].parent.iterdir()) == ["fuse0.onnx", "fuse1.onnx", "portable.onnx"]


def test_static_batch_export(tmp_path):
    model, x = MODELS["geometry"]()
    path = export_onnx(model, tmp_path / "static.onnx", x[:2], dynamic_batch=False)
    assert onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim[0].dim_value == 2


def test_float64_model_exports_as_float32_with_a_warning(tmp_path):
    model, x = MODELS["geometry"]()
    model = model.double()
    with pytest.warns(UserWarning, match="float32 copy of the float64 model"):
        path = export_onnx(model, tmp_path / "f64.onnx", x[:2].double())
    assert next(model.parameters()).dtype == torch.float64  # the caller's model is left as it was
    with torch.no_grad():
        expected = model(x.double()).numpy()
    got = make_session(path, providers=["CPUExecutionProvider"]).run(None, {"input": x.numpy()})[0]
    assert np.abs(got - expected).max() <= 1e-4 * np.abs(expected).max()


def test_export_rejects_several_inputs(tmp_path):
    with pytest.raises(ValueError, match="one example input"):
        export_onnx(nn.Identity(), tmp_path / "x.onnx", (torch.zeros(1), torch.zeros(1)))


def test_export_refuses_wrong_arguments_before_any_work(tmp_path):
    """Issue 34, 7: a NumPy example, a folder or a path under a file as the output, a model that is not a module."""
    x = torch.zeros(1, 3, 8, 8)
    with pytest.raises(TypeError, match="torch.Tensor batch"):
        export_onnx(nn.Identity(), tmp_path / "x.onnx", x.numpy())
    with pytest.raises(ValueError, match="is a folder"):
        export_onnx(nn.Identity(), tmp_path, x)
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match="is a file, not a folder"):
        export_onnx(nn.Identity(), tmp_path / "file" / "x.onnx", x)
    with pytest.raises(TypeError, match="torch.nn.Module"):
        export_onnx("model.pt", tmp_path / "x.onnx", x)


# --- portable form: standard ONNX ops only --------------------------------------------------------------


def _plain_session(model) -> ort.InferenceSession:
    """onnxruntime with no custom-op library registered, for a path or serialized model."""
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, providers=["CPUExecutionProvider"])


def test_portable_graph_has_standard_ops_only(exported):
    name, model, paths = exported
    portable = onnx.load(str(paths["portable"]))
    assert all(n.domain in ("", "ai.onnx") for n in portable.graph.node)
    assert all(o.domain in ("", "ai.onnx") for o in portable.opset_import)
    ops = [n.op_type for n in portable.graph.node]
    adders = sum(isinstance(m, AdderConv2d) for m in model.modules())
    assert ops.count("ReduceSum") >= adders and "Abs" in ops
    plain = [n.op_type for n in onnx.load(str(paths[False])).graph.node]
    assert ops.count("BatchNormalization") == plain.count("BatchNormalization") > 0
    assert read_metadata(portable)["adder_form"] == "portable"
    onnx.checker.check_model(portable, full_check=True)


def test_portable_runs_in_plain_onnxruntime(exported):
    name, model, paths = exported
    torch.manual_seed(3)
    x = torch.randn({"geometry": (3, 3, 17, 15)}.get(name, (3, 3, 32, 32)))
    with torch.no_grad():
        expected = copy.deepcopy(model).double()(x.double()).numpy()
        float32_error = np.abs(model(x).numpy() - expected).max()
    portable = _plain_session(paths["portable"]).run(None, {"input": x.numpy()})[0]
    custom = make_session(paths[False], providers=["CPUExecutionProvider"]).run(None, {"input": x.numpy()})[0]
    custom_error = np.abs(custom - expected).max()
    # How far float32 rounding moves this model is measured by two float32 implementations, PyTorch's and the
    # custom op's (mobilenet_v3_small on this input: 1.1e-4 and 3.5e-4 of max|y| 0.09, the portable form 6.7e-4;
    # AMD EPYC, AVX-512, one thread). PyTorch's alone was 3x too tight for the portable form once the depthwise
    # kernel summed |x - w| directly (with the tiles the test passed).
    amplified = 3 * max(float32_error, custom_error)
    assert np.abs(portable - expected).max() <= max(ORT_TOLERANCE * np.abs(expected).max(), amplified)
    # Against the custom op: ORT_TOLERANCE of max|y|, or twice the custom op's own distance from float64
    # where float32 rounding is amplified more (two float32 results each up to ~6e-5 off float64 can lie
    # 7e-5 of max|y| apart: resnet18 on this input, AMD EPYC, AVX2).
    assert np.abs(portable - custom).max() <= max(ORT_TOLERANCE * np.abs(expected).max(), 2 * custom_error)


def test_portable_parity_on_trained_official_weights(tmp_path):
    """One layer of the published ResNet-20 (|w| up to 71) on ReLU-like inputs: portable vs custom op."""
    state = torch.load(
        Path(__file__).parents[1] / "data" / "ResNet20-AdderNet.pth", map_location="cpu", weights_only=True
    )
    layer = AdderConv2d(64, 64, 3, padding=1)
    with torch.no_grad():
        layer.weight.copy_(state["module.layer3.0.conv2.adder"])
    x = torch.relu(torch.randn(2, 64, 8, 8) * 3)
    paths = [
        export_onnx(layer, tmp_path / f"{form}.onnx", x, portable=form == "portable") for form in ("c", "portable")
    ]
    custom = make_session(paths[0], providers=["CPUExecutionProvider"]).run(None, {"input": x.numpy()})[0]
    portable = _plain_session(paths[1]).run(None, {"input": x.numpy()})[0]
    with torch.no_grad():
        expected = layer.double()(x.double()).numpy()
    assert np.abs(portable - custom).max() <= 1e-5 * np.abs(custom).max()
    assert np.abs(portable - expected).max() <= 1e-6 * np.abs(expected).max()


@pytest.mark.parametrize("chunk_elements", [1, 500, 1 << 22])
def test_make_portable_single_node_against_the_numpy_reference(chunk_elements):
    """Grouped, dilated, strided, asymmetrically padded AdderConv with bias, in one or many channel chunks."""
    rng = np.random.default_rng(4)
    w = rng.normal(size=(6, 2, 3, 2)).astype(np.float32) * 3
    bias = rng.normal(size=6).astype(np.float32)
    attrs = dict(strides=[2, 1], pads=[1, 0, 2, 1], dilations=[1, 2], group=3)
    model = single_node_model(["N", 6, 9, 8], w, bias=bias, **attrs)
    assert make_portable(model, [2, 6, 9, 8], chunk_elements=chunk_elements) == 1
    subs = sum(n.op_type == "Sub" for n in model.graph.node)
    assert subs == {1: 2, 500: 2, 1 << 22: 1}[chunk_elements]  # 2 output channels per group, 1 per chunk at most
    x = rng.normal(size=(3, 6, 9, 8)).astype(np.float32)
    got = _plain_session(model.SerializeToString()).run(None, {"X": x})[0]
    expected = adder_conv_reference(x.astype(np.float64), w.astype(np.float64), **attrs) + bias.reshape(1, -1, 1, 1)
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() <= 1e-6 * np.abs(expected).max()


def test_portable_warns_when_patches_are_large(tmp_path):
    layer = AdderConv2d(64, 8, 3, padding=1)  # patches: 64*9 values x 128*128 positions x 4 B = 36 MiB per image
    with pytest.warns(UserWarning, match=r"patch tensors of 1 layer\(s\) exceed 32 MiB per image"):
        export_onnx(layer, tmp_path / "big.onnx", torch.randn(1, 64, 128, 128), portable=True)


def test_make_portable_refuses_fused_graphs(tmp_path):
    model, x = MODELS["geometry"]()
    fused = onnx.load(str(export_onnx(model, tmp_path / "fused.onnx", x[:2], fuse_bn=True)))
    with pytest.raises(ValueError, match="export with fuse_bn=False"):
        make_portable(fused, list(x[:2].shape))


@pytest.mark.parametrize("portable", [False, True])
def test_metadata_and_dynamic_height_width(tmp_path, portable):
    model, x = MODELS["geometry"]()
    meta = input_metadata(image_size=(17, 15), mean=[0.5] * 3, std=[0.25] * 3, classes=list("abcdefgh"))
    path = export_onnx(model, tmp_path / "m.onnx", x[:2], dynamic_hw=True, portable=portable, metadata=meta)
    proto = onnx.load(str(path))
    dims = [d.dim_param for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", "", "height", "width"]
    stored = read_metadata(path)
    assert stored["image_size"] == [17, 15] and stored["mean"] == [0.5] * 3 and stored["std"] == [0.25] * 3
    assert stored["classes"] == list("abcdefgh") and stored["layout"] == "NCHW"
    assert stored["adder_form"] == ("portable" if portable else "custom_op")
    session = _plain_session(path) if portable else make_session(path, providers=["CPUExecutionProvider"])
    assert session.get_modelmeta().custom_metadata_map["layout"] == "NCHW"
    for shape in [(2, 3, 17, 15), (1, 3, 24, 20)]:
        xx = torch.randn(shape)
        with torch.no_grad():
            expected = copy.deepcopy(model).double()(xx.double()).numpy()
        got = session.run(None, {"input": xx.numpy()})[0]
        assert got.shape == expected.shape
        assert np.abs(got - expected).max() <= 1e-4 * np.abs(expected).max()


def test_metadata_may_not_override_export_keys(tmp_path):
    with pytest.raises(ValueError, match="adderconvert_version"):
        export_onnx(nn.Identity(), tmp_path / "x.onnx", torch.zeros(1, 3, 4, 4), metadata={"adderconvert_version": "9"})


@pytest.mark.parametrize("bases", [2, 3])
@pytest.mark.parametrize("form", ["custom", "portable", "int8"])
def test_a_model_of_several_bases_exports_and_matches_in_onnx_runtime(tmp_path, form, bases):
    from adderconvert.conversion import run_conversion
    from adderconvert.quantization import quantize

    torch.manual_seed(0)
    cnn = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1, groups=2), nn.BatchNorm2d(16), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10),
    )  # fmt: skip
    cnn.train()(torch.randn(64, 3, 12, 12))
    x = torch.randn(32, 3, 12, 12)
    model = run_conversion(cnn.eval(), x, bases=bases).model.eval()
    assert model[3].bases == bases and model[3].base_scale.abs().sum() > 0  # the extra bases are fitted
    if form == "int8":
        model = quantize(model, x)
    # From one image, as a user may give it: the file still takes any batch.
    path = export_onnx(model, tmp_path / "several.onnx", x[:1], portable=form == "portable")
    session = make_session(path) if form != "portable" else _plain_session(path)
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        np.testing.assert_allclose(got, model(x).numpy(), rtol=1e-4, atol=1e-4)
    if form != "portable":  # the bases add up in one grouped 1x1 Conv after the adder node: no slicing nodes
        graph = onnx.load(str(path)).graph
        weights = {t.name: t.dims for t in graph.initializer}
        (adder,) = [n for n in graph.node if n.domain == DOMAIN and weights[n.input[1]][0] == bases * 16]
        after = [n for n in graph.node if adder.output[0] in n.input]
        assert [n.op_type for n in after] == ["Conv"]
        assert next(a.i for a in after[0].attribute if a.name == "group") == 16
        assert not {"Gather", "Split", "Slice", "Squeeze"} & {n.op_type for n in graph.node}


def test_combining_bases_by_conv_keeps_the_function_and_leaves_the_model():
    torch.manual_seed(0)
    model = nn.Sequential(AdderConv2d(4, 6, 3, padding=1, groups=2, bias=True, bases=3), nn.BatchNorm2d(6)).eval()
    with torch.no_grad():
        model[0].base_scale.normal_()
        model[0].base_shift.normal_()
    x = torch.randn(2, 4, 7, 7)
    combined = combine_bases_by_conv(model)
    assert combined is not model and model[0].bases == 3 and isinstance(model[0], AdderConv2d)
    assert [type(m).__name__ for m in combined[0]] == ["AdderConv2d", "Conv2d"] and combined[0][0].bases == 1
    with torch.no_grad():
        torch.testing.assert_close(combined(x), model(x))
    single = nn.Sequential(AdderConv2d(4, 6, 3), nn.ReLU())
    assert combine_bases_by_conv(single) is single  # nothing to combine: no copy
    state = torch.get_rng_state()
    layer = combine_bases_by_conv(model[0])  # the model is the layer itself
    assert torch.equal(torch.get_rng_state(), state) and not layer.training
    with torch.no_grad():
        torch.testing.assert_close(layer(x), model[0](x))
    shared = nn.Sequential(model[0], nn.ReLU(), model[0].train())  # one layer under two names (modes follow it)
    assert [type(m).__name__ for m in combine_bases_by_conv(shared)] == ["Sequential", "ReLU", "Sequential"]

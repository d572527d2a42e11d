"""Layer-wise reconstruction after the sign init: it lowers the adder model's error against its CNN, keeps
weights where the sign init puts them (two edges per layer, or measured inputs with ``inside``), and the
model stays an ordinary adder model that restores, loads and exports."""

import copy

import onnx
import pytest
import torch
from torch import nn

from adderconvert.conversion import fit_norm_statistics, plan_conversion, restore, swap_layers
from adderconvert.conversion.reconstruction import RECONSTRUCT_METHODS, layer_errors, reconstruct
from adderconvert.deploy.export import export_onnx
from adderconvert.nn import AdderConv2d


class _RandomCNN(nn.Module):
    """Random weights; BatchNorm statistics set on the data, so that every layer's output is normalised."""

    def __init__(self):
        super().__init__()

        def block(cin, cout, stride=1, groups=1):
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, stride, 1, groups=groups, bias=False), nn.BatchNorm2d(cout), nn.ReLU()
            )

        self.stem = block(3, 16)
        self.body = nn.Sequential(block(16, 32, 2), block(32, 32, groups=4), block(32, 32), block(32, 48, 2))
        self.head = nn.Conv2d(48, 24, 1)  # no norm after it: conversion inserts one
        self.fc = nn.Linear(24, 10)

    def forward(self, x):
        x = self.head(self.body(self.stem(x)))
        return self.fc(x.mean((2, 3)))


def _images(n: int, seed: int) -> torch.Tensor:
    """Smooth random images: neighbouring pixels correlate, as in photographs."""
    noise = torch.randn(n, 3, 20, 20, generator=torch.Generator().manual_seed(seed))
    return nn.functional.avg_pool2d(noise, 5, 1, 0)  # 16 x 16


@pytest.fixture(scope="module")
def cnn():
    torch.manual_seed(0)
    model = _RandomCNN()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
                m.momentum = None
        model.train()(_images(512, 1))  # running statistics of the data
    return model.eval()


def _sign_student(model, calibration):
    student = copy.deepcopy(model)
    report = plan_conversion(student, calibration)
    swap_layers(student, None, init="sign", report=report)
    fit_norm_statistics(student, report, calibration)
    return student.eval(), report


def _output_error(model, student, images) -> float:
    """MSE of the student's logits against the CNN's, over their variance (computed here, not by the
    module under test)."""
    with torch.no_grad():
        want, got = model(images), student(images)
    return float(((got - want) ** 2).mean() / want.var(0).mean())


@pytest.mark.parametrize("method", RECONSTRUCT_METHODS)
@pytest.mark.parametrize("correct", [False, True])
def test_reconstruction_lowers_the_error_against_the_cnn_on_new_images(cnn, method, correct):
    calibration, test = _images(256, 2), _images(256, 3)
    plain, report = _sign_student(cnn, calibration)
    fitted = copy.deepcopy(plain)
    result = reconstruct(cnn, fitted, report, calibration, method=method, correct=correct)
    assert [f.name for f in result.layers] == ["body.0.0", "body.1.0", "body.2.0", "body.3.0", "head.0"]
    assert all(f.error_after <= f.error_before + 1e-6 for f in result.layers)
    assert result.seconds > 0
    before, after = _output_error(cnn, plain, test), _output_error(cnn, fitted, test)
    assert after < 0.8 * before, f"{method}: logits error {before:.3f} -> {after:.3f}"
    # And layer by layer, on the student's own inputs: the last layer carries less error.
    assert (
        layer_errors(cnn, fitted, report, test)[-1]["compound_error"]
        < layer_errors(cnn, plain, report, test)[-1]["compound_error"]
    )


def test_signs_keep_every_weight_at_its_layers_two_edges(cnn):
    calibration = _images(256, 2)
    plain, report = _sign_student(cnn, calibration)
    fitted = copy.deepcopy(plain)
    result = reconstruct(cnn, fitted, report, calibration, method="signs")
    assert any(f.kept == "signs" for f in result.layers)
    changed = 0
    for (name, a), (_, b) in zip(plain.named_modules(), fitted.named_modules()):
        if isinstance(a, AdderConv2d):
            assert set(b.weight.unique().tolist()) <= set(a.weight.unique().tolist()), name
            changed += int((a.weight != b.weight).sum())
    assert changed > 0  # some signs differ from the CNN's


def test_inside_places_weights_at_measured_inputs(cnn):
    calibration = _images(256, 2)
    plain, report = _sign_student(cnn, calibration)
    fitted = copy.deepcopy(plain)
    result = reconstruct(cnn, fitted, report, calibration, method="signs", inside=True)
    for fit in result.layers:
        assert 0.0 <= fit.inside_share <= 1.0
    for decision in report.converted:
        layer = fitted.get_submodule(decision.name)
        layer = layer[0] if isinstance(layer, nn.Sequential) else layer
        edges = plain.get_submodule(decision.name)
        edges = edges[0] if isinstance(edges, nn.Sequential) else edges
        low, high = float(edges.weight.detach().min()), float(edges.weight.detach().max())
        assert float(layer.weight.min()) >= low and float(layer.weight.max()) <= high


def test_reconstructed_model_restores_loads_and_exports(cnn, tmp_path):
    calibration = _images(128, 2)
    fitted, report = _sign_student(cnn, calibration)
    reconstruct(cnn, fitted, report, calibration, method="signs", correct=True)
    again = restore(_RandomCNN(), report.to_dict())
    again.load_state_dict(fitted.state_dict())
    again.eval()
    x = _images(8, 4)
    with torch.no_grad():
        assert torch.equal(again(x), fitted(x))
    assert all(type(m) is AdderConv2d for m in again.modules() if isinstance(m, AdderConv2d))
    path = export_onnx(fitted, tmp_path / "fitted.onnx", x)
    ops = {node.op_type for node in onnx.load(path).graph.node}
    assert ops & {"AdderConv", "FusedAdderConv"}


def test_bad_method_is_rejected(cnn):
    calibration = _images(16, 2)
    student, report = _sign_student(cnn, calibration)
    with pytest.raises(ValueError, match="method must be one of"):
        reconstruct(cnn, student, report, calibration, method="adam")


def _bases_student(model, calibration, bases):
    student = copy.deepcopy(model)
    report = plan_conversion(student, calibration)
    for decision in report.converted:
        decision.bases = bases
    swap_layers(student, None, init="sign", report=report)
    fit_norm_statistics(student, report, calibration)
    return student.eval(), report


def test_a_second_base_fits_what_the_first_leaves(cnn, tmp_path):
    calibration, test = _images(256, 2), _images(256, 3)
    one, report_one = _bases_student(cnn, calibration, 1)
    two, report_two = _bases_student(cnn, calibration, 2)
    x = _images(8, 4)
    with torch.no_grad():  # before the fit the second base adds nothing: the same function as one base
        torch.testing.assert_close(two(x), one(x))
    fits_one = reconstruct(cnn, one, report_one, calibration).layers
    fits_two = reconstruct(cnn, two, report_two, calibration).layers
    assert all(b.error_after < 0.6 * a.error_after for a, b in zip(fits_one, fits_two))
    assert _output_error(cnn, two, test) < 0.7 * _output_error(cnn, one, test)
    for module in two.modules():
        if isinstance(module, AdderConv2d):  # both bases at the layer's two edges, the second one scaled
            assert module.bases == 2 and len(module.weight.unique()) == 2 and module.base_scale.abs().sum() > 0
    again = restore(_RandomCNN(), report_two.to_dict())
    again.load_state_dict(two.state_dict())
    with torch.no_grad():
        assert torch.equal(again.eval()(x), two(x))


def test_a_two_base_layers_norm_holds_the_statistics_of_its_whole_output(cnn):
    from adderconvert.conversion import reestimate_batchnorm

    calibration = _images(256, 2)
    two, report = _bases_student(cnn, calibration, 2)
    reconstruct(cnn, two, report, calibration)
    x = _images(64, 4)
    with torch.no_grad():
        before = two(x)
    reestimate_batchnorm(two, [(calibration, None)], 1, "cpu")  # what fine-tuning's evaluations do
    with torch.no_grad():
        torch.testing.assert_close(two.eval()(x), before, rtol=0.05, atol=0.05 * float(before.abs().mean()))

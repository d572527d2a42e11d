"""benchmarks/recipe_probes.py: what each probe changes, on small models (the recipes.py runs are benchmarks)."""

import importlib.util
import math
import sys
from pathlib import Path

import torch
from torch import nn
from torchvision.ops import StochasticDepth

import adderconvert.train.loop as loop
from adderconvert.conversion import ConversionReport, LayerDecision
from adderconvert.nn import AdderConv2d, scale_adder_gradients_

_BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(_BENCHMARKS))
_spec = importlib.util.spec_from_file_location("recipe_probes", _BENCHMARKS / "recipe_probes.py")
probes = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(probes)


def _decision(name: str, low: float, high: float) -> LayerDecision:
    return LayerDecision(
        name=name, in_channels=2, out_channels=2, kernel_size=(3, 3), stride=(1, 1), groups=1, macs=1, convert=True,
        rule="default", insert_bn=False, input_std=1.0, input_min=low, input_max=high,
    )  # fmt: skip


def test_step_scale_multiplies_each_layers_adaptive_step_by_its_input_span(monkeypatch):
    torch.manual_seed(0)
    student = nn.Sequential(AdderConv2d(2, 2, 3), AdderConv2d(2, 2, 3))
    report = ConversionReport(model="Sequential", layers=[_decision("0", -1.0, 23.0), _decision("1", -100.0, 140.0)])
    monkeypatch.setattr(probes.recipes, "convert_student", lambda *args, **kwargs: (student, report, {}))
    monkeypatch.setattr(loop, "scale_adder_gradients_", scale_adder_gradients_)
    probes.step_scale(width_ref=48.0)
    probes.recipes.convert_student()
    assert [m.step_factor for m in student] == [1.0, 5.0]  # spans 24 and 240
    for layer in student:
        layer.weight.grad = torch.randn_like(layer.weight)
    loop.scale_adder_gradients_(student, 4.0)
    for layer in student:
        norm = float(torch.linalg.vector_norm(layer.weight.grad))
        assert math.isclose(norm, 4.0 * layer.step_factor * math.sqrt(layer.weight.numel()), rel_tol=1e-5)


def test_no_stochastic_depth_converts_a_teacher_without_it(monkeypatch):
    teacher = nn.Sequential(StochasticDepth(0.2, "row"), nn.Conv2d(2, 2, 3), StochasticDepth(0.1, "row"))
    seen = []
    monkeypatch.setattr(probes.recipes, "convert_student", lambda name, model, *a, **k: seen.append(model) or 0)
    probes.no_stochastic_depth()
    probes.recipes.convert_student("any", teacher)
    assert seen == [teacher] and [m.p for m in teacher if isinstance(m, StochasticDepth)] == [0.0, 0.0]


def test_fit_images_gives_the_reconstruction_the_first_calibration_images(monkeypatch):
    import adderconvert.conversion.recipe as recipe

    torch.manual_seed(0)
    cnn = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1))
    cnn = nn.Sequential(*cnn, nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))
    images = torch.randn(600, 3, 8, 8)
    fitted = []
    real = recipe.reconstruct
    monkeypatch.setattr(
        recipe, "reconstruct", lambda t, s, r, x, *a, **k: [fitted.append(x), real(t, s, r, x, *a, **k)][1]
    )
    monkeypatch.setattr(recipe, "calibration_images", recipe.calibration_images)  # restored after the test
    monkeypatch.setattr(recipe, "_reconstruction_images", recipe._reconstruction_images)
    recipe.convert(cnn.eval(), images)
    assert len(fitted[-1]) == recipe.PLAN_IMAGES  # the default: the planning images
    probes.fit_images(500)
    recipe.convert(cnn.eval(), images)
    assert torch.equal(fitted[-1], images[:500])


def test_depthwise_bases_gives_only_depthwise_adder_layers_their_count(monkeypatch):
    import adderconvert.conversion.recipe as recipe

    torch.manual_seed(0)
    cnn = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1))
    cnn = nn.Sequential(*cnn, nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 1), nn.BatchNorm2d(8), nn.ReLU())
    cnn = nn.Sequential(*cnn, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))
    cnn[3].groups, cnn[3].weight = 8, nn.Parameter(torch.randn(8, 1, 3, 3))  # depthwise
    images = torch.randn(64, 3, 8, 8)
    monkeypatch.setattr(recipe, "swap_layers", recipe.swap_layers)  # restored after the test
    probes.depthwise_bases(2)
    adder = recipe.run_conversion(cnn.eval(), images, keep=()).model
    assert adder[3].bases == 2 and adder[6].bases == 4  # the recipe's default (its plan converts a depthwise conv)
    with torch.no_grad():  # the function kept: closer to the CNN than a fresh adder model of the same plan
        fresh = recipe.run_conversion(cnn.eval(), images, keep=(), init="fresh").model
        kept = (adder.eval()(images) - cnn(images)).pow(2).mean()
        assert kept < 0.5 * (fresh.eval()(images) - cnn(images)).pow(2).mean()


def test_bases_fidelity_agreement_counts_the_images_whose_top1_classes_match():
    """The share of images on which two models' top-1 classes agree, over batches of 256 (600 images: three)."""
    torch.manual_seed(0)
    images = torch.randn(600, 5)
    teacher = nn.Linear(5, 3)
    student = nn.Linear(5, 3)
    want = int((student(images).argmax(1) == teacher(images).argmax(1)).sum()) / len(images)
    assert 0.0 < want < 1.0  # two random classifiers agree on some images only
    reference = probes._top1(teacher, images)
    assert math.isclose(probes._agreement(student, reference, images), want)
    assert probes._agreement(teacher, reference, images) == 1.0


def test_channel_edges_keep_the_function_and_bring_each_weight_near_its_own_channel():
    import adderconvert

    torch.manual_seed(0)
    cnn = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1, groups=4), nn.BatchNorm2d(16), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4),
    )  # fmt: skip
    images = torch.randn(300, 3, 8, 8) * torch.tensor([1.0, 5.0, 0.2]).view(1, 3, 1, 1)  # channels of other spans
    adder = adderconvert.convert(cnn.eval(), images, keep_stem=False, bases=1).eval()  # the probe's: one base
    before = adder(images[:100])
    spans = [float(m.weight.detach().abs().max()) for m in adder.modules() if isinstance(m, AdderConv2d)]
    moved = probes.move_to_channel_edges(adder, images)
    assert moved > 0
    torch.testing.assert_close(adder(images[:100]), before, atol=1e-4, rtol=1e-4)  # the norms took the constants
    first = adder[0].weight.detach()
    for c in range(3):  # every weight of input channel c within that channel's edges
        high, low = float(images[:, c].max().clamp(min=0)), float(images[:, c].min().clamp(max=0))
        gap = max(probes.SIGN_MARGIN * (high - low), probes.SIGN_MIN_GAP)
        assert low - gap - 1e-4 <= float(first[:, c].min()) and float(first[:, c].max()) <= high + gap + 1e-4
    assert float(first[:, 2].abs().max()) < float(first[:, 1].abs().max()) <= spans[0]  # the narrow channel nearer 0


class _Residual(nn.Module):
    """conv -> BN -> ReLU -> grouped conv, and a BN whose output a residual sum also reads."""

    def __init__(self):
        super().__init__()
        self.a, self.bn_a = nn.Conv2d(4, 8, 1), nn.BatchNorm2d(8)
        self.b = nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.bn_b, self.c = nn.BatchNorm2d(8), nn.Conv2d(8, 4, 1)

    def forward(self, x):
        y = self.b(torch.relu(self.bn_a(self.a(x))))
        z = self.bn_b(y)
        return self.c(z + y)


def test_equalize_rescales_only_convs_a_batchnorm_feeds_alone_and_keeps_the_function():
    torch.manual_seed(0)
    model = _Residual().eval()
    for norm in (model.bn_a, model.bn_b):
        norm.running_mean.normal_()
        norm.running_var.uniform_(0.5, 2.0)
        norm.weight.data.normal_()
    x = torch.randn(3, 4, 8, 8)
    before = model(x)
    weight = model.b.weight.detach().clone()
    assert probes.equalize_columns(model, x) == ["b"]  # c reads z + y: bn_b's output is not its alone
    torch.testing.assert_close(model(x), before, rtol=1e-5, atol=1e-5)
    magnitude = model.b.weight.detach().abs().view(2, 4, 4, 9).mean((1, 3))  # per input channel, per group
    assert torch.allclose(magnitude / magnitude.mean(1, keepdim=True), torch.ones(2, 4), atol=1e-5)
    assert not torch.equal(model.b.weight, weight)

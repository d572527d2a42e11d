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

"""Logit and feature distillation, checked against hand-computed values."""

import copy
import math

import numpy as np
import pytest
import torch
import torchvision

from adderconvert.conversion import plan_conversion, swap_layers
from adderconvert.nn import AdderConv2d
from adderconvert.train.distill import FeatureDistillation, distillation_loss, feature_map_loss


def test_distillation_loss_matches_hand_computation():
    student = torch.tensor([[2.0, 0.0]])
    teacher = torch.tensor([[0.0, 2.0]])
    target = torch.tensor([0])
    t, alpha = 2.0, 0.25
    ce = -math.log(math.exp(2) / (math.exp(2) + 1))
    p = [math.exp(0) / (1 + math.exp(1)), math.exp(1) / (1 + math.exp(1))]  # teacher softmax at T=2
    q = [math.exp(1) / (1 + math.exp(1)), math.exp(0) / (1 + math.exp(1))]  # student softmax at T=2
    kl = sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))
    expected = (1 - alpha) * ce + alpha * t * t * kl
    assert float(distillation_loss(student, target, teacher, alpha, t)) == pytest.approx(expected, rel=1e-6)
    assert float(distillation_loss(student, target, None)) == pytest.approx(ce, rel=1e-6)


def test_a_batch_of_ignored_pixels_is_a_zero_loss_not_nan():
    """Segmentation logits whose every pixel is the ignore index: nothing counts, and the loss is zero with a
    gradient (not NaN, which the divergence guard would take for a learning rate too high)."""
    student = torch.randn(2, 3, 4, 4, requires_grad=True)
    ignored = torch.full((2, 4, 4), 255)
    for teacher in (None, torch.randn(2, 3, 4, 4)):
        loss = distillation_loss(student, ignored, teacher, ignore_index=255)
        assert float(loss) == 0.0
        loss.backward()
        assert torch.equal(student.grad, torch.zeros_like(student))
    partly = ignored.clone()
    partly[0, 0, 0] = 1  # one pixel counts: the plain mean over it
    expected = torch.nn.functional.cross_entropy(student[:1, :, 0, 0], torch.tensor([1]))
    assert float(distillation_loss(student, partly, None, ignore_index=255)) == pytest.approx(float(expected))


def _pair():
    teacher = torchvision.models.resnet18(num_classes=10).eval()
    student = copy.deepcopy(teacher)
    swap_layers(student, torch.randn(2, 3, 32, 32))
    return student.eval(), teacher


def test_feature_pairs_are_the_batchnorms_after_adder_layers():
    student, teacher = _pair()
    names = FeatureDistillation(student, teacher).names
    # ResNet-18: two convs in each of 8 blocks and 3 downsample convs, the stem excluded.
    assert len(names) == 19
    assert names[0] == "layer1.0.bn1" and "layer2.0.downsample.1" in names and "bn1" not in names


def test_feature_loss_is_the_squared_difference_over_the_teachers_variance():
    student, teacher = _pair()
    teacher = copy.deepcopy(student)  # identical features: zero loss
    features = FeatureDistillation(student, teacher)
    x = torch.randn(2, 3, 32, 32)
    student(x), teacher(x)  # the student's features are recorded in a forward with gradients
    assert float(features.loss()) == 0.0
    # Shift the first matched BatchNorm's output by delta: only that pair differs, by delta everywhere.
    delta = 0.5
    with torch.no_grad():
        student.get_submodule(features.names[0]).bias += delta
        student(x)
    assert not features._student  # a forward without gradients (evaluation) records nothing
    student(x), teacher(x)
    first = features._teacher[features.names[0]].double()
    variance = float(first.var(dim=(0, 2, 3), unbiased=False).mean())  # per channel, averaged over the channels
    loss = float(features.loss())
    assert loss == pytest.approx(delta**2 / variance / len(features.names), rel=1e-5)


def test_feature_loss_gradient_reaches_the_adder_weights():
    student, teacher = _pair()
    student.train()
    features = FeatureDistillation(student, teacher)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        teacher(x)
    student(x)
    features.loss().backward()
    assert student.layer1[0].conv1.weight.grad.abs().sum() > 0
    features.remove()
    student(x)
    assert not features._student  # hooks removed: nothing recorded


def test_feature_distillation_needs_a_norm_after_an_adder():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3))
    with pytest.raises(ValueError, match="no BatchNorm after an adder layer"):
        FeatureDistillation(model, copy.deepcopy(model))


def _vgg11_pair():
    """VGG-11 without BatchNorms: conversion inserts one after every adder layer."""
    torch.manual_seed(0)
    teacher = torchvision.models.vgg11(num_classes=10).eval()
    student = copy.deepcopy(teacher)
    report = plan_conversion(student, torch.randn(2, 3, 32, 32))
    swap_layers(student, None, report=report)
    return student.train(), teacher, report


def test_inserted_batchnorms_take_part_in_feature_distillation():
    student, teacher, report = _vgg11_pair()
    assert all(d.insert_bn for d in report.converted) and len(report.converted) == 7
    features = FeatureDistillation(student, teacher)
    assert features.names == [f"{d.name}.1" for d in report.converted]  # features.3.1, features.6.1, ...
    # The teacher's side of an inserted BatchNorm is its conv's output, standardised per channel.
    x = torch.randn(4, 3, 32, 32)
    convs = {}

    def record(name):
        def hook(module, inputs, output):
            convs[name] = output.clone()  # before the in-place ReLU that follows

        return hook

    hooks = [teacher.get_submodule(d.name).register_forward_hook(record(d.name)) for d in report.converted]
    with torch.no_grad():
        teacher(x)
    for h in hooks:
        h.remove()
    student(x)
    expected_terms = []
    for d in report.converted:
        conv = convs[d.name].double()
        mean, var = conv.mean((0, 2, 3), keepdim=True), conv.var((0, 2, 3), unbiased=False, keepdim=True)
        standardised = (conv - mean) / torch.sqrt(var + 1e-5)
        torch.testing.assert_close(features._teacher[f"{d.name}.1"].double(), standardised, rtol=1e-4, atol=1e-4)
        scale = standardised.var((0, 2, 3), unbiased=False).mean()  # just under 1: the eps in the standardisation
        expected_terms.append(((features._student[f"{d.name}.1"].double() - standardised) ** 2).mean() / scale)
    loss = features.loss()
    assert float(loss) == pytest.approx(float(torch.stack(expected_terms).mean()), rel=1e-4)


def test_inserted_batchnorm_features_train_the_adder_weights():
    student, teacher, _ = _vgg11_pair()
    features = FeatureDistillation(student, teacher, torch.randn(2, 3, 32, 32))
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        teacher(x)
    student(x)
    features.loss().backward()
    adder = student.features[3][0]
    assert isinstance(adder, AdderConv2d) and adder.weight.grad.abs().sum() > 0


def test_feature_map_loss_against_a_reference():
    gen = torch.Generator().manual_seed(1)
    teacher = {"0": torch.randn(3, 4, 5, 5, generator=gen) * 7, "pool": torch.randn(3, 2, 2, 2, generator=gen)}
    student = {name: value + torch.randn(value.shape, generator=gen) for name, value in teacher.items()}
    terms = []
    for name, t in teacher.items():
        t64, s64 = t.double().numpy(), student[name].double().numpy()
        variance = t64.transpose(1, 0, 2, 3).reshape(t64.shape[1], -1).var(axis=1).mean()
        terms.append(((s64 - t64) ** 2).mean() / variance)
    assert math.isclose(float(feature_map_loss(student, teacher)), float(np.mean(terms)), rel_tol=1e-5)
    assert float(feature_map_loss(teacher, teacher)) == 0.0
    # any number of positions: a pooled (N, C) vector is one position per image
    vector = torch.randn(8, 3, generator=gen)
    reference = ((vector + 1 - vector) ** 2).mean() / vector.double().numpy().var(axis=0).mean()
    assert math.isclose(float(feature_map_loss({"v": vector + 1}, {"v": vector})), float(reference), rel_tol=1e-5)
    # a constant teacher map (a dead channel everywhere) does not divide by zero
    assert math.isfinite(float(feature_map_loss({"0": torch.ones(2, 1, 2, 2)}, {"0": torch.zeros(2, 1, 2, 2)})))

"""Conversion rules, the report, BN insertion, the inits and conversion of every torchvision classification CNN."""

import copy

import pytest
import torch
import torchvision
from torch import nn

from adderconvert.architectures.cnn import list_cnn_models
from adderconvert.conversion import (
    KEEP_KINDS,
    SIGN_MARGIN,
    SIGN_MIN_GAP,
    ConversionReport,
    fit_norm_statistics,
    norms_after_adders,
    plan_conversion,
    restore,
    sign_edges,
    swap_layers,
)
from adderconvert.nn import AdderConv2d
from tests._families import family_of, one_per_family


def _resnet18():
    return torchvision.models.resnet18(num_classes=10)


X = torch.randn(2, 3, 32, 32)


def test_default_keeps_stem_and_converts_the_rest():
    model = _resnet18()
    report = plan_conversion(model, X)
    decisions = {d.name: d for d in report.layers}
    assert not decisions["conv1"].convert and "stem" in decisions["conv1"].rule
    assert all(d.convert for name, d in decisions.items() if name != "conv1")
    swap_layers(model, X, report=report)
    assert isinstance(model.conv1, nn.Conv2d) and not isinstance(model.conv1, AdderConv2d)
    assert isinstance(model.layer1[0].conv1, AdderConv2d)
    assert isinstance(model.fc, nn.Linear)
    assert model(X).shape == (2, 10)


def test_report_totals_and_macs():
    report = plan_conversion(_resnet18(), torch.randn(1, 3, 32, 32))
    # layer1.0.conv1: 64->64, 3x3, output 8x8 (32 -> /2 stem -> /2 maxpool)
    layer = next(d for d in report.layers if d.name == "layer1.0.conv1")
    assert layer.macs == 64 * 8 * 8 * 64 * 9
    assert report.converted_macs == sum(d.macs for d in report.layers if d.convert)
    assert "become additions" in report.table()
    assert report.to_dict()["converted_layers"] == 19


def test_include_exclude_wildcards():
    model = _resnet18()
    report = plan_conversion(model, X, include=["layer4.*"], exclude=["*.downsample.*"])
    converted = {d.name for d in report.converted}
    assert converted == {"layer4.0.conv1", "layer4.0.conv2", "layer4.1.conv1", "layer4.1.conv2"}
    rules = {d.name: d.rule for d in report.layers}
    assert rules["layer4.0.downsample.0"] == "exclude '*.downsample.*'"
    assert rules["layer1.0.conv1"] == "not included"


@pytest.mark.parametrize("kind", ["include", "exclude"])
def test_unmatched_rule_is_an_error_naming_it(kind):
    with pytest.raises(ValueError, match=f"{kind} rule 'layer9.\\*' matches no Conv2d"):
        plan_conversion(_resnet18(), X, **{kind: ["layer9.*"]})


def test_convert_stem_when_asked():
    report = plan_conversion(_resnet18(), X, keep_stem=False)
    assert next(d for d in report.layers if d.name == "conv1").convert


def test_conv_classifier_is_kept_and_bn_inserted_where_missing():
    model = torchvision.models.squeezenet1_1(num_classes=10)
    report = plan_conversion(model, torch.randn(2, 3, 64, 64))
    decisions = {d.name: d for d in report.layers}
    assert not decisions["classifier.1"].convert and "classifier" in decisions["classifier.1"].rule
    assert decisions["features.3.squeeze"].insert_bn
    swap_layers(model, torch.randn(2, 3, 64, 64), report=report)
    squeeze = model.features[3].squeeze
    assert isinstance(squeeze[0], AdderConv2d) and isinstance(squeeze[1], nn.BatchNorm2d)


def test_no_bn_inserted_where_one_follows():
    report = plan_conversion(torchvision.models.vgg11_bn(num_classes=10), torch.randn(1, 3, 32, 32))
    assert not any(d.insert_bn for d in report.layers)
    report = plan_conversion(torchvision.models.vgg11(num_classes=10), torch.randn(1, 3, 32, 32))
    assert all(d.insert_bn for d in report.converted)


@pytest.mark.parametrize("init", ["copy", "rescale", "fresh"])
def test_init_choices(init):
    model = _resnet18()
    original = model.layer1[0].conv1.weight.detach().clone()
    swap_layers(model, X, init=init)
    weight = model.layer1[0].conv1.weight.detach()
    if init == "copy":
        assert torch.equal(weight, original)
    elif init == "rescale":
        ratio = weight / original
        torch.testing.assert_close(ratio, torch.full_like(ratio, float(ratio.flatten()[0])))
        assert float(ratio.flatten()[0]) > 1  # kaiming conv weights are far smaller than activations
    else:
        assert not torch.allclose(weight / original, (weight / original).flatten()[0].expand_as(weight))
        assert (weight >= 0).all()  # its inputs come after a ReLU


def test_fresh_init_keeps_signs_for_inputs_that_go_negative():
    model = _resnet18()
    swap_layers(model, X, keep_stem=False, init="fresh")  # the stem sees the normalised image: negative values
    assert (model.conv1.weight < 0).any() and (model.layer1[0].conv1.weight >= 0).all()


def test_public_api_names_the_function():
    import adderconvert
    import adderconvert.conversion  # importing the package leaves the function in place

    assert adderconvert.convert is adderconvert.conversion.convert and callable(adderconvert.convert)
    assert callable(adderconvert.plan_conversion)


def test_bad_init_rejected():
    with pytest.raises(ValueError, match="init must be one of"):
        swap_layers(_resnet18(), X, init="zeros")


def _sizes(name: str) -> int:
    return 299 if name == "inception_v3" else 64


def test_every_torchvision_cnn_has_a_family_in_the_fast_tier():
    assert [name for name in list_cnn_models() if family_of(name) is None] == []
    assert set(one_per_family()) <= set(list_cnn_models())


@pytest.mark.parametrize(
    "name",
    [n if n in one_per_family() else pytest.param(n, marks=pytest.mark.slow) for n in list_cnn_models()],
)
def test_every_torchvision_cnn_converts(name):
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None, num_classes=10)
    x = torch.randn(2, 3, _sizes(name), _sizes(name))
    report = plan_conversion(model, x)
    swap_layers(model, x, report=report)
    adders = [m for m in model.modules() if isinstance(m, AdderConv2d)]
    assert len(adders) == len(report.converted) > 0
    # Every adder layer is followed by a normalisation in execution order.
    order = []
    hooks = [
        m.register_forward_hook(lambda mod, i, o: order.append(mod)) for m in model.modules() if not list(m.children())
    ]
    model.eval()
    with torch.no_grad():
        y = model(x)
    for h in hooks:
        h.remove()
    assert y.shape == (2, 10) and torch.isfinite(y).all()
    norms = (nn.BatchNorm2d, nn.LayerNorm, nn.GroupNorm)
    for i, module in enumerate(order):
        if isinstance(module, AdderConv2d):
            assert isinstance(order[i + 1], norms), f"{name}: adder layer not followed by a norm"


def test_plan_and_convert_without_an_example_use_imagenet_images():
    model = _resnet18()
    report = plan_conversion(model)
    layer = next(d for d in report.layers if d.name == "layer1.0.conv1")
    assert layer.macs == 64 * 56 * 56 * 64 * 9  # 224 -> /2 stem -> /2 maxpool = 56
    assert len(report.converted) == 19
    swap_layers(model)
    assert isinstance(model.layer1[0].conv1, AdderConv2d)
    assert model(X).shape == (2, 10)


class _SmallImages(nn.Module):
    """Takes 28x28 images with one channel only (its classifier is sized for them)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 4, 3)
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 26 * 26, 10)

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.conv(self.stem(x)))).flatten(1))


def test_default_input_size_is_the_first_the_model_accepts():
    report = plan_conversion(_SmallImages())
    conv = next(d for d in report.layers if d.name == "conv")
    assert conv.convert and not conv.insert_bn
    assert conv.macs == 4 * 26 * 26 * 4 * 9


def test_models_without_a_default_input_get_a_clear_error():
    with pytest.raises(ValueError, match="it has no convolution\\): pass an example batch"):
        plan_conversion(nn.Sequential(nn.Linear(3, 3)))
    with pytest.raises(ValueError, match="first convolution is Conv1d"):
        plan_conversion(nn.Sequential(nn.Conv1d(3, 3, 3)))
    with pytest.raises(ValueError, match="accepts none of the default input sizes.*\n  224x224"):
        plan_conversion(nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(5, 2)))


class _MixedConvs(nn.Module):
    """Conv2d layers around a Conv1d, a Conv3d and a transposed conv, which adder layers do not replace."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.conv = nn.Conv2d(8, 8, 3, padding=1)
        self.temporal = nn.Conv1d(8, 8, 3, padding=1)
        self.volume = nn.Conv3d(1, 1, 3, padding=1)
        self.up = nn.ConvTranspose2d(8, 4, 2, stride=2)
        self.head = nn.Conv2d(4, 10, 1)

    def forward(self, x):
        x = self.conv(self.stem(x))
        n, c, h, w = x.shape
        x = self.temporal(x.flatten(2)).view(n, c, h, w)
        x = self.volume(x.unsqueeze(1)).squeeze(1)
        return self.head(self.up(x)).mean((2, 3))


def test_other_convolutions_are_reported_as_not_supported_and_round_trip(tmp_path):
    x = torch.randn(2, 3, 8, 8)
    model = _MixedConvs()
    report = plan_conversion(model, x)
    rows = {d.name: d for d in report.layers}
    assert list(rows) == ["stem", "conv", "temporal", "volume", "up", "head"]
    assert [d.name for d in report.converted] == ["conv"]
    for name, kind in (("temporal", "Conv1d"), ("volume", "Conv3d"), ("up", "ConvTranspose2d")):
        assert not rows[name].supported and not rows[name].convert and rows[name].rule.startswith(kind)
    assert rows["temporal"].macs == 8 * 64 * 8 * 3 and rows["temporal"].kernel_size == (3,)
    assert rows["volume"].macs == 8 * 8 * 8 * 27 and rows["volume"].kernel_size == (3, 3, 3)
    assert rows["up"].macs == 8 * 8 * 8 * 4 * 4  # every input element meets 4 filters of 2x2
    assert "not supported (Conv1d: adder layers replace Conv2d only)" in report.table()
    data = report.to_dict()
    assert data["kept_layers"] == 5 and data["total_conv_macs"] == sum(d.macs for d in report.layers)
    assert ConversionReport.from_dict(data).layers == report.layers
    swap_layers(model, x, report=report)
    path = tmp_path / "state.pt"
    torch.save(model.state_dict(), path)
    fresh = restore(_MixedConvs(), data)
    fresh.load_state_dict(torch.load(path))
    assert isinstance(fresh.conv[0], AdderConv2d) and isinstance(fresh.temporal, nn.Conv1d)
    torch.testing.assert_close(fresh.eval()(x), model.eval()(x))


def test_padding_modes_other_than_zeros_are_not_supported():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect"), nn.Conv2d(4, 4, 1))
    row = plan_conversion(model, torch.randn(2, 3, 8, 8)).layers[1]
    assert (
        not row.supported and not row.convert and row.rule == "padding_mode='reflect': adder layers pad with zeros only"
    )


def test_reports_from_before_the_supported_field_still_load():
    data = plan_conversion(_resnet18(), X).to_dict()
    for row in data["layers"]:
        del row["supported"]
    assert all(d.supported for d in ConversionReport.from_dict(data).layers)


def test_norms_after_adders_are_the_norms_conversion_relies_on():
    model = torchvision.models.vgg11(num_classes=10)
    report = plan_conversion(model, torch.randn(1, 3, 32, 32))
    swap_layers(model, torch.randn(1, 3, 32, 32), report=report)
    assert norms_after_adders(model) == {f"{d.name}.0": f"{d.name}.1" for d in report.converted}
    resnet = _resnet18()
    report = plan_conversion(resnet, X)
    swap_layers(resnet, X, report=report)
    norms = norms_after_adders(resnet, X)
    assert norms["layer1.0.conv1"] == "layer1.0.bn1" and norms["layer2.0.downsample.0"] == "layer2.0.downsample.1"
    assert set(norms) == {d.name for d in report.converted} and not any(d.insert_bn for d in report.converted)


# --- the function-preserving ("sign") init -------------------------------------------------------------


class _SmallCNN(nn.Module):
    """A small CNN with BatchNorms (and one conv without, where conversion inserts one)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.block1 = nn.Sequential(nn.Conv2d(16, 32, 3, padding=1, stride=2), nn.BatchNorm2d(32), nn.ReLU())
        self.block2 = nn.Sequential(nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU())
        self.mix = nn.Conv2d(32, 32, 1)  # no norm after it: conversion inserts one
        self.fc = nn.Linear(32 * 4 * 4, 10)

    def forward(self, x):
        x = self.block2(self.block1(self.stem(x)))
        return self.fc(nn.functional.avg_pool2d(torch.relu(self.mix(x)), 2).flatten(1))


def _toy_task(n: int, generator: torch.Generator):
    """10 classes of 16x16 images: a class's fixed random pattern, shifted and noisy."""
    patterns = torch.randn(10, 1, 16, 16, generator=torch.Generator().manual_seed(123))
    labels = torch.randint(0, 10, (n,), generator=generator)
    images = patterns[labels] + 1.0 * torch.randn(n, 1, 16, 16, generator=generator)
    shifts = torch.randint(-1, 2, (n, 2), generator=generator)
    images = torch.stack([torch.roll(im, tuple(s.tolist()), (1, 2)) for im, s in zip(images, shifts)])
    return images, labels


@pytest.fixture(scope="module")
def trained_cnn():
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    model = _SmallCNN()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    model.train()
    for _ in range(150):
        images, labels = _toy_task(64, generator)
        loss = nn.functional.cross_entropy(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    calibration, _ = _toy_task(256, generator)
    test_images, test_labels = _toy_task(1000, generator)
    model.eval()
    with torch.no_grad():
        accuracy = float((model(test_images).argmax(1) == test_labels).float().mean())
    assert accuracy > 0.8, f"the toy CNN did not learn its task ({accuracy:.2f})"
    return model, calibration, test_images


def _convert_default(model, calibration):
    student = copy.deepcopy(model)
    report = plan_conversion(student, calibration)
    swap_layers(student, None, report=report)  # the default init
    fit_norm_statistics(student, report, calibration)
    return student.eval(), report


def test_default_conversion_keeps_the_cnns_function(trained_cnn):
    model, calibration, test_images = trained_cnn
    student, report = _convert_default(model, calibration)
    assert [d.name for d in report.converted] == ["block1.0", "block2.0", "mix"]
    assert report.converted[-1].insert_bn
    with torch.no_grad():
        agree = float((student(test_images).argmax(1) == model(test_images).argmax(1)).float().mean())
        fresh = copy.deepcopy(model)
        plan = plan_conversion(fresh, calibration)
        swap_layers(fresh, None, report=plan, init="fresh")
        fit_norm_statistics(fresh, plan, calibration, init="fresh")
        agree_fresh = float((fresh.eval()(test_images).argmax(1) == model(test_images).argmax(1)).float().mean())
    assert agree >= 0.8, f"the default-converted adder model agrees with its CNN on {100 * agree:.1f}% of images"
    assert agree_fresh < 0.5  # the old default threw the function away: the test can tell them apart


def test_sign_init_is_the_binary_weight_conv_plus_a_constant_within_the_margin():
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 6, 3, padding=1, bias=False)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), conv, nn.BatchNorm2d(6))
    calibration = torch.randn(16, 3, 10, 10)
    report = plan_conversion(model, calibration, keep_classifier=False)
    decision = next(d for d in report.converted)
    lower, upper = sign_edges(decision)
    seen = model[0](calibration)
    span = max(float(seen.max()), 0) - min(float(seen.min()), 0)
    gap = max(SIGN_MARGIN * span, SIGN_MIN_GAP)
    assert upper == pytest.approx(float(seen.max()) + gap, rel=1e-5)
    assert lower == pytest.approx(float(seen.min()) - gap, rel=1e-5)
    weight = conv.weight.detach().clone()
    swap_layers(model, None, report=report)
    adder = model[1]
    assert adder.weight.unique().tolist() == pytest.approx([lower, upper])
    assert torch.equal(adder.weight > 0, weight >= 0)

    def twin(x):  # sign(W) * x - sum |w|: what a tap computes when its weight lies beyond every input
        constant = adder.weight.abs().flatten(1).sum(1)
        return nn.functional.conv2d(x, torch.sign(weight), padding=1) - constant[:, None, None]

    with torch.no_grad():
        new = model[0](torch.randn(64, 3, 10, 10))  # inputs the calibration did not see
        low, high = float(seen.min()), float(seen.max())
        # Stretched to 90% of the margin beyond the calibrated range on both sides.
        stretch = min((high + 0.9 * gap) / float(new.max()), (low - 0.9 * gap) / float(new.min()))
        for x in (new, stretch * new):
            torch.testing.assert_close(adder(x), twin(x), rtol=1e-5, atol=1e-3)
        assert float((stretch * new).max()) > high and float((stretch * new).min()) < low
        far = 3.0 * new  # well past the margin: the identity no longer holds, so the check above means something
        assert (adder(far) - twin(far)).abs().max() > 1.0


def test_sign_init_after_a_relu_puts_negative_weights_one_below_zero():
    model = _resnet18()
    swap_layers(model, X)
    weight = model.layer1[0].conv1.weight
    assert float(weight.min()) == -SIGN_MIN_GAP and float(weight.max()) > SIGN_MIN_GAP
    assert ((weight == -SIGN_MIN_GAP) | (weight == weight.max())).all()


def test_sign_init_trains_with_the_binary_weight_convs_input_gradient():
    """At the start, the training rule's input gradient sum HardTanh(W - X) * g is the binary-weight twin's,
    conv_transpose(g, sign(W)): the backward pass matches the forward, after a ReLU too."""
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 5, 3, padding=1, bias=False)
    model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), conv, nn.BatchNorm2d(5))
    calibration = torch.randn(16, 3, 9, 9) * 0.3  # small inputs: a margin of the span alone is far below 1
    weight = conv.weight.detach().clone()
    report = plan_conversion(model, calibration, keep_classifier=False, keep_stem=True)
    swap_layers(model, None, report=report)
    x = model[1](model[0](calibration)).detach().requires_grad_()
    g = torch.randn(16, 5, 9, 9)
    model[2](x).backward(g)
    expected = nn.functional.conv_transpose2d(g, torch.sign(weight), padding=1)
    torch.testing.assert_close(x.grad, expected, rtol=1e-5, atol=1e-4)


def test_inserted_norm_gives_the_convs_scale_in_both_modes():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 1, bias=True))
    calibration = torch.randn(64, 3, 8, 8)
    with torch.no_grad():  # the reference: conv(x, mean|W| sign(W)) + b
        expected_scale = model[2].weight.abs().flatten(1).mean(1)
        sign_weight, bias = torch.sign(model[2].weight).clone(), model[2].bias.clone()
        inputs = model[1](model[0](calibration))
        binary = nn.functional.conv2d(inputs, sign_weight * expected_scale[:, None, None, None], bias)
    report = plan_conversion(model, calibration, keep_classifier=False)
    assert report.converted[0].insert_bn
    swap_layers(model, None, report=report)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(calibration), binary, rtol=1e-4, atol=1e-3)
        fit_norm_statistics(model, report, calibration)
        torch.testing.assert_close(model.eval()(calibration), binary, rtol=1e-4, atol=1e-3)
        torch.testing.assert_close(model.train()(calibration), binary, rtol=1e-4, atol=1e-3)


def test_sign_init_needs_a_measured_range():
    data = plan_conversion(_resnet18(), X).to_dict()
    for row in data["layers"]:
        del row["input_max"]
    report = ConversionReport.from_dict(data)
    with pytest.raises(ValueError, match="no measured input range"):
        swap_layers(_resnet18(), None, report=report)
    restore(_resnet18(), data)  # restoring a saved model does not need it: its weights are loaded


def test_keep_mac_budget_keeps_the_worst_binary_layers_within_the_budget():
    model = torchvision.models.mobilenet_v3_small(num_classes=10)
    x = torch.randn(4, 3, 64, 64)
    full = plan_conversion(model, x)
    assert all(d.sign_error is not None for d in full.layers if d.supported)
    report = plan_conversion(model, x, keep_mac_budget=0.05)
    kept = [d for d in report.layers if "keep_mac_budget" in d.rule]
    assert kept and not any(d.convert for d in kept)
    assert sum(d.macs for d in kept) <= 0.05 * report.total_macs
    assert any(d.groups > 1 for d in kept)  # depthwise convs are among those that binarise worst
    by_ratio = sorted(full.converted, key=lambda d: d.sign_error / d.macs, reverse=True)
    assert by_ratio[0].name in {d.name for d in kept}
    assert "keep_mac_budget 0.05" in report.table()
    with pytest.raises(ValueError, match="keep_mac_budget"):
        plan_conversion(model, x, keep_mac_budget=1.5)


def test_keep_ceiling_converts_the_kept_kinds_that_binarise_best_beyond_it():
    """MobileNetV3-Small keeps 24% of its conv MACs at 224 px with its stem, depthwise and squeeze-excitation convs:
    a ceiling of 15% counted at 224 px converts the depthwise convs whose binary twin fits best per MAC there."""
    model = torchvision.models.mobilenet_v3_small(num_classes=10).eval()
    x = torch.randn(4, 3, 32, 32)
    uncapped = plan_conversion(model, x, keep=KEEP_KINDS)
    capped = plan_conversion(model, x, keep=KEEP_KINDS, keep_ceiling=0.15, mac_size=224)
    at_224 = {d.name: d.macs for d in plan_conversion(model, torch.zeros(1, 3, 224, 224)).layers}
    total = sum(at_224.values())
    kept = [d for d in capped.layers if not d.convert]
    assert (
        sum(at_224[d.name] for d in kept)
        <= 0.15 * total
        < sum(at_224[d.name] for d in uncapped.layers if not d.convert)
    )
    given_way = [d for d in capped.layers if "over keep_ceiling 0.15 of the MACs at 224 px" in d.rule]
    assert given_way and all(d.convert and d.groups == d.in_channels for d in given_way)
    assert all(d.insert_bn is False for d in given_way)  # each is followed by its own BatchNorm
    # Those converted binarise better per MAC at 224 px than every depthwise conv still kept.
    worst_converted = max(d.sign_error / at_224[d.name] for d in given_way)
    still_kept = [d for d in kept if d.groups > 1 and d.groups == d.in_channels]
    assert still_kept and min(d.sign_error / at_224[d.name] for d in still_kept) >= worst_converted
    # At the example's own size (32 px), squeeze-excitation is a large share and the ceiling takes more.
    at_32 = plan_conversion(model, x, keep=KEEP_KINDS, keep_ceiling=0.15)
    assert sum(d.macs for d in at_32.layers if not d.convert) <= 0.15 * at_32.total_macs
    assert len(at_32.converted) > len(capped.converted)
    # A ceiling the kept convs fit under changes nothing; at 0 nothing is kept, ResNet-18's stem included.
    loose = plan_conversion(model, x, keep=KEEP_KINDS, keep_ceiling=0.3, mac_size=224)
    assert [d.convert for d in loose.layers] == [d.convert for d in uncapped.layers]
    assert len(plan_conversion(_resnet18(), X, keep=KEEP_KINDS, keep_ceiling=0.0).converted) == 20
    # What include/exclude leave multiplicative is the user's choice: it neither counts against the ceiling nor
    # makes it convert depthwise convs that the include rule leaves out.
    last = [d.name for d in uncapped.layers if d.convert][-1]
    only_last = plan_conversion(model, x, keep=KEEP_KINDS, keep_ceiling=0.15, mac_size=224, include=[last])
    assert [d.name for d in only_last.converted] == [last]
    excluded = plan_conversion(model, x, keep=KEEP_KINDS, keep_ceiling=0.15, mac_size=224, exclude=[last])
    assert {d.name for d in excluded.layers if "over keep_ceiling" in d.rule} == {d.name for d in given_way}
    for bad in ({"keep_ceiling": -0.1}, {"keep_ceiling": 2}, {"mac_size": 0}, {"mac_size": 22.4}):
        with pytest.raises(ValueError, match="keep_ceiling|mac_size"):
            plan_conversion(model, x, **bad)


@pytest.mark.parametrize(
    ("builder", "norm_follows"),
    [(torchvision.models.shufflenet_v2_x0_5, True), (torchvision.models.squeezenet1_0, False)],
)
def test_keep_ceiling_converts_a_stem_that_alone_passes_it(builder, norm_follows):
    """ShuffleNet-V2 x0.5's stem is 21% of its conv MACs at 224 px and SqueezeNet 1.0's 23%: under a 15% ceiling
    the stem is converted (with a BatchNorm inserted where none follows it) and the ceiling's room goes to the kept
    kinds; under a ceiling the stem fits, or with no ceiling, it stays."""
    model = builder(num_classes=10).eval()
    x = torch.randn(2, 3, 64, 64)
    stem = plan_conversion(model, x).layers[0]
    assert stem.rule == "stem kept (keep_stem)"
    at_224 = {d.name: d.macs for d in plan_conversion(model, torch.zeros(1, 3, 224, 224)).layers}
    total = sum(at_224.values())
    assert at_224[stem.name] > 0.15 * total
    capped = plan_conversion(model, x, keep=KEEP_KINDS, keep_ceiling=0.15, mac_size=224)
    converted_stem = capped.layers[0]
    assert (
        converted_stem.convert and converted_stem.rule == "stem over keep_ceiling 0.15 of the MACs at 224 px: converted"
    )
    assert converted_stem.insert_bn is not norm_follows
    assert sum(at_224[d.name] for d in capped.layers if not d.convert) <= 0.15 * total
    uncapped = plan_conversion(model, x, keep=KEEP_KINDS)
    # The room the stem leaves keeps every depthwise conv (ShuffleNet's are a few percent of its MACs).
    assert [d.name for d in capped.layers if not d.convert] == [d.name for d in uncapped.layers[1:] if not d.convert]
    roomy = plan_conversion(model, x, keep=KEEP_KINDS, keep_ceiling=0.3, mac_size=224)
    assert not roomy.layers[0].convert
    # A stem the user keeps by name stays: excluded, it neither counts nor is converted.
    excluded = plan_conversion(model, x, keep=KEEP_KINDS, keep_ceiling=0.15, mac_size=224, exclude=[stem.name])
    assert not excluded.layers[0].convert
    assert [d.convert for d in excluded.layers[1:]] == [d.convert for d in capped.layers[1:]]  # had it counted, the
    # kinds would have had no room left


@pytest.mark.parametrize("size", [32, 64])  # at 32 px the last maps are 1x1, as pooled vectors are
def test_keep_depthwise_and_squeeze_excitation_convs(size):
    model = torchvision.models.mobilenet_v3_small(num_classes=10).eval()
    x = torch.randn(2, 3, size, size)
    plain = {d.name: d for d in plan_conversion(model, x).layers}
    depthwise = {n for n, d in plain.items() if d.groups > 1 and d.groups == d.in_channels}
    squeeze = {n for n in plain if n.endswith((".fc1", ".fc2"))}  # torchvision's SqueezeExcitation
    assert depthwise and squeeze and all(plain[n].convert for n in depthwise | squeeze)
    cases = ((["depthwise"], depthwise), (["squeeze_excitation"], squeeze), (KEEP_KINDS, depthwise | squeeze))
    for keep, kept in cases:
        report = plan_conversion(model, x, keep=keep)
        newly_kept = {d.name for d in report.layers if not d.convert and plain[d.name].convert}
        assert newly_kept == kept, keep
        assert all("kept (keep)" in d.rule for d in report.layers if d.name in kept)
    # ResNet-18 at 32 px ends in 1x1 maps, but no conv runs on a pooled vector there.
    resnet = plan_conversion(_resnet18(), torch.randn(2, 3, 32, 32), keep=["squeeze_excitation"])
    assert len(resnet.converted) == 19
    with pytest.raises(ValueError, match="keep takes kinds of conv"):
        plan_conversion(_resnet18(), X, keep=["pointwise"])

"""The one call, ``adderconvert.convert``: on a CNN trained here on Fashion-MNIST it keeps the CNN's function
before any training step, whatever form the calibration data takes, and leaves the CNN as it was."""

import copy

import pytest
import torch
import torchvision
from torch import nn
from torch.utils.data import DataLoader, Subset

import adderconvert
from adderconvert.conversion import (
    CEILING_BASES,
    GROUPED_BASES,
    default_bases,
    plan_conversion,
    run_conversion,
    takes_ceiling_bases,
)
from adderconvert.conversion.recipe import RECONSTRUCT_BYTES, RECONSTRUCT_MIN_IMAGES, _reconstruction_images
from adderconvert.data import load_dataset
from adderconvert.nn import AdderConv2d


def _small_cnn() -> nn.Module:
    def block(cin, cout, stride=1, groups=1):
        return [nn.Conv2d(cin, cout, 3, stride, 1, groups=groups, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]

    return nn.Sequential(
        *block(3, 16), *block(16, 32, 2), *block(32, 32, groups=32), *block(32, 48), *block(48, 64, 2),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10),
    )  # fmt: skip


@pytest.fixture(scope="module")
def trained():
    """A small CNN (a depthwise conv included) trained on 6,400 Fashion-MNIST images at 16 px, the training split
    and 1,000 test images."""
    splits = load_dataset("fashion-mnist", image_size=16)
    torch.manual_seed(0)
    cnn = _small_cnn()
    train = Subset(splits.train, range(6400))
    optimizer = torch.optim.SGD(cnn.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    cnn.train()
    for _ in range(2):
        for images, labels in DataLoader(train, batch_size=64, shuffle=True):
            loss = nn.functional.cross_entropy(cnn(images), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    test = next(iter(DataLoader(Subset(splits.test, range(1000)), batch_size=1000)))
    return cnn.eval(), train, test


def _predictions(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(images).argmax(1)


def _calibration(train, count: int = 1024) -> torch.Tensor:
    return torch.stack([train[i][0] for i in range(count)])


def test_one_call_keeps_the_cnns_function_before_any_step(trained):
    cnn, train, (images, labels) = trained
    before = copy.deepcopy(cnn.state_dict())
    adder = adderconvert.convert(cnn, _calibration(train))
    cnn_top1 = float((_predictions(cnn, images) == labels).float().mean())
    adder_top1 = float((_predictions(adder, images) == labels).float().mean())
    agreement = float((_predictions(adder, images) == _predictions(cnn, images)).float().mean())
    assert cnn_top1 > 0.6  # the CNN learned the task (68.7% on an AVX2-only CPU, above 70% on AVX-512 ones)
    assert adder_top1 >= 0.9 * cnn_top1 and agreement >= 0.85, (cnn_top1, adder_top1, agreement)
    # All but the stem and the depthwise conv (kept multiplicative by default: DEFAULT_KEEP), with the default bases
    # of a network with a depthwise conv (default_bases: the main job's too).
    assert [m.bases for m in adder.modules() if isinstance(m, AdderConv2d)] == [GROUPED_BASES] * 3 == [2] * 3
    # The CNN is left as it was: weights, statistics and mode.
    assert not cnn.training and not any(isinstance(m, AdderConv2d) for m in cnn.modules())
    for key, value in cnn.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_the_default_bases_follow_the_convs_and_the_plan():
    """Two bases for a network with a grouped or depthwise conv, one for a network of dense convs, four where the
    plan converts a depthwise conv or a stem past the keep ceiling; ``bases`` wins."""
    dense, grouped = _small_cnn(), _small_cnn()
    dense[6] = nn.Conv2d(32, 32, 3, 1, 1, bias=False)  # the depthwise conv made dense
    grouped[6] = nn.Conv2d(32, 32, 3, 1, 1, groups=4, bias=False)
    assert (default_bases(dense), default_bases(grouped), default_bases(_small_cnn())) == (1, 2, 2)
    images = torch.randn(64, 3, 16, 16)
    converts_depthwise = plan_conversion(_small_cnn().eval(), images, keep=())
    assert default_bases(_small_cnn(), converts_depthwise) == CEILING_BASES == 4
    assert takes_ceiling_bases(converts_depthwise) and not takes_ceiling_bases(plan_conversion(dense.eval(), images))
    # A stem past the ceiling: at 0 nothing may stay multiplicative; converted by the user's rule, it does not count.
    assert default_bases(dense, plan_conversion(dense.eval(), images, keep_ceiling=0.0)) == CEILING_BASES
    assert default_bases(dense, plan_conversion(dense.eval(), images, keep_stem=False)) == 1
    cases = ((dense, None, {}, 1), (dense, 3, {}, 3), (_small_cnn(), 1, {}, 1), (_small_cnn(), None, {}, 2))
    cases += ((_small_cnn(), None, {"keep": ()}, 4), (_small_cnn(), 2, {"keep": ()}, 2))
    for model, bases, rules, want in cases:
        adder = adderconvert.convert(model.eval(), images, reconstruct_method=None, bases=bases, **rules)
        assert {m.bases for m in adder.modules() if isinstance(m, AdderConv2d)} == {want}, (bases, rules, want)
    with pytest.raises(ValueError, match="bases must be None or a positive integer"):
        adderconvert.convert(dense, images, bases=0)


def test_a_cnn_in_training_mode_is_left_as_it_was(trained):
    cnn, train, _ = trained
    model = copy.deepcopy(cnn).train()
    before = copy.deepcopy(model.state_dict())
    adderconvert.convert(model, _calibration(train, 256), max_images=256)
    assert model.training and all(m.training for m in model.modules())
    assert list(model.state_dict()) == list(before)
    for key, value in model.state_dict().items():  # BatchNorm statistics and counters included
        assert torch.equal(value, before[key]), key


def test_a_forward_loop_that_catches_exceptions_still_stops(trained):
    cnn, train, _ = trained
    calibration = _calibration(train, 512)
    batches_run = []

    def forward_loop(model):
        for batch in calibration.split(64):
            try:
                model(batch)
                batches_run.append(len(batch))
            except Exception:  # a user's loop that carries on after errors
                continue

    run_conversion(cnn, forward_loop, max_images=128, reconstruct_method=None)
    assert batches_run == [64]  # stopped inside the second batch, at 128 images


def test_a_groupnorm_after_a_conv_gets_a_batchnorm_before_it(trained):
    """The sign init needs a per-channel affine after each adder layer: a GroupNorm cannot take the per-channel
    constant, so a BatchNorm is inserted, and the model keeps its CNN's function."""
    torch.manual_seed(0)
    cnn = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1), nn.GroupNorm(4, 32), nn.ReLU(),
        nn.Conv2d(32, 32, 3, padding=1), nn.GroupNorm(4, 32), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(32, 10),
    ).eval()  # fmt: skip
    images = _calibration(trained[1], 512)
    result = run_conversion(cnn, images)
    assert [d.insert_bn for d in result.report.converted] == [True, True]
    with torch.no_grad():
        want, got = cnn(images[:256]), result.model.eval()(images[:256])
    agreement = float((want.argmax(1) == got.argmax(1)).float().mean())
    assert agreement > 0.8, agreement


def test_keeping_the_depthwise_conv_keeps_the_cnns_function(trained):
    """The keep rule: the depthwise conv stays multiplicative (the default), the rest converts, and the model before
    any step agrees with its CNN at least as well as with every conv converted (``keep=()``; less margin: a few
    images). Under a ceiling the stem alone passes (6% of the MACs), the depthwise conv is converted too, and the
    model still keeps its CNN's function."""
    cnn, train, (images, _) = trained
    calibration = _calibration(train)
    reference = _predictions(cnn, images)
    agreement = {}
    cases = {"all": ({"keep": ()}, 4), "keep": ({"keep": ("depthwise",)}, 3), "ceiling": ({"keep_ceiling": 0.05}, 4)}
    for case, (options, adder_layers) in cases.items():  # the same bases, whatever the plan converts
        adder = adderconvert.convert(cnn, calibration, **options, bases=GROUPED_BASES)
        assert sum(isinstance(m, AdderConv2d) for m in adder.modules()) == adder_layers, case
        agreement[case] = float((_predictions(adder, images) == reference).float().mean())
    assert agreement["keep"] >= agreement["all"] - 0.01 and agreement["keep"] >= 0.85, agreement
    assert agreement["ceiling"] >= 0.85, agreement
    assert adderconvert.conversion.DEFAULT_KEEP == ("depthwise", "squeeze_excitation")


def test_the_steps_matter(trained):
    """Without the calibrated steps (the layer swap alone, on the same plan) the model is near chance: the one
    call is not the swap."""
    cnn, train, (images, labels) = trained
    calibration = _calibration(train)
    swapped = adderconvert.conversion.swap_layers(copy.deepcopy(cnn), calibration[:256])
    swap_top1 = float((_predictions(swapped, images) == labels).float().mean())
    adder_top1 = float((_predictions(adderconvert.convert(cnn, calibration), images) == labels).float().mean())
    assert adder_top1 > swap_top1 + 0.2, (swap_top1, adder_top1)


def test_calibration_forms_give_the_same_model(trained):
    cnn, train, _ = trained
    calibration = _calibration(train, 300)
    by_tensor = adderconvert.convert(cnn, calibration, max_images=300)
    pairs = [(calibration[i : i + 100], torch.zeros(100)) for i in range(0, 300, 100)]
    by_loader = adderconvert.convert(cnn, pairs, max_images=300)

    def forward_loop(model):
        for batch in calibration.split(50):
            model(batch)

    by_loop = adderconvert.convert(cnn, forward_loop, max_images=300)
    for other in (by_loader, by_loop):
        assert list(other.state_dict()) == list(by_tensor.state_dict())
        for key, value in by_tensor.state_dict().items():
            torch.testing.assert_close(other.state_dict()[key], value, msg=key)


def test_a_loader_is_read_up_to_the_number_of_images(trained):
    cnn, train, _ = trained
    read = []

    class Counting:
        def __iter__(self):
            for images, labels in DataLoader(train, batch_size=100):
                read.append(len(images))
                yield images, labels

    run_conversion(cnn, Counting(), max_images=250, reconstruct_method=None)
    assert read == [100, 100, 100]


def test_the_report_and_the_log(trained):
    cnn, train, _ = trained
    lines = []
    result = run_conversion(cnn, _calibration(train, 256), max_images=256, log=lines.append)
    assert len(result.report.converted) == 3 and result.reconstruction is not None
    assert "become additions" in lines[0] and lines[-1].startswith("reconstruction (signs)")
    assert run_conversion(cnn, _calibration(train, 256), max_images=256, reconstruct_method=None).reconstruction is None


@pytest.mark.parametrize(
    ("calibration", "message"),
    [
        (None, "needs calibration data"),
        (torch.randn(3, 16, 16), r"shape \(3, 16, 16\)"),
        (torch.zeros(4, 3, 16, 16, dtype=torch.uint8), "floating point"),
        (torch.full((4, 3, 16, 16), float("nan")), "NaN"),
        (torch.zeros(0, 3, 16, 16), "no images"),
        (torch.zeros(1, 3, 16, 16), "one image only"),
        ([], "no images"),
        ([("not", "images")], "gave str"),
        (42, "must be a tensor of images, an iterable"),
    ],
)
def test_bad_calibration_is_refused_with_a_clear_error(trained, calibration, message):
    cnn = trained[0]
    with pytest.raises((ValueError, TypeError), match=message):
        adderconvert.convert(cnn, calibration)


def test_norm_reestimation_never_uses_a_batch_of_one(trained):
    """129 images re-estimate BatchNorm statistics in batches of 65 and 64, not 128 and 1: on 1x1 maps a batch of
    one image stops BatchNorm in training mode."""
    cnn, train, _ = trained
    seen = []
    norm = next(m for m in cnn.modules() if isinstance(m, nn.BatchNorm2d))
    # The copy convert makes keeps the hook: it records the batches the adder model's first norm trains on.
    handle = norm.register_forward_pre_hook(lambda m, inputs: seen.append(len(inputs[0])) if m.training else None)
    try:
        adderconvert.convert(cnn, _calibration(train, 129), max_images=129, reconstruct_method=None)
    finally:
        handle.remove()
    assert seen == [129, 65, 64]  # fit_norm_statistics on the planning images, then the re-estimation


def test_a_model_that_is_not_a_module_is_refused():
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        adderconvert.convert("resnet18", torch.randn(4, 3, 16, 16))


def test_rules_that_convert_nothing_are_refused(trained):
    cnn, train, _ = trained
    with pytest.raises(ValueError, match="nothing to convert"):
        adderconvert.convert(cnn, _calibration(train, 16), exclude=["*"])


def test_fresh_init_without_data_gives_an_adder_model_to_train():
    model = adderconvert.convert(torchvision.models.resnet18(num_classes=10), None, init="fresh")
    assert sum(isinstance(m, AdderConv2d) for m in model.modules()) == 19


def _activation_bytes(model, images):
    """Bytes of every converted conv's output for ``images``, measured by running the CNN."""
    sizes = []
    hooks = [
        m.register_forward_hook(lambda m, i, o: sizes.append(o.numel() * o.element_size()))
        for name, m in model.named_modules()
        if isinstance(m, torch.nn.Conv2d) and name not in ("conv1",)
    ]
    with torch.no_grad():
        model(images)
    for h in hooks:
        h.remove()
    return sum(sizes)


def test_reconstruction_fits_on_the_images_whose_activations_fit_the_budget():
    model = torchvision.models.resnet18(num_classes=10).eval()
    for size, expect_all in ((28, True), (224, False)):
        calibration = torch.randn(256, 3, size, size)
        report = plan_conversion(model, calibration[:2])
        images = _reconstruction_images(report, calibration)
        assert torch.equal(images, calibration[: len(images)])
        per_image = _activation_bytes(model, calibration[:1])
        # The plan's estimate (from MACs) is the measured output size: three float32 copies within the budget.
        expected = max(RECONSTRUCT_MIN_IMAGES, min(256, RECONSTRUCT_BYTES // (3 * per_image)))
        assert len(images) == expected
        assert (len(images) == 256) == expect_all

"""The main job's conversion steps."""

import torch
import torchvision

from adderconvert.app.pipeline import (
    RECONSTRUCT_BYTES,
    RECONSTRUCT_MIN_IMAGES,
    RunConfig,
    _calibration_batch,
    _reconstruction_images,
    convert_trained,
)
from adderconvert.conversion import plan_conversion
from adderconvert.data import DatasetSplits, TensorImages
from adderconvert.train.distributed import DistributedContext


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


def test_calibration_images_are_a_seeded_random_draw():
    data = [(torch.full((1, 2, 2), float(i)), i) for i in range(100)]
    first, again = _calibration_batch(data, 10), _calibration_batch(data, 10)
    assert torch.equal(first, again) and first.shape == (10, 1, 2, 2)
    assert first[:, 0, 0, 0].tolist() != list(range(10))  # not the first ten


def test_conversion_does_not_depend_on_or_change_the_callers_random_state():
    # a training split with random flips, as Fashion-MNIST's: the draws must come from the run's seed alone
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (64, 1, 8, 8), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (64,), generator=g)
    train = TensorImages(images, labels, flip=True, size=8)
    splits = DatasetSplits(train, train, [str(i) for i in range(10)], 8)
    torch.manual_seed(0)
    teacher = torchvision.models.resnet18(num_classes=10).eval()
    config = RunConfig(model="resnet18", batch_size=16, reconstruct="none")  # the flips are drawn before it
    ctx = DistributedContext()
    students = []
    for caller_seed in (1, 2):
        torch.manual_seed(caller_seed)
        state = torch.get_rng_state()
        student, _, _ = convert_trained(teacher, splits, config, ctx, log=False)
        assert torch.equal(torch.get_rng_state(), state)  # the caller's random state is untouched
        students.append(student.state_dict())
    assert students[0].keys() == students[1].keys()
    for key in students[0]:
        assert torch.equal(students[0][key], students[1][key]), key

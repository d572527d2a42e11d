"""The main job's conversion steps."""

import torch
import torchvision

from adderconvert.app.pipeline import RunConfig, convert_trained
from adderconvert.data import DatasetSplits, TensorImages
from adderconvert.train.distributed import DistributedContext


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
        student = convert_trained(teacher, splits, config, ctx, log=False).model
        assert torch.equal(torch.get_rng_state(), state)  # the caller's random state is untouched
        students.append(student.state_dict())
    assert students[0].keys() == students[1].keys()
    for key in students[0]:
        assert torch.equal(students[0][key], students[1][key]), key

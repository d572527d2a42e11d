"""The training loop's pieces: BatchNorm re-estimation."""

import torch
from torch import nn

from adderconvert.train import recalibrate_batchnorm
from tests.train._tiny import tiny_model


def test_recalibration_averages_the_batch_statistics():
    bn = nn.BatchNorm2d(3, momentum=0.1)
    bn.running_mean.fill_(100.0)  # stale statistics are discarded
    gen = torch.Generator().manual_seed(0)
    batches = [(torch.randn(4, 3, 5, 5, generator=gen) * (i + 1) + i, None) for i in range(4)]
    model = nn.Sequential(bn).eval()
    recalibrate_batchnorm(model, batches, steps=3)
    used = [x for x, _ in batches[:3]]
    expected_mean = torch.stack([x.mean((0, 2, 3)) for x in used]).mean(0)
    expected_var = torch.stack([x.var((0, 2, 3), unbiased=True) for x in used]).mean(0)
    torch.testing.assert_close(bn.running_mean, expected_mean)
    torch.testing.assert_close(bn.running_var, expected_var)
    assert bn.momentum == 0.1 and not model.training  # settings restored


def test_recalibration_leaves_weights_alone():
    model = tiny_model()
    before = {k: v.clone() for k, v in model.state_dict().items() if "running" not in k and "tracked" not in k}
    recalibrate_batchnorm(model, [(torch.randn(8, 3, 8, 8), None)], steps=5)
    after = model.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in before.items())

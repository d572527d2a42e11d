"""benchmarks/batchnorm_reestimation.py: the re-estimated statistics and the top-1 they give."""

import importlib.util
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import TensorDataset

_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "batchnorm_reestimation.py"
_spec = importlib.util.spec_from_file_location("batchnorm_reestimation", _PATH)
reestimation = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(reestimation)


def test_whole_split_re_estimate_is_the_splits_mean_and_fixes_the_top1():
    torch.manual_seed(0)
    size = 2 * reestimation.BATCH_SIZE
    features = torch.randn(size, 2) * torch.tensor([3.0, 0.5]) + torch.tensor([10.0, -4.0])
    labels = (features[:, 0] > 10.0).long()  # the class: first feature above its generating mean
    norm = nn.BatchNorm1d(2, affine=False)
    head = nn.Linear(2, 2)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[-1.0, 0.0], [1.0, 0.0]]))
        head.bias.zero_()
    model = nn.Sequential(norm, head)
    dataset = TensorDataset(features, labels)
    # Running statistics at their reset values (mean 0, var 1): every input reads as class 1.
    stale = reestimation.evaluate(model, dataset)
    assert stale == 100.0 * float(labels.float().mean())
    top1 = reestimation.reestimated_top1(model, dataset, dataset, batches=2, seed=0)
    # Two batches are the whole split in some order: their plain average is the split's mean.
    torch.testing.assert_close(norm.running_mean, features.mean(0))
    assert top1 == 100.0 * float(((features[:, 0] > features[:, 0].mean()).long() == labels).float().mean())
    assert top1 > stale

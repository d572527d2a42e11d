"""RunningStatsBatchNorm2d against BatchNorm2d in eval mode: the same map in both modes, statistics kept."""

import torch
from torch import nn

from adderconvert.nn import RunningStatsBatchNorm2d


def _pair() -> tuple[nn.BatchNorm2d, RunningStatsBatchNorm2d]:
    torch.manual_seed(0)
    reference = nn.BatchNorm2d(4)
    with torch.no_grad():
        reference.weight.uniform_(0.5, 2.0)
        reference.bias.normal_()
        reference.running_mean.normal_()
        reference.running_var.uniform_(0.5, 3.0)
    norm = RunningStatsBatchNorm2d(4)
    norm.load_state_dict(reference.state_dict())
    return reference.eval(), norm


def test_training_mode_maps_as_eval_mode_and_keeps_the_statistics():
    reference, norm = _pair()
    x = 3.0 * torch.randn(8, 4, 5, 5) + 1.0  # statistics far from the running ones
    before = {k: v.clone() for k, v in norm.state_dict().items()}
    torch.testing.assert_close(norm.train()(x), reference(x))
    torch.testing.assert_close(norm.eval()(x), reference(x))
    assert all(torch.equal(v, norm.state_dict()[k]) for k, v in before.items())


def test_gradients_reach_the_affine_and_the_input():
    _, norm = _pair()
    x = torch.randn(2, 4, 3, 3, requires_grad=True)
    norm.train()(x).square().sum().backward()
    assert norm.weight.grad is not None and norm.bias.grad is not None and x.grad is not None


def test_estimating_it_is_a_batchnorm_in_training_mode():
    reference, norm = _pair()
    reference.train()
    norm.train().estimating = True
    x = 2.0 * torch.randn(8, 4, 5, 5)
    torch.testing.assert_close(norm(x), reference(x))
    torch.testing.assert_close(norm.running_mean, reference.running_mean)
    torch.testing.assert_close(norm.running_var, reference.running_var)

"""Multi-process training under ``torchrun``: process-group set-up and a BatchNorm synchronised over ranks.

PyTorch's ``SyncBatchNorm`` runs only on GPUs; :class:`GlobalBatchNorm2d` uses differentiable
all-reduces and so works with gloo on CPU as well as NCCL on GPU.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn
from torch import nn

# The differentiable all-reduce we need is public only here; its successor in torch is private so far.
warnings.filterwarnings("ignore", message="torch.distributed.nn.functional.all_reduce is deprecated")

__all__ = [
    "DistributedContext",
    "GlobalBatchNorm2d",
    "convert_sync_batchnorm",
    "finish_distributed",
    "init_distributed",
]


@dataclass
class DistributedContext:
    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str) -> DistributedContext:
    """Join the process group that ``torchrun`` describes (``WORLD_SIZE`` > 1), else a single process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistributedContext(device=torch.device(device))
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.startswith("cuda"):
        torch.cuda.set_device(local_rank)
        device = f"cuda:{local_rank}"
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
    return DistributedContext(rank=rank, world_size=world_size, device=torch.device(device))


def finish_distributed(wait: bool = True) -> None:
    """Leave the process group, first waiting for every rank (a rank exiting alone can abort in gloo's threads)."""
    if dist.is_available() and dist.is_initialized():
        if wait:
            dist.barrier()
        dist.destroy_process_group()


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics cover the global batch of all ranks (two-pass, exact)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        channels = x.shape[1]
        count = torch.tensor([x.numel() / channels], dtype=x.dtype, device=x.device)
        sums = dist_fn.all_reduce(torch.cat([x.sum((0, 2, 3)), count]))
        n = sums[-1]
        mean = sums[:channels] / n
        centred = x - mean.view(1, -1, 1, 1)
        var = dist_fn.all_reduce(centred.square().sum((0, 2, 3))) / n
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.lerp_(mean.detach(), momentum)
                self.running_var.lerp_(var.detach() * n / (n - 1), momentum)
        y = centred * torch.rsqrt(var + self.eps).view(1, -1, 1, 1)
        if self.affine:
            y = y * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)
        return y


def convert_sync_batchnorm(model: nn.Module) -> nn.Module:
    """Replace every ``BatchNorm2d`` with :class:`GlobalBatchNorm2d` (same parameters and buffers), in place."""
    for name, module in list(model.named_children()):
        if type(module) is nn.BatchNorm2d:
            sync = GlobalBatchNorm2d(
                module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats
            ).to(module.weight.device if module.affine else "cpu")
            sync.load_state_dict(module.state_dict())
            sync.train(module.training)
            setattr(model, name, sync)
        else:
            convert_sync_batchnorm(module)
    return model

"""Fine-tuning adder models: training loop, distillation, checkpoints, multi-process training."""

from adderconvert.train.checkpoint import load, load_checkpoint, save_checkpoint
from adderconvert.train.distill import FeatureDistillation, distillation_loss
from adderconvert.train.distributed import (
    GlobalBatchNorm2d,
    convert_sync_batchnorm,
    finish_distributed,
    init_distributed,
)
from adderconvert.train.loop import EpochRecord, TrainConfig, evaluate, fit, recalibrate_batchnorm

__all__ = [
    "EpochRecord",
    "FeatureDistillation",
    "GlobalBatchNorm2d",
    "TrainConfig",
    "convert_sync_batchnorm",
    "distillation_loss",
    "evaluate",
    "finish_distributed",
    "fit",
    "init_distributed",
    "load",
    "load_checkpoint",
    "recalibrate_batchnorm",
    "save_checkpoint",
]

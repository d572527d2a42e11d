"""Fine-tuning adder models: training loop, distillation, checkpoint saving, multi-process training."""

from adderconvert.conversion.norms import reestimate_batchnorm
from adderconvert.train.distill import FeatureDistillation, distillation_loss
from adderconvert.train.distributed import (
    GlobalBatchNorm2d,
    convert_sync_batchnorm,
    finish_distributed,
    init_distributed,
)
from adderconvert.train.loop import (
    MANY_BASES_LR,
    EpochRecord,
    TrainConfig,
    TrainingDiverged,
    build_optimizer,
    evaluate,
    fit,
    train_one_epoch,
)
from adderconvert.train.saver import CheckpointSaver

__all__ = [
    "MANY_BASES_LR",
    "CheckpointSaver",
    "EpochRecord",
    "FeatureDistillation",
    "GlobalBatchNorm2d",
    "TrainConfig",
    "TrainingDiverged",
    "build_optimizer",
    "convert_sync_batchnorm",
    "distillation_loss",
    "evaluate",
    "finish_distributed",
    "fit",
    "init_distributed",
    "reestimate_batchnorm",
    "train_one_epoch",
]

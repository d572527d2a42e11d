"""How much the BatchNorm re-estimation's batch count moves a saved model's top-1.

For each checkpoint (an adderconvert checkpoint, e.g. benchmarks/recipes.py's OUTPUT/MODEL.pt) and each count N,
the BatchNorm statistics are re-estimated over N shuffled training batches (train.loop.reestimate_batchnorm,
what fine-tuning does before each evaluation with N = batchnorm_batches) and the model is evaluated on the
whole test split, once per shuffle seed. The spread over seeds is the estimate's noise at that count.

Usage: python benchmarks/batchnorm_reestimation.py runs/recipes/NAME/MODEL.pt [...] [--batches 20 200] [--draws 3]
       [--data DIR]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from adderconvert.checkpoint import CheckpointError, load, read_meta  # noqa: E402
from adderconvert.data import DataError, load_dataset  # noqa: E402
from adderconvert.train import evaluate  # noqa: E402
from adderconvert.train.loop import reestimate_batchnorm  # noqa: E402

BATCH_SIZE = 64  # the cpu budget's and the CLI's training batch


def reestimated_top1(model: nn.Module, train_set: Dataset, test_set: Dataset, batches: int, seed: int) -> float:
    """Top-1 (%) on ``test_set`` after BatchNorm is re-estimated over ``batches`` shuffled training batches."""
    loader = DataLoader(
        train_set, batch_size=BATCH_SIZE, shuffle=True, drop_last=True, generator=torch.Generator().manual_seed(seed)
    )
    reestimate_batchnorm(model, loader, batches)
    return evaluate(model, test_set)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoints", nargs="+", type=Path)
    parser.add_argument("--batches", type=int, nargs="+", default=[20, 200], help="batch counts to compare")
    parser.add_argument("--draws", type=int, default=3, help="shuffle seeds per count")
    parser.add_argument("--data", default=None, help="the checkpoint's data set folder [Debian's Fashion-MNIST]")
    parser.add_argument("--threads", type=int, default=None, help="torch threads [torch's default]")
    args = parser.parse_args()
    if args.draws < 1 or min(args.batches) < 1:
        parser.error("--batches and --draws take positive integers")
    if args.threads:
        torch.set_num_threads(args.threads)
    for path in args.checkpoints:
        try:
            meta = read_meta(path)
            model = load(path)
            splits = load_dataset(meta.dataset or "fashion-mnist", args.data, image_size=meta.image_size)
        except (CheckpointError, DataError) as e:
            raise SystemExit(f"{path}: {e}") from None
        for count in args.batches:
            tops = [reestimated_top1(model, splits.train, splits.test, count, seed) for seed in range(args.draws)]
            print(
                f"{path} batches {count}: {' '.join(f'{t:.2f}' for t in tops)} "
                f"mean {statistics.mean(tops):.2f} sd {statistics.pstdev(tops):.2f}",
                flush=True,
            )


if __name__ == "__main__":
    main()

"""Fine-tuning: SGD with momentum and a cosine schedule, the adaptive learning rate for adder weights
(applied after DDP's all-reduce), distillation from the CNN teacher, progress bars, a per-epoch CSV,
atomic best/last checkpoints and exact resume."""

from __future__ import annotations

import csv
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from tqdm import tqdm

from adderconvert.nn import adder_weights, scale_adder_gradients_
from adderconvert.train.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from adderconvert.train.distill import FeatureDistillation, distillation_loss
from adderconvert.train.distributed import DistributedContext, convert_sync_batchnorm

__all__ = ["EpochRecord", "TrainConfig", "evaluate", "fit", "recalibrate_batchnorm"]


@dataclass
class TrainConfig:
    """Options of :func:`fit`.

    The defaults are the fine-tuning recipe measured on Fashion-MNIST (README, benchmarks/accuracy.py):
    a converted model learns its adder weights anew within a few epochs, which wants an adaptive-LR eta
    ten times the paper's 0.2 (chosen for 400 epochs from scratch) and distillation of the teacher's
    features as well as its logits.
    """

    epochs: int = 1
    batch_size: int = 128  # global: split evenly over the processes
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    eta: float = 2.0
    kd: bool = True
    kd_alpha: float = 0.5
    kd_temperature: float = 4.0
    feature_kd: float = 5.0  # weight of FeatureDistillation's loss (0: off)
    recalibrate_steps: int = 20  # training batches that re-estimate BatchNorm statistics before each evaluation
    seed: int = 0
    workers: int = 0
    max_steps: int | None = None  # per epoch; None runs the whole epoch
    sync_bn: bool = False
    progress: bool = True
    desc: str = "train"


@dataclass
class EpochRecord:
    epoch: int
    lr: float
    train_loss: float
    train_top1: float
    test_top1: float
    seconds: float
    images_per_second: float


@torch.no_grad()
def evaluate(
    model: nn.Module,
    dataset: Dataset,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    progress: bool = False,
    desc: str = "eval",
    workers: int = 0,
) -> float:
    """Top-1 accuracy (%) of ``model`` on ``dataset``."""
    model.eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers)
    correct = total = 0
    for images, labels in tqdm(loader, desc=desc, disable=not progress, leave=False, unit="batch"):
        logits = model(images.to(device))
        correct += int((logits.argmax(1).cpu() == labels).sum())
        total += len(labels)
    return 100.0 * correct / max(total, 1)


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, batches, steps: int, device: str | torch.device = "cpu") -> None:
    """Re-estimate every BatchNorm's running statistics as plain averages over ``steps`` batches.

    Adder weights move fast under the adaptive learning rate, so the running averages kept during
    training trail the current weights; evaluating (and checkpointing) after this pass uses statistics
    that match them.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not norms or steps <= 0:
        return
    momenta = [m.momentum for m in norms]
    was_training = model.training
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    model.train()
    for step, (images, _) in enumerate(batches):
        if step >= steps:
            break
        model(images.to(device))
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    model.train(was_training)


def _parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """No weight decay on BatchNorm parameters and biases."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.dim() <= 1 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def fit(
    model: nn.Module,
    train_set: Dataset,
    test_set: Dataset,
    config: TrainConfig,
    *,
    teacher: nn.Module | None = None,
    output: str | Path | None = None,
    meta: dict[str, Any] | None = None,
    resume: str | Path | None = None,
    ctx: DistributedContext | None = None,
) -> list[EpochRecord]:
    """Train ``model`` and return one record per epoch run.

    With ``output`` the run writes ``metrics.csv``, ``last.pt`` and ``best.pt`` there (``meta`` is stored
    in each checkpoint so :func:`adderconvert.load` can rebuild the model). ``resume`` continues from a
    ``last.pt``: epoch, weights, optimizer, scheduler and RNG states.
    """
    ctx = ctx or DistributedContext()
    if config.batch_size % ctx.world_size != 0:
        raise ValueError(f"batch size {config.batch_size} must be divisible by the {ctx.world_size} processes")
    device = ctx.device
    torch.manual_seed(config.seed)
    if config.sync_bn:
        convert_sync_batchnorm(model)
    model.to(device)
    if teacher is not None:
        teacher.to(device).eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
    sampler = DistributedSampler(
        train_set, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True, seed=config.seed, drop_last=True
    )
    loader = DataLoader(
        train_set,
        batch_size=config.batch_size // ctx.world_size,
        sampler=sampler,
        num_workers=config.workers,
        drop_last=True,
    )
    steps = len(loader) if config.max_steps is None else min(len(loader), config.max_steps)
    if steps == 0:
        raise ValueError(f"training set of {len(train_set)} images gives no batch of {config.batch_size}")
    optimizer = torch.optim.SGD(
        _parameter_groups(model, config.weight_decay), lr=config.lr, momentum=config.momentum, nesterov=True
    )
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs * steps)
    net = DistributedDataParallel(model) if ctx.enabled else model
    has_adder = next(adder_weights(model), None) is not None
    features = (
        FeatureDistillation(model, teacher) if (teacher is not None and config.kd and config.feature_kd > 0) else None
    )

    start_epoch, best, history = 0, -math.inf, []
    if resume is not None:
        state = load_checkpoint(resume)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        start_epoch, best = state["epoch"] + 1, state["best_top1"]
        history = [EpochRecord(**r) for r in state.get("history", [])]

    output = Path(output) if output is not None else None
    try:
        for epoch in range(start_epoch, config.epochs):
            sampler.set_epoch(epoch)
            net.train()
            started = time.perf_counter()
            loss_sum = correct = seen = 0.0
            bar = tqdm(
                total=steps,
                desc=f"{config.desc} {epoch + 1}/{config.epochs}",
                disable=not (config.progress and ctx.is_main),
                unit="batch",
                leave=False,
            )
            for step, (images, labels) in enumerate(loader):
                if step >= steps:
                    break
                images, labels = images.to(device), labels.to(device)
                with torch.no_grad():
                    teacher_logits = teacher(images) if (teacher is not None and config.kd) else None
                logits = net(images)
                loss = distillation_loss(logits, labels, teacher_logits, config.kd_alpha, config.kd_temperature)
                if features is not None:
                    loss = loss + config.feature_kd * features.loss()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()  # DDP all-reduces here
                if has_adder:
                    scale_adder_gradients_(model, config.eta)
                optimizer.step()
                scheduler.step()
                loss_sum += float(loss.detach()) * len(labels)
                correct += float((logits.argmax(1) == labels).sum())
                seen += len(labels)
                elapsed = time.perf_counter() - started
                bar.set_postfix(
                    loss=f"{loss_sum / seen:.3f}",
                    acc=f"{100 * correct / seen:.1f}",
                    img_s=f"{seen * ctx.world_size / elapsed:.0f}",
                )
                bar.update()
            bar.close()
            seconds = time.perf_counter() - started
            # Every rank runs the same batches count, so synchronised BatchNorm's collectives match up.
            recalibrate_batchnorm(model, loader, min(config.recalibrate_steps, steps), device)
            test_top1 = (
                evaluate(
                    model, test_set, device=device, progress=config.progress and ctx.is_main, desc=f"eval {epoch + 1}"
                )
                if ctx.is_main
                else 0.0
            )
            record = EpochRecord(
                epoch=epoch + 1,
                lr=optimizer.param_groups[0]["lr"],
                train_loss=loss_sum / seen,
                train_top1=100 * correct / seen,
                test_top1=test_top1,
                seconds=seconds,
                images_per_second=seen * ctx.world_size / seconds,
            )
            history.append(record)
            if ctx.is_main and config.progress:
                tqdm.write(
                    f"{config.desc} epoch {record.epoch}: loss {record.train_loss:.4f}, "
                    f"train top-1 {record.train_top1:.2f}%, test top-1 {record.test_top1:.2f}% ({seconds:.0f}s)"
                )
            if output is not None and ctx.is_main:
                _write_csv(output / "metrics.csv", history)
                payload = {
                    "meta": meta or {},
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "rng": rng_state(),
                    "epoch": epoch,
                    "best_top1": max(best, test_top1),
                    "history": [asdict(r) for r in history],
                    "config": asdict(config),
                }
                save_checkpoint(output / "last.pt", payload)
                if test_top1 > best:
                    save_checkpoint(output / "best.pt", payload)
            best = max(best, test_top1)
    finally:
        if features is not None:
            features.remove()
    return history


def _write_csv(path: Path, history: list[EpochRecord]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = list(EpochRecord.__dataclass_fields__)
    tmp = path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for record in history:
            writer.writerow([getattr(record, c) for c in columns])
    tmp.replace(path)

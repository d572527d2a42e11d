"""Fine-tuning: SGD with momentum, linear warm-up then a cosine schedule, the adaptive learning rate for
adder weights (applied after DDP's all-reduce), distillation from the CNN teacher, divergence guards,
and a checkpoint after every epoch from which a run resumes exactly.

:func:`fit` runs a whole stage; :func:`train_one_epoch` and :func:`evaluate` are its pieces. What depends on the
task (batches, loss, distillation, metric) is a :class:`Task`: classification here, segmentation and detection in
``train/dense.py``.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from tqdm import tqdm

from adderconvert.checkpoint import CheckpointMeta, load_checkpoint, load_state_dict
from adderconvert.conversion.norms import reestimate_batchnorm
from adderconvert.conversion.recipe import DEFAULT_KEEP_CEILING
from adderconvert.nn import AdderConv2d, adder_weights, scale_adder_gradients_
from adderconvert.train.distill import KD_ALPHA, KD_TEMPERATURE, FeatureDistillation, distillation_loss
from adderconvert.train.distributed import DistributedContext, convert_sync_batchnorm
from adderconvert.train.saver import CheckpointSaver, rng_state, set_rng_state

__all__ = [
    "CLASSIFICATION",
    "MANY_BASES_LR",
    "EpochRecord",
    "Task",
    "TrainConfig",
    "TrainingDiverged",
    "build_optimizer",
    "check_same_schedule",
    "eta_at",
    "evaluate",
    "fit",
    "train_one_epoch",
]


@dataclass
class TrainConfig:
    """Options of :func:`fit`. Its defaults are the fine-tuning recipe, the one place they are written: the main job
    (:class:`~adderconvert.app.config.RunConfig`), the examples and the benchmarks take them from here.

    Measured after the default conversion (``adderconvert.convert``: sign init and reconstruction, which keep the
    CNN's function) on Fashion-MNIST across six families (docs/results/README.md): a low ``lr`` keeps what the
    conversion preserved and what the CNN's own layers (norms, kept convs, stem, classifier) learned, the adder
    weights take ``adder_lr_scale`` times it (0.005) under the adaptive LR, whose ``eta`` of 4 (twenty times the
    paper's 0.2, chosen for 400 epochs from scratch) lets them move within one epoch, and the student learns mostly
    from the teacher's logits (``kd_alpha`` 0.8, ``kd_temperature``, train/distill.py). On converged teachers
    (docs/results/recipes_cpu_converged.md) the CNN's own layers at lr 0.01 cost EfficientNet-B0 1.1 points of its
    one epoch; the adder weights at 0.005 rather than 0.01 (with ``kd_alpha`` 0.8) gain RegNet-Y-400MF 0.4 points
    (0.0025: 0.5 fewer, 0.02: 1.0 fewer) and change MobileNetV3-Small by +0.07, EfficientNet-B0 by -0.12;
    matching features (``feature_kd``, off by default) diverged on RegNet-Y-400MF and cost EfficientNet-B0 0.5 points
    of its epoch (while gaining MobileNetV3-Large 0.5).
    """

    epochs: int = 1
    batch_size: int = 128  # global: split evenly over the processes
    lr: float = 0.002  # the CNN's own layers; adder weights: lr * adder_lr_scale
    momentum: float = 0.9
    weight_decay: float = 5e-4  # on weights with more than one dimension
    warmup_steps: int = 0  # linear warm-up of the learning rate before the cosine decay
    adder_lr_scale: float = 2.5  # adder weights' learning rate = lr * adder_lr_scale
    adder_weight_decay: float | None = None  # None: weight_decay
    eta: float = 4.0
    eta_final: float | None = None  # eta annealed by cosine from eta to eta_final; None: constant
    kd: bool = True
    kd_alpha: float = KD_ALPHA
    kd_temperature: float = KD_TEMPERATURE
    feature_kd: float = 0.0  # weight of FeatureDistillation's loss (0: off)
    batchnorm_batches: int = 20  # training batches that re-estimate BatchNorm statistics before each evaluation
    amp: bool = False  # bfloat16 autocast for the teacher and the non-adder layers
    seed: int = 0
    workers: int = 0
    max_steps: int | None = None  # per epoch; None runs the whole epoch
    eval_max_batches: int | None = None  # evaluate on this many test batches only; None: the whole test set
    sync_bn: bool = False
    progress: bool = True  # progress bars
    log: bool = True  # one line per epoch
    desc: str = "train"


# The fine-tuning lr (TrainConfig.lr's place) of an adder model whose layers have three or more binary bases: their
# closer conversion is what the default step undoes in part. With three bases, one epoch at 0.001 rather than 0.002
# ends MNASNet-0.5 0.79 pt short of its CNN on average against 1.12 (two seeds each; a third at 0.001: 0.87),
# ShuffleNet-V2 x0.5 1.28 against 1.44 and MobileNetV3-Small 0.76 against 0.76 (three seeds each); SSDlite keeps more
# of its three bases the lower the lr. With four bases (conversion.CEILING_BASES) half of it again was no better on
# MNASNet-0.5 and ShuffleNet-V2 x0.5 (one seed each: +0.61 against +0.76, +0.95 against +0.73)
# (docs/results/recipes_cpu_converged.md, dense_cpu.md).
MANY_BASES_LR = 0.001

# Settings that shape the optimizer's trajectory: a resumed run must use the same.
_SCHEDULE_KEYS = (
    "epochs", "batch_size", "lr", "momentum", "weight_decay", "warmup_steps", "adder_lr_scale",
    "adder_weight_decay", "eta", "eta_final", "max_steps",
)  # fmt: skip
_ADDER_KEYS = ("adder_lr_scale", "adder_weight_decay", "eta", "eta_final")  # settings of adder weights only


# An epoch this short may end at chance without anything being wrong (a smoke test, --max-steps 5).
_CHANCE_MIN_STEPS = 50


@dataclass
class EpochRecord:
    epoch: int
    lr: float  # at the epoch's first step
    train_loss: float
    train_top1: float | None  # None where the task has no training accuracy (segmentation, detection)
    test_top1: float  # the task's metric (Task.metric): top-1 for classifiers
    seconds: float
    images_per_second: float
    # Every score of the epoch's Task.evaluate (the metric and those beside it: pixel accuracy, mAP@.5), where this
    # process evaluated; not kept in checkpoints or metrics.csv (None in a resumed run's earlier epochs).
    test_scores: dict[str, float] | None = None


class TrainingDiverged(RuntimeError):
    """Training left the range where it can recover; the message says what happened and what to try."""


class Task:
    """What :func:`fit` needs to know about a task; this one is classification: ``(images, labels)`` batches, the
    loss :func:`~adderconvert.train.distill.distillation_loss` (cross-entropy and the teacher's logits), the norm
    outputs after every adder layer distilled (:class:`~adderconvert.train.distill.FeatureDistillation`), and
    top-1. ``train/dense.py`` has the segmentation and detection ones."""

    metric = "top1"  # the name of the metric the checkpoints are chosen by (a key of :meth:`evaluate`'s result)
    batch_size = TrainConfig.batch_size  # the main job's default global batch for this task's models
    adder_lr_scale = TrainConfig.adder_lr_scale  # the main job's default for this task's models
    # The main job's fine-tuning lr for this task's models; None: the rule of app.pipeline.lr_of (TrainConfig.lr, or
    # MANY_BASES_LR where the adder layers have three or more bases).
    lr: float | None = None
    # The main job's keep ceiling (conversion.plan_conversion's keep_ceiling) for this task's models.
    keep_ceiling = DEFAULT_KEEP_CEILING
    collate_fn: Callable | None = None  # the DataLoader's
    feature_scale = 1.0  # the feature distillation's weight is TrainConfig.feature_kd times this

    def bases(self, model: nn.Module) -> int | None:
        """Binary bases per adder layer (AdderConv2d's ``bases``) the main job gives ``model``, a model of this
        task; None: the conversion's own default for the model and its plan (conversion.default_bases: 4 where the
        plan converts depthwise convs or a stem past the keep ceiling, 2 with grouped or depthwise convs, else 1)."""
        return None

    def images(self, batch: Any) -> torch.Tensor:
        """The batch's images as one tensor (N, C, H, W)."""
        return batch[0]

    def step(
        self, net: nn.Module, batch: Any, teacher: nn.Module | None, config: TrainConfig, device: torch.device
    ) -> tuple[torch.Tensor, int, float | None]:
        """One training forward of ``net`` (and of ``teacher``, without gradients, where distillation needs it):
        the loss without the feature term, the batch's number of images, and how many it classified right (None
        where the task has no such count)."""
        images, labels = batch[0].to(device), batch[1].to(device)
        with torch.no_grad():
            teacher_logits = teacher(images) if (teacher is not None and config.kd) else None
        logits = net(images)
        loss = distillation_loss(logits.float(), labels, _float(teacher_logits), config.kd_alpha, config.kd_temperature)
        return loss, len(labels), float((logits.argmax(1) == labels).sum())

    def features(self, model: nn.Module, teacher: nn.Module) -> Any:
        """The feature distillation between ``model`` and ``teacher``: an object with ``loss()`` (of the last
        forwards) and ``remove()``."""
        return FeatureDistillation(model, teacher)

    def batch_result(self, model: nn.Module, batch: Any, device: str | torch.device) -> Any:
        """What :meth:`scores` needs of one test batch: here (right, images)."""
        images, labels = batch
        return int((model(images.to(device)).argmax(1).cpu() == labels).sum()), len(labels)

    def scores(self, results: list[Any]) -> dict[str, float]:
        """The scores (%) of a test set from its batches' :meth:`batch_result`, :attr:`metric` first."""
        right, total = (sum(column) for column in zip(*results)) if results else (0, 0)
        return {"top1": 100.0 * right / max(total, 1)}

    @torch.no_grad()
    def evaluate(
        self,
        model: nn.Module,
        dataset: Dataset,
        *,
        batch_size: int = 256,
        device: str | torch.device = "cpu",
        progress: bool = False,
        desc: str = "eval",
        workers: int = 0,
        max_batches: int | None = None,
    ) -> dict[str, float]:
        """The task's scores (%) of ``model`` (in eval mode) on ``dataset``'s first ``max_batches`` batches (all
        when None), :attr:`metric` first."""
        model.eval()
        loader = DataLoader(
            dataset, batch_size=batch_size, shuffle=False, num_workers=workers, collate_fn=self.collate_fn
        )
        total_batches = len(loader) if max_batches is None else min(len(loader), max_batches)
        bar = tqdm(loader, total=total_batches, desc=desc, disable=not progress, leave=False, unit="batch")
        results = []
        for index, batch in enumerate(bar):
            if index >= total_batches:
                break
            results.append(self.batch_result(model, batch, device))
        bar.close()
        return self.scores(results)


CLASSIFICATION = Task()


def evaluate(model: nn.Module, dataset: Dataset, **options: Any) -> float:
    """Top-1 accuracy (%) of the classifier ``model`` on ``dataset``: :meth:`Task.evaluate` of :data:`CLASSIFICATION`,
    whose keyword ``options`` it takes (``batch_size``, ``device``, ``max_batches``, ...)."""
    return CLASSIFICATION.evaluate(model, dataset, **options)["top1"]


def build_optimizer(
    model: nn.Module, config: TrainConfig, total_steps: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """SGD (Nesterov) over three groups, adder weights / other weights / 1-d parameters and the scales of adder
    layers' extra bases (no weight decay), and a per-step schedule: linear warm-up over ``warmup_steps``, then
    cosine decay to zero."""
    adder = {id(p) for p in adder_weights(model)}
    # The per-channel scales of adder layers' extra bases are (bases - 1, out): scales, as a norm's, not weights.
    scales = {id(m.base_scale) for m in model.modules() if isinstance(m, AdderConv2d) and m.bases > 1}
    groups: dict[str, list[nn.Parameter]] = {"adder": [], "decay": [], "no_decay": []}
    for p in model.parameters():
        if p.requires_grad:
            decay = p.dim() > 1 and id(p) not in scales
            groups["adder" if id(p) in adder else "decay" if decay else "no_decay"].append(p)
    adder_decay = config.weight_decay if config.adder_weight_decay is None else config.adder_weight_decay
    settings = {
        "adder": (config.lr * config.adder_lr_scale, adder_decay),
        "decay": (config.lr, config.weight_decay),
        "no_decay": (config.lr, 0.0),
    }
    param_groups = [
        {"params": params, "lr": settings[name][0], "weight_decay": settings[name][1], "name": name}
        for name, params in groups.items()
        if params
    ]
    optimizer = torch.optim.SGD(param_groups, lr=config.lr, momentum=config.momentum, nesterov=True)
    warmup = min(config.warmup_steps, max(total_steps - 1, 0))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(total_steps - warmup, 1)))

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def eta_at(config: TrainConfig, step: int, total_steps: int) -> float:
    """The adaptive-LR eta at ``step``: constant, or annealed by cosine to ``eta_final``."""
    if config.eta_final is None:
        return config.eta
    return config.eta_final + (config.eta - config.eta_final) * 0.5 * (1 + math.cos(math.pi * step / total_steps))


class _LossWatch:
    """Detects a loss that is not finite or has run away: its running mean over 20 steps above four times
    the mean of the first 10 steps of the run."""

    def __init__(self) -> None:
        self.start: list[float] = []
        self.recent: list[float] = []

    def check(self, loss: float) -> str | None:
        if not math.isfinite(loss):
            return f"the loss became {loss}"
        if len(self.start) < 10:
            self.start.append(loss)
            return None
        self.recent = [*self.recent[-19:], loss]
        baseline = sum(self.start) / len(self.start)
        running = sum(self.recent) / len(self.recent)
        if len(self.recent) == 20 and running > 4 * baseline:
            return f"the loss rose from {baseline:.3g} at the start to {running:.3g} (mean of the last 20 steps)"
        return None


def train_one_epoch(
    net: nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    config: TrainConfig,
    *,
    steps: int,
    epoch: int,
    total_steps: int,
    ctx: DistributedContext,
    teacher: nn.Module | None = None,
    features: Any = None,
    watch: _LossWatch | None = None,
    task: Task = CLASSIFICATION,
) -> dict[str, float | None]:
    """One epoch of ``steps`` batches; returns ``lr`` (at its first step), ``train_loss``, ``train_top1`` (None
    where ``task`` counts no right answers), ``seconds`` and ``images_per_second``. Raises
    :class:`TrainingDiverged` (without stepping the optimizer on the bad loss) when ``watch`` sees the loss
    diverge."""
    model = net.module if isinstance(net, DistributedDataParallel) else net
    device = ctx.device
    has_adder = next(adder_weights(model), None) is not None
    net.train()
    lr = config.lr * scheduler.lr_lambdas[0](scheduler.last_epoch)  # the base lr; adder weights' is scaled
    started = time.perf_counter()
    loss_sum = seen = 0.0
    correct: float | None = 0.0
    bar = tqdm(
        total=steps,
        desc=f"{config.desc} {epoch + 1}/{config.epochs}",
        disable=not (config.progress and ctx.is_main),
        unit="batch",
        leave=False,
    )
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if config.amp else contextlib.nullcontext()
    for step, batch in enumerate(loader):
        if step >= steps:
            break
        with autocast:
            loss, count, right = task.step(net, batch, teacher, config, device)
            if features is not None:
                loss = loss + config.feature_kd * task.feature_scale * features.loss()
        value = float(loss.detach())
        problem = watch.check(value) if watch is not None else None
        if problem is not None:
            bar.close()
            raise TrainingDiverged(f"{problem} at epoch {epoch + 1}, step {step + 1}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # DDP all-reduces here
        if has_adder:
            scale_adder_gradients_(model, eta_at(config, epoch * steps + step, total_steps))
        optimizer.step()
        scheduler.step()
        loss_sum += value * count
        correct = None if right is None or correct is None else correct + right
        seen += count
        elapsed = time.perf_counter() - started
        accuracy = {} if correct is None else {"acc": f"{100 * correct / seen:.1f}"}
        bar.set_postfix(loss=f"{loss_sum / seen:.3f}", **accuracy, img_s=f"{seen * ctx.world_size / elapsed:.0f}")
        bar.update()
    bar.close()
    seconds = time.perf_counter() - started
    return {
        "lr": lr,
        "train_loss": loss_sum / seen,
        "train_top1": None if correct is None else 100 * correct / seen,
        "seconds": seconds,
        "images_per_second": seen * ctx.world_size / seconds,
    }


def _float(x: torch.Tensor | None) -> torch.Tensor | None:
    return None if x is None else x.float()


def fit(
    model: nn.Module,
    train_set: Dataset,
    test_set: Dataset,
    config: TrainConfig,
    *,
    teacher: nn.Module | None = None,
    output: str | Path | None = None,
    meta: CheckpointMeta | None = None,
    resume: str | Path | None = None,
    ctx: DistributedContext | None = None,
    teacher_top1: float | None = None,
    task: Task = CLASSIFICATION,
) -> list[EpochRecord]:
    """Train ``model`` and return one record per epoch (those of a resumed run's earlier epochs included).
    ``task`` says what the batches, the loss, the distillation and the metric are (:class:`Task`: classification
    by default); the records' ``test_top1`` is its metric, which chooses ``best.pt``.

    With ``output`` the run writes ``last.pt``, ``best.pt`` and ``metrics.csv`` there after every epoch
    (``meta`` says what the model is; the recipe is added to it). ``resume`` continues from a ``last.pt``
    written with the same schedule settings: weights, optimizer, scheduler and RNG states. Training stops
    with :class:`TrainingDiverged` when the loss is not finite or runs away, or when ``teacher_top1`` is
    given, at least three times chance, and the model ends an epoch of 50 steps or more at chance; the last
    checkpoint then stays that of the last good epoch.
    """
    ctx = ctx or DistributedContext()
    if config.batch_size % ctx.world_size != 0:
        raise ValueError(f"batch size {config.batch_size} must be divisible by the {ctx.world_size} processes")
    if output is not None and meta is None:
        raise ValueError("fit(output=...) needs meta: what the checkpoints hold")
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
        collate_fn=task.collate_fn,
    )
    steps = len(loader) if config.max_steps is None else min(len(loader), config.max_steps)
    if steps == 0:
        raise ValueError(f"training set of {len(train_set)} images gives no batch of {config.batch_size}")
    total_steps = config.epochs * steps
    optimizer, scheduler = build_optimizer(model, config, total_steps)
    net = DistributedDataParallel(model) if ctx.enabled else model
    features = task.features(model, teacher) if (teacher is not None and config.kd and config.feature_kd > 0) else None
    saver = None
    if output is not None and ctx.is_main:
        saver = CheckpointSaver(output, replace(meta, recipe=asdict(config)), metric=task.metric)

    start_epoch, best, history = 0, -math.inf, []
    has_adder = next(adder_weights(model), None) is not None
    if resume is not None:
        state = load_checkpoint(resume)
        check_same_schedule(state, config, resume, adders=has_adder)
        load_state_dict(model, state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        start_epoch, best = state["epoch"] + 1, state["best_top1"]
        history = [EpochRecord(**r) for r in state.get("history", [])]
        if start_epoch < config.epochs:
            message = f"resuming at epoch {start_epoch + 1} of {config.epochs}, step {start_epoch * steps}"
        else:
            message = f"all {config.epochs} epoch(s) already done"
        _log(f"{config.desc}: {message} (from {resume})", config.log and ctx.is_main)

    watch = _LossWatch()
    num_classes = _num_classes(model)
    try:
        for epoch in range(start_epoch, config.epochs):
            sampler.set_epoch(epoch)
            try:
                stats = train_one_epoch(
                    net, loader, optimizer, scheduler, config,
                    steps=steps, epoch=epoch, total_steps=total_steps, ctx=ctx,
                    teacher=teacher, features=features, watch=watch, task=task,
                )  # fmt: skip
            except TrainingDiverged as e:
                raise TrainingDiverged(_diverged_message(str(e), config, history, saver, has_adder)) from None
            # Every rank runs the same batches count, so synchronised BatchNorm's collectives match up.
            images = ((task.images(batch), None) for batch in loader)
            reestimate_batchnorm(model, images, min(config.batchnorm_batches, steps), device)
            scores = (
                task.evaluate(
                    model,
                    test_set,
                    device=device,
                    progress=config.progress and ctx.is_main,
                    desc=f"eval {epoch + 1}",
                    max_batches=config.eval_max_batches,
                )
                if ctx.is_main
                else None
            )
            test_top1 = scores[task.metric] if scores is not None else 0.0
            record = EpochRecord(epoch=epoch + 1, test_top1=test_top1, **stats, test_scores=scores)
            chance = 100.0 / num_classes if (num_classes and task.metric == "top1") else None
            if (
                ctx.is_main
                and chance is not None
                and teacher_top1 is not None
                and steps >= _CHANCE_MIN_STEPS
                and teacher_top1 >= 3 * chance
                and test_top1 <= 1.5 * chance
            ):
                raise TrainingDiverged(
                    _diverged_message(
                        f"test top-1 is {test_top1:.2f}% after epoch {epoch + 1}, chance level "
                        f"({chance:.1f}%), while the teacher has {teacher_top1:.2f}%",
                        config,
                        history,
                        saver,
                        has_adder,
                    )
                )
            history.append(record)
            train = "" if record.train_top1 is None else f"train top-1 {record.train_top1:.2f}%, "
            test = "top-1" if task.metric == "top1" else task.metric
            last_lr = config.lr * scheduler.lr_lambdas[0](scheduler.last_epoch - 1)  # at the epoch's last step
            _log(
                f"{config.desc} epoch {record.epoch}/{config.epochs}: loss {record.train_loss:.4f}, "
                f"{train}test {test} {record.test_top1:.2f}%, lr {record.lr:.4g} -> {last_lr:.4g} "
                f"({record.seconds:.0f}s)",
                config.log and ctx.is_main,
            )
            if saver is not None:
                state = {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "rng": rng_state(),
                    "epoch": epoch,
                    "best_top1": max(best, test_top1),
                }
                saver.save(state, [_saved(r) for r in history], is_best=test_top1 > best)
            best = max(best, test_top1)
    finally:
        if features is not None:
            features.remove()
    return history


def _log(message: str, enabled: bool) -> None:
    if enabled:
        tqdm.write(message)


def _saved(record: EpochRecord) -> dict[str, Any]:
    """What a checkpoint's history and metrics.csv keep of ``record``: all but ``test_scores``."""
    return {key: value for key, value in asdict(record).items() if key != "test_scores"}


def _num_classes(model: nn.Module) -> int | None:
    last = None
    for module in model.modules():
        if isinstance(module, nn.Linear):
            last = module.out_features
        elif isinstance(module, nn.Conv2d):
            last = module.out_channels
    return last


def check_same_schedule(state: dict[str, Any], config: TrainConfig, path: str | Path, adders: bool = True) -> None:
    """Raise ``ValueError`` when ``config`` changes a setting of the checkpoint's schedule (epochs, batch size,
    learning rate, ...): resuming with it would bend the learning-rate schedule mid-run. The adder weights' own
    settings count only where the model has adder weights (``adders``): a CNN's training is the same without them."""
    meta: CheckpointMeta = state["meta"]
    saved = meta.recipe if meta.recipe is not None else state.get("config")  # format 1 kept it beside meta
    if saved is None:
        return
    now = asdict(config)
    keys = _SCHEDULE_KEYS if adders else [k for k in _SCHEDULE_KEYS if k not in _ADDER_KEYS]
    changed = [f"{k} {saved[k]!r} -> {now[k]!r}" for k in keys if k in saved and saved[k] != now[k]]
    if changed:
        raise ValueError(
            f"{path} was trained with other settings ({'; '.join(changed)}). Resuming must keep them, since "
            "they set the learning-rate schedule; to train longer or differently, start a new run."
        )


def _diverged_message(problem: str, config: TrainConfig, history: list[EpochRecord], saver, adders: bool = True) -> str:
    if saver is not None and history:
        kept = f"The last good checkpoint is kept: {saver.last} (epoch {history[-1].epoch})."
    elif saver is not None:
        kept = "No epoch finished, so no checkpoint was written."
    else:
        kept = ""
    # The main job's CNN trains at pretrain_lr, which a config file (-c) sets; the adder model at --lr.
    option = "--lr" if adders else "pretrain_lr in a -c config file:"
    hint = f"Try a lower learning rate ({option} {config.lr / 3:.3g}; now {config.lr:.3g})"
    if adders and config.eta > 0.2:  # eta scales adder weights' steps only
        hint += f" or a lower adaptive-LR eta (--eta {max(config.eta / 4, 0.2):.3g}; now {config.eta:.3g})"
    return f"{config.desc} training diverged: {problem}. {kept} {hint}.".replace("  ", " ")

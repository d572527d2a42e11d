"""The main job: CNN teacher -> conversion -> fine-tuning with distillation -> evaluation -> ONNX export
and ONNX Runtime evaluation, with everything written to one run folder. Classifiers, segmentation and detection
models alike: what differs by task (data, losses, distillation, metric) is its training task
(:func:`adderconvert.train.dense.training_task`); the metric is top-1, mIoU or mAP, under its name in the summary.

The run folder (``--output``) holds ``config.yaml``, ``teacher/`` (the CNN's ``last.pt``, ``best.pt`` and
``metrics.csv`` when it is trained here), the adder model's ``last.pt``, ``best.pt`` and ``metrics.csv``,
``MODEL_adder.onnx`` and ``summary.json``. Every input is checked before anything is written; a folder
that holds a run is continued only with ``resume`` and replaced only with ``overwrite``.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import dataclass, replace
from itertools import islice
from pathlib import Path

import torch
from torch import nn

from adderconvert.app.config import RunConfig
from adderconvert.app.devices import resolve_device
from adderconvert.app.int8 import calibration_batches, check_calibration_batches, compare_onnx, export_int8, int8_path
from adderconvert.app.outputs import (
    REPLACED,
    OutputError,
    ReplacedRun,
    check_run_folder,
    discard_new_run,
    find_run,
    mark_run,
    run_files,
    write_text,
    write_through,
)
from adderconvert.app.report import write_report
from adderconvert.app.report.stages import STAGES
from adderconvert.app.resume import default_pretrain_epochs
from adderconvert.app.saved_models import deployment_metadata, evaluate_file, load_data
from adderconvert.app.weights import check_weights, load_weights
from adderconvert.architectures.cnn import check_input_size
from adderconvert.architectures.registry import build
from adderconvert.checkpoint import CheckpointMeta, check_compatible, load_checkpoint
from adderconvert.conversion import (
    CALIBRATION_IMAGES,
    DEPLOYMENT_SIZE,
    PLAN_IMAGES,
    SIGN_MARGIN,
    Conversion,
    ConversionReport,
    default_bases,
    plan_conversion,
    run_conversion,
    takes_ceiling_bases,
)
from adderconvert.data import DatasetSplits
from adderconvert.deploy.export import export_onnx
from adderconvert.metrics import METRIC_NAMES
from adderconvert.train import (
    MANY_BASES_LR,
    TrainConfig,
    finish_distributed,
    fit,
    init_distributed,
)
from adderconvert.train.dense import training_task
from adderconvert.train.diagnostics import adder_weight_stats, saturation_summary
from adderconvert.train.loop import Task, check_same_schedule
from adderconvert.train.saver import seed_everything

__all__ = [
    "RunConfig",
    "RunInputError",
    "adder_train_config",
    "bases_of",
    "lr_of",
    "batch_size_of",
    "draw_calibration_images",
    "checkpoint_meta",
    "convert_trained",
    "plan_only",
    "run",
]


class RunInputError(ValueError):
    """An input of the run (folder, model, device, checkpoint) cannot be used; the message says why."""


def _log(message: str, enabled: bool = True) -> None:
    if enabled:
        print(message, flush=True)


def _example_batch(dataset, size: int = 32) -> torch.Tensor:
    return torch.stack([dataset[i][0] for i in range(min(size, len(dataset)))])


def draw_calibration_images(splits: DatasetSplits, seed: int, count: int = CALIBRATION_IMAGES) -> torch.Tensor:
    """The training images a run converts on: :data:`~adderconvert.conversion.CALIBRATION_IMAGES` drawn at random,
    their random flips too, from ``seed`` alone (the caller's random state is left as it was); the first ``count``
    of them only (planning reads the first PLAN_IMAGES), the same whatever ``count``."""
    with torch.random.fork_rng(devices=[]):
        torch.random.default_generator.manual_seed(seed)  # the CPU generator only: the CUDA ones are not forked here
        order = torch.randperm(len(splits.train), generator=torch.Generator().manual_seed(seed))
        return torch.stack([splits.train[int(i)][0] for i in order[: min(count, CALIBRATION_IMAGES)]])


def _rules(config: RunConfig, task: Task) -> dict:
    """The run's conversion rules, as plan_conversion and run_conversion take them (``--keep-ceiling``, else the
    model's ``task``'s)."""
    names = ("include", "exclude", "keep_stem", "keep_classifier", "keep", "keep_mac_budget")
    rules = {name: getattr(config, name) for name in names}
    return rules | {"keep_ceiling": keep_ceiling_of(config, task), "mac_size": DEPLOYMENT_SIZE}


def _plan(config: RunConfig, model: nn.Module, example: torch.Tensor, task: Task) -> ConversionReport:
    report = plan_conversion(model, example, **_rules(config, task))
    bases = bases_of(config, task, model, report)  # once: without --bases it scans the model's convs and plan
    for decision in report.converted:
        decision.bases = bases
    if not report.converted:
        raise RunInputError(
            f"nothing was converted: no Conv2d of {config.model} is left to become an adder layer under these "
            "rules (--include/--exclude, --keep-stem, --keep-classifier, --keep, --keep-mac-budget); see `--dry-run`"
        )
    return report


def _data_and_model(config: RunConfig, *, fetch: bool) -> tuple[DatasetSplits, nn.Module, bool | None]:
    """The run's data (:func:`~adderconvert.app.saved_models.load_data`: of the model's task), its CNN built for
    them from ``config.seed`` with ``config.weights`` (loaded, or with ``fetch`` False only checked: a file is read,
    a name not fetched) and whether the weights' head fits the classes (None: unknown or no weights)."""
    splits = load_data(config.dataset, config.data, config.image_size, config.model, seed=config.seed)
    seed_everything(config.seed)  # the CNN's initial weights (and a resized head) follow from --seed
    model = build(config.model, splits.num_classes, splits.image_size)
    head_fits = None
    if config.weights:
        head_fits = (load_weights if fetch else check_weights)(model, config.model, config.weights)
    check_input_size(model, config.model, splits.image_size)
    return splits, model, head_fits


def plan_only(config: RunConfig) -> tuple[ConversionReport, str | None]:
    """The conversion report for ``config.model``, converting nothing: planned as the run plans (the same seed,
    weights and calibration images), and a note when the run's plan will differ (its CNN is trained first).
    Segmentation and detection models are planned on their task's data (Fashion-MNIST's default stands for the
    built-in scenes, :func:`~adderconvert.data_scenes.load_scenes`; data of another task is refused) at
    ``config.image_size`` (default :data:`~adderconvert.architectures.dense.DEFAULT_IMAGE_SIZE`), a detector's
    transform set to that size. The note also says why the run converts with more than one base and fine-tunes at
    another lr than ``TrainConfig.lr``, where the defaults choose that."""
    splits, model, head_fits = _data_and_model(config, fetch=False)
    task = training_task(splits.task)
    report = _plan(config, model, draw_calibration_images(splits, config.seed, PLAN_IMAGES), task)
    pretrain = config.pretrain_epochs
    if pretrain is None:
        pretrain = default_pretrain_epochs(config.weights, splits.num_classes, head_fits)
    note = None
    if pretrain > 0:
        note = (
            f"note: planned on the CNN before its {pretrain} epoch(s) of training; the run plans on the trained CNN, "
            "so what --keep-ceiling converts and --keep-mac-budget keeps may differ"
        )
    elif config.weights and head_fits is None:
        note = (
            f"note: planned on random weights (--dry-run does not download --weights {config.weights}); the run "
            "plans on them, so what --keep-ceiling converts and --keep-mac-budget keeps may differ"
        )
    notes = [line for line in (_defaults_note(config, task, model, report), note) if line]
    return report, "\n".join(notes) or None


def _defaults_note(config: RunConfig, task: Task, model: nn.Module, report: ConversionReport) -> str:
    """Why the run converts ``model`` with more than one base, and fine-tunes it at another lr than
    ``TrainConfig.lr``, where the defaults for its convs and its plan (``report``) choose that; else ``""``."""
    bases = report.converted[0].bases  # _plan gave every converted layer the run's bases (bases_of)
    lines = [_bases_note(config, task, model, report, bases)]
    if config.lr is None and task.lr is None and (lr := lr_of(config, bases, task)) != TrainConfig.lr:
        lines.append(
            f"fine-tuning: lr {lr:g}, the default for adder layers of three or more bases (else "
            f"{TrainConfig.lr:g}), whose closer fit a larger step undoes in part; --lr sets it"
        )
    return "\n".join(line for line in lines if line)


def _bases_note(config: RunConfig, task: Task, model: nn.Module, report: ConversionReport, bases: int) -> str:
    if config.bases is not None or task.bases(model) is not None or bases == 1:
        return ""
    if takes_ceiling_bases(report):
        why = f"where the plan converts {_ceiling_bound(report)} of {config.model}"
    else:
        why = f"for a network with grouped or depthwise convs ({config.model})"
    return (
        f"conversion: {bases} binary bases per adder layer, the default {why}: {bases}x the additions of one, for a "
        "closer fit; --bases sets it"
    )


@dataclass
class _Prepared:
    """Everything checked and loaded before a run writes anything."""

    splits: DatasetSplits
    teacher: nn.Module
    report: ConversionReport
    pretrain_epochs: int
    out: Path
    device: str
    task: Task  # what training and evaluation take from the model's task
    defaults_note: str = ""  # why the bases differ from 1 and the lr from TrainConfig's, where the defaults chose that
    default_bases: bool = False  # the bases are the default for the first plan (--bases not given)


def _check_folder(config: RunConfig, out: Path) -> None:
    if config.overwrite and config.weights and Path(config.weights).is_file() and out.is_dir():
        weights = Path(config.weights).resolve()
        if any(weights == path.resolve() for path in run_files(out)):
            raise RunInputError(
                f"--weights {config.weights} is a file of the run in {out}, which --overwrite replaces: copy it "
                "out of the run folder first, or write the new run to another --output"
            )
    try:
        check_run_folder(out, model=config.model, overwrite=config.overwrite, resume=config.resume)
    except OutputError as e:
        if config.resume and find_run(out) is None and (out / "last.pt").is_file():
            load_checkpoint(out / "last.pt")  # a damaged last.pt: its own error names it
        raise RunInputError(str(e)) from None


def _check_batch(config: RunConfig, model: nn.Module, splits: DatasetSplits, world_size: int, task: Task) -> None:
    per_process = config.batch_size // world_size
    if config.batch_size % world_size:
        raise RunInputError(f"--batch-size {config.batch_size} must be divisible by the {world_size} processes")
    if len(splits.train) < config.batch_size:
        raise RunInputError(f"--batch-size {config.batch_size} is larger than the {len(splits.train)} training images")
    if per_process == 1:  # BatchNorm: one value per channel (a 1x1 map, a pooled branch) in a batch of one image
        probe = copy.deepcopy(model).train()
        batch = next(iter(torch.utils.data.DataLoader(splits.train, batch_size=1, collate_fn=task.collate_fn)))
        try:
            task.step(probe, batch, None, TrainConfig(kd=False), torch.device("cpu"))  # a training forward
        except ValueError as e:
            raise RunInputError(
                f"--batch-size {config.batch_size}: {config.model} has BatchNorm layers that see one value per channel "
                f"in a batch of one at {splits.image_size}px; use --batch-size 2 or more ({e})"
            ) from None


def _prepare(config: RunConfig, world_size: int) -> tuple[RunConfig, _Prepared]:
    """``config`` with the defaults of the model's task filled in (written to config.yaml as such, so that a
    resume keeps them), and what the run needs."""
    out = Path(config.output)
    _check_folder(config, out)
    device = resolve_device(config.device)
    splits, teacher, head_fits = _data_and_model(config, fetch=True)
    task = training_task(splits.task)
    given = config  # what the user chose, for the note on what the defaults chose
    config = replace(config, batch_size=batch_size_of(config, task))
    _check_batch(config, teacher, splits, world_size, task)
    if config.int8:
        try:
            check_calibration_batches(config.calibration_batches, len(splits.train))
        except ValueError as e:
            raise RunInputError(str(e)) from None
    report = _plan(config, teacher, draw_calibration_images(splits, config.seed, PLAN_IMAGES), task)
    defaults_note = _defaults_note(given, task, teacher, report)
    config = replace(config, bases=report.converted[0].bases)  # _plan's: bases_of, resolved once
    config = replace(config, lr=lr_of(config, config.bases, task), keep_ceiling=keep_ceiling_of(config, task))
    pretrain = config.pretrain_epochs
    if pretrain is None:
        # torchvision's pretrained heads have ImageNet's 1000 classes; a resized head must be trained.
        pretrain = default_pretrain_epochs(config.weights, splits.num_classes, head_fits)
    if config.resume:
        for path, stage, train_config in (
            (out / "teacher" / "last.pt", "teacher", _teacher_config(config, max(pretrain, 1), task)),
            (out / "last.pt", "adder", adder_train_config(config, task, config.bases)),
        ):
            if path.is_file():
                state = load_checkpoint(path)
                check_compatible(
                    state["meta"],
                    path,
                    stage=stage,
                    model_name=config.model,
                    num_classes=splits.num_classes,
                    image_size=splits.image_size,
                )
                check_same_schedule(state, train_config, path, adders=stage == "adder")
    prepared = _Prepared(splits, teacher, report, pretrain, out, device, task, defaults_note, given.bases is None)
    return config, prepared


def batch_size_of(config: RunConfig, task: Task) -> int:
    """The run's global batch: ``--batch-size``, or the default of its model's ``task`` (``Task.batch_size``: 128
    for classifiers, 16 for segmentation and detection models)."""
    return task.batch_size if config.batch_size is None else config.batch_size


def bases_of(config: RunConfig, task: Task, model: nn.Module, report: ConversionReport) -> int:
    """The run's binary bases per adder layer: ``--bases``, else its ``model``'s ``task``'s (``Task.bases``: 2 for
    segmentation and detection models, 4 for detectors with depthwise convs), else the conversion's
    :func:`~adderconvert.conversion.default_bases` for
    ``model`` and its plan ``report`` (the run's first: on the CNN as given, before any teacher training):
    ``CEILING_BASES`` for a classifier whose plan converts a depthwise conv or a stem past the keep ceiling,
    ``GROUPED_BASES`` for one with grouped or depthwise convs, else 1."""
    if config.bases is not None:
        return config.bases
    bases = task.bases(model)
    return default_bases(model, report) if bases is None else bases


def _common(config: RunConfig, task: Task) -> dict:
    return dict(
        batch_size=batch_size_of(config, task),
        seed=config.seed,
        workers=config.workers,
        max_steps=config.max_steps,
        eval_max_batches=config.eval_max_batches,
        progress=config.progress,
        sync_bn=config.sync_bn,
        amp=config.amp,
    )


def lr_of(config: RunConfig, bases: int, task: Task) -> float:
    """The run's fine-tuning lr: ``--lr``, else its model's ``task``'s (``Task.lr``: detection models'), else
    :data:`~adderconvert.train.MANY_BASES_LR` where its adder layers have three or more binary bases (``bases``:
    :func:`bases_of`), else ``TrainConfig.lr``."""
    if config.lr is not None:
        return config.lr
    if task.lr is not None:
        return task.lr
    return MANY_BASES_LR if bases >= 3 else TrainConfig.lr


def keep_ceiling_of(config: RunConfig, task: Task) -> float:
    """The run's keep ceiling: ``--keep-ceiling``, else its model's ``task``'s (``Task.keep_ceiling``:
    :data:`~adderconvert.conversion.DEFAULT_KEEP_CEILING`, none for detection models)."""
    return task.keep_ceiling if config.keep_ceiling is None else config.keep_ceiling


def _teacher_config(config: RunConfig, pretrain: int, task: Task) -> TrainConfig:
    return TrainConfig(epochs=pretrain, lr=config.pretrain_lr, kd=False, desc="CNN", **_common(config, task))


def _ceiling_bound(report: ConversionReport) -> str:
    """What ``report`` converts of what gives the default of conversion.CEILING_BASES, in words."""
    converted, total = (sum(layer.depthwise for layer in layers) for layers in (report.converted, report.layers))
    parts = [f"{converted} of the {total} depthwise convs"] if converted else []
    if any(layer.stem_over_ceiling for layer in report.converted):
        parts.append("the stem (alone past the keep ceiling)")
    return " and ".join(parts) or "no depthwise conv and not the stem"


def adder_train_config(config: RunConfig, task: Task, bases: int) -> TrainConfig:
    """How the main job fine-tunes the adder model of ``config``'s run, a model of ``task`` whose adder layers have
    ``bases`` binary bases (at most; benchmarks/recipes.py uses it too)."""
    return TrainConfig(
        epochs=config.epochs,
        lr=lr_of(config, bases, task),
        adder_lr_scale=task.adder_lr_scale,
        eta=config.eta,
        warmup_steps=config.warmup_steps,
        kd=config.kd,
        feature_kd=config.feature_kd,
        desc="adder",
        **_common(config, task),
    )


def run(config: RunConfig) -> dict:
    """Run the main job and return the summary (also written to ``OUTPUT/summary.json``).

    Raises :class:`RunInputError` (and the data, weights and checkpoint errors) before writing anything
    when an input cannot be used.
    """
    ctx = init_distributed(resolve_device(config.device))
    try:
        config, prepared = _prepare(config, ctx.world_size)
        if ctx.enabled:  # every rank has checked the folder before the first one writes to it
            torch.distributed.barrier()
        summary = _run(config, prepared, ctx)
    except BaseException:
        finish_distributed(wait=False)  # the other ranks may be inside a collective: do not wait for them
        raise
    finish_distributed()
    return summary


def checkpoint_meta(
    model: str, dataset: str, splits: DatasetSplits, stage: str, report: ConversionReport | None
) -> CheckpointMeta:
    """What a checkpoint of ``model`` (``stage`` "teacher" or "adder") trained on ``splits`` of ``dataset``
    records about itself: classes, input size and normalisation, and the conversion ``report``."""
    return CheckpointMeta(
        model_name=model,
        num_classes=splits.num_classes,
        stage=stage,
        dataset=dataset,
        image_size=splits.image_size,
        classes=list(splits.classes),
        mean=list(splits.mean),
        std=list(splits.std),
        conversion=report.to_dict() if report is not None else None,
    )


def _run(config: RunConfig, prepared: _Prepared, ctx) -> dict:
    main = ctx.is_main
    started = time.perf_counter()
    out = prepared.out
    created = not out.exists()
    replaced = None
    if main:
        if config.overwrite and out.is_dir():
            # The old run's own files only, moved aside until this run has a checkpoint: anything else stays.
            replaced = ReplacedRun(out)
            kept = sum(1 for p in out.rglob("*") if p.is_file() and REPLACED not in p.relative_to(out).parts)
            if replaced.moved or kept:
                _log(
                    f"--overwrite: moved the {replaced.moved} files of the old run in {out} to {REPLACED}/ "
                    f"(deleted once this run has a checkpoint, put back if it fails before); kept {kept} other files"
                )
        out.mkdir(parents=True, exist_ok=True)
        mark_run(out, config.model, "train")
        # The options this run trains with (a resume's own, the runtime ones included): never stale.
        write_text(out / "config.yaml", replace(config, resume=False, overwrite=False).to_yaml())
    try:
        summary = _stages(config, prepared, ctx, started, replaced)
    except BaseException:
        # A run that wrote no checkpoint leaves nothing behind (and gets the old run back); one that did keeps
        # its work for --resume.
        if main and not config.resume and not any(p.suffix == ".pt" for p in run_files(out)):
            if replaced is not None and replaced.moved:
                replaced.restore()
                _log(f"--overwrite: this run stopped before its first checkpoint; the old run is back in {out}")
            else:
                discard_new_run(out, created)
        elif replaced is not None:
            replaced.drop()
        raise
    if replaced is not None:
        replaced.drop()
    return summary


def _stages(config: RunConfig, prepared: _Prepared, ctx, started: float, replaced: ReplacedRun | None) -> dict:
    main = ctx.is_main
    out, splits, teacher, report, task = prepared.out, prepared.splits, prepared.teacher, prepared.report, prepared.task
    metric = task.metric
    _log(
        f"data: {config.dataset}, {len(splits.train)} train / {len(splits.test)} test images, "
        f"{splits.num_classes} classes, {splits.image_size}px; device {prepared.device}",
        main,
    )
    torch.manual_seed(config.seed)
    cnn_history = []
    if prepared.pretrain_epochs > 0:
        teacher_dir = out / "teacher"
        resume = teacher_dir / "last.pt" if config.resume and (teacher_dir / "last.pt").is_file() else None
        _log(f"teacher: training the {config.model} CNN for {prepared.pretrain_epochs} epoch(s)", main)
        cnn_history = fit(
            teacher,
            splits.train,
            splits.test,
            _teacher_config(config, prepared.pretrain_epochs, prepared.task),
            output=teacher_dir,
            meta=checkpoint_meta(config.model, config.dataset, splits, "teacher", None),
            resume=resume,
            ctx=ctx,
            task=task,
        )
    if replaced is not None:
        replaced.settle()  # the teacher's checkpoints are written: the old run's go
    cnn = _scores(cnn_history, teacher, splits.test, ctx, config, "CNN eval", task)
    _log(_describe("CNN", cnn), main)

    if prepared.defaults_note:
        _log(prepared.defaults_note, main)
    conversion = convert_trained(teacher, splits, config, ctx, log=main)
    student, report = conversion.model, conversion.report
    if prepared.default_bases and takes_ceiling_bases(report) != takes_ceiling_bases(prepared.report):
        _log(
            f"note: the trained CNN's plan converts {_ceiling_bound(report)}, the first plan (the bases' default) "
            f"{_ceiling_bound(prepared.report)}; the conversion keeps {config.bases} base(s) (--bases sets it)",
            main,
        )
    zero_step = _scores([], student, splits.test, ctx, config, "adder eval (zero steps)", task)
    _log(_describe("adder", zero_step).replace(":", " before fine-tuning (zero steps):", 1), main)

    adder_history = []
    if config.finetune:
        _log(f"adder: fine-tuning {config.epochs} epoch(s)", main)
        resume = out / "last.pt" if config.resume and (out / "last.pt").is_file() else None
        adder_history = fit(
            student,
            splits.train,
            splits.test,
            adder_train_config(config, task, config.bases),
            teacher=teacher,
            output=out,
            meta=checkpoint_meta(config.model, config.dataset, splits, "adder", report),
            resume=resume,
            ctx=ctx,
            teacher_top1=cnn[metric],
            task=task,
        )
    if replaced is not None:
        replaced.settle()
    adder = _scores(adder_history, student, splits.test, ctx, config, "adder eval", task)
    _log(_describe("adder", adder), main)
    weights = _weight_health(student, splits, ctx, main and config.init != "sign", task)

    summary = {
        "model": config.model,
        "dataset": config.dataset,
        "converted_layers": len(report.converted),
        "converted_macs": report.converted_macs,
        "total_conv_macs": report.total_macs,
        **{f"cnn_{name}": value for name, value in cnn.items()},
        **{f"zero_step_{name}": value for name, value in zero_step.items()},
        **{f"adder_{name}": value for name, value in adder.items()},
        f"onnx_{metric}": None,
        f"int8_{metric}": None,
        "pretrain_epochs": prepared.pretrain_epochs,
        "epochs": config.epochs if config.finetune else 0,
        "adder_weights": weights,
    }
    if metric != "top1":
        summary = {"task": splits.task, "metric": metric, **summary}
    classifier = metric == "top1"
    if config.export and main:
        try:
            scores, summary["onnx_path"] = _export_and_evaluate(student, splits, out, config)
        except NotImplementedError as e:  # a model the export does not take (none today: kept for new builders)
            _log(f"export: skipped, with the ONNX Runtime evaluation: {e}; the checkpoints are in {out}")
        else:
            summary.update({f"onnx_{name}": value for name, value in scores.items()})
            _log(_describe("ONNX Runtime", scores), main)
    if config.int8 and main:
        int8 = _export_and_evaluate_int8(student, splits, out, config, summary.get("onnx_path"))
        summary.update(int8)
        agreement, what = int8["int8_agreement"], "images" if classifier else "pixels"
        same = f", same class as FP32 on {agreement:.2f}% of the {what}" if agreement is not None else ""
        scores = {name.removeprefix("int8_"): value for name, value in int8.items()}  # int8_miou -> miou
        scores = {name: value for name, value in scores.items() if name in METRIC_NAMES}
        _log(_describe("INT8 ONNX Runtime", scores) + same, main)
    summary["seconds"] = round(time.perf_counter() - started, 1)
    if main:
        write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
        _log(_stage_table(summary, metric), main)
        if config.finetune:
            html, _ = write_report(out, measure_latency=config.export)
            _log(f"cost report: {html}", main)
    return summary


def convert_trained(
    teacher: nn.Module,
    splits: DatasetSplits,
    config: RunConfig,
    ctx,
    *,
    log: bool = True,
    sign_margin: float = SIGN_MARGIN,
    inside: bool = False,
) -> Conversion:
    """The main job's conversion of the trained CNN ``teacher``: :func:`adderconvert.conversion.run_conversion`
    with the run's rules and init on :data:`~adderconvert.conversion.CALIBRATION_IMAGES` training images drawn
    at random (the ranges the sign init needs are the trained CNN's), as one tensor whatever the task: the
    conversion runs the model on them only as its steps need (a detector takes the tensor as its list of images).
    ``sign_margin`` and ``inside`` are the conversion's and the reconstruction's (for screening). The adder model is
    on ``ctx.device``.

    Its random draws come from ``config.seed`` alone, and the caller's random state is left as it was: the same
    teacher always gives the same adder model, in a fresh process (a resumed run, a cached teacher) as after
    training."""
    images = draw_calibration_images(splits, config.seed)
    task = training_task(splits.task)
    cuda = ctx.device.type == "cuda"
    index = (torch.cuda.current_device() if ctx.device.index is None else ctx.device.index) if cuda else None
    with torch.random.fork_rng(devices=[index] if cuda else []):
        torch.manual_seed(config.seed)
        return run_conversion(
            teacher.to(ctx.device),
            images,
            init=config.init,
            reconstruct_method=None if config.reconstruct == "none" else config.reconstruct,
            **_rules(config, task),
            sign_margin=sign_margin,
            inside=inside,
            # None: the conversion's default for the trained CNN and its plan (the main job has resolved its own)
            bases=config.bases if config.bases is not None else task.bases(teacher),
            log=lambda message: _log(message, log),
        )


def _weight_health(student: nn.Module, splits: DatasetSplits, ctx, warn: bool, task: Task) -> dict:
    """Per adder layer weight std and saturation (on 4 test batches), with a warning (``warn``) when nearly
    all weights are saturated: beyond every input their tap reads, where |x - w| is only a sign-weighted x.
    The sign init puts them there by design (a binary-weight conv plus a constant), so it is not warned of
    then; from the other inits, healthy runs of benchmarks/recipes.py ended at 46-86% saturated, the lr 0.1
    ones at 82-97%."""
    loader = torch.utils.data.DataLoader(splits.test, batch_size=64, collate_fn=task.collate_fn)
    layers = adder_weight_stats(student, (task.images(batch) for batch in islice(loader, 4)), ctx.device)
    summary = saturation_summary(layers)
    if summary["saturated_fraction"] > 0.9:
        _log(
            f"warning: {100 * summary['saturated_fraction']:.0f}% of the adder weights lie beyond the range of "
            "the inputs they meet (saturated): those taps compute a sign-weighted sum, not a distance. "
            "A lower --eta or --lr keeps them in range.",
            warn,
        )
    return {**summary, "per_layer": layers}


def _describe(what: str, scores: dict[str, float]) -> str:
    """``"CNN top-1: 85.58%"``; ``"CNN mIoU / pixel accuracy: 40.00% / 90.00%"`` (``what`` is "CNN")."""
    names = " / ".join(METRIC_NAMES.get(name, name) for name in scores)
    values = " / ".join(f"{value:.2f}%" for value in scores.values())
    return f"{what} {names}: {values}".replace("  ", " ")


def _scores(history, model, test_set, ctx, config: RunConfig, desc: str, task: Task) -> dict[str, float]:
    """The task's test scores of ``model`` (:meth:`Task.evaluate`), the model :func:`fit` gave ``history`` of: its
    last epoch's (fit leaves the last epoch's weights, whichever epoch best.pt holds), as fit scored them where the
    record has them; a classifier's top-1 from the record otherwise (a resumed run's); else a fresh evaluation."""
    if history and history[-1].test_scores is not None:
        return dict(history[-1].test_scores)
    if history and task.metric == "top1":
        return {"top1": history[-1].test_top1}
    return task.evaluate(
        model,
        test_set,
        device=ctx.device,
        progress=config.progress and ctx.is_main,
        desc=desc,
        max_batches=config.eval_max_batches,
    )


def _export_and_evaluate(model, splits, out: Path, config: RunConfig) -> tuple[dict[str, float], str]:
    """The FP32 adder ONNX model (``MODEL_adder.onnx``) and its test scores in ONNX Runtime (top-1, or the
    segmentation or detection scores), as `evaluate` gives them."""
    model = model.cpu().eval()
    meta = checkpoint_meta(config.model, config.dataset, splits, "adder", None)
    metadata = deployment_metadata(meta, seed=config.seed)
    example = _example_batch(splits.test, 2)
    path = write_through(
        out / f"{config.model}_adder.onnx", lambda tmp: export_onnx(model, tmp, example, metadata=metadata)
    )
    result = evaluate_file(
        path,
        dataset=config.dataset,
        data=config.data,
        image_size=splits.image_size,
        max_batches=config.eval_max_batches,
    )
    return result["scores"], path.name  # relative to the run folder


def _export_and_evaluate_int8(model, splits, out: Path, config: RunConfig, fp32_name: str | None) -> dict:
    """The INT8 adder model (``MODEL_adder_int8.onnx``, calibrated on ``calibration_batches`` training batches),
    its test scores and its agreement with the FP32 adder ONNX model (when exported): ``app.int8.compare_onnx``."""
    meta = checkpoint_meta(config.model, config.dataset, splits, "adder", None)
    metadata = deployment_metadata(meta, seed=config.seed)
    batches = calibration_batches(splits.train, config.calibration_batches, config.seed, splits.task)
    model = model.cpu().eval()
    method = config.calibration_method
    path = write_through(int8_path(out, config.model), lambda tmp: export_int8(model, tmp, batches, metadata, method))
    fp32 = out / Path(fp32_name).name if fp32_name else None
    options = dict(max_batches=config.eval_max_batches, workers=config.workers, task=splits.task)
    result = compare_onnx(path, fp32, splits.test, **options)
    return {**result, "int8_path": path.name}


def _stage_table(summary: dict, metric: str = "top1") -> str:
    rows = [
        (label, summary.get(f"{stage}_{metric}"))
        for stage, label in STAGES
        if stage != "int8" or summary.get(f"int8_{metric}") is not None  # INT8: a run with --int8
    ]
    width = max(len(label) for _, label in STAGES) + 2
    lines = [f"{'stage':<{width}}{METRIC_NAMES[metric]:>8}", "-" * (width + 8)]
    lines += [f"{name:<{width}}{(f'{v:.2f}%' if v is not None else 'n/a'):>8}" for name, v in rows]
    lines.append(
        f"{summary['model']} on {summary['dataset']}, {summary['converted_layers']} adder layers, "
        f"{summary['seconds']:.0f}s"
    )
    return "\n".join(lines)

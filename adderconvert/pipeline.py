"""The main job: CNN teacher -> conversion -> fine-tuning with distillation -> evaluation -> ONNX export
and ONNX Runtime evaluation, with everything written to one output folder."""

from __future__ import annotations

import copy
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import yaml

from adderconvert.conversion import ConversionReport, convert, plan_conversion
from adderconvert.data import load_dataset
from adderconvert.models import build_model
from adderconvert.train import TrainConfig, evaluate, finish_distributed, fit, init_distributed

__all__ = ["RunConfig", "run"]


@dataclass
class RunConfig:
    model: str = "resnet18"
    dataset: str = "fashion-mnist"
    data: str | None = None
    image_size: int | None = None
    weights: str | None = "DEFAULT"
    pretrain_epochs: int | None = None  # None: 1 when the classifier had to be resized, else 0
    pretrain_lr: float = 0.05
    finetune: bool = True
    epochs: int = 1
    batch_size: int = 128
    lr: float = TrainConfig.lr
    eta: float = TrainConfig.eta
    kd: bool = True
    feature_kd: float = TrainConfig.feature_kd
    init: str = "fresh"
    include: list[str] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)
    keep_stem: bool = True
    keep_classifier: bool = True
    sync_bn: bool = False
    export: bool = True
    output: str = "runs/adderconvert"
    resume: str | None = None
    device: str = "cpu"
    seed: int = 0
    workers: int = 0
    max_steps: int | None = None
    max_drop: float | None = None
    progress: bool = True

    def to_yaml(self) -> str:
        return yaml.safe_dump(asdict(self), sort_keys=False)


def _log(message: str, enabled: bool = True) -> None:
    if enabled:
        print(message, flush=True)


def _example_batch(dataset, size: int = 32) -> torch.Tensor:
    return torch.stack([dataset[i][0] for i in range(min(size, len(dataset)))])


def plan_only(config: RunConfig) -> ConversionReport:
    """The conversion report for ``config.model`` on the data set's image size, converting nothing."""
    splits = load_dataset(config.dataset, config.data, config.image_size)
    model = build_model(config.model, splits.num_classes)
    return plan_conversion(
        model,
        _example_batch(splits.test, 2),
        include=config.include,
        exclude=config.exclude,
        keep_stem=config.keep_stem,
        keep_classifier=config.keep_classifier,
    )


def run(config: RunConfig) -> dict:
    """Run the main job and return the summary (also written to ``OUTPUT/summary.json``)."""
    ctx = init_distributed(config.device)
    try:
        summary = _run(config, ctx)
    except BaseException:
        finish_distributed(wait=False)  # the other ranks may be inside a collective: do not wait for them
        raise
    finish_distributed()
    return summary


def _run(config: RunConfig, ctx) -> dict:
    main = ctx.is_main
    started = time.perf_counter()
    out = Path(config.output)
    if main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(config.to_yaml())
    torch.manual_seed(config.seed)
    splits = load_dataset(config.dataset, config.data, config.image_size)
    _log(
        f"data: {config.dataset}, {len(splits.train)} train / {len(splits.test)} test images, "
        f"{splits.num_classes} classes, {splits.image_size}px",
        main,
    )

    teacher = build_model(config.model, splits.num_classes, config.weights)
    pretrain = config.pretrain_epochs
    if pretrain is None:
        # torchvision's pretrained heads have ImageNet's 1000 classes; a resized head must be trained.
        pretrain = 0 if config.weights and splits.num_classes == 1000 else 1
    common = dict(
        batch_size=config.batch_size,
        seed=config.seed,
        workers=config.workers,
        max_steps=config.max_steps,
        progress=config.progress and main,
        sync_bn=config.sync_bn,
    )
    # fit() evaluates the test set after its last epoch; that figure is reused rather than computed again.
    cnn_history = []
    if pretrain > 0:
        teacher_dir = out / "teacher"
        _log(f"teacher: training the {config.model} CNN for {pretrain} epoch(s)", main)
        cnn_history = fit(
            teacher,
            splits.train,
            splits.test,
            TrainConfig(epochs=pretrain, lr=config.pretrain_lr, kd=False, desc="CNN", **common),
            output=teacher_dir,
            meta={"model_name": config.model, "num_classes": splits.num_classes},
            ctx=ctx,
        )
    cnn_top1 = _top1(cnn_history, teacher, splits.test, ctx, config.progress and main, "CNN eval")
    _log(f"CNN top-1: {cnn_top1:.2f}%", main)

    student = copy.deepcopy(teacher).cpu()
    report = plan_conversion(
        student,
        _example_batch(splits.train),
        include=config.include,
        exclude=config.exclude,
        keep_stem=config.keep_stem,
        keep_classifier=config.keep_classifier,
    )
    convert(student, None, init=config.init, report=report)
    _log(report.table(), main)

    adder_history = []
    if config.finetune:
        meta = {
            "model_name": config.model,
            "num_classes": splits.num_classes,
            "conversion": report.to_dict(),
            "dataset": config.dataset,
            "image_size": splits.image_size,
        }
        adder_history = fit(
            student,
            splits.train,
            splits.test,
            TrainConfig(
                epochs=config.epochs,
                lr=config.lr,
                eta=config.eta,
                kd=config.kd,
                feature_kd=config.feature_kd,
                desc="adder",
                **common,
            ),
            teacher=teacher,
            output=out,
            meta=meta,
            resume=config.resume,
            ctx=ctx,
        )
    adder_top1 = _top1(adder_history, student, splits.test, ctx, config.progress and main, "adder eval")
    _log(f"adder top-1: {adder_top1:.2f}%", main)

    summary = {
        "model": config.model,
        "dataset": config.dataset,
        "converted_layers": len(report.converted),
        "converted_macs": report.converted_macs,
        "total_conv_macs": report.total_macs,
        "cnn_top1": cnn_top1,
        "adder_top1": adder_top1,
        "onnx_top1": None,
        "pretrain_epochs": pretrain,
        "epochs": config.epochs if config.finetune else 0,
    }
    if config.export and main:
        summary["onnx_top1"], summary["onnx_path"] = _export_and_evaluate(student, splits, out, config)
        _log(f"ONNX Runtime top-1: {summary['onnx_top1']:.2f}%", main)
    summary["seconds"] = round(time.perf_counter() - started, 1)
    if main:
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        _log(_stage_table(summary), main)
    return summary


def _top1(history, model, test_set, ctx, progress: bool, desc: str) -> float:
    """Test top-1 of ``model``: the last epoch's figure from ``history``, else a fresh evaluation."""
    if history:
        return history[-1].test_top1
    return evaluate(model, test_set, device=ctx.device, progress=progress, desc=desc)


def _export_and_evaluate(model, splits, out: Path, config: RunConfig) -> tuple[float, str]:
    import numpy as np

    from adderconvert.export import export_onnx
    from adderconvert.runtime import make_session

    model = model.cpu().eval()
    path = export_onnx(model, out / f"{config.model}_adder.onnx", _example_batch(splits.test, 2))
    session = make_session(path)
    loader = torch.utils.data.DataLoader(splits.test, batch_size=256, num_workers=config.workers)
    correct = total = 0
    for images, labels in loader:
        logits = session.run(None, {"input": images.numpy()})[0]
        correct += int((np.argmax(logits, 1) == labels.numpy()).sum())
        total += len(labels)
    return 100.0 * correct / total, str(path)


def _stage_table(summary: dict) -> str:
    rows = [
        ("CNN (teacher)", summary["cnn_top1"]),
        ("AdderNet (PyTorch)", summary["adder_top1"]),
        ("AdderNet (ONNX Runtime)", summary["onnx_top1"]),
    ]
    lines = [f"{'stage':<26}{'top-1':>8}", "-" * 34]
    lines += [f"{name:<26}{(f'{v:.2f}%' if v is not None else 'n/a'):>8}" for name, v in rows]
    lines.append(
        f"{summary['model']} on {summary['dataset']}, {summary['converted_layers']} adder layers, "
        f"{summary['seconds']:.0f}s"
    )
    return "\n".join(lines)

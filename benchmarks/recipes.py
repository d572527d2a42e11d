"""The fine-tuning recipe across architecture families: CNN teacher -> adder model, one recipe for all.

For each model and a fixed budget, a CNN is trained from scratch on Fashion-MNIST (no pretrained weights
offline) for the budget's epochs (--teacher-epochs), converted as the main job converts it
(pipeline.convert_trained: adderconvert.conversion.run_conversion on 1,024 training images, --init, --keep,
--reconstruct), evaluated before any step
(the zero-step top-1), and fine-tuned with the main job's defaults (or the recipe given with --set, the same
for every model). Per model: CNN, zero-step and fine-tuned adder top-1, the gap, wall times, the adder
weights' std and the share at the range edge (adderconvert.train.diagnostics) and whether training diverged
(a TrainingDiverged guard, a non-finite loss or chance accuracy). Teachers are cached outside the repository
(~/.cache/adderconvert/teachers) by the teacher's own recipe (teacher_key), so screening recipes trains each CNN
once and an interrupted teacher resumes from its last epoch. Each
adder model is saved as an adderconvert checkpoint, OUTPUT/MODEL.pt, which `adderconvert evaluate`,
`export` and `benchmarks/int8_cpu.py --accuracy` read, and its CNN as OUTPUT/MODEL_cnn.pt.

Usage: python benchmarks/recipes.py --budget cpu [--models resnet18 ...] [--set lr=0.03 --set eta=0.2]
       [--steps N (0: zero-step only)] [--teacher-epochs N] [--init sign] [--keep [KIND ...]]
       [--keep-mac-budget 0.05] [--reconstruct signs] [--inside] [--teachers-only]
       [--table docs/results/recipes_cpu_converged.md]
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import itertools
import json
import math
import platform
import shutil
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Subset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from adderconvert.app.pipeline import RunConfig, adder_train_config, checkpoint_meta, convert_trained  # noqa: E402
from adderconvert.architectures.cnn import build_model  # noqa: E402
from adderconvert.architectures.registry import build  # noqa: E402
from adderconvert.checkpoint import save_checkpoint  # noqa: E402
from adderconvert.conversion import (  # noqa: E402
    CEILING_BASES,
    DEPLOYMENT_SIZE,
    GROUPED_BASES,
    INIT_CHOICES,
    KEEP_KINDS,
    RECONSTRUCT_METHODS,
    SIGN_MARGIN,
    ConversionReport,
    plan_conversion,
)
from adderconvert.conversion.plan import conv_macs_at  # noqa: E402
from adderconvert.data import load_dataset  # noqa: E402
from adderconvert.train import TrainConfig, TrainingDiverged, fit  # noqa: E402
from adderconvert.train.diagnostics import adder_weight_stats, saturation_summary  # noqa: E402
from adderconvert.train.distributed import DistributedContext  # noqa: E402
from adderconvert.train.loop import CLASSIFICATION, Task  # noqa: E402

MODELS = ("resnet18", "resnet50", "mobilenet_v3_large", "efficientnet_b0", "vgg11_bn", "regnet_y_400mf")
STATS_BATCHES = 4  # training batches over which the adder layers' input ranges are measured
# The CNNs train from scratch with the main job's --pretrain-lr after a linear warm-up over this share of
# their steps: without it VGG-11-BN's loss turns NaN at step 17 of the cpu budget.
CNN_WARMUP = 0.1
# CNNs that diverge at the main job's --pretrain-lr even after the warm-up train at this one instead:
# VGG-11-BN's loss rose from 2.33 to 237 by step 81 at 0.05 (its 25088 -> 4096 classifier, no residuals);
# ResNet-18's 16-epoch schedule from 0.38 to 1.68 in its third epoch, just after the warm-up reached 0.05 (its
# 8-epoch one dipped from 89.25% to 85.78% test top-1 there). ResNet-50 takes ResNet-18's without a run at 0.05 of its
# own: an hour of CPU per try. SqueezeNet 1.0 (no BatchNorm) sat at chance from its first epoch at 0.05 (loss 2.3026).
# GoogLeNet's 8-epoch schedule at 0.05 went as ResNet-18's: its loss rose from 0.73 to 0.79 and 0.89 in the epochs
# after the warm-up, test top-1 82.93% -> 66.62% -> 71.64% (AMD EPYC, 2026-12-07; stopped there). FCOS (ResNet-50,
# benchmarks/dense.py) reached 30.72 mAP on the Xeon at 0.05 but 7.61 on an AMD EPYC: it takes ResNet-50's.
TEACHER_LR = {
    "vgg11_bn": 0.01,
    "resnet18": 0.02,
    "resnet50": 0.02,
    "squeezenet1_0": 0.01,
    "googlenet": 0.02,
    "fcos_resnet50_fpn": 0.02,
}


@dataclass(frozen=True)
class Budget:
    """How much each model gets: image size, the CNN's batch, epochs and steps per epoch (None: whole epochs) of
    the CNN and of the adder fine-tuning (whose batch is the main job's, and epochs too where None), test images
    (None: all 10,000) and the gap the recipe must meet."""

    image_size: int
    cnn_batch_size: int
    cnn_epochs: int
    cnn_steps: int | None
    epochs: int | None
    steps: int | None
    test_images: int | None
    target_gap: float


BUDGETS = {
    "gpu": Budget(
        64, cnn_batch_size=128, cnn_epochs=1, cnn_steps=None, epochs=None, steps=None, test_images=None, target_gap=1.0
    ),
    # The CNN trains one whole epoch (937 steps): users convert converged CNNs, and 150 steps left VGG-11-BN at
    # 24.6%. The adder fine-tuning is the CLI's default length in whole epochs (--steps N caps them). All
    # 10,000 test images: on 2,000 the gap of three seeds of one model spread +0.20 to +1.25 pt against +1.11 to
    # +1.31 on the whole split (docs/results/archive/recipes_cpu_amd_eta.md), too much for a 1.0 pt goal.
    "cpu": Budget(
        32, cnn_batch_size=64, cnn_epochs=1, cnn_steps=None, epochs=None, steps=None, test_images=None, target_gap=1.0
    ),
}
# TrainConfig fields the budget (or the benchmark) sets: --set may not change them. (The batch size may change:
# a probe of another default batch; the table states the one used.)
_BUDGET_FIELDS = ("epochs", "max_steps", "eval_max_batches", "progress", "log", "desc")


def parse_overrides(items: list[str]) -> dict[str, object]:
    """``KEY=VALUE`` strings to TrainConfig overrides, each value converted to the field's type."""
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    settable = sorted(set(fields) - set(_BUDGET_FIELDS))
    overrides = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or key not in settable:
            raise SystemExit(f"--set {item!r}: expected KEY=VALUE with KEY one of {', '.join(settable)}")
        overrides[key] = _parse_value(key, text, str(fields[key].type))
    return overrides


def _parse_value(key: str, text: str, annotation: str) -> object:
    if text.lower() == "none" and "None" in annotation:
        return None
    try:
        if annotation.startswith("bool"):
            if text.lower() not in ("true", "false"):
                raise ValueError(text)
            return text.lower() == "true"
        if annotation.startswith("int"):
            return int(text)
        if annotation.startswith("float"):
            return float(text)
        return text
    except ValueError:
        raise SystemExit(f"--set {key}={text}: {key} takes a value of type {annotation}") from None


def machine_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's model and core count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    threads = torch.get_num_threads()
    return f"{model} CPU, {threads} thread{'s' if threads > 1 else ''}"


def _teacher_config(name: str, budget: Budget, train_images: int) -> TrainConfig:
    steps_per_epoch = budget.cnn_steps or train_images // budget.cnn_batch_size
    return TrainConfig(
        epochs=budget.cnn_epochs,
        batch_size=budget.cnn_batch_size,
        lr=TEACHER_LR.get(name, RunConfig.pretrain_lr),
        warmup_steps=round(CNN_WARMUP * budget.cnn_epochs * steps_per_epoch),
        kd=False,
        max_steps=budget.cnn_steps,
        progress=False,
        log=False,
        desc="CNN",
    )


# The TrainConfig fields that make a teacher: its cache key holds these (and the model, image size and test
# images) and nothing else, so that a change to the adder fine-tuning's defaults keeps the cached CNNs.
TEACHER_FIELDS = ("epochs", "batch_size", "lr", "momentum", "weight_decay", "warmup_steps", "max_steps", "seed", "amp")


def teacher_key(name: str, budget: Budget, config: TrainConfig, **data: object) -> str:
    """The cache file stem of ``name``'s CNN trained with ``config`` at ``budget``: a hash of its recipe alone;
    ``data`` adds what else makes its data (benchmarks/dense.py: the scene counts)."""
    recipe = {k: getattr(config, k) for k in TEACHER_FIELDS}
    # test_images too: the cached top-1 was measured on that many test images.
    key = {"model": name, "image_size": budget.image_size, "test_images": budget.test_images, "recipe": recipe}
    key.update(data)  # nothing for the classifiers: their keys stay those of the teachers already cached
    return f"{name}-{hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]}"


def train_teacher(name: str, budget: Budget, splits, test_set, ctx, cache: Path) -> tuple[torch.nn.Module, dict]:
    """The CNN trained from scratch, cached by its recipe (:func:`teacher_key`). Training checkpoints every epoch
    in ``cache/KEY.partial/`` and an interrupted one resumes from there. Raises TrainingDiverged."""
    config = _teacher_config(name, budget, len(splits.train))
    torch.manual_seed(0)
    teacher = build_model(name, splits.num_classes)
    meta = checkpoint_meta(name, "fashion-mnist", splits, "teacher", None)
    result = cached_fit(teacher, cache / teacher_key(name, budget, config), config, splits.train, test_set, ctx, meta)
    return teacher, result


def cached_fit(
    model: torch.nn.Module,
    stem: Path,
    config: TrainConfig,
    train_set,
    test_set,
    ctx,
    meta,
    task: Task = CLASSIFICATION,
) -> dict:
    """Trains ``model`` in place with ``config`` (:func:`fit` of ``task``), or loads it from ``STEM.pt`` where an
    earlier run saved it there; checkpoints every epoch in ``STEM.partial/``, from where an interrupted run resumes.
    Returns the test scores (``cnn_top1``, or ``cnn_miou``, ``cnn_map`` ... with the task's others beside),
    ``cnn_seconds`` and ``cnn_epochs``. Raises TrainingDiverged."""
    path, partial = stem.with_name(f"{stem.name}.pt"), stem.with_name(f"{stem.name}.partial")
    if path.is_file():
        saved = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(saved.pop("model"))
        model.to(ctx.device)
        return saved
    resume = partial / "last.pt" if (partial / "last.pt").is_file() else None
    history = fit(
        model,
        train_set,
        test_set,
        replace(config, log=True),
        output=partial,
        meta=meta,
        resume=resume,
        ctx=ctx,
        task=task,
    )
    scores = {task.metric: history[-1].test_top1}
    if task is not CLASSIFICATION:  # the scores beside the metric (pixel accuracy, mAP@.5)
        scores = task.evaluate(model, test_set, device=ctx.device)
    # Seconds of the epochs this process trained plus those a resumed run recorded.
    seconds = sum(record.seconds for record in history)
    result = {**{f"cnn_{k}": v for k, v in scores.items()}, "cnn_seconds": seconds, "cnn_epochs": config.epochs}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": model.state_dict(), **result}, path)
    shutil.rmtree(partial, ignore_errors=True)
    return result


def fine_tune_config(budget: Budget, overrides: dict, task: Task = CLASSIFICATION, bases: int = 1) -> TrainConfig:
    """The CLI's own fine-tuning configuration of a model of ``task`` whose adder layers have ``bases`` binary bases
    (its batch size and lr included, and the epochs where the budget leaves them to the CLI) at the budget's length,
    with ``overrides``."""
    run = RunConfig(epochs=budget.epochs or RunConfig.epochs, max_steps=budget.steps, progress=False)
    return replace(adder_train_config(run, task, bases), log=False, **overrides)


def max_bases(report: ConversionReport) -> int:
    """The most binary bases of an adder layer in ``report``'s plan (the main job's lr follows them)."""
    return max((decision.bases for decision in report.converted), default=1)


def converted_share_at(name: str, num_classes: int, report, size: int = DEPLOYMENT_SIZE) -> float:
    """The share of ``name``'s conv MACs at ``size`` px in the layers ``report`` converts (a detector's input
    transform set to ``size``: it resizes every image to its own size)."""
    macs = conv_macs_at(build(name, num_classes, size).eval(), size)
    converted = {d.name for d in report.converted}
    return sum(m for layer, m in macs.items() if layer in converted) / max(sum(macs.values()), 1)


def convert_student(
    name: str,
    teacher,
    splits,
    test_set,
    ctx,
    conversion: dict,
    task: Task = CLASSIFICATION,
    seed: int = RunConfig.seed,
    deployment_size: int = DEPLOYMENT_SIZE,
) -> tuple:
    """The adder model as the main job makes it (pipeline.convert_trained from ``seed``, with the main job's
    defaults or the choices in ``conversion``), its ``task``'s scores before any step (``zero_step_top1``, or
    ``zero_step_miou``, ...) and the share of conv MACs it converts (at ``deployment_size`` px too):
    (student, report, row)."""
    started = time.perf_counter()
    config = RunConfig(
        seed=seed,
        init=conversion.get("init", RunConfig.init),
        reconstruct=conversion.get("reconstruct", RunConfig.reconstruct),
        keep_stem=conversion.get("keep_stem", RunConfig.keep_stem),
        keep=list(conversion.get("keep", RunConfig().keep)),
        keep_ceiling=conversion.get("keep_ceiling", RunConfig.keep_ceiling),
        keep_mac_budget=conversion.get("keep_mac_budget", RunConfig.keep_mac_budget),
        exclude=list(conversion.get("exclude", [])),
        bases=conversion.get("bases"),
    )
    converted = convert_trained(
        teacher,
        splits,
        config,
        ctx,
        log=False,
        sign_margin=conversion.get("sign_margin", SIGN_MARGIN),
        inside=conversion.get("inside", False),
    )
    student, report, fitted = converted.model, converted.report, converted.reconstruction
    zero = task.evaluate(student, test_set, device=ctx.device)
    row = {
        **{f"zero_step_{k}": v for k, v in zero.items()},
        "bases": report.converted[0].bases,  # the main job's for this model, or conversion's
        "convert_seconds": time.perf_counter() - started,
        "reconstruct_seconds": fitted.seconds if fitted is not None else 0.0,
        "converted_macs_share": report.converted_macs / max(report.total_macs, 1),
        f"converted_macs_share_{deployment_size}": converted_share_at(
            name, splits.num_classes, report, deployment_size
        ),
    }
    return student, report, row


def run_model(
    name: str,
    budget: Budget,
    overrides: dict,
    splits,
    test_set,
    ctx,
    cache: Path,
    conversion: dict | None = None,
    save: Path | None = None,
) -> dict:
    """One row of the table: teacher, conversion, zero-step top-1, fine-tuning with the recipe, diagnostics;
    the adder model saved to ``save`` (a checkpoint) when given."""
    started = time.perf_counter()
    try:
        teacher, row = train_teacher(name, budget, splits, test_set, ctx, cache)
    except TrainingDiverged as e:
        return {"model": name, "cnn_seconds": time.perf_counter() - started, "diverged": f"the CNN: {e}"}
    row = {"model": name, **row}
    if save is not None:
        save_model(teacher, None, splits, name, save.with_name(f"{name}_cnn.pt"))
    student, report, zero = convert_student(name, teacher, splits, test_set, ctx, conversion or {})
    row.update(zero)
    print(
        f"{name}: CNN {row['cnn_top1']:.2f}%, zero-step adder {row['zero_step_top1']:.2f}% "
        f"(conversion {row['convert_seconds']:.0f}s, of which reconstruction {row['reconstruct_seconds']:.0f}s)",
        flush=True,
    )
    if budget.steps == 0:
        adder_top1, diverged, seconds = row["zero_step_top1"], None, 0.0
    else:
        adder_top1, diverged, seconds, row["adder_top1_by_epoch"] = fine_tune(
            student, teacher, row["cnn_top1"], budget, overrides, splits, test_set, ctx, bases=max_bases(report)
        )
    if save is not None:
        save_model(student, report, splits, name, save)
    return _diagnose(row, student, report, splits, budget, ctx, adder_top1, diverged, seconds)


def fine_tune(
    student,
    teacher,
    cnn_top1: float,
    budget: Budget,
    overrides: dict,
    splits,
    test_set,
    ctx,
    task: Task = CLASSIFICATION,
    bases: int = 1,
) -> tuple:
    """Fine-tunes ``student`` (its adder layers of ``bases`` binary bases at most) in place with the recipe: (adder
    top-1, why it diverged or None, seconds, top-1 after each epoch); of another ``task``, its metric (``cnn_top1``
    the CNN's)."""
    config = fine_tune_config(budget, overrides, task, bases)
    started = time.perf_counter()
    diverged, by_epoch = None, []
    try:
        history = fit(
            student, splits.train, test_set, config, teacher=teacher, ctx=ctx, teacher_top1=cnn_top1, task=task
        )
        adder_top1, train_loss = history[-1].test_top1, history[-1].train_loss
        by_epoch = [epoch.test_top1 for epoch in history]
    except TrainingDiverged as e:
        diverged = str(e)
        adder_top1, train_loss = task.evaluate(student, test_set, device=ctx.device)[task.metric], math.nan
    chance = 100.0 / splits.num_classes
    if diverged is None and not math.isfinite(train_loss):
        diverged = f"non-finite training loss ({train_loss})"
    if diverged is None and task is CLASSIFICATION and adder_top1 <= 1.5 * chance:
        diverged = f"adder top-1 {adder_top1:.2f}% is at chance ({chance:.0f}%)"
    return adder_top1, diverged, time.perf_counter() - started, by_epoch


def save_model(model: torch.nn.Module, report, splits, name: str, path: Path) -> Path:
    """``model`` as an adderconvert checkpoint: the adder model with its conversion ``report`` (what the main job
    writes as best.pt), or with ``report`` None the CNN (the main job's teacher/best.pt)."""
    meta = checkpoint_meta(name, "fashion-mnist", splits, "teacher" if report is None else "adder", report)
    return save_checkpoint(path, {"meta": meta, "model": model.state_dict()})


def _diagnose(row, student, report, splits, budget, ctx, adder_top1, diverged, seconds) -> dict:
    row["adder_seconds"] = seconds
    loader = DataLoader(splits.train, batch_size=CLASSIFICATION.batch_size)
    layers = adder_weight_stats(student, itertools.islice(loader, STATS_BATCHES), ctx.device)
    summary = saturation_summary(layers)
    row.update(
        adder_top1=adder_top1,
        gap=row["cnn_top1"] - adder_top1,
        converted_layers=len(report.converted),
        mean_weight_std=sum(s["weight_std"] for s in layers) / max(len(layers), 1),
        max_weight_std=summary["max_weight_std"],
        saturated_fraction=summary["saturated_fraction"],
        diverged=diverged,
        layers=layers,
    )
    return row


def markdown_table(
    rows: list[dict], budget_name: str, budget: Budget, machine: str, overrides: dict, conversion: dict | None = None
) -> str:
    recipe = ", ".join(f"{k}={v}" for k, v in overrides.items()) or "the main job's defaults"
    settings = {
        k: getattr(fine_tune_config(budget, overrides), k)
        for k in ("lr", "eta", "weight_decay", "kd_alpha", "kd_temperature", "feature_kd")
    }
    if "lr" not in overrides:  # the main job's lr follows the bases
        settings["lr"] = (
            f"{settings['lr']} ({fine_tune_config(budget, overrides, bases=3).lr} with three or more bases)"
        )
    conversion = {
        "init": RunConfig.init,
        "keep_ceiling": CLASSIFICATION.keep_ceiling,
        "keep_mac_budget": RunConfig.keep_mac_budget,
        **(conversion or {}),
    }
    main_job = (
        f"the main job's (1; {GROUPED_BASES} with grouped or depthwise convs, {CEILING_BASES} where the "
        "plan converts depthwise convs or a stem past the keep ceiling)"
    )
    bases = conversion.get("bases") or main_job
    steps = "no steps" if budget.steps == 0 else f"{budget.steps} steps" if budget.steps else "whole epochs"
    cnn_steps = f"{budget.cnn_steps} steps" if budget.cnn_steps else "whole epochs"
    tests = budget.test_images or "all 10,000"
    lines = [
        f"Budget `{budget_name}` on {machine}: Fashion-MNIST at {budget.image_size} px, CNN batch "
        f"{budget.cnn_batch_size}, adder batch {fine_tune_config(budget, overrides).batch_size}; "
        f"CNN {budget.cnn_epochs} epoch(s) of {cnn_steps} from scratch, adder "
        f"{budget.epochs or f'the CLI default number of ({RunConfig.epochs})'} epoch(s) of "
        f"{steps}; "
        f"{tests} test images. "
        + (
            "No fine-tuning step. "
            if budget.steps == 0
            else f"Recipe: {recipe} ({', '.join(f'{k} {v}' for k, v in settings.items())}). "
        )
        + f"Conversion: init {conversion['init']}, keep {', '.join(conversion.get('keep', [])) or 'none'}, "
        f"keep_ceiling {conversion['keep_ceiling']:g} at {DEPLOYMENT_SIZE} px, "
        f"{'stem kept' if conversion.get('keep_stem', RunConfig.keep_stem) else 'stem converted'}, "
        f"keep_mac_budget {conversion['keep_mac_budget']:g}, "
        f"sign_margin {conversion.get('sign_margin', SIGN_MARGIN):g}, reconstruct "
        f"{conversion.get('reconstruct', 'none')}{' (inside)' if conversion.get('inside') else ''}"
        f", bases {bases}.",
        "",
        f"| model | CNN epochs | CNN top-1 | zero-step adder (% of CNN) | MACs converted ({budget.image_size} / "
        f"{DEPLOYMENT_SIZE} px) | adder epochs | adder top-1 | gap | CNN s | adder s | adder weight std (mean / max) "
        "| weights at the range edge | diverged |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        if "adder_top1" not in r:
            lines.append(
                f"| {r['model']} | | n/a | n/a | | | n/a | n/a | {r['cnn_seconds']:.0f} | | | | {r['diverged']} |"
            )
            continue
        lines.append(
            f"| {r['model']} | {r.get('cnn_epochs', budget.cnn_epochs)} | {r['cnn_top1']:.2f}% | "
            f"{r['zero_step_top1']:.2f}% ({100 * r['zero_step_top1'] / r['cnn_top1']:.0f}%) | "
            f"{100 * r['converted_macs_share']:.0f}% / {_share(r, f'converted_macs_share_{DEPLOYMENT_SIZE}')} | "
            f"{len(r.get('adder_top1_by_epoch') or [])} | {r['adder_top1']:.2f}% | {r['gap']:+.2f} | "
            f"{r['cnn_seconds']:.0f} | {r['adder_seconds']:.0f} | {r['mean_weight_std']:.2f} / "
            f"{r['max_weight_std']:.2f} | {100 * r['saturated_fraction']:.1f}% | {r['diverged'] or 'no'} |"
        )
    if rows:
        worst = max(r.get("gap", math.inf) for r in rows)
        met = sum(r.get("gap", math.inf) <= budget.target_gap and not r["diverged"] for r in rows)
        lines += [
            "",
            f"{met} of {len(rows)} within {budget.target_gap} pt of their CNN (worst gap {worst:+.2f} pt); "
            f"{sum(bool(r['diverged']) for r in rows)} diverged. Gap = CNN - adder top-1. Weights at the range "
            "edge: at or beyond every input their tap reads (the rest lie inside the range).",
        ]
    return "\n".join(lines) + "\n"


def write_results(out: Path, payload: dict, table: str, table_file: str | None = None) -> None:
    """``out/results.json`` (``payload``) and ``out/table.md``, and the table in ``table_file`` too where given:
    called after every model, so that an interrupted run keeps the rows it has."""
    (out / "results.json").write_text(json.dumps(payload, indent=2) + "\n")
    (out / "table.md").write_text(table)
    if table_file:
        Path(table_file).parent.mkdir(parents=True, exist_ok=True)
        Path(table_file).write_text(table)


def _share(row: dict, key: str) -> str:
    return f"{100 * row[key]:.0f}%" if key in row else "n/a"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", choices=BUDGETS, default="gpu" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--output", default=None, help="results folder (default runs/recipes/BUDGET)")
    parser.add_argument(
        "--teachers",
        default=str(Path.home() / ".cache" / "adderconvert" / "teachers"),
        help="cache of trained CNN teachers (outside the repository, reused by later runs)",
    )
    parser.add_argument("--teachers-only", action="store_true", help="train and cache the CNNs, convert nothing")
    parser.add_argument(
        "--plan-only",
        action="store_true",
        help="print the share of conv MACs the conversion's plan converts, at the budget's size and at 224 px",
    )
    parser.add_argument("--steps", type=int, default=None, help="adder fine-tuning steps (default: the budget's)")
    parser.add_argument(
        "--epochs",
        type=int,
        default=None,
        help=f"adder fine-tuning epochs (default: the CLI's, {RunConfig.epochs})",
    )
    parser.add_argument("--teacher-epochs", type=int, default=None, help="CNN epochs (default: the budget's)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--table", default=None, help="also write the markdown table to this file")
    parser.add_argument("--init", default=RunConfig.init, choices=INIT_CHOICES, help="adder weight init")
    parser.add_argument(
        "--keep", nargs="*", default=RunConfig().keep, choices=KEEP_KINDS, help="see plan_conversion (none: --keep)"
    )
    parser.add_argument("--keep-ceiling", type=float, default=CLASSIFICATION.keep_ceiling, help="see plan_conversion")
    parser.add_argument("--keep-mac-budget", type=float, default=RunConfig.keep_mac_budget, help="see plan_conversion")
    parser.add_argument("--sign-margin", type=float, default=SIGN_MARGIN, help="see conversion.sign_edges")
    parser.add_argument(
        "--reconstruct",
        default=RunConfig.reconstruct,
        choices=("none", *RECONSTRUCT_METHODS),
        help="layer-wise reconstruction after the sign init (adderconvert.conversion.reconstruction) [the main job's]",
    )
    parser.add_argument("--inside", action="store_true", help="--reconstruct signs may place weights inside the range")
    parser.add_argument("--bases", type=int, default=None, help="binary bases per adder layer [the main job's]")
    parser.add_argument("--convert-stem", action="store_true", help="convert the first conv too (keep_stem False)")
    args = parser.parse_args()
    conversion = {
        "init": args.init,
        "keep_ceiling": args.keep_ceiling,
        "keep_mac_budget": args.keep_mac_budget,
        "sign_margin": args.sign_margin,
        "keep_stem": not args.convert_stem,
    }
    conversion["keep"] = list(args.keep)
    conversion.update(reconstruct=args.reconstruct, inside=args.inside, bases=args.bases)
    overrides = parse_overrides(args.overrides)
    budget = BUDGETS[args.budget]
    if args.steps is not None:
        budget = dataclasses.replace(budget, steps=args.steps)
    if args.teacher_epochs is not None:
        budget = dataclasses.replace(budget, cnn_epochs=args.teacher_epochs)
    if args.epochs is not None:
        budget = dataclasses.replace(budget, epochs=args.epochs)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    ctx = DistributedContext(device=device)
    machine = machine_name(device)
    out = Path(args.output or f"runs/recipes/{args.budget}")
    out.mkdir(parents=True, exist_ok=True)

    if args.plan_only:
        print(f"| model | MACs converted, {budget.image_size} px | {DEPLOYMENT_SIZE} px |\n|---|---:|---:|")
        for name in args.models:
            report = plan_conversion(
                build_model(name, 10).eval(),
                torch.zeros(1, 3, budget.image_size, budget.image_size),
                keep=conversion["keep"],
                keep_ceiling=conversion["keep_ceiling"],
                mac_size=DEPLOYMENT_SIZE,
                keep_mac_budget=conversion["keep_mac_budget"],
            )
            share, share_224 = report.converted_macs / max(report.total_macs, 1), converted_share_at(name, 10, report)
            print(f"| {name} | {100 * share:.1f}% | {100 * share_224:.1f}% |", flush=True)
        return
    splits = load_dataset("fashion-mnist", image_size=budget.image_size)
    test_set = splits.test
    if budget.test_images is not None:
        order = torch.randperm(len(splits.test), generator=torch.Generator().manual_seed(0))
        test_set = Subset(splits.test, order[: budget.test_images].tolist())

    if args.teachers_only:
        for name in args.models:
            started = time.perf_counter()
            try:
                _, result = train_teacher(name, budget, splits, test_set, ctx, Path(args.teachers))
                print(f"{name}: CNN {result['cnn_top1']:.2f}% ({result['cnn_seconds']:.0f}s to train)", flush=True)
            except TrainingDiverged as e:
                print(f"{name}: the CNN diverged: {e}", flush=True)
            print(f"{name}: {time.perf_counter() - started:.0f}s", flush=True)
        return
    rows = []
    for name in args.models:
        row = run_model(
            name, budget, overrides, splits, test_set, ctx, Path(args.teachers), conversion, out / f"{name}.pt"
        )
        rows.append(row)
        print(
            f"{name}: the CNN diverged: {row['diverged']}"
            if "adder_top1" not in row
            else f"{name}: CNN {row['cnn_top1']:.2f}%, adder {row['adder_top1']:.2f}% (gap {row['gap']:+.2f}), "
            f"{row['adder_seconds']:.0f}s, weight std max {row['max_weight_std']:.2f}, "
            f"saturated {100 * row['saturated_fraction']:.1f}%, diverged: {row['diverged'] or 'no'}",
            flush=True,
        )
        payload = {
            "budget": args.budget,
            "steps": budget.steps,
            "machine": machine,
            "overrides": overrides,
            "conversion": conversion,
            "rows": rows,
        }
        table = markdown_table(rows, args.budget, budget, machine, overrides, conversion)
        write_results(out, payload, table, args.table)
    print("\n" + table)


if __name__ == "__main__":
    main()

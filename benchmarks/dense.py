"""Segmentation and detection on the built-in scenes: CNN teacher -> adder model -> ONNX Runtime (issue #35's goals).

For each model (torchvision's segmentation or detection builders; lraspp_mobilenet_v3_large and
ssdlite320_mobilenet_v3_large by default, fcn_resnet50, deeplabv3_resnet50, fcos_resnet50_fpn, retinanet_resnet50_fpn
and the others by name) on the task's built-in scenes (data_scenes.load_scenes) at --image-size px:

1. the CNN is trained from scratch (weights none, the main job's pre-training lr with recipes.py's warm-up) for
   --teacher-epochs, through fit with the task's losses as the main job trains it, and cached outside the repository
   (~/.cache/adderconvert/dense_teachers) by its own recipe alone: model, size, epochs, batch, lr, seed and scene
   counts (recipes.teacher_key). An interrupted teacher resumes from its last epoch (recipes.cached_fit);
2. it is converted as the main job converts it (pipeline.convert_trained with RunConfig's defaults: the sign init
   and reconstruction on 1,024 training scenes) and scored before any step (the zero-step mIoU, or mAP and mAP@.5);
3. the adder model is fine-tuned with the main job's defaults (adder_train_config: one epoch at its batch size;
   --epochs, --steps and --set change them), scored after each epoch, and marked diverged where training stopped
   (TrainingDiverged) or its loss is not finite;
4. it is exported to ONNX (export_onnx, as the main job exports it) and run in ONNX Runtime (deploy.runtime.run_dense)
   on every test scene beside PyTorch: the ONNX Runtime scores and the parity, for segmentation the share of pixels
   with the same argmax, for detection the share of PyTorch's detections above score 0.3 that ONNX Runtime has too
   (same label, IoU >= 0.99, score within 1e-4; a box clipped to no area matches by its corners instead, within
   0.5% of its length). An NMS tie counts as found, and is counted: two boxes of one label with scores within 1e-4
   and an IoU above the detector's NMS threshold, of which PyTorch keeps one and ONNX Runtime the other. The parity
   is measured at ONNX Runtime's default optimizations and without its layout optimizations (PARITY_LEVELS), whose
   float32 convs land nearer PyTorch's.

Per model: the CNN's epochs and scores, the zero-step scores and their share of the CNN's, the metric after each
adder epoch, the gap (CNN - adder, in points), the share of conv MACs converted at the benchmark's size and at the
deployment size (224 px for segmentation, as recipes.py counts classifiers; a detector at the size torchvision's
builder gives its transform, which resizes every image to it: 320 px for SSDlite, 800 for FCOS and RetinaNet), the
ONNX parity and the wall times. OUTPUT (runs/dense/BUDGET) gets results.json, table.md, MODEL.pt (the adder model's
checkpoint, which `adderconvert evaluate` scores on the package's 1,000 test scenes) and MODEL_adder.onnx.

Budgets: scenes of 128 px; the CNN at batch 32 for 8 epochs, a guess to be checked: the issue asks that doubling them
gain less than 0.5 point (rerun with --teacher-epochs 16; each count is a teacher of its own in the cache). `gpu` has
the package's 10,000 train and 1,000 test scenes, `cpu` 5,000 and 500 (--scenes 10000 1000 gives the package's).
--parity-score lowers the detection parity's score to compare more detections (the test's untrained detectors have
none above 0.3). --parity-of RUN measures a finished run's parity again (RUN/MODEL.pt on its scenes), against PyTorch's
float64 model too, with both levels' ONNX Runtime times side by side: RUN/parity.json.

Usage: python benchmarks/dense.py --budget cpu [--models lraspp_mobilenet_v3_large ssdlite320_mobilenet_v3_large]
       [--teacher-epochs N] [--epochs N] [--steps N (0: zero-step only)] [--image-size 128] [--scenes TRAIN TEST]
       [--seed 0] [--set KEY=VALUE] [--exclude PATTERN ...] [--bases N] [--threads N] [--parity-score 0.3]
       [--teachers-only] [--table docs/results/dense_cpu.md]
       python benchmarks/dense.py --parity-of runs/dense/cpu [--threads N]
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import sys
import time
from pathlib import Path

import onnxruntime
import torch
import torchvision
from torch.utils.data import DataLoader
from torchvision.ops import box_iou

sys.path.insert(0, str(Path(__file__).resolve().parent))
import recipes  # noqa: E402
from recipes import Budget  # noqa: E402

from adderconvert.app.pipeline import RunConfig, checkpoint_meta  # noqa: E402
from adderconvert.app.saved_models import deployment_metadata  # noqa: E402
from adderconvert.architectures.registry import build, task_of  # noqa: E402
from adderconvert.checkpoint import load  # noqa: E402
from adderconvert.conversion import DEPLOYMENT_SIZE  # noqa: E402
from adderconvert.data import DatasetSplits  # noqa: E402
from adderconvert.data_scenes import DEFAULT_COUNTS, load_scenes  # noqa: E402
from adderconvert.deploy.export import export_onnx  # noqa: E402
from adderconvert.deploy.runtime import make_session, run_dense  # noqa: E402
from adderconvert.metrics import METRIC_NAMES, confusion_matrix  # noqa: E402
from adderconvert.train import TrainingDiverged  # noqa: E402
from adderconvert.train.dense import DETECTION, SEGMENTATION, training_task  # noqa: E402
from adderconvert.train.distributed import DistributedContext  # noqa: E402
from adderconvert.train.saver import seed_everything  # noqa: E402

MODELS = ("lraspp_mobilenet_v3_large", "ssdlite320_mobilenet_v3_large")
# The budgets differ in their scenes only. test_images is recipes.py's Fashion-MNIST count: the scenes' counts go
# into the teacher's key beside it.
BUDGETS = dict.fromkeys(
    ("gpu", "cpu"),
    Budget(
        128, cnn_batch_size=32, cnn_epochs=8, cnn_steps=None, epochs=1, steps=None, test_images=None, target_gap=1.0
    ),
)
SCENES = {"gpu": DEFAULT_COUNTS, "cpu": {"train": 5_000, "test": 500}}
CPU_MAX_SIZE = 128  # the CPU budget: inputs of at most 128 px
TARGET_ZERO_STEP = 0.9  # of the CNN's metric
TARGET_PARITY = {"segmentation": 0.999, "detection": 1.0}
PARITY_SCORE, PARITY_IOU, PARITY_SCORE_TOLERANCE = 0.3, 0.99, 1e-4
BOX_TOLERANCE = 0.005  # of a box's length (at least 1 px): a box clipped to no area has no IoU
PARITY_BATCH = 32
# ONNX Runtime's optimization levels the parity is measured at, by the row fields' suffix: its default (all, the
# NCHWc layout optimizations of its convs included) and without the layout optimizations, whose float32 sums land
# nearer PyTorch's. A trained adder detector's scores move by up to 2e-4 between such float32 sums, as far as
# PyTorch's own are from float64 (docs/results/dense_cpu.md, "Parity and float32 rounding").
PARITY_LEVELS = {"": "ORT_ENABLE_ALL", "_no_layout": "ORT_ENABLE_EXTENDED"}
# export_and_compare's parity shares against PyTorch's float32 model, then against its float64 one (with float64).
PARITY_FIELDS = ("parity", "parity_no_layout", "float64_parity_torch", "float64_parity", "float64_parity_no_layout")
_METRICS = {"segmentation": ("miou",), "detection": ("map", "map_50")}  # the table's scores of each task


def check_models(names: list[str]) -> dict[str, str]:
    """Each model's task; ``ValueError`` naming a model that is unknown or a classifier."""
    tasks = {}
    for name in names:
        task = task_of(name)  # ValueError for an unknown name
        if task == "classification":
            raise ValueError(f"{name} is a classifier: benchmarks/recipes.py benchmarks classifiers")
        tasks[name] = task
    return tasks


def deployment_size(name: str, task: str) -> int:
    """The input size a model is deployed at: :data:`DEPLOYMENT_SIZE` for segmentation, a detector's own (the size
    torchvision's builder gives its transform, which resizes every image to it)."""
    if task == "segmentation":
        return DEPLOYMENT_SIZE
    model = torchvision.models.get_model(name, weights=None, weights_backbone=None)
    return model.transform.min_size[0]


def train_teacher(name: str, budget: Budget, splits: DatasetSplits, ctx, cache: Path, seed: int) -> tuple:
    """The CNN trained from scratch on ``splits`` (the scenes of ``seed``), cached by its recipe and its data
    (recipes.teacher_key; recipes.cached_fit resumes an interrupted one): (teacher, its scores and seconds).
    Raises TrainingDiverged."""
    config = dataclasses.replace(recipes._teacher_config(name, budget, len(splits.train)), seed=seed)
    scenes = {"train_scenes": len(splits.train), "test_scenes": len(splits.test)}
    key = recipes.teacher_key(name, budget, config, **scenes)
    seed_everything(seed)  # the CNN's initial weights, as the main job draws them
    teacher = build(name, splits.num_classes, splits.image_size)
    meta = checkpoint_meta(name, "fashion-mnist", splits, "teacher", None)
    task = training_task(splits.task)
    result = recipes.cached_fit(teacher, cache / key, config, splits.train, splits.test, ctx, meta, task)
    return teacher, result


def _unused(fits: torch.Tensor, used: set[int]) -> int | None:
    """The first index where ``fits`` holds that is not in ``used``, added to it; None if there is none."""
    index = next((j for j in fits.nonzero().flatten().tolist() if j not in used), None)
    if index is not None:
        used.add(index)
    return index


def matched_detections(
    expected: list[dict], got: list[dict], threshold: float = PARITY_SCORE, nms_iou: float = 1.0
) -> tuple[int, int, int]:
    """How many of ``expected``'s detections above ``threshold`` (per image ``boxes``, ``scores``, ``labels``) have
    their match in ``got`` (same label, IoU >= PARITY_IOU, score within PARITY_SCORE_TOLERANCE; each used once), how
    many there are, and how many of the matches are NMS ties: two boxes of one label whose scores lie within the
    tolerance and whose IoU is above the detector's ``nms_iou`` suppress each other, so which one survives follows from
    a score difference below the tolerance. A tie is an unmatched detection of ``expected`` whose place ``got`` gives
    to an unused box of that kind; it counts as found."""
    matched = total = ties = 0
    for a, b in zip(expected, got, strict=True):
        ious = box_iou(a["boxes"], b["boxes"])
        sides = (a["boxes"][:, 2:] - a["boxes"][:, :2]).amax(-1, keepdim=True).clamp(min=1.0)
        same = ious.clone()
        same[(a["boxes"][:, None] - b["boxes"][None]).abs().amax(-1) <= BOX_TOLERANCE * sides] = 1.0
        close = (b["labels"][None] == a["labels"][:, None]) & (
            (b["scores"][None] - a["scores"][:, None]).abs() <= PARITY_SCORE_TOLERANCE
        )
        above = (a["scores"] > threshold).nonzero().flatten().tolist()
        used: set[int] = set()
        missed = []
        for i in above:
            match = _unused(close[i] & (same[i] >= PARITY_IOU), used)
            if match is None:
                missed.append(i)
        ties += sum(_unused(close[i] & (ious[i] > nms_iou), used) is not None for i in missed)
        matched, total = matched + len(above) - len(missed), total + len(above)
    return matched + ties, total, ties


def nms_threshold(detector: torch.nn.Module) -> float:
    """The IoU above which ``detector``'s NMS keeps only the higher-scored of two boxes of one label (a two-stage
    detector's is its second stage's)."""
    return float(getattr(detector, "roi_heads", detector).nms_thresh)


def _agreement(task: str, expected, got, parity_score: float, nms_iou: float) -> tuple[int, int, int]:
    """(same, compared, NMS ties) of ``got`` against ``expected`` on one batch: pixels with the same argmax, or
    :func:`matched_detections`."""
    if task == "segmentation":
        return int((got.argmax(1) == expected.argmax(1)).sum()), got.argmax(1).numel(), 0
    return matched_detections(expected, got, parity_score, nms_iou)


def export_and_compare(
    name: str,
    student,
    splits: DatasetSplits,
    out: Path,
    seed: int,
    parity_score: float = PARITY_SCORE,
    float64: bool = False,
) -> dict:
    """``student`` exported to ``out/NAME_adder.onnx`` and run on every test scene in PyTorch (on the CPU, eval
    mode) and ONNX Runtime at each of :data:`PARITY_LEVELS`: the scores of PyTorch and of ONNX Runtime's default
    (``adder_*``, ``onnx_*``), the parity at each level (``parity``, ``parity_no_layout``: the module's docstring,
    PyTorch's detections above ``parity_score``; None where there is nothing to compare), what it compared
    (``parity_count``: pixels or detections), the NMS ties (``parity_ties``, ...) and the seconds. With ``float64``
    also the parity of PyTorch's float32 model and of each ONNX Runtime level against PyTorch's float64 one
    (``float64_parity_torch``, ``float64_parity``, ``float64_parity_no_layout``; ties counted as found). ONNX Runtime's
    seconds at each level (``onnx_run_seconds``, ``onnx_run_seconds_no_layout``) are measured batch by batch side by
    side."""
    started = time.perf_counter()
    task = training_task(splits.task)
    model = student.cpu().eval()
    exact = copy.deepcopy(model).double() if float64 else None
    metadata = deployment_metadata(checkpoint_meta(name, "fashion-mnist", splits, "adder", None), seed=seed)
    example = torch.stack([splits.test[i][0] for i in range(2)])
    path = export_onnx(model, out / f"{name}_adder.onnx", example, metadata=metadata)
    exported = time.perf_counter()
    sessions = {
        suffix: make_session(
            path,
            intra_op_num_threads=torch.get_num_threads(),
            graph_optimization_level=getattr(onnxruntime.GraphOptimizationLevel, level),
        )
        for suffix, level in PARITY_LEVELS.items()
    }
    nms_iou = nms_threshold(model) if splits.task == "detection" else 1.0
    loader = DataLoader(splits.test, batch_size=PARITY_BATCH, collate_fn=task.collate_fn)
    in_torch, in_onnx = [], []
    counts: dict[str, list[int]] = {}  # "parity" + suffix or "float64_parity" + suffix -> [same, compared, ties]
    run_seconds: dict[str, float] = {}  # each level's, batch by batch side by side

    def count(key: str, expected, got) -> None:
        totals = counts.setdefault(key, [0, 0, 0])
        for i, value in enumerate(_agreement(splits.task, expected, got, parity_score, nms_iou)):
            totals[i] += value

    def forward(net: torch.nn.Module, images: torch.Tensor):
        with torch.no_grad():
            return net(images)["out"] if splits.task == "segmentation" else net(list(images))

    for batch in loader:
        images, truth = task.images(batch), batch[1]
        expected = forward(model, images)
        reference = forward(exact, images.double()) if exact is not None else None
        if reference is not None:
            count("float64_parity_torch", reference, expected)
        for suffix, session in sessions.items():
            run_started = time.perf_counter()
            got = run_dense(session, images)
            run_seconds[suffix] = run_seconds.get(suffix, 0.0) + time.perf_counter() - run_started
            count(f"parity{suffix}", expected, got)
            if reference is not None:
                count(f"float64_parity{suffix}", reference, got)
            if suffix == "":
                if splits.task == "segmentation":
                    in_torch.append(confusion_matrix(expected.argmax(1), truth, splits.num_classes))
                    in_onnx.append(confusion_matrix(got.argmax(1), truth, splits.num_classes))
                else:
                    in_torch.append((expected, list(truth)))
                    in_onnx.append((got, list(truth)))
    row = {
        **{f"adder_{k}": v for k, v in task.scores(in_torch).items()},
        **{f"onnx_{k}": v for k, v in task.scores(in_onnx).items()},
        "parity_count": counts["parity"][1],
        "onnx_path": path.name,
        "export_seconds": exported - started,
        "onnx_seconds": time.perf_counter() - exported,
    }
    for key, (same, compared, ties) in counts.items():
        row[key], row[f"{key}_ties"] = (same / compared if compared else None), ties
    row.update({f"onnx_run_seconds{suffix}": seconds for suffix, seconds in run_seconds.items()})
    return row


def run_model(
    name: str,
    budget: Budget,
    overrides: dict,
    splits: DatasetSplits,
    ctx,
    cache: Path,
    seed: int,
    out: Path,
    parity_score: float = PARITY_SCORE,
    conversion: dict | None = None,
) -> dict:
    """One row of the table (the module's docstring): teacher, conversion (the main job's, with ``conversion``'s
    choices: ``exclude``, convs also kept multiplicative, and ``bases``), fine-tuning, export and parity."""
    task = training_task(splits.task)
    metric = task.metric
    started = time.perf_counter()
    print(f"{name}: teacher ({budget.cnn_epochs} epoch(s), cached in {cache})", flush=True)
    try:
        teacher, row = train_teacher(name, budget, splits, ctx, cache, seed)
    except TrainingDiverged as e:
        seconds = time.perf_counter() - started
        return {
            "model": name,
            "task": splits.task,
            "metric": metric,
            "cnn_seconds": seconds,
            "diverged": f"the CNN: {e}",
        }
    row = {"model": name, "task": splits.task, "metric": metric, **row}
    print(f"{name}: CNN {_scores(row, 'cnn')} ({row['cnn_seconds']:.0f}s to train); converting", flush=True)
    size = deployment_size(name, splits.task)
    student, report, zero = recipes.convert_student(
        name, teacher, splits, splits.test, ctx, conversion or {}, task, seed, deployment_size=size
    )
    row.update(zero, deployment_size=size)
    row["zero_step_share"] = row[f"zero_step_{metric}"] / row[f"cnn_{metric}"] if row[f"cnn_{metric}"] else None
    print(f"{name}: zero-step adder {_scores(row, 'zero_step')} ({row['convert_seconds']:.0f}s)", flush=True)
    if budget.steps == 0:
        diverged, seconds, by_epoch = None, 0.0, []
    else:
        print(f"{name}: fine-tuning", flush=True)
        _, diverged, seconds, by_epoch = recipes.fine_tune(
            student,
            teacher,
            row[f"cnn_{metric}"],
            budget,
            overrides,
            splits,
            splits.test,
            ctx,
            task,
            recipes.max_bases(report),
        )
    row.update(adder_by_epoch=by_epoch, adder_seconds=seconds, diverged=diverged)
    recipes.save_model(student, report, splits, name, out / f"{name}.pt")
    print(f"{name}: exporting to ONNX and comparing with PyTorch on {len(splits.test)} test scenes", flush=True)
    row.update(export_and_compare(name, student, splits, out, seed, parity_score))
    row["gap"] = row[f"cnn_{metric}"] - row[f"adder_{metric}"]
    row["seconds"] = time.perf_counter() - started
    return row


def _scores(row: dict, stage: str) -> str:
    """``"mIoU 40.00% / pixel accuracy 90.00%"`` of ``row``'s ``stage`` (``cnn``, ``zero_step``, ``adder``, ...)."""
    names = [k for k in METRIC_NAMES if f"{stage}_{k}" in row]
    return " / ".join(f"{METRIC_NAMES[k]} {row[f'{stage}_{k}']:.2f}%" for k in names)


def _metric_cell(row: dict, stage: str) -> str:
    """The metric of ``stage`` in a table cell: mIoU, or mAP / mAP@.5."""
    return " / ".join(f"{row[f'{stage}_{k}']:.2f}" for k in _METRICS[row["task"]])


def _parity_cell(row: dict, score: float) -> str:
    """The parity at ONNX Runtime's default optimizations, and without its layout optimizations where it differs."""
    if row["parity"] is None:
        return f"n/a (no detection above {score})"
    plain = row.get("parity_no_layout", row["parity"])
    other = f" ({100 * plain:.2f}% without layout optimizations)" if plain != row["parity"] else ""
    if row["task"] == "segmentation":
        return f"{100 * row['parity']:.2f}%{other} of {row['parity_count']:,} pixels"
    ties = row["parity_ties"]
    tied = f" ({ties} NMS tie{'s' * (ties != 1)})" if ties else ""
    return f"{100 * row['parity']:.2f}%{other} of {row['parity_count']:,} detections{tied}"


def parity_of_run(run: Path) -> list[dict]:
    """The parity of a finished run's adder models (``RUN/results.json``, ``RUN/MODEL.pt``) measured again, on the
    same scenes, with PyTorch's float64 model as a reference too (:func:`export_and_compare` with ``float64``);
    written to ``RUN/parity.json``."""
    payload = json.loads((run / "results.json").read_text())
    seed, rows, scenes = payload["seed"], [], {}  # scenes: each task's, built once
    for row in payload["rows"]:
        if "gap" not in row:
            continue
        if row["task"] not in scenes:
            scenes[row["task"]] = load_scenes(
                row["task"], image_size=payload["image_size"], seed=seed, counts=payload["scenes"]
            )
        splits = scenes[row["task"]]
        student = load(run / f"{row['model']}.pt")
        print(f"{row['model']}: exporting and comparing on {len(splits.test)} test scenes", flush=True)
        result = export_and_compare(row["model"], student, splits, run, seed, payload["parity_score"], float64=True)
        rows.append({"model": row["model"], "task": row["task"], **result})
        shares = [(k, result[k]) for k in PARITY_FIELDS if result[k] is not None]
        ratio = result["onnx_run_seconds_no_layout"] / result["onnx_run_seconds"]
        print(f"{row['model']}: " + ", ".join(f"{k} {100 * v:.2f}%" for k, v in shares), flush=True)
        print(f"{row['model']}: ONNX Runtime without layout optimizations takes {ratio:.2f}x its default's time")
    (run / "parity.json").write_text(json.dumps(rows, indent=2) + "\n")
    return rows


def markdown_table(
    rows: list[dict],
    budget_name: str,
    budget: Budget,
    machine: str,
    overrides: dict,
    scenes: dict[str, int],
    parity_score: float = PARITY_SCORE,
    conversion: dict | None = None,
) -> str:
    """The rows as a markdown table, with the budget, the recipe and the goals met."""
    steps = "no steps" if budget.steps == 0 else f"{budget.steps} steps" if budget.steps else "whole epochs"
    recipe = ", ".join(f"{k}={v}" for k, v in overrides.items()) or "the main job's defaults"
    exclude, bases = (conversion or {}).get("exclude"), (conversion or {}).get("bases")
    batches = {recipes.fine_tune_config(budget, overrides, training_task(r["task"])).batch_size for r in rows}
    adder_batches = " / ".join(str(b) for b in sorted(batches))
    lines = [
        f"Budget `{budget_name}` on {machine}: the built-in scenes at {budget.image_size} px, {scenes['train']:,} "
        f"train / {scenes['test']:,} test scenes. CNN from scratch, batch {budget.cnn_batch_size}, lr "
        f"{RunConfig.pretrain_lr} after a linear warm-up over {recipes.CNN_WARMUP:.0%} of its steps. "
        f"Conversion: the main job's (init {RunConfig.init}, reconstruct "
        f"{RunConfig.reconstruct}, keep {', '.join(RunConfig().keep)}, keep_ceiling {SEGMENTATION.keep_ceiling:g}, "
        f"detection {DETECTION.keep_ceiling:g}"
        f"{', exclude ' + ' '.join(exclude) if exclude else ''}{f', {bases} bases' if bases else ''}). "
        f"Adder: {budget.epochs} epoch(s) of {steps} at batch {adder_batches}, {recipe}. Parity: ONNX Runtime "
        f"against PyTorch on the test scenes (pixels with the same argmax; PyTorch's detections above "
        f"{parity_score} found again, IoU >= {PARITY_IOU}, score within {PARITY_SCORE_TOLERANCE:g}, or an NMS tie: "
        "the other of two boxes whose scores lie within it and which suppress each other).",
        "",
        f"| model | metric | CNN epochs | CNN | zero-step (% of CNN) | adder by epoch | gap | MACs converted "
        f"({budget.image_size} px / deployed) | ONNX Runtime | parity | CNN s | convert s | adder s | export + ONNX s "
        "| diverged |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        if "gap" not in r:
            lines.append(f"| {r['model']} | | | n/a | | | | | | | {r['cnn_seconds']:.0f} | | | | {r['diverged']} |")
            continue
        names = " / ".join(METRIC_NAMES[k] for k in _METRICS[r["task"]])
        share = f"{100 * r['zero_step_share']:.0f}%" if r["zero_step_share"] is not None else "n/a"
        by_epoch = ", ".join(f"{v:.2f}" for v in r["adder_by_epoch"]) or "-"
        size = r["deployment_size"]
        macs = f"{100 * r['converted_macs_share']:.0f}% / {recipes._share(r, f'converted_macs_share_{size}')} at {size}"
        seconds = (r["cnn_seconds"], r["convert_seconds"], r["adder_seconds"], r["export_seconds"] + r["onnx_seconds"])
        lines.append(
            f"| {r['model']} | {names} | {r['cnn_epochs']} | {_metric_cell(r, 'cnn')} | "
            f"{_metric_cell(r, 'zero_step')} ({share}) | {by_epoch} | {r['gap']:+.2f} | {macs} | "
            f"{_metric_cell(r, 'onnx')} | {_parity_cell(r, parity_score)} | "
            + " | ".join(f"{s:.0f}" for s in seconds)
            + f" | {r['diverged'] or 'no'} |"
        )
    done = [r for r in rows if "gap" in r]
    zero = sum((r["zero_step_share"] or 0) >= TARGET_ZERO_STEP for r in done)
    close = sum(r["gap"] <= budget.target_gap and not r["diverged"] for r in done)
    parity = sum(r["parity"] is not None and r["parity"] >= TARGET_PARITY[r["task"]] for r in done)
    lines += [
        "",
        f"Of {len(rows)}: {zero} keep at least {TARGET_ZERO_STEP:.0%} of the CNN's metric at zero steps, {close} end "
        f"within {budget.target_gap} point of it without diverging, {parity} have ONNX parity (at least "
        f"{TARGET_PARITY['segmentation']:.1%} of the pixels, all the detections). Metrics in %; gap = CNN - adder.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """The benchmark's command line (the module's docstring); returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", choices=BUDGETS, default="gpu" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--output", default=None, help="results folder (default runs/dense/BUDGET)")
    parser.add_argument(
        "--teachers",
        default=str(Path.home() / ".cache" / "adderconvert" / "dense_teachers"),
        help="cache of trained CNN teachers (outside the repository, reused by later runs)",
    )
    parser.add_argument("--teachers-only", action="store_true", help="train and cache the CNNs, convert nothing")
    parser.add_argument("--steps", type=int, default=None, help="adder fine-tuning steps (default: whole epochs)")
    parser.add_argument("--epochs", type=int, default=None, help="adder fine-tuning epochs (default: the budget's)")
    parser.add_argument("--teacher-epochs", type=int, default=None, help="CNN epochs (default: the budget's)")
    parser.add_argument("--image-size", type=int, default=None, help="scene size in px (default: the budget's)")
    parser.add_argument(
        "--scenes", type=int, nargs=2, default=None, metavar=("TRAIN", "TEST"), help="scene counts (the budget's)"
    )
    parser.add_argument(
        "--exclude",
        nargs="*",
        default=[],
        metavar="PATTERN",
        help="convs (wildcards on module names, the CLI's --exclude) also kept multiplicative",
    )
    parser.add_argument("--bases", type=int, default=None, help="binary bases per adder layer [the main job's]")
    parser.add_argument("--seed", type=int, default=RunConfig.seed, help="the scenes', the CNN's and the conversion's")
    parser.add_argument(
        "--parity-score",
        type=float,
        default=PARITY_SCORE,
        help=f"detection parity compares PyTorch's detections above this score (default {PARITY_SCORE}, the issue's)",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch and ONNX Runtime threads (default: torch's)")
    parser.add_argument(
        "--parity-of",
        type=Path,
        default=None,
        metavar="RUN",
        help="only measure the parity of a finished run's models again, float64 included (RUN/parity.json)",
    )
    parser.add_argument("--table", default=None, help="also write the markdown table to this file")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.parity_of is not None:
        if not (args.parity_of / "results.json").is_file():
            print(f"Error: {args.parity_of} has no results.json of a benchmarks/dense.py run", file=sys.stderr)
            return 2
        parity_of_run(args.parity_of)
        return 0
    budget = BUDGETS[args.budget]
    changes = {
        "steps": args.steps,
        "epochs": args.epochs,
        "cnn_epochs": args.teacher_epochs,
        "image_size": args.image_size,
    }
    budget = dataclasses.replace(budget, **{k: v for k, v in changes.items() if v is not None})
    scenes = dict(zip(("train", "test"), args.scenes)) if args.scenes else SCENES[args.budget]
    try:
        tasks = check_models(args.models)
        if args.budget == "cpu" and budget.image_size > CPU_MAX_SIZE:
            raise ValueError(f"--image-size {budget.image_size}: the cpu budget takes at most {CPU_MAX_SIZE} px")
    except ValueError as e:
        print(f"Error: {e}", file=sys.stderr)
        return 2
    overrides = recipes.parse_overrides(args.overrides)
    conversion = {"exclude": args.exclude, "bases": args.bases}
    recipe = {"seed": args.seed, **overrides}  # the fine-tuning's: --seed unless --set seed= says otherwise
    ctx = DistributedContext(device=torch.device(args.device))
    machine = recipes.machine_name(ctx.device)
    out = Path(args.output or f"runs/dense/{args.budget}")
    out.mkdir(parents=True, exist_ok=True)
    cache = Path(args.teachers)
    data = {
        task: load_scenes(task, image_size=budget.image_size, seed=args.seed, counts=scenes)
        for task in set(tasks.values())
    }
    rows = []
    for name, task in tasks.items():
        if args.teachers_only:
            try:
                _, result = train_teacher(name, budget, data[task], ctx, cache, args.seed)
                print(f"{name}: CNN {_scores(result, 'cnn')} ({result['cnn_seconds']:.0f}s to train)", flush=True)
            except TrainingDiverged as e:
                print(f"{name}: the CNN diverged: {e}", flush=True)
            continue
        row = run_model(name, budget, recipe, data[task], ctx, cache, args.seed, out, args.parity_score, conversion)
        rows.append(row)
        print(
            f"{name}: the CNN diverged: {row['diverged']}"
            if "gap" not in row
            else f"{name}: CNN {_scores(row, 'cnn')}, adder {_scores(row, 'adder')} (gap {row['gap']:+.2f}), "
            f"ONNX Runtime {_scores(row, 'onnx')}, parity {_parity_cell(row, args.parity_score)}, "
            f"diverged: {row['diverged'] or 'no'}, {row['seconds']:.0f}s",
            flush=True,
        )
        payload = {
            "budget": args.budget,
            "image_size": budget.image_size,
            "scenes": scenes,
            "seed": args.seed,
            "teacher_epochs": budget.cnn_epochs,
            "epochs": budget.epochs,
            "steps": budget.steps,
            "parity_score": args.parity_score,
            "machine": machine,
            "threads": torch.get_num_threads(),
            "overrides": overrides,
            **conversion,
            "rows": rows,
        }
        table = markdown_table(rows, args.budget, budget, machine, overrides, scenes, args.parity_score, conversion)
        recipes.write_results(out, payload, table, args.table)
    if rows:
        print("\n" + table)
    return 0


if __name__ == "__main__":
    sys.exit(main())

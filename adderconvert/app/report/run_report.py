"""The cost report of a run folder: what converting the CNN into an AdderNet buys, per image and per layer.

:func:`write_report` writes ``report.json`` and ``report.html`` into a run folder. Everything missing from
the folder reads "n/a". The accounting is :mod:`.costs`'s, the timings :mod:`.latency`'s. A segmentation or
detection run is reported the same way, with its operations and energy split into the parts of the model
(backbone, neck, head: ``architectures.registry.part_of``, as ``--dry-run`` splits its plan) and its metric (mIoU,
mAP) where a classifier's run shows top-1.
"""

from __future__ import annotations

import csv
import json
import os
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from adderconvert.app.outputs import check_output_file, write_text
from adderconvert.app.report.costs import (
    ENERGY_PJ,
    ENERGY_SOURCE,
    OperationCounts,
    cnn_twin,
    count_operations,
    deployed_int8_energy_pj,
    energy_pj,
)
from adderconvert.app.report.html import plots, render_html
from adderconvert.app.report.latency import LATENCY_BUDGET_S, latency_table, ratio
from adderconvert.app.report.stages import STAGES
from adderconvert.architectures.registry import build, part_of, task_of
from adderconvert.checkpoint import load, read_meta
from adderconvert.data import TASKS
from adderconvert.deploy.export import export_onnx
from adderconvert.train.dense import training_task

__all__ = ["build_report", "write_report"]


def _read_json(path: Path, notes: list[str]) -> dict[str, Any]:
    """A JSON object file's content; a file that is there but cannot be read is noted, not hidden."""
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        notes.append(f"could not read {path.name} ({type(e).__name__}: {e}): what it holds reads n/a")
        return {}
    if not isinstance(data, dict):
        notes.append(f"could not read {path.name}: it holds a {type(data).__name__}, not an object")
        return {}
    return data


def _read_yaml(path: Path, notes: list[str]) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        notes.append(f"could not read {path.name} ({type(e).__name__}): what it holds reads n/a")
        return {}
    if not isinstance(data, dict):
        notes.append(f"could not read {path.name}: it holds a {type(data).__name__}, not a mapping")
        return {}
    return data


def _read_curve(path: Path, notes: list[str]) -> list[dict[str, float]]:
    """Rows of a metrics.csv as floats (an empty list when the file is missing; noted when unreadable)."""
    if not path.is_file():
        return []
    try:
        with open(path, newline="") as f:
            return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]
    except (OSError, ValueError, TypeError, csv.Error) as e:
        name = path.relative_to(path.parent.parent) if path.parent.name == "teacher" else path.name
        notes.append(f"could not read {name} ({type(e).__name__}: {e}): its curve reads n/a")
        return []


def _load_models(run_dir: Path, notes: list[str]) -> tuple[nn.Module | None, nn.Module | None, dict[str, Any]]:
    """The adder model (best.pt, else last.pt), the CNN architecture it came from, and the checkpoint meta."""
    checkpoint = next((run_dir / n for n in ("best.pt", "last.pt") if (run_dir / n).is_file()), None)
    if checkpoint is None:
        notes.append("no adder checkpoint (best.pt or last.pt): operation counts and latency are n/a")
        return None, None, {}
    try:
        meta = read_meta(checkpoint)
        adder = load(checkpoint)
        if meta.official_arch is not None:
            cnn = cnn_twin(adder)
        else:
            cnn = build(meta.model_name, meta.num_classes, meta.image_size).eval()
        return adder, cnn, meta.to_dict()
    except Exception as e:  # a foreign or damaged file: the report says so instead of failing
        notes.append(f"could not rebuild the model from {checkpoint.name}: {type(e).__name__}: {e}")
        return None, None, {}


def _find_model(run_dir: Path, summary: dict[str, Any], key: str, pattern: str, notes: list[str]) -> Path | None:
    """A model of the run inside its folder only: the file summary.json names under ``key`` (by its name, so a
    copied or moved run never measures another run's file), else the one file matching ``pattern`` (what
    ``adderconvert export`` writes there afterwards)."""
    named = summary.get(key)
    if isinstance(named, str) and named:
        path = run_dir / Path(named).name
        if path.is_file():
            return path
        notes.append(f"summary.json names {Path(named).name}, which is not in the run folder")
    found = sorted(run_dir.glob(pattern))
    if len(found) > 1:
        notes.append(
            f"several models in the run folder match {pattern} ({', '.join(p.name for p in found)}): none measured"
        )
        return None
    return found[0] if found else None


def _deployed_int8(counts: dict[str, OperationCounts | None]) -> dict[str, Any]:
    kinds = {"cnn": ("conv", "linear"), "adder": ("adder",)}
    return {k: deployed_int8_energy_pj(c, kinds[k]) if c is not None else None for k, c in counts.items()}


def _totals(counts: OperationCounts | None) -> dict[str, Any]:
    if counts is None:
        return {"multiplications": None, "additions": None, "bn_multiplications": None, "bn_additions": None}
    return {
        "multiplications": counts.multiplications,
        "additions": counts.additions,
        "bn_multiplications": counts.bn_multiplications,
        "bn_additions": counts.bn_additions,
    }


def _task_and_metric(
    summary: dict[str, Any], meta: dict[str, Any], model_name: Any, curves: list[list[dict[str, float]]]
) -> tuple[str, str]:
    """The run's task and metric: those summary.json names (a segmentation or detection run's); else (a classifier's
    summary, or none: a run stopped before its end) those of its model's task, else of the ``test_`` column of its
    metrics.csv, else a classifier's."""
    by_metric = {training_task(task).metric: task for task in TASKS}
    metric = summary.get("metric")
    if metric in by_metric:
        return by_metric[metric], metric
    if meta.get("official_arch") is not None:
        return "classification", "top1"
    try:
        task = task_of(model_name) if isinstance(model_name, str) else None
    except ValueError:  # a model this version does not know
        task = None
    if task is None:
        columns = [column for rows in curves if rows for column in rows[0]]
        found = (column.removeprefix("test_") for column in columns if column.startswith("test_"))
        task = next((by_metric[name] for name in found if name in by_metric), "classification")
    return task, training_task(task).metric


def _parts(task: str, model_name: Any, counts: dict[str, OperationCounts | None]) -> dict[str, Any] | None:
    """A segmentation or detection model's operations and FP32 energy per part (backbone, neck, head), per image:
    ``{part: {"cnn": {...}, "adder": {...}}}`` with ``macs``, ``multiplications``, ``additions``, ``energy_pj``;
    None for a classifier, without counts or for a model this version does not know."""
    if task == "classification" or counts["cnn"] is None or counts["adder"] is None:
        return None
    try:
        parts_of = part_of(model_name)
    except ValueError:  # a model this version does not know
        parts_of = None
    if parts_of is None:
        return None
    parts: dict[str, Any] = {}
    for label, count in counts.items():
        for layer in count.layers:
            part = parts.setdefault(parts_of(layer.name), {}).setdefault(
                label, {"macs": 0, "multiplications": 0, "additions": 0}
            )
            for key in part:
                part[key] += getattr(layer, key)
    for pair in parts.values():
        for totals in pair.values():
            totals["energy_pj"] = energy_pj(totals["multiplications"], totals["additions"])
    return parts


def _pair(cnn: Any, adder: Any) -> dict[str, Any]:
    return {"cnn": cnn, "adder": adder}


def _energy(totals: dict[str, Any], precision: str, with_bn: bool = False) -> float | None:
    if totals["multiplications"] is None:
        return None
    mults, adds = totals["multiplications"], totals["additions"]
    if with_bn:
        mults, adds = mults + totals["bn_multiplications"], adds + totals["bn_additions"]
    return energy_pj(mults, adds, precision)


def build_report(
    run_dir: str | os.PathLike, latency_budget_s: float = LATENCY_BUDGET_S, measure_latency: bool = True
) -> dict[str, Any]:
    """Everything :func:`write_report` writes to ``report.json``, computed from ``run_dir``."""
    run_dir = Path(run_dir)
    notes: list[str] = []
    summary = _read_json(run_dir / "summary.json", notes)
    notes += [str(n) for n in summary.get("notes", [])]
    config = _read_yaml(run_dir / "config.yaml", notes)
    adder, cnn, meta = _load_models(run_dir, notes)
    image_size = meta.get("image_size") or config.get("image_size")
    if adder is not None and not image_size:
        notes.append("image size unknown (neither the checkpoint nor config.yaml has it): costs are n/a")
        adder = cnn = None
    counts = {"cnn": None, "adder": None}
    parameters = {"cnn": None, "adder": None}
    files = {
        "cnn": None,
        "adder": _find_model(run_dir, summary, "onnx_path", "*_adder.onnx", notes),
        "int8": _find_model(run_dir, summary, "int8_path", "*_adder_int8.onnx", notes),
    }
    file_sizes = {"cnn": None, "adder": None}
    latency: list[dict[str, Any]] = []
    batch_size = config.get("batch_size")
    with tempfile.TemporaryDirectory() as tmp:
        if adder is not None:
            for label, model in (("cnn", cnn), ("adder", adder)):
                counts[label] = count_operations(model, (3, image_size, image_size))
                parameters[label] = sum(p.numel() for p in model.parameters())
            if measure_latency:
                if files["adder"] is None:
                    notes.append("the run has no adder ONNX model: the report exported one to measure it")
                example = torch.zeros(2, 3, image_size, image_size)
                for label, model in (("cnn", cnn), ("adder", adder)):
                    if files[label] is None:
                        try:
                            files[label] = export_onnx(model, Path(tmp) / f"{label}.onnx", example)
                        except Exception as e:  # an architecture the exporter cannot trace: no size or latency
                            notes.append(f"could not export the {label} model to ONNX: {type(e).__name__}: {e}")
                batches = sorted({1, int(batch_size)}) if isinstance(batch_size, int) and batch_size > 0 else [1]
                latency = latency_table(files, image_size, batches, latency_budget_s, notes)
            else:
                notes.append("latency not measured: the run exported no ONNX model (`adderconvert report` measures it)")
            file_sizes = {k: p.stat().st_size if p is not None else None for k, p in files.items()}
            for row in latency:  # the INT8 adder model beside the FP32 one (None without --int8)
                row["int8_ratio"] = ratio(row.get("int8_ms"), row.get("cnn_ms"))
                row["int8_vs_fp32_adder"] = ratio(row.get("int8_ms"), row.get("adder_ms"))
        elif files["adder"] is not None:
            file_sizes["adder"] = files["adder"].stat().st_size
    totals = {k: _totals(v) for k, v in counts.items()}
    energies = {
        precision: _pair(_energy(totals["cnn"], precision), _energy(totals["adder"], precision))
        for precision in ENERGY_PJ
    }
    energies_bn = {
        precision: _pair(_energy(totals["cnn"], precision, True), _energy(totals["adder"], precision, True))
        for precision in ENERGY_PJ
    }
    model_name = summary.get("model") or meta.get("model_name") or config.get("model")
    curves = {
        "cnn": _read_curve(run_dir / "teacher" / "metrics.csv", notes),
        "adder": _read_curve(run_dir / "metrics.csv", notes),
    }
    task, metric = _task_and_metric(summary, meta, model_name, [curves["adder"], curves["cnn"]])
    report = {
        "run_dir": str(run_dir.resolve()),
        "model": model_name,
        "dataset": summary.get("dataset") or meta.get("dataset") or config.get("dataset"),
        "task": task,
        "metric": metric,
        "image_size": image_size,
        "accounting": {
            "conv_or_linear_mac": "1 multiplication + 1 addition",
            "adder_mac": "2 additions",
            "bias": "1 addition per output",
            "headline_totals": "Conv2d, AdderConv2d and Linear layers, per image",
            "batchnorm": "not in the headline totals; folds into a preceding conv/linear (free), "
            "else 1 multiplication + 1 addition per element (after adder layers)",
            "energy_source": ENERGY_SOURCE,
            "energy_pj_per_op": ENERGY_PJ,
        },
        "multiplications": _pair(totals["cnn"]["multiplications"], totals["adder"]["multiplications"]),
        "additions": _pair(totals["cnn"]["additions"], totals["adder"]["additions"]),
        "energy_pj": energies["fp32"],
        "energy_ratio": ratio(energies["fp32"]["cnn"], energies["fp32"]["adder"]),
        "energy_pj_by_precision": energies,
        "energy_ratio_by_precision": {p: ratio(e["cnn"], e["adder"]) for p, e in energies.items()},
        # INT8 models as they run: CNN convs/linears and the adder layers on 8 bits, 32-bit accumulation
        "energy_pj_int8_deployed": _deployed_int8(counts),
        "batchnorm": {
            k: {"multiplications": t["bn_multiplications"], "additions": t["bn_additions"]} for k, t in totals.items()
        },
        "energy_pj_with_batchnorm": energies_bn["fp32"],
        "energy_ratio_with_batchnorm": ratio(energies_bn["fp32"]["cnn"], energies_bn["fp32"]["adder"]),
        "parts": _parts(task, model_name, counts),
        "parameters": parameters,
        "onnx_file_bytes": file_sizes,
        # the run's metric (top-1, mIoU, mAP) of: the CNN, the adder model before any fine-tuning step and after it,
        # in ONNX Runtime, its INT8 model (--int8); and the % of images (pixels) with the FP32 ONNX model's class
        "accuracy": {
            **{f"{stage}_{metric}": summary.get(f"{stage}_{metric}") for stage, _ in STAGES},
            "int8_agreement": summary.get("int8_agreement"),
        },
        "curves": curves,
        "latency_ms": latency,
        "batch_size": batch_size,
        "layers": [asdict(layer) for layer in counts["adder"].layers] if counts["adder"] else [],
        "cnn_layers": [asdict(layer) for layer in counts["cnn"].layers] if counts["cnn"] else [],
        "notes": notes,
    }
    return report


def write_report(
    run_dir: str | os.PathLike, latency_budget_s: float = LATENCY_BUDGET_S, measure_latency: bool = True
) -> tuple[Path, Path]:
    """Write ``report.html`` and ``report.json`` into ``run_dir`` and return their paths.

    ``measure_latency`` False leaves out the ONNX file sizes and latencies where that would mean exporting (the
    main job's ``--no-export``: exporting both models for them takes longer than a small run itself).

    Reads ``best.pt`` (else ``last.pt``), ``summary.json``, ``config.yaml`` (``batch_size`` sets the second
    latency batch; models of a fixed batch, an R-CNN's, are timed at theirs only), ``metrics.csv``,
    ``teacher/metrics.csv`` and the adder ONNX model; what is missing reads "n/a" and is listed under ``notes``.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run folder not found: {run_dir}")
    html_path, json_path = run_dir / "report.html", run_dir / "report.json"
    for path in (html_path, json_path):
        check_output_file(path, overwrite=True, what="report")  # before the work: a folder there, read-only
    report = build_report(run_dir, latency_budget_s, measure_latency)
    write_text(json_path, json.dumps(report, indent=2) + "\n")
    write_text(html_path, render_html(report, plots(report)))
    return html_path, json_path

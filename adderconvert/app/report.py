"""Cost report of a run: what converting the CNN into an AdderNet buys, per image and per layer.

:func:`write_report` writes ``report.json`` and ``report.html`` (one self-contained file, its matplotlib
plots embedded as PNG) into a run folder. Everything missing from the folder reads "n/a".

Accounting (Chen et al., CVPR 2020): a conv or linear MAC is 1 multiplication + 1 addition; an adder
MAC (``|x - w|`` accumulated) is 2 additions; a bias is 1 addition per output. The headline totals
(``multiplications``, ``additions``, ``energy_pj``, ``energy_ratio``) cover every Conv2d, AdderConv2d
and Linear layer, as the paper does. BatchNorm is counted apart (``batchnorm``, ``energy_pj_with_batchnorm``):
after a convolution or linear layer it folds into the weights at inference (free), while after an adder
layer (or anywhere else) it stays a per-element scale and shift, 1 multiplication + 1 addition (a BatchNorm
right after another merges into it).
Energies use 45 nm figures from Horowitz, ISSCC 2014 (:data:`ENERGY_PJ`).
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
import os
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from adderconvert.nn import AdderConv2d

__all__ = [
    "ENERGY_PJ",
    "ENERGY_SOURCE",
    "LayerCost",
    "OperationCounts",
    "build_report",
    "cnn_twin",
    "count_operations",
    "energy_pj",
    "measure_latency",
    "render_html",
    "write_report",
]

# pJ per operation at 45 nm (M. Horowitz, "Computing's energy problem", ISSCC 2014).
ENERGY_PJ: dict[str, dict[str, float]] = {
    "fp32": {"multiplication": 3.7, "addition": 0.9},
    "int32": {"multiplication": 3.1, "addition": 0.1},
    "int8": {"multiplication": 0.2, "addition": 0.03},
}
ENERGY_SOURCE = "45 nm, M. Horowitz, Computing's energy problem (and what we can do about it), ISSCC 2014"
# Latency of each model and batch is the median of repeated runs within this many seconds.
LATENCY_BUDGET_S = 2.0


@dataclass
class LayerCost:
    """Operations of one layer for one image."""

    name: str
    kind: str  # "conv", "adder" or "linear"
    weight_shape: list[int]
    output_shape: list[int]  # without the batch dimension
    macs: int
    multiplications: int
    additions: int


@dataclass
class OperationCounts:
    """Per-image operations of a model: its Conv2d/AdderConv2d/Linear layers and its BatchNorm epilogue."""

    layers: list[LayerCost]
    bn_multiplications: int
    bn_additions: int

    @property
    def multiplications(self) -> int:
        return sum(layer.multiplications for layer in self.layers)

    @property
    def additions(self) -> int:
        return sum(layer.additions for layer in self.layers)


def count_operations(model: nn.Module, input_shape: tuple[int, int, int]) -> OperationCounts:
    """Count per-image operations of ``model`` on one ``(C, H, W)`` input by forward hooks.

    Returns the Conv2d/AdderConv2d/Linear layers in call order and the BatchNorm epilogue's operations
    (see the module docstring for the accounting).
    """
    layers: list[LayerCost] = []
    # Conv/linear outputs a following BatchNorm folds into, kept alive so that their ids stay unique.
    foldable: dict[int, torch.Tensor] = {}
    bn_ops = [0]
    names = {module: name for name, module in model.named_modules()}

    def on_layer(module: nn.Module, inputs, output: torch.Tensor) -> None:
        per_image = list(output.shape[1:])
        outputs = math.prod(per_image)
        if isinstance(module, nn.Linear):
            kind, fan_in = "linear", module.in_features
        else:
            kind = "adder" if isinstance(module, AdderConv2d) else "conv"
            fan_in = module.in_channels // module.groups * math.prod(module.kernel_size)
        macs = outputs * fan_in
        bias = outputs if module.bias is not None else 0
        if kind == "adder":
            mults, adds = 0, 2 * macs + bias
        else:
            mults, adds = macs, macs + bias
            foldable[id(output)] = output
        layers.append(LayerCost(names[module], kind, list(module.weight.shape), per_image, macs, mults, adds))

    def on_batchnorm(module: nn.Module, inputs, output: torch.Tensor) -> None:
        if id(inputs[0]) not in foldable:
            bn_ops[0] += output[0].numel()
        foldable[id(output)] = output  # a BatchNorm right after this one merges into the same scale and shift

    was_training = model.training
    model.eval()
    handles = []
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, AdderConv2d, nn.Linear)):
            handles.append(module.register_forward_hook(on_layer))
        elif isinstance(module, nn.modules.batchnorm._BatchNorm):
            handles.append(module.register_forward_hook(on_batchnorm))
    try:
        parameter = next(model.parameters(), None)
        dtype = parameter.dtype if parameter is not None else torch.float32
        with torch.no_grad():
            model(torch.zeros(1, *input_shape, dtype=dtype))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return OperationCounts(layers, bn_ops[0], bn_ops[0])


def energy_pj(multiplications: int, additions: int, precision: str = "fp32") -> float:
    """Energy in pJ of ``multiplications`` and ``additions`` at ``precision`` (a key of :data:`ENERGY_PJ`)."""
    table = ENERGY_PJ[precision]
    return multiplications * table["multiplication"] + additions * table["addition"]


def cnn_twin(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every AdderConv2d replaced by a Conv2d of the same geometry (the CNN it stands for)."""
    import copy

    twin = copy.deepcopy(model)
    for name, module in list(twin.named_modules()):
        if isinstance(module, AdderConv2d):
            twin.set_submodule(name, module.to_conv(copy_weights=False))
    return twin.eval()


def measure_latency(
    path: str | os.PathLike,
    input_shape: tuple[int, ...],
    provider: str = "CPUExecutionProvider",
    budget_s: float = LATENCY_BUDGET_S,
) -> float:
    """Median milliseconds of one ONNX Runtime run of ``path`` on a random input of ``input_shape``.

    One warm-up run, then runs until ``budget_s`` has passed (at least 3, at most 200).
    """
    import numpy as np

    from adderconvert.deploy.runtime import make_session

    session = make_session(path, providers=[provider])
    feed = {session.get_inputs()[0].name: np.random.default_rng(0).standard_normal(input_shape, dtype=np.float32)}
    session.run(None, feed)
    times: list[float] = []
    deadline = time.perf_counter() + budget_s
    while len(times) < 3 or (time.perf_counter() < deadline and len(times) < 200):
        start = time.perf_counter()
        session.run(None, feed)
        times.append(1000 * (time.perf_counter() - start))
    return statistics.median(times)


# --- reading the run folder ------------------------------------------------------------------------


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _read_yaml(path: Path) -> dict[str, Any]:
    import yaml

    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


def _read_curve(path: Path) -> list[dict[str, float]]:
    """Rows of a metrics.csv as floats (an empty list when the file is missing or unreadable)."""
    try:
        with open(path, newline="") as f:
            return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]
    except (OSError, ValueError, TypeError):
        return []


def _load_models(run_dir: Path, notes: list[str]) -> tuple[nn.Module | None, nn.Module | None, dict[str, Any]]:
    """The adder model (best.pt, else last.pt), the CNN architecture it came from, and the checkpoint meta."""
    checkpoint = next((run_dir / n for n in ("best.pt", "last.pt") if (run_dir / n).is_file()), None)
    if checkpoint is None:
        notes.append("no adder checkpoint (best.pt or last.pt): operation counts and latency are n/a")
        return None, None, {}
    try:
        from adderconvert.checkpoint import load, read_meta

        meta = read_meta(checkpoint)
        adder = load(checkpoint)
        if meta.official_arch is not None:
            cnn = cnn_twin(adder)
        else:
            from adderconvert.architectures.cnn import build_model

            cnn = build_model(meta.model_name, meta.num_classes).eval()
        return adder, cnn, meta.to_dict()
    except Exception as e:  # a foreign or damaged file: the report says so instead of failing
        notes.append(f"could not rebuild the model from {checkpoint.name}: {type(e).__name__}: {e}")
        return None, None, {}


def _find_onnx(run_dir: Path, summary: dict[str, Any]) -> Path | None:
    named = summary.get("onnx_path")
    candidates = [Path(named), run_dir / Path(named).name] if named else []
    for candidate in candidates + sorted(run_dir.glob("*_adder.onnx")):
        if candidate.is_file():
            return candidate
    return None


def _totals(counts: OperationCounts | None) -> dict[str, Any]:
    if counts is None:
        return {"multiplications": None, "additions": None, "bn_multiplications": None, "bn_additions": None}
    return {
        "multiplications": counts.multiplications,
        "additions": counts.additions,
        "bn_multiplications": counts.bn_multiplications,
        "bn_additions": counts.bn_additions,
    }


def _pair(cnn: Any, adder: Any) -> dict[str, Any]:
    return {"cnn": cnn, "adder": adder}


def _energy(totals: dict[str, Any], precision: str, with_bn: bool = False) -> float | None:
    if totals["multiplications"] is None:
        return None
    mults, adds = totals["multiplications"], totals["additions"]
    if with_bn:
        mults, adds = mults + totals["bn_multiplications"], adds + totals["bn_additions"]
    return energy_pj(mults, adds, precision)


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    return numerator / denominator if numerator is not None and denominator else None


def _latencies(
    paths: dict[str, Path | None], image_size: int, batches: list[int], budget_s: float, notes: list[str]
) -> list[dict[str, Any]]:
    from adderconvert.deploy.runtime import available_providers

    try:
        providers = available_providers()
    except Exception as e:  # onnxruntime or the custom-op library missing
        notes.append(f"latency not measured: {type(e).__name__}: {e}")
        return []
    rows = []
    for provider in providers:
        for batch in batches:
            row: dict[str, Any] = {"provider": provider, "batch": batch}
            for label, path in paths.items():
                try:
                    row[f"{label}_ms"] = (
                        measure_latency(path, (batch, 3, image_size, image_size), provider, budget_s) if path else None
                    )
                except Exception as e:  # a model that does not run on this provider: recorded, not raised
                    notes.append(f"{label} ONNX on {provider} at batch {batch}: {type(e).__name__}: {e}")
                    row[f"{label}_ms"] = None
            row["ratio"] = _ratio(row.get("adder_ms"), row.get("cnn_ms"))
            rows.append(row)
    return rows


def build_report(run_dir: str | os.PathLike, latency_budget_s: float = LATENCY_BUDGET_S) -> dict[str, Any]:
    """Everything :func:`write_report` writes to ``report.json``, computed from ``run_dir``."""
    from adderconvert.deploy.export import export_onnx

    run_dir = Path(run_dir)
    summary = _read_json(run_dir / "summary.json")
    notes: list[str] = [str(n) for n in summary.get("notes", [])]
    config = _read_yaml(run_dir / "config.yaml")
    adder, cnn, meta = _load_models(run_dir, notes)
    image_size = meta.get("image_size") or config.get("image_size")
    if adder is not None and not image_size:
        notes.append("image size unknown (neither the checkpoint nor config.yaml has it): costs are n/a")
        adder = cnn = None
    counts = {"cnn": None, "adder": None}
    parameters = {"cnn": None, "adder": None}
    files = {"cnn": None, "adder": _find_onnx(run_dir, summary)}
    file_sizes = {"cnn": None, "adder": None}
    latency: list[dict[str, Any]] = []
    batch_size = config.get("batch_size")
    with tempfile.TemporaryDirectory() as tmp:
        if adder is not None:
            for label, model in (("cnn", cnn), ("adder", adder)):
                counts[label] = count_operations(model, (3, image_size, image_size))
                parameters[label] = sum(p.numel() for p in model.parameters())
            example = torch.zeros(2, 3, image_size, image_size)
            if files["adder"] is None:
                notes.append("the run has no adder ONNX model: the report exported one to measure it")
            for label, model in (("cnn", cnn), ("adder", adder)):
                if files[label] is None:
                    try:
                        files[label] = export_onnx(model, Path(tmp) / f"{label}.onnx", example)
                    except Exception as e:  # an architecture the exporter cannot trace: no size or latency
                        notes.append(f"could not export the {label} model to ONNX: {type(e).__name__}: {e}")
            file_sizes = {k: p.stat().st_size if p is not None else None for k, p in files.items()}
            batches = sorted({1, int(batch_size)}) if isinstance(batch_size, int) and batch_size > 0 else [1]
            latency = _latencies(files, image_size, batches, latency_budget_s, notes)
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
    report = {
        "run_dir": str(run_dir.resolve()),
        "model": summary.get("model") or meta.get("model_name") or config.get("model"),
        "dataset": summary.get("dataset") or meta.get("dataset") or config.get("dataset"),
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
        "energy_ratio": _ratio(energies["fp32"]["cnn"], energies["fp32"]["adder"]),
        "energy_pj_by_precision": energies,
        "energy_ratio_by_precision": {p: _ratio(e["cnn"], e["adder"]) for p, e in energies.items()},
        "batchnorm": {
            k: {"multiplications": t["bn_multiplications"], "additions": t["bn_additions"]} for k, t in totals.items()
        },
        "energy_pj_with_batchnorm": energies_bn["fp32"],
        "energy_ratio_with_batchnorm": _ratio(energies_bn["fp32"]["cnn"], energies_bn["fp32"]["adder"]),
        "parameters": parameters,
        "onnx_file_bytes": file_sizes,
        "accuracy": {
            "cnn_top1": summary.get("cnn_top1"),
            "adder_top1": summary.get("adder_top1"),
            "onnx_top1": summary.get("onnx_top1"),
        },
        "curves": {
            "cnn": _read_curve(run_dir / "teacher" / "metrics.csv"),
            "adder": _read_curve(run_dir / "metrics.csv"),
        },
        "latency_ms": latency,
        "batch_size": batch_size,
        "layers": [asdict(layer) for layer in counts["adder"].layers] if counts["adder"] else [],
        "cnn_layers": [asdict(layer) for layer in counts["cnn"].layers] if counts["cnn"] else [],
        "notes": notes,
    }
    return report


# --- rendering -----------------------------------------------------------------------------------------


def _fmt(value: Any, digits: int = 2, suffix: str = "") -> str:
    if value is None:
        return "n/a"
    if isinstance(value, int):
        return f"{value:,}{suffix}"
    if isinstance(value, float):
        return f"{value:,.{digits}f}{suffix}"
    return html.escape(str(value))


def _energy_text(pj: float | None) -> str:
    return "n/a" if pj is None else f"{pj / 1e6:,.3f} µJ"


def _png(fig) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _plots(report: dict[str, Any]) -> dict[str, str]:
    """Base64 PNGs of the per-layer operations, the energy split and the training curves (those with data)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    plots = {}
    layers, cnn_layers = report["layers"], {row["name"]: row for row in report["cnn_layers"]}
    if layers:
        fig, ax = plt.subplots(figsize=(max(8, 0.28 * len(layers)), 4))
        index = range(len(layers))
        width = 0.4
        ax.bar(
            [i - width / 2 for i in index],
            [cnn_layers.get(r["name"], {}).get("multiplications", 0) for r in layers],
            width,
            label="CNN multiplications",
            color="#d62728",
        )
        ax.bar(
            [i + width / 2 for i in index],
            [r["additions"] for r in layers],
            width,
            label="AdderNet additions",
            color="#1f77b4",
        )
        ax.bar(
            [i + width / 2 for i in index],
            [r["multiplications"] for r in layers],
            width,
            label="AdderNet multiplications (layers kept as conv)",
            color="#ff9896",
        )
        ax.set_xticks(list(index), [r["name"] for r in layers], rotation=90, fontsize=7)
        ax.set_ylabel("operations per image")
        ax.set_title("Per-layer operations (a CNN layer does as many additions as multiplications)")
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
        plots["Per-layer operations"] = _png(fig)
        plt.close(fig)
    by_precision = report["energy_pj_by_precision"]
    if by_precision["fp32"]["cnn"] is not None:
        fig, axes = plt.subplots(1, len(by_precision), figsize=(10, 3.6))
        for ax, (precision, table) in zip(axes, ENERGY_PJ.items()):
            for x, label in enumerate(("cnn", "adder")):
                mults, adds = report["multiplications"][label], report["additions"][label]
                mult_uj, add_uj = (mults * table["multiplication"] / 1e6, adds * table["addition"] / 1e6)
                ax.bar(x, mult_uj, color="#d62728", label="multiplications" if x == 0 else None)
                ax.bar(x, add_uj, bottom=mult_uj, color="#1f77b4", label="additions" if x == 0 else None)
            ax.set_xticks([0, 1], ["CNN", "AdderNet"])
            ax.set_title(f"{precision.upper()} (ratio {report['energy_ratio_by_precision'][precision]:.2f}x)")
            ax.set_ylabel("µJ per image")
        axes[0].legend(fontsize=8)
        fig.suptitle("Energy per image, convolution and linear layers", y=1.03)
        plots["Energy split"] = _png(fig)
        plt.close(fig)
    curves = {k: v for k, v in report["curves"].items() if v}
    if curves:
        fig, (top1, loss) = plt.subplots(1, 2, figsize=(10, 3.6))
        for label, rows in curves.items():
            name = "CNN (teacher)" if label == "cnn" else "AdderNet (fine-tuning)"
            epochs = [r.get("epoch", i + 1) for i, r in enumerate(rows)]
            top1.plot(epochs, [r.get("test_top1", math.nan) for r in rows], marker="o", label=f"{name} test")
            top1.plot(epochs, [r.get("train_top1", math.nan) for r in rows], ls="--", label=f"{name} train")
            loss.plot(epochs, [r.get("train_loss", math.nan) for r in rows], marker="o", label=name)
        top1.set(xlabel="epoch", ylabel="top-1 %", title="Accuracy")
        loss.set(xlabel="epoch", ylabel="training loss", title="Loss")
        top1.legend(fontsize=8)
        loss.legend(fontsize=8)
        plots["Training curves"] = _png(fig)
        plt.close(fig)
    return plots


def _table(header: list[str], rows: list[list[str]], numeric_from: int = 1) -> str:
    head = "".join(f"<th>{h}</th>" for h in header)
    body = "".join(
        "<tr>"
        + "".join(f'<td class="{"num" if i >= numeric_from else ""}">{cell}</td>' for i, cell in enumerate(row))
        + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; padding: 0 1.5em; max-width: 1100px; color: #222; }
h1 { font-size: 1.6em; } h2 { font-size: 1.2em; margin-top: 1.6em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 3px 8px; } th { background: #f0f0f0; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
img { max-width: 100%; display: block; margin: 0.5em 0; } .note { color: #555; font-size: 0.9em; }
"""


def render_html(report: dict[str, Any], plots: dict[str, str]) -> str:
    """The report as one self-contained HTML page (``plots``: title -> base64 PNG)."""
    r = report
    totals_rows = [
        ["multiplications", _fmt(r["multiplications"]["cnn"]), _fmt(r["multiplications"]["adder"])],
        ["additions", _fmt(r["additions"]["cnn"]), _fmt(r["additions"]["adder"])],
        ["parameters", _fmt(r["parameters"]["cnn"]), _fmt(r["parameters"]["adder"])],
        ["ONNX file", _fmt(r["onnx_file_bytes"]["cnn"], suffix=" B"), _fmt(r["onnx_file_bytes"]["adder"], suffix=" B")],
    ]
    for precision, pair in r["energy_pj_by_precision"].items():
        ratio = r["energy_ratio_by_precision"][precision]
        totals_rows.append(
            [
                f"energy, {precision.upper()} (CNN/AdderNet {_fmt(ratio)}x)",
                _energy_text(pair["cnn"]),
                _energy_text(pair["adder"]),
            ]
        )
    bn = r["batchnorm"]
    totals_rows.append(
        [
            "BatchNorm epilogue (mult. / add.)",
            f"{_fmt(bn['cnn']['multiplications'])} / {_fmt(bn['cnn']['additions'])}",
            f"{_fmt(bn['adder']['multiplications'])} / {_fmt(bn['adder']['additions'])}",
        ]
    )
    with_bn = r["energy_pj_with_batchnorm"]
    totals_rows.append(
        [
            f"energy with BatchNorm, FP32 (ratio {_fmt(r['energy_ratio_with_batchnorm'])}x)",
            _energy_text(with_bn["cnn"]),
            _energy_text(with_bn["adder"]),
        ]
    )
    energy_rows = [[p.upper(), _fmt(t["multiplication"]), _fmt(t["addition"])] for p, t in ENERGY_PJ.items()]
    accuracy = r["accuracy"]
    accuracy_rows = [
        ["CNN (teacher, PyTorch)", _fmt(accuracy["cnn_top1"], suffix=" %")],
        ["AdderNet (PyTorch)", _fmt(accuracy["adder_top1"], suffix=" %")],
        ["AdderNet (ONNX Runtime)", _fmt(accuracy["onnx_top1"], suffix=" %")],
    ]
    latency_rows = [
        [row["provider"], str(row["batch"]), _fmt(row.get("cnn_ms")), _fmt(row.get("adder_ms")), _fmt(row["ratio"])]
        for row in r["latency_ms"]
    ]
    layer_rows = [
        [
            html.escape(row["name"]),
            row["kind"],
            "×".join(map(str, row["weight_shape"])),
            "×".join(map(str, row["output_shape"])),
            _fmt(row["macs"]),
            _fmt(row["multiplications"]),
            _fmt(row["additions"]),
        ]
        for row in r["layers"]
    ]
    figures = "".join(
        f'<h3>{html.escape(title)}</h3><img alt="{html.escape(title)}" src="data:image/png;base64,{data}">'
        for title, data in plots.items()
    )
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in r["notes"])
    latency_header = ["provider", "batch", "CNN ms", "AdderNet ms", "AdderNet / CNN"]
    latency_table = _table(latency_header, latency_rows, 1) if latency_rows else "<p>n/a</p>"
    layer_header = ["layer", "kind", "weight", "output", "MACs", "multiplications", "additions"]
    layer_table = _table(layer_header, layer_rows, 4) if layer_rows else "<p>n/a</p>"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>adderconvert report: {_fmt(r["model"])}</title>
<style>{_STYLE}</style></head><body>
<h1>What the AdderNet buys: {_fmt(r["model"])} on {_fmt(r["dataset"])}</h1>
<p>Per image of {_fmt(r["image_size"])}×{_fmt(r["image_size"])} px. Energy ratio (CNN / AdderNet, FP32):
<b id="energy-ratio">{_fmt(r["energy_ratio"])}x</b>.</p>
<h2>Whole model, per image</h2>
{_table(["", "CNN", "AdderNet"], totals_rows)}
<p class="note">A conv or linear MAC counts as 1 multiplication + 1 addition, an adder MAC as 2 additions, a bias
as 1 addition per output (the AdderNet paper's accounting); totals cover every convolution, adder and linear layer.
BatchNorm is listed apart: it folds into a preceding convolution or linear layer, but not into an adder layer,
where it costs 1 multiplication + 1 addition per element.</p>
<p class="note">Energy per operation (pJ), {html.escape(ENERGY_SOURCE)}:</p>
{_table(["precision", "multiplication", "addition"], energy_rows)}
<h2>Accuracy (test top-1)</h2>
{_table(["model", "top-1"], accuracy_rows)}
<h2>Latency, ONNX Runtime on this machine (median ms per run)</h2>
{latency_table}
<h2>Plots</h2>
{figures or "<p>n/a</p>"}
<h2>Per layer (AdderNet), per image</h2>
{layer_table}
{f"<h2>Notes</h2><ul>{notes}</ul>" if notes else ""}
</body></html>
"""


def write_report(run_dir: str | os.PathLike, latency_budget_s: float = LATENCY_BUDGET_S) -> tuple[Path, Path]:
    """Write ``report.html`` and ``report.json`` into ``run_dir`` and return their paths.

    Reads ``best.pt`` (else ``last.pt``), ``summary.json``, ``config.yaml`` (``batch_size`` sets the second
    latency batch), ``metrics.csv``, ``teacher/metrics.csv`` and the adder ONNX model; what is missing
    reads "n/a" and is listed under ``notes``.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run folder not found: {run_dir}")
    report = build_report(run_dir, latency_budget_s)
    html_path, json_path = run_dir / "report.html", run_dir / "report.json"
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    html_path.write_text(render_html(report, _plots(report)), encoding="utf-8")
    return html_path, json_path

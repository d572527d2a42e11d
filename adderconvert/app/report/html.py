"""The cost report as one self-contained HTML page, its matplotlib plots embedded as PNG."""

from __future__ import annotations

import base64
import html
import io
import math
from typing import Any

from matplotlib.figure import Figure

from adderconvert.app.report.costs import ENERGY_PJ, ENERGY_SOURCE
from adderconvert.app.report.stages import STAGES
from adderconvert.metrics import METRIC_NAMES

__all__ = ["plots", "render_html"]


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


def _figure(figsize: tuple[float, float], rows: int = 1, columns: int = 1):
    """A figure and its axes, drawn off-screen (no pyplot: no global backend or figure registry)."""
    fig = Figure(figsize=figsize)
    return fig, fig.subplots(rows, columns)


def _png(fig: Figure) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def plots(report: dict[str, Any]) -> dict[str, str]:
    """Base64 PNGs of the per-layer operations, the energy split and the training curves (those with data)."""
    plots = {}
    layers, cnn_layers = report["layers"], {row["name"]: row for row in report["cnn_layers"]}
    if layers:
        fig, ax = _figure((max(8, 0.28 * len(layers)), 4))
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
    by_precision = report["energy_pj_by_precision"]
    if by_precision["fp32"]["cnn"] is not None:
        fig, axes = _figure((10, 3.6), 1, len(by_precision))
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
    curves = {k: v for k, v in report["curves"].items() if v}
    metric = report.get("metric", "top1")
    if curves:
        fig, (top1, loss) = _figure((10, 3.6), 1, 2)
        for label, rows in curves.items():
            name = "CNN (teacher)" if label == "cnn" else "AdderNet (fine-tuning)"
            epochs = [r.get("epoch", i + 1) for i, r in enumerate(rows)]
            top1.plot(epochs, [r.get(f"test_{metric}", math.nan) for r in rows], marker="o", label=f"{name} test")
            if metric == "top1":  # the dense tasks score the test set only
                top1.plot(epochs, [r.get("train_top1", math.nan) for r in rows], ls="--", label=f"{name} train")
            loss.plot(epochs, [r.get("train_loss", math.nan) for r in rows], marker="o", label=name)
        top1.set(xlabel="epoch", ylabel=f"{METRIC_NAMES[metric]} %", title="Accuracy")
        loss.set(xlabel="epoch", ylabel="training loss", title="Loss")
        top1.legend(fontsize=8)
        loss.legend(fontsize=8)
        plots["Training curves"] = _png(fig)
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
    deployed = r.get("energy_pj_int8_deployed") or {"cnn": None, "adder": None}
    deployed_ratio = deployed["cnn"] / deployed["adder"] if deployed["cnn"] and deployed["adder"] else None
    totals_rows.append(
        [
            f"energy, INT8 models as run: 8-bit MACs, 32-bit sums; AdderNet stem/classifier FP32 "
            f"(CNN/AdderNet {_fmt(deployed_ratio)}x)",
            _energy_text(deployed["cnn"]),
            _energy_text(deployed["adder"]),
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
    accuracy, metric = r["accuracy"], r.get("metric", "top1")
    metric_name = METRIC_NAMES[metric]
    accuracy_rows = [[label, _fmt(accuracy.get(f"{stage}_{metric}"), suffix=" %")] for stage, label in STAGES]
    if metric != "map":  # a detector's boxes have no class per image or pixel to agree on
        counted = "images" if metric == "top1" else "pixels"
        accuracy_rows.append(
            [f"INT8: same class as FP32 (% of {counted})", _fmt(accuracy.get("int8_agreement"), suffix=" %")]
        )
    part_rows = [
        [html.escape(part)]
        + [_fmt(pair.get(label, {}).get(key)) for label in ("cnn", "adder") for key in ("multiplications", "additions")]
        + [_energy_text(pair.get(label, {}).get("energy_pj")) for label in ("cnn", "adder")]
        for part, pair in (r.get("parts") or {}).items()
    ]
    part_header = ["part", "CNN mult.", "CNN add.", "AdderNet mult.", "AdderNet add.", "CNN FP32", "AdderNet FP32"]
    parts = f"<h2>Per part (backbone, neck, head), per image</h2>{_table(part_header, part_rows)}" if part_rows else ""
    latency_rows = [
        [row["provider"], f"{row['batch']}{' (fixed)' if row.get('fixed_batch') else ''}"]
        + [_fmt(row.get("cnn_ms")), _fmt(row.get("adder_ms")), _fmt(row["ratio"])]
        + [_fmt(row.get("int8_ms")), _fmt(row.get("int8_ratio"))]
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
    latency_header = ["provider", "batch", "CNN ms", "AdderNet ms", "AdderNet / CNN", "AdderNet INT8 ms", "INT8 / CNN"]
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
{parts}
<h2>Accuracy (test {metric_name})</h2>
{_table(["model", metric_name], accuracy_rows)}
<h2>Latency, ONNX Runtime on this machine (median ms per run)</h2>
{latency_table}
<h2>Plots</h2>
{figures or "<p>n/a</p>"}
<h2>Per layer (AdderNet), per image</h2>
{layer_table}
{f"<h2>Notes</h2><ul>{notes}</ul>" if notes else ""}
</body></html>
"""

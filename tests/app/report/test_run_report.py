"""The cost report of a run folder: with and without its pieces, and the HTML rendered by a real browser
(headless Debian chromium)."""

import csv
import json
import shutil
import subprocess

import numpy as np
import pytest
import torch
import yaml

from adderconvert.app.report import write_report
from adderconvert.architectures.cnn import build_model
from adderconvert.architectures.registry import build, part_of
from adderconvert.checkpoint import CheckpointMeta, save_checkpoint
from adderconvert.conversion import plan_conversion, swap_layers
from adderconvert.deploy.export import export_onnx

IMAGE = 16  # ResNet-18 at 16 px: stem 64x8x8, stages 4, 2, 1, 1


def _write_csv(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = ["epoch", "lr", "train_loss", "train_top1", "test_top1", "seconds", "images_per_second"]
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        writer.writerows([[i + 1, 0.1, loss, top1 - 1, top1, 10.0, 100.0] for i, (loss, top1) in enumerate(rows)])


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A complete run folder of a ResNet-18 converted at 16 px (untrained: the costs do not need training)."""
    out = tmp_path_factory.mktemp("run")
    torch.manual_seed(0)
    model = build_model("resnet18", 10)
    x = torch.randn(2, 3, IMAGE, IMAGE)
    plan = plan_conversion(model, x)
    swap_layers(model, x, report=plan)
    model.eval()
    meta = CheckpointMeta("resnet18", 10, dataset="fashion-mnist", image_size=IMAGE, conversion=plan.to_dict())
    save_checkpoint(out / "best.pt", {"meta": meta, "model": model.state_dict()})
    onnx_path = export_onnx(model, out / "resnet18_adder.onnx", x)
    summary = {"model": "resnet18", "dataset": "fashion-mnist", "cnn_top1": 88.97, "adder_top1": 88.27}
    summary.update(onnx_top1=88.26, onnx_path=str(onnx_path), seconds=1.0)
    (out / "summary.json").write_text(json.dumps(summary))
    (out / "config.yaml").write_text(yaml.safe_dump({"model": "resnet18", "batch_size": 4}))
    _write_csv(out / "metrics.csv", [(0.9, 86.5), (0.6, 88.27)])
    _write_csv(out / "teacher" / "metrics.csv", [(0.5, 87.1), (0.3, 88.97)])
    html_path, json_path = write_report(out, latency_budget_s=0.2)
    return out, plan, html_path, json.loads(json_path.read_text())


def test_run_report_numbers(run):
    _, plan, html_path, report = run
    kept = {d.name: d.macs for d in plan.layers if not d.convert}
    assert set(kept) == {"conv1"}  # the stem stays a convolution, the classifier is a Linear
    fc = 512 * 10
    # Independent of ConversionReport's own count: the CNN multiplies once per conv MAC and per fc MAC.
    assert report["multiplications"] == {"cnn": plan.total_macs + fc, "adder": kept["conv1"] + fc}
    assert kept["conv1"] == 64 * 8 * 8 * 3 * 7 * 7
    assert report["additions"]["cnn"] == plan.total_macs + fc + 10
    assert report["additions"]["adder"] == 2 * plan.converted_macs + kept["conv1"] + fc + 10
    for label in ("cnn", "adder"):
        assert report["energy_pj"][label] == pytest.approx(
            3.7 * report["multiplications"][label] + 0.9 * report["additions"][label]
        )
    assert report["energy_ratio"] == pytest.approx(report["energy_pj"]["cnn"] / report["energy_pj"]["adder"])
    assert report["energy_ratio"] > 1
    assert report["batchnorm"]["cnn"] == {"multiplications": 0, "additions": 0}
    assert report["batchnorm"]["adder"]["multiplications"] > 0
    assert sum(r["macs"] for r in report["layers"] if r["kind"] == "adder") == plan.converted_macs
    assert (
        report["parameters"]["adder"]
        == report["parameters"]["cnn"]
        == sum(p.numel() for p in build_model("resnet18", 10).parameters())
    )
    assert report["onnx_file_bytes"]["adder"] > 0 and report["onnx_file_bytes"]["cnn"] > 0
    assert [(r["provider"], r["batch"]) for r in report["latency_ms"]][:2] == [
        ("CPUExecutionProvider", 1),
        ("CPUExecutionProvider", 4),
    ]
    assert all(r["cnn_ms"] > 0 and r["adder_ms"] > 0 for r in report["latency_ms"])
    accuracy = {"cnn_top1": 88.97, "adder_top1": 88.27, "onnx_top1": 88.26}
    assert {k: v for k, v in report["accuracy"].items() if v is not None} == accuracy  # no zero-step, INT8
    assert [r["test_top1"] for r in report["curves"]["cnn"]] == [87.1, 88.97]
    assert report["notes"] == []
    text = html_path.read_text()
    assert f"{report['multiplications']['adder']:,}" in text and "88.27 %" in text
    assert text.count('src="data:image/png;base64,') == 3
    assert "http://" not in text and "https://" not in text  # self-contained


def test_a_run_without_onnx_files_is_reported_without_exporting(run, tmp_path, monkeypatch):
    """The main job's --no-export: operations and energy from the checkpoints, no latency, and a note that says
    how to measure it; nothing exported."""
    out = tmp_path / "run"
    shutil.copytree(run[0], out, ignore=shutil.ignore_patterns("*.onnx", "report.*"))
    summary = json.loads((out / "summary.json").read_text())
    (out / "summary.json").write_text(json.dumps({**summary, "onnx_path": None, "onnx_top1": None}))
    monkeypatch.setattr("adderconvert.app.report.run_report.export_onnx", None)  # called: a TypeError
    report = json.loads(write_report(out, measure_latency=False)[1].read_text())
    assert report["multiplications"] == run[3]["multiplications"] and report["energy_ratio"] == run[3]["energy_ratio"]
    assert report["latency_ms"] == [] and report["onnx_file_bytes"]["adder"] is None
    assert any("latency not measured" in note and "adderconvert report" in note for note in report["notes"])


def test_missing_pieces_read_na(tmp_path):
    (tmp_path / "summary.json").write_text(json.dumps({"model": "resnet18", "cnn_top1": 90.0}))
    html_path, json_path = write_report(tmp_path, latency_budget_s=0.1)
    report = json.loads(json_path.read_text())
    assert report["multiplications"] == {"cnn": None, "adder": None}
    assert report["energy_ratio"] is None and report["latency_ms"] == []
    assert report["accuracy"]["adder_top1"] is None and report["curves"] == {"cnn": [], "adder": []}
    assert any("no adder checkpoint" in n for n in report["notes"])
    assert "n/a" in html_path.read_text()
    (tmp_path / "best.pt").write_bytes(b"damaged")
    report = json.loads(write_report(tmp_path, latency_budget_s=0.1)[1].read_text())
    assert any("could not rebuild the model from best.pt" in n for n in report["notes"])
    with pytest.raises(FileNotFoundError, match="run folder not found"):
        write_report(tmp_path / "nowhere")


# Tiny dense runs: (model, image size, metric, the parts of its layers).
_DENSE = {
    "lraspp_mobilenet_v3_large": (32, "miou", {"backbone", "head"}),
    "ssdlite320_mobilenet_v3_large": (64, "map", {"backbone", "neck", "head"}),
}


@pytest.mark.parametrize(  # the latency exports both models: 55 s, 63 s
    ("model_name", "measure_latency"),
    [("lraspp_mobilenet_v3_large", False), pytest.param("ssdlite320_mobilenet_v3_large", True, marks=pytest.mark.slow)],
)
def test_a_dense_run_is_reported_per_part_with_its_metric(tmp_path, model_name, measure_latency):
    """A segmentation or detection run folder (the model converted untrained at a small size, its summary as the
    main job writes it): the costs split into backbone, neck and head, adding up to the totals, and the task's
    metric where a classifier's run shows top-1; the latency where measured (a detector's in test-all)."""
    size, metric, parts = _DENSE[model_name]
    torch.manual_seed(0)
    model = build(model_name, 11, size).eval()
    x = torch.randn(2, 3, size, size)
    plan = plan_conversion(model, x)
    swap_layers(model, x, report=plan)
    meta = CheckpointMeta(model_name, 11, dataset="fashion-mnist", image_size=size, conversion=plan.to_dict())
    save_checkpoint(tmp_path / "best.pt", {"meta": meta, "model": model.eval().state_dict()})
    task = "segmentation" if metric == "miou" else "detection"
    summary = {"model": model_name, "dataset": "fashion-mnist", "task": task, "metric": metric}
    summary |= {f"cnn_{metric}": 41.5, f"adder_{metric}": 40.25, f"onnx_{metric}": 40.5, f"int8_{metric}": 39.75}
    summary["int8_agreement"] = 98.5 if task == "segmentation" else None
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"model": model_name, "batch_size": 2}))
    with open(tmp_path / "metrics.csv", "w") as f:
        f.write(f"epoch,lr,train_loss,test_{metric},seconds,images_per_second\n1,0.01,0.5,40.25,3.0,10.0\n")
    html_path, json_path = write_report(tmp_path, latency_budget_s=0.1, measure_latency=measure_latency)
    report = json.loads(json_path.read_text())
    assert report["task"] == task and report["metric"] == metric
    assert set(report["parts"]) == parts
    for label in ("cnn", "adder"):
        for key in ("multiplications", "additions"):
            assert sum(part[label][key] for part in report["parts"].values()) == report[key][label], (label, key)
        assert sum(p[label]["energy_pj"] for p in report["parts"].values()) == pytest.approx(report["energy_pj"][label])
    part = part_of(model_name)
    backbone = sum(r["macs"] for r in report["layers"] if r["kind"] == "adder" and part(r["name"]) == "backbone")
    # the backbone's adder layers: two additions per MAC, no multiplication
    assert report["parts"]["backbone"]["adder"]["multiplications"] == (
        report["parts"]["backbone"]["cnn"]["multiplications"] - backbone
    )
    assert report["accuracy"] == {
        f"{stage}_{metric}": summary.get(f"{stage}_{metric}") for stage in ("cnn", "zero_step", "adder", "onnx", "int8")
    } | {"int8_agreement": summary["int8_agreement"]}
    assert [r[f"test_{metric}"] for r in report["curves"]["adder"]] == [40.25]
    if measure_latency:
        assert report["latency_ms"] and all(r["cnn_ms"] > 0 and r["adder_ms"] > 0 for r in report["latency_ms"])
    text = html_path.read_text()
    name = {"miou": "mIoU", "map": "mAP"}[metric]
    assert f"Accuracy (test {name})" in text and "39.75 %" in text and "Per part (backbone, neck, head)" in text
    assert "top-1" not in text


CHROMIUM = shutil.which("chromium")
_CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# Counts the images the browser decoded (naturalWidth > 0) into the DOM that --dump-dom prints.
_PROBE = (
    "<script>window.addEventListener('load', () => document.body.setAttribute('data-images-loaded', "
    "[...document.images].filter(i => i.complete && i.naturalWidth > 0).length));</script>"
)


def _chromium(tmp_path, *args):
    profile = tmp_path / "profile"
    return subprocess.run(
        [CHROMIUM, *_CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )


@pytest.mark.slow  # Chromium: the full tier
@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (apt-get install chromium)")
def test_report_renders_in_chromium(run, tmp_path):
    import matplotlib.image

    _, _, html_path, report = run
    screenshot = tmp_path / "report.png"
    _chromium(tmp_path, f"--screenshot={screenshot}", "--window-size=1200,1600", html_path.as_uri())
    pixels = matplotlib.image.imread(screenshot)[..., :3]
    assert pixels.shape[:2] == (1600, 1200)
    not_white = (pixels < 0.9).any(-1).mean()
    assert 0.02 < not_white < 0.9  # text, tables and plots on a white page
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50  # coloured plots, not just black text
    probed = tmp_path / "probed.html"
    probed.write_text(html_path.read_text().replace("</body>", _PROBE + "</body>"))
    dom = _chromium(tmp_path, "--dump-dom", "--virtual-time-budget=10000", probed.as_uri()).stdout
    assert 'data-images-loaded="3"' in dom
    for number in (report["multiplications"]["cnn"], report["multiplications"]["adder"]):
        assert f"{number:,}" in dom
    assert f"{report['energy_ratio']:,.2f}x" in dom
    assert "88.97 %" in dom


def test_the_report_finds_an_int8_model_that_export_wrote_and_notes_a_missing_one(tmp_path):
    """Issue 34, 8: `export --int8` writes MODEL_adder_int8.onnx into the run folder after the run: the report
    measures it; a summary.json that names an INT8 file the folder lacks gets a note."""
    from adderconvert.app.report.run_report import _find_model

    (tmp_path / "resnet18_adder.onnx").write_bytes(b"fp32")
    (tmp_path / "resnet18_adder_int8.onnx").write_bytes(b"int8")
    notes = []
    assert _find_model(tmp_path, {}, "int8_path", "*_adder_int8.onnx", notes).name == "resnet18_adder_int8.onnx"
    assert _find_model(tmp_path, {}, "onnx_path", "*_adder.onnx", notes).name == "resnet18_adder.onnx"
    assert notes == []
    (tmp_path / "resnet18_adder_int8.onnx").unlink()
    assert (
        _find_model(tmp_path, {"int8_path": "resnet18_adder_int8.onnx"}, "int8_path", "*_adder_int8.onnx", notes)
        is None
    )
    assert notes == ["summary.json names resnet18_adder_int8.onnx, which is not in the run folder"]


@pytest.mark.parametrize(
    "names, expected",
    [
        ({"meta": "lraspp_mobilenet_v3_large"}, ("segmentation", "miou")),
        ({"config": "ssdlite320_mobilenet_v3_large"}, ("detection", "map")),
        ({"config": "a_model_of_another_version", "column": "test_miou"}, ("segmentation", "miou")),
    ],
)
def test_a_dense_run_without_summary_keeps_its_metric(tmp_path, monkeypatch, names, expected):
    """A run stopped during fine-tuning has no summary.json: its task and metric are its model's (the checkpoint's,
    else config.yaml's), else those of its metrics.csv's test_ column; not a classifier's top-1."""
    import adderconvert.app.report.run_report as run_report

    meta = {"model_name": names["meta"]} if "meta" in names else {}
    monkeypatch.setattr(run_report, "_load_models", lambda run_dir, notes: (None, None, meta))
    if "config" in names:
        (tmp_path / "config.yaml").write_text(yaml.safe_dump({"model": names["config"], "batch_size": 2}))
    column = names.get("column", f"test_{expected[1]}")
    (tmp_path / "metrics.csv").write_text(f"epoch,lr,train_loss,{column},seconds\n1,0.01,0.5,12.5,3.0\n")
    html_path, json_path = write_report(tmp_path, latency_budget_s=0.1)
    report = json.loads(json_path.read_text())
    assert (report["task"], report["metric"]) == expected
    assert [row[column] for row in report["curves"]["adder"]] == [12.5]
    assert f"Accuracy (test {'mIoU' if expected[1] == 'miou' else 'mAP'})" in html_path.read_text()


@pytest.mark.parametrize("model", ["official_resnet20", "a_model_of_another_version"])
def test_a_run_of_a_model_the_registry_does_not_know_is_reported(tmp_path, model):
    """A run folder whose model this version's registry does not name (import-official's, another torchvision's):
    `adderconvert report` writes its report, what it cannot rebuild reading n/a with a note."""
    from click.testing import CliRunner

    from adderconvert.app.cli import main
    from adderconvert.app.outputs import mark_run

    mark_run(tmp_path, model, "train")
    (tmp_path / "summary.json").write_text(json.dumps({"model": model, "dataset": "cifar10", "cnn_top1": 91.5}))
    meta = CheckpointMeta(model, 10, stage="adder", dataset="cifar10", image_size=32)
    save_checkpoint(tmp_path / "best.pt", {"meta": meta, "model": {}})
    result = CliRunner().invoke(main, ["report", str(tmp_path)])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "report.json").read_text())
    assert (report["task"], report["metric"], report["parts"]) == ("classification", "top1", None)
    assert report["multiplications"] == {"cnn": None, "adder": None}
    assert any("could not rebuild the model from best.pt" in note for note in report["notes"]), report["notes"]
    assert "91.50 %" in (tmp_path / "report.html").read_text()


@pytest.mark.parametrize("metric, row", [("top1", "(% of images)"), ("miou", "(% of pixels)"), ("map", None)])
def test_the_int8_agreement_row_names_what_it_counts(tmp_path, metric, row):
    """The share of images (pixels) on which the INT8 model's class is the FP32 model's; a detector has none."""
    task = {"top1": "classification", "miou": "segmentation", "map": "detection"}[metric]
    summary = {"model": "m", "task": task, "metric": metric, f"int8_{metric}": 40.0, "int8_agreement": 97.25}
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    text = write_report(tmp_path, latency_budget_s=0.1)[0].read_text()
    assert "FP32 model's class" not in text and 'AdderNet INT8 (ONNX Runtime)</td><td class="num">40.00 %' in text
    if row is None:
        assert "same class as FP32" not in text and "97.25" not in text
    else:
        assert f'INT8: same class as FP32 {row}</td><td class="num">97.25 %' in text

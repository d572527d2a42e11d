"""benchmarks/dense.py: the whole benchmark on tiny scenes (a segmentation and a detection model, one thread), the
teacher cache, the detection parity count and the refused models."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch
import torchvision

_BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(_BENCHMARKS))
_spec = importlib.util.spec_from_file_location("dense", _BENCHMARKS / "dense.py")
dense = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(dense)

SEGMENTER, DETECTOR = "lraspp_mobilenet_v3_large", "ssdlite320_mobilenet_v3_large"
# 128 train scenes: the fine-tuning's batch is the main job's, 128. At 32 px the few teacher steps leave no detection
# above the 0.3, so parity compares those above 0.05: some thousands.
TINY = ["--image-size", "32", "--scenes", "128", "16", "--teacher-epochs", "1", "--steps", "2", "--threads", "1"]
PARITY_SCORE = 0.05


def _run(tmp: Path, *extra: str) -> int:
    options = ["--models", SEGMENTER, DETECTOR, "--output", str(tmp / "out"), "--teachers", str(tmp / "teachers")]
    return dense.main([*TINY, *options, "--parity-score", str(PARITY_SCORE), *extra])


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dense")
    threads = torch.get_num_threads()
    try:
        assert _run(tmp, "--table", str(tmp / "table.md")) == 0
    finally:
        torch.set_num_threads(threads)  # --threads 1 set it for the process
    return tmp, json.loads((tmp / "out" / "results.json").read_text())


@pytest.mark.slow
def test_results_hold_every_field_in_range(run):
    tmp, results = run
    assert results["machine"].endswith("CPU, 1 thread") and results["threads"] == 1
    assert (results["image_size"], results["scenes"], results["parity_score"]) == (32, {"train": 128, "test": 16}, 0.05)
    assert (results["exclude"], results["bases"]) == ([], None)  # the main job's conversion
    rows = {row["model"]: row for row in results["rows"]}
    assert list(rows) == [SEGMENTER, DETECTOR]
    for row, task, metrics, size in (
        (rows[SEGMENTER], "segmentation", ("miou", "pixel_accuracy"), 224),
        (rows[DETECTOR], "detection", ("map", "map_50"), 320),
    ):
        assert (row["task"], row["metric"], row["cnn_epochs"], row["deployment_size"]) == (task, metrics[0], 1, size)
        for stage in ("cnn", "zero_step", "adder", "onnx"):
            assert all(0.0 <= row[f"{stage}_{m}"] <= 100.0 for m in metrics), (stage, row)
        metric = metrics[0]
        assert row["zero_step_share"] == pytest.approx(row[f"zero_step_{metric}"] / row[f"cnn_{metric}"])
        assert len(row["adder_by_epoch"]) == 1 and row["diverged"] is None
        # The last epoch's figure (fit's evaluation) and the export's PyTorch pass score the same model.
        assert row["adder_by_epoch"][-1] == pytest.approx(row[f"adder_{metric}"], abs=1.0)
        assert row["gap"] == pytest.approx(row[f"cnn_{metric}"] - row[f"adder_{metric}"])
        assert 0.5 < row["converted_macs_share"] <= 1.0 and 0.5 < row[f"converted_macs_share_{size}"] <= 1.0
        assert all(row[k] > 0 for k in ("cnn_seconds", "convert_seconds", "adder_seconds", "export_seconds"))
        assert (tmp / "out" / row["onnx_path"]).is_file() and (tmp / "out" / f"{row['model']}.pt").is_file()
    table = (tmp / "table.md").read_text()
    assert table == (tmp / "out" / "table.md").read_text() and results["machine"] in table
    assert f"| {SEGMENTER} | mIoU | 1 |" in table and f"| {DETECTOR} | mAP / mAP@.5 | 1 |" in table


@pytest.mark.slow
def test_onnx_runtime_matches_pytorch(run):
    rows = {row["model"]: row for row in run[1]["rows"]}
    segmenter, detector = rows[SEGMENTER], rows[DETECTOR]
    assert segmenter["parity_count"] == 16 * 32 * 32 and segmenter["parity"] >= 0.999
    # An untrained detector's near-equal scores: a detection in a thousand may differ by float32 rounding (the next
    # test checks that ONNX Runtime is as near PyTorch's float64 model as PyTorch's float32 one is).
    assert detector["parity_count"] > 100 and detector["parity"] >= 0.999
    assert detector["parity_ties"] <= 0.01 * detector["parity_count"]
    assert detector["onnx_map"] == pytest.approx(detector["adder_map"], abs=0.01)
    # Without ONNX Runtime's layout optimizations too, of the same PyTorch pixels and detections.
    assert segmenter["parity_no_layout"] >= 0.999 and detector["parity_no_layout"] >= 0.997
    assert "float64_parity" not in detector  # only --parity-of measures against float64


@pytest.mark.slow
def test_the_parity_of_a_finished_run_is_measured_again_against_float64(run, capsys):
    tmp, results = run
    assert dense.main(["--parity-of", str(tmp / "out"), "--threads", "1"]) == 0
    again = {row["model"]: row for row in json.loads((tmp / "out" / "parity.json").read_text())}
    for row in results["rows"]:
        measured = again[row["model"]]
        for key in ("parity", "parity_no_layout", "parity_count", "parity_ties", "onnx_map", "adder_map"):
            if key in row:
                assert measured[key] == pytest.approx(row[key]), key  # the same model, scenes and sessions
        for key in ("float64_parity_torch", "float64_parity", "float64_parity_no_layout"):
            assert 0.99 <= measured[key] <= 1.0, (row["model"], key)
        # ONNX Runtime is as near the float64 model as PyTorch's float32 model is (or within a detection or pixel in a
        # thousand of it): what differs between ONNX Runtime and PyTorch is float32 rounding
        assert measured["float64_parity"] >= min(measured["float64_parity_torch"], 0.999), row["model"]
        assert measured["onnx_run_seconds"] > 0 and measured["onnx_run_seconds_no_layout"] > 0
    printed = capsys.readouterr().out
    assert f"{DETECTOR}: parity {100 * again[DETECTOR]['parity']:.2f}%" in printed
    assert dense.main(["--parity-of", str(tmp / "teachers")]) == 2
    assert "has no results.json" in capsys.readouterr().err


@pytest.mark.slow
def test_the_teacher_is_cached_and_a_second_run_reuses_it(run, monkeypatch, capsys):
    tmp, results = run
    cached = sorted(p.name for p in (tmp / "teachers").iterdir())
    assert len(cached) == 2 and all(name.endswith(".pt") for name in cached)  # no .partial folder left
    assert {name.rsplit("-", 1)[0] for name in cached} == {SEGMENTER, DETECTOR}
    written = {p: p.stat().st_mtime_ns for p in (tmp / "teachers").iterdir()}

    def train(*args, **kwargs):
        raise AssertionError("the teacher was trained again")

    monkeypatch.setattr(dense.recipes, "fit", train)
    threads = torch.get_num_threads()
    try:
        assert _run(tmp, "--teachers-only") == 0
    finally:
        torch.set_num_threads(threads)
    assert {p: p.stat().st_mtime_ns for p in (tmp / "teachers").iterdir()} == written
    rows = {row["model"]: row for row in results["rows"]}
    printed = capsys.readouterr().out
    assert f"{SEGMENTER}: CNN mIoU {rows[SEGMENTER]['cnn_miou']:.2f}%" in printed
    assert f"{DETECTOR}: CNN mAP {rows[DETECTOR]['cnn_map']:.2f}%" in printed


def test_the_teacher_key_holds_the_scene_counts():
    budget = dense.BUDGETS["cpu"]
    config = dense.recipes._teacher_config(SEGMENTER, budget, 5000)
    key = dense.recipes.teacher_key(SEGMENTER, budget, config, train_scenes=5000, test_scenes=500)
    assert dense.recipes.teacher_key(SEGMENTER, budget, config, train_scenes=5000, test_scenes=500) == key
    assert dense.recipes.teacher_key(SEGMENTER, budget, config, train_scenes=4000, test_scenes=500) != key
    # Without data the key is the classifiers' own: the teachers recipes.py cached keep their names.
    assert dense.recipes.teacher_key(SEGMENTER, budget, config) != key


def test_matched_detections_counts_what_onnx_runtime_finds_again():
    boxes = torch.tensor([[0.0, 0, 10, 10], [20, 20, 30, 30], [5, 5, 9, 9]])
    expected = [{"boxes": boxes, "scores": torch.tensor([0.9, 0.5, 0.1]), "labels": torch.tensor([1, 2, 3])}]
    assert dense.matched_detections(expected, expected) == (2, 2, 0)  # the one below 0.3 is not compared
    for change in ({"labels": torch.tensor([1, 3, 3])}, {"scores": torch.tensor([0.9, 0.501, 0.1])}):
        assert dense.matched_detections(expected, [expected[0] | change]) == (1, 2, 0)
    assert dense.matched_detections(expected, [expected[0] | {"boxes": boxes + 1}]) == (0, 2, 0)
    empty = {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.long)}
    assert dense.matched_detections(expected, [empty]) == (0, 2, 0)
    clipped = [{"boxes": torch.tensor([[0.0, 0, 0, 10]]), "scores": torch.tensor([0.9]), "labels": torch.tensor([1])}]
    assert dense.matched_detections(clipped, clipped) == (1, 1, 0)  # a box of no area: no IoU, same corners


def test_an_nms_tie_counts_as_found_and_is_counted():
    """PyTorch keeps box A, ONNX Runtime box B of the same label: their scores differ by less than the tolerance and
    their IoU (0.9) is above the NMS threshold, so each would suppress the other."""
    one, other = torch.tensor([[0.0, 0, 10, 10]]), torch.tensor([[0.0, 0, 10, 9]])  # IoU 0.9
    torch_side = [{"boxes": one, "scores": torch.tensor([0.50001]), "labels": torch.tensor([1])}]
    ort_side = [{"boxes": other, "scores": torch.tensor([0.50002]), "labels": torch.tensor([1])}]
    assert dense.matched_detections(torch_side, ort_side, nms_iou=0.55) == (1, 1, 1)
    assert dense.matched_detections(torch_side, ort_side, nms_iou=0.95) == (0, 1, 0)  # they would both survive
    far = [ort_side[0] | {"scores": torch.tensor([0.5003])}]  # outside the score tolerance: not a tie
    assert dense.matched_detections(torch_side, far, nms_iou=0.55) == (0, 1, 0)
    relabelled = [ort_side[0] | {"labels": torch.tensor([2])}]
    assert dense.matched_detections(torch_side, relabelled, nms_iou=0.55) == (0, 1, 0)
    # the box both sides keep is matched first, so it is not taken as the tie of another
    both = [
        {"boxes": torch.cat([one, other]), "scores": torch.tensor([0.50001, 0.50002]), "labels": torch.tensor([1, 1])}
    ]
    assert dense.matched_detections(both, [both[0]], nms_iou=0.55) == (2, 2, 0)


def test_the_parity_cell_names_the_ties():
    row = {"task": "detection", "parity": 1.0, "parity_count": 1204, "parity_ties": 2}
    assert dense._parity_cell(row, 0.3) == "100.00% of 1,204 detections (2 NMS ties)"
    assert dense._parity_cell(row | {"parity_ties": 0}, 0.3) == "100.00% of 1,204 detections"
    assert dense._parity_cell(row | {"parity": None}, 0.3) == "n/a (no detection above 0.3)"


def test_nms_threshold_is_the_detectors_own():
    ssd = torchvision.models.get_model(DETECTOR, weights=None, weights_backbone=None, num_classes=3)
    rcnn = torchvision.models.get_model("fasterrcnn_mobilenet_v3_large_320_fpn", weights=None, weights_backbone=None)
    assert dense.nms_threshold(ssd) == ssd.nms_thresh == 0.55
    assert dense.nms_threshold(rcnn) == rcnn.roi_heads.nms_thresh == 0.5


@pytest.mark.parametrize(
    ("model", "message"),
    [("resnet18", "resnet18 is a classifier"), ("no_such_model", "unknown model 'no_such_model'")],
)
def test_a_classifier_or_an_unknown_model_is_an_error(model, message, capsys, tmp_path):
    assert dense.main(["--models", model, "--output", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err
    assert error.startswith("Error: ") and message in error
    assert not (tmp_path / "out").exists()


def test_the_cpu_budget_takes_at_most_128_px(capsys, tmp_path):
    assert dense.main(["--budget", "cpu", "--image-size", "160", "--output", str(tmp_path / "out")]) == 2
    assert "Error: --image-size 160: the cpu budget takes at most 128 px" in capsys.readouterr().err

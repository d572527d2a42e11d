"""benchmarks/recipe_matrix.py: the matrix's rows and each family's verdict against issue 32's goals."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "recipe_matrix.py"
_spec = importlib.util.spec_from_file_location("recipe_matrix", _PATH)
recipe_matrix = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("recipe_matrix", recipe_matrix)
_spec.loader.exec_module(recipe_matrix)


def _row(model: str, cnn: float, zero: float, adder: float, share_224: float, diverged=None) -> dict:
    return {
        "model": model,
        "cnn_top1": cnn,
        "cnn_epochs": 8,
        "cnn_seconds": 100.0,
        "zero_step_top1": zero,
        "bases": 1,
        "converted_macs_share": share_224,
        "converted_macs_share_224": share_224,
        "adder_top1_by_epoch": [adder],
        "adder_top1": adder,
        "adder_seconds": 50.0,
        "gap": cnn - adder,
        "diverged": diverged,
    }


def _write(path: Path, rows: list[dict], overrides: dict | None = None, bases: int | None = None) -> Path:
    payload = {"machine": "test CPU, 1 thread", "overrides": overrides or {}, "conversion": {"bases": bases}}
    path.write_text(json.dumps({**payload, "rows": rows}))
    return path


def _verdicts(table: str) -> dict[str, str]:
    summary = table.split("| family | runs |")[1].splitlines()[2:]
    rows = (line.split("|") for line in summary if line.startswith("|"))
    return {cells[1].strip(): cells[-2].strip() for cells in rows}


def test_each_family_is_held_against_every_goal(tmp_path):
    files = [
        _write(tmp_path / "a.json", [_row("resnet18", 92.0, 90.0, 91.2, 0.93)]),
        _write(tmp_path / "b.json", [_row("resnet18", 92.0, 90.0, 90.9, 0.93)], {"seed": 1}),
        _write(tmp_path / "c.json", [_row("mobilenet_v3_small", 91.0, 81.0, 90.5, 0.86)], bases=4),
        _write(tmp_path / "d.json", [_row("regnet_y_400mf", 90.0, 89.0, 89.5, 0.87)]),  # no depthwise: 90% floor
        _write(tmp_path / "e.json", [_row("vgg11_bn", 90.0, 89.0, 89.9, 0.99, diverged="loss nan")]),
    ]
    table = recipe_matrix.matrix_table(recipe_matrix.read_runs(files))
    verdicts = _verdicts(table)
    assert verdicts["resnet18"] == "1 of 2 runs more than 1.0 pt short"
    assert verdicts["mobilenet_v3_small"] == "zero steps under 90%"  # 81 / 91 = 89%; 86% passes the mobile floor
    assert verdicts["regnet_y_400mf"] == "under 90% of the MACs converted"
    assert verdicts["vgg11_bn"] == "diverged"
    resnet = next(line for line in table.splitlines() if line.startswith("| resnet18 | 2 |"))
    assert "+0.80 / +1.10" in resnet and "+0.95" in resnet  # the gaps and their mean
    assert "| seed=1 |" in table and "| bases=4 |" in table and "| defaults |" in table


def test_a_file_that_is_not_a_results_file_is_named(tmp_path):
    bad = tmp_path / "table.json"
    bad.write_text("[1, 2]")
    with pytest.raises(SystemExit, match="table.json: not a benchmarks/recipes.py results file"):
        recipe_matrix.read_runs([bad])
    with pytest.raises(SystemExit, match="no finished row"):
        recipe_matrix.main([str(_write(tmp_path / "empty.json", []))])

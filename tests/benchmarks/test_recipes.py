"""benchmarks/recipes.py: the recipe it fine-tunes with, the calibration images, the zero-step table."""

import dataclasses
import importlib.util
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from adderconvert.app.config import RunConfig
from adderconvert.app.pipeline import adder_train_config
from adderconvert.architectures.cnn import build_model
from adderconvert.checkpoint import load, read_meta
from adderconvert.conversion import plan_conversion, swap_layers
from adderconvert.train import MANY_BASES_LR, TrainConfig
from adderconvert.train.dense import DETECTION, SEGMENTATION
from adderconvert.train.loop import CLASSIFICATION

_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "recipes.py"
_spec = importlib.util.spec_from_file_location("recipes", _PATH)
recipes = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("recipes", recipes)  # its dataclasses look their module up there
_spec.loader.exec_module(recipes)


def test_fine_tunes_with_the_main_jobs_configuration():
    budget = recipes.BUDGETS["cpu"]
    config = recipes.fine_tune_config(budget, {})
    main_job = adder_train_config(RunConfig(max_steps=budget.steps), CLASSIFICATION, 1)
    assert dataclasses.replace(config, progress=True, log=True) == main_job
    assert config.batch_size == TrainConfig.batch_size and config.lr == TrainConfig.lr
    assert recipes.fine_tune_config(budget, {"kd_alpha": 0.9}).kd_alpha == 0.9
    assert budget.epochs is None and config.epochs == 1  # the CLI's epochs where the budget leaves them
    assert recipes.fine_tune_config(dataclasses.replace(budget, epochs=2), {}).epochs == 2
    assert recipes.fine_tune_config(budget, {}, CLASSIFICATION, 3).lr == MANY_BASES_LR < config.lr  # the main job's
    dense = recipes.fine_tune_config(budget, {}, SEGMENTATION)  # benchmarks/dense.py's: the task's batch
    assert dense.batch_size == SEGMENTATION.batch_size < config.batch_size
    assert dense.adder_lr_scale == SEGMENTATION.adder_lr_scale > config.adder_lr_scale == TrainConfig.adder_lr_scale
    detection = recipes.fine_tune_config(budget, {}, DETECTION, bases=4)
    assert (detection.adder_lr_scale, detection.lr) == (DETECTION.adder_lr_scale, DETECTION.lr)


def test_set_may_change_the_batch_but_not_the_budgets_length():
    assert recipes.parse_overrides(["batch_size=64", "kd_alpha=0.5"]) == {"batch_size": 64, "kd_alpha": 0.5}
    assert recipes.fine_tune_config(recipes.BUDGETS["cpu"], {"batch_size": 64}).batch_size == 64
    for item in ("epochs=2", "max_steps=5", "batch_size=sixty"):
        with pytest.raises(SystemExit):
            recipes.parse_overrides([item])


def test_converted_share_at_the_deployment_size_counts_squeeze_excitation_at_224_px():
    model = build_model("mobilenet_v3_large", 10).eval()
    report = plan_conversion(model, torch.randn(2, 3, 32, 32))
    at_32 = report.converted_macs / report.total_macs
    at_224 = recipes.converted_share_at("mobilenet_v3_large", 10, report)
    assert 0.9 < at_224 <= 1.0 and 0.9 < at_32 <= 1.0
    kept_se = plan_conversion(model, torch.randn(2, 3, 32, 32), exclude=["*.fc1", "*.fc2"])
    # Squeeze-excitation convs (on pooled vectors) weigh far more at 32 px than at 224 px.
    drop_32 = at_32 - kept_se.converted_macs / kept_se.total_macs
    drop_224 = at_224 - recipes.converted_share_at("mobilenet_v3_large", 10, kept_se)
    assert drop_32 > 0.2 and drop_224 < 0.02, (drop_32, drop_224)


def test_the_teacher_cache_is_keyed_by_the_teachers_recipe_alone():
    budget = recipes.BUDGETS["cpu"]
    config = recipes._teacher_config("resnet18", budget, 60000)
    key = recipes.teacher_key("resnet18", budget, config)
    # A fine-tuning default changes nothing; the teacher's own recipe does.
    assert recipes.teacher_key("resnet18", budget, dataclasses.replace(config, eta=99.0, kd_alpha=0.1)) == key
    assert recipes.teacher_key("resnet18", budget, dataclasses.replace(config, epochs=config.epochs + 1)) != key
    assert recipes.teacher_key("resnet18", dataclasses.replace(budget, image_size=64), config) != key


def test_zero_step_table():
    budget = dataclasses.replace(recipes.BUDGETS["cpu"], steps=0)
    row = {
        "model": "resnet18",
        "cnn_top1": 80.0,
        "cnn_seconds": 10.0,
        "zero_step_top1": 60.0,
        "converted_macs_share": 0.9,
        "adder_top1": 60.0,
        "gap": 20.0,
        "adder_seconds": 0.0,
        "mean_weight_std": 1.0,
        "max_weight_std": 2.0,
        "saturated_fraction": 1.0,
        "diverged": None,
    }
    table = recipes.markdown_table([row], "cpu", budget, "a CPU", {}, {"init": "sign", "keep_mac_budget": 0.05})
    assert "No fine-tuning step" in table and "keep_mac_budget 0.05" in table
    assert "| resnet18 | 1 | 80.00% | 60.00% (75%) | 90% / n/a | 0 | 60.00% | +20.00 |" in table
    row["converted_macs_share_224"], row["cnn_epochs"] = 0.85, 8
    assert "| resnet18 | 8 | 80.00% | 60.00% (75%) | 90% / 85% |" in recipes.markdown_table(
        [row], "cpu", budget, "a CPU", {}, {"init": "sign"}
    )
    assert "of no steps" in table
    main_job = (
        "(1; 2 with grouped or depthwise convs, 4 where the plan converts depthwise convs or a stem past the keep "
        "ceiling)."
    )
    assert f"reconstruct none, bases the main job's {main_job}" in table
    assert "at 224 px, stem kept, keep_mac_budget" in table
    conversion = {"init": "sign", "keep_mac_budget": 0.0, "reconstruct": "signs", "inside": True, "bases": 3}
    table = recipes.markdown_table([row], "cpu", budget, "a CPU", {}, {**conversion, "keep_stem": False})
    assert "reconstruct signs (inside), bases 3." in table and "stem converted" in table


def test_saved_student_and_cnn_are_checkpoints_that_load_back(tmp_path):
    splits = SimpleNamespace(
        num_classes=10, image_size=32, classes=[str(i) for i in range(10)], mean=[0.5] * 3, std=[0.25] * 3
    )
    torch.manual_seed(0)
    student = build_model("resnet18", 10).eval()
    images = torch.randn(4, 3, 32, 32)
    cnn = recipes.save_model(student, None, splits, "resnet18", tmp_path / "resnet18_cnn.pt")
    assert read_meta(cnn).stage == "teacher" and read_meta(cnn).conversion is None
    with torch.no_grad():
        torch.testing.assert_close(load(cnn)(images), student(images), rtol=0, atol=0)
    report = plan_conversion(student, images)
    swap_layers(student, None, init="sign", report=report)
    path = recipes.save_model(student, report, splits, "resnet18", tmp_path / "resnet18.pt")
    meta = read_meta(path)
    assert (meta.model_name, meta.stage, meta.dataset, meta.image_size) == ("resnet18", "adder", "fashion-mnist", 32)
    with torch.no_grad():
        torch.testing.assert_close(load(path)(images), student(images), rtol=0, atol=0)


def test_fine_tuning_table_names_the_distillation_settings():
    row = {
        "model": "resnet18", "cnn_top1": 80.0, "cnn_seconds": 10.0, "zero_step_top1": 60.0,
        "converted_macs_share": 0.9, "adder_top1": 79.0, "gap": 1.0, "adder_seconds": 5.0,
        "mean_weight_std": 1.0, "max_weight_std": 2.0, "saturated_fraction": 1.0, "diverged": False,
    }  # fmt: skip
    table = recipes.markdown_table([row], "cpu", recipes.BUDGETS["cpu"], "a CPU", {"kd_temperature": 3.0})
    assert "Recipe: kd_temperature=3.0 (" in table and "kd_temperature 3.0," in table
    assert f"kd_alpha {recipes.TrainConfig().kd_alpha}," in table


def test_convert_student_takes_the_excluded_convs_and_the_bases(monkeypatch):
    seen = []

    class Stop(Exception):
        pass

    def convert_trained(teacher, splits, config, *args, **kwargs):
        seen.append(config)
        raise Stop

    monkeypatch.setattr(recipes, "convert_trained", convert_trained)
    with pytest.raises(Stop):
        recipes.convert_student("m", None, None, None, None, {"exclude": ["head.*"], "bases": 2})
    with pytest.raises(Stop):
        recipes.convert_student("m", None, None, None, None, {})
    assert [(config.exclude, config.bases) for config in seen] == [(["head.*"], 2), ([], None)]

"""The option schema: the same checks for YAML files, flags and Python."""

from dataclasses import fields

import pytest
import torch

from adderconvert.app.config import RESOLVED_BY_RUN, ConfigError, RunConfig, validate_config
from adderconvert.train import TrainConfig


def test_defaults_and_conversions():
    config = validate_config({"lr": 1, "include": "layer4.*", "device": "cuda:1"})
    assert isinstance(config, RunConfig) and config.lr == 1.0 and isinstance(config.lr, float)
    assert config.include == ["layer4.*"] and config.device == "cuda:1" and config.device != RunConfig.device


@pytest.mark.parametrize(
    "values, key, message",
    [
        ({"epochs": "abc"}, "epochs", "must be an integer"),
        ({"epochs": True}, "epochs", "must be an integer"),
        ({"epochs": 0}, "epochs", ">= 1"),
        ({"lr": 0}, "lr", "> 0"),
        ({"kd": "no"}, "kd", "true or false"),
        ({"image_size": 3}, "image_size", ">= 16"),
        ({"image_size": 4096}, "image_size", "<= 1024"),
        ({"dataset": "mnist"}, "dataset", "must be one of"),
        ({"reconstruct": "weights"}, "reconstruct", "must be one of"),
        ({"device": "gpu"}, "device", "auto, cpu, cuda or cuda:N"),
        ({"exclude": [1]}, "exclude", "wildcard"),
        ({"model": None}, "model", "required"),
        ({"epochz": 1}, "epochz", "unknown option"),
        ({"lr": float("nan")}, "lr", "finite"),
        ({"eta": float("inf")}, "eta", "finite"),
        ({"feature_kd": float("inf")}, "feature_kd", "finite"),
        ({"max_drop": float("nan")}, "max_drop", "finite"),
        ({"seed": -1}, "seed", ">= 0"),
        ({"seed": 99999999999999999999}, "seed", "<= 4294967295"),
        ({"int8": True, "export": False}, "int8", "cannot go with export false"),
        ({"calibration_method": "entropy"}, "calibration_method", "must be one of"),
        ({"init": "fresh", "reconstruct": "signs"}, "reconstruct", "pass none"),
        ({"keep": "bogus"}, "keep", "must be one or more of depthwise, squeeze_excitation"),
        ({"keep": ["none", "depthwise"]}, "keep", "goes alone"),
    ],
)
def test_bad_values_name_their_key(values, key, message):
    with pytest.raises(ConfigError, match=message) as info:
        validate_config(values)
    assert info.value.key == key


def test_not_a_mapping():
    with pytest.raises(ConfigError, match="mapping"):
        validate_config(["epochs", 3])


def test_one_value_per_default():
    """The main job's options that are TrainConfig's take TrainConfig's defaults: the recipe is written once (the
    batch size is the model's task's and the lr follows the bases: test_the_batch_size_is_the_tasks_unless_given,
    test_the_default_lr_follows_the_bases)."""
    shared = {f.name for f in fields(RunConfig)} & {f.name for f in fields(TrainConfig)} - {"batch_size", "lr"}
    assert {"epochs", "eta", "warmup_steps", "kd", "feature_kd", "seed"} <= shared
    for name in shared:
        assert getattr(RunConfig, name) == getattr(TrainConfig, name), name


def test_cli_help_reads_the_defaults():
    from click.testing import CliRunner

    from adderconvert.app.cli import main

    text = " ".join(CliRunner().invoke(main, ["convert", "--help"], terminal_width=400).output.split())
    for flag, value in (("--eta", RunConfig.eta), ("--epochs", RunConfig.epochs)):
        assert f"[{value}]" in text.split(flag, 1)[1].split("--", 1)[0], flag
    lr = "[0.002; 0.001 where the adder layers have three or more bases, except detection models']"
    assert lr in text.split("--lr", 1)[1].split("--", 1)[0]
    bases = (
        "[1; classifiers with grouped or depthwise convs 2, 4 where the plan converts depthwise convs or a stem past "
        "the keep ceiling; segmentation and detection 2, detectors with depthwise convs 4]"
    )
    assert bases in text.split("--bases", 1)[1].split("--", 1)[0]
    ceiling = "[0.15; detection models 1: every conv of those kinds kept]"
    assert ceiling in text.split("--keep-ceiling FLOAT", 1)[1].split(" --bases", 1)[0]


def test_another_init_runs_without_reconstruction_and_says_so():
    assert validate_config({"init": "fresh"}).reconstruct == "none"
    assert validate_config({}).reconstruct == RunConfig.reconstruct


def test_the_batch_size_is_the_tasks_unless_given():
    """Classifiers 128, segmentation and detection models their own smaller batch, whoever builds the RunConfig (the
    CLI, a YAML file or a Python caller of the pipeline); a batch given wins."""
    from adderconvert.app.pipeline import adder_train_config, batch_size_of
    from adderconvert.train.dense import DETECTION, SEGMENTATION
    from adderconvert.train.loop import CLASSIFICATION

    assert validate_config({"model": "resnet18"}).batch_size is RunConfig.batch_size is None
    assert CLASSIFICATION.batch_size == TrainConfig.batch_size == 128
    assert SEGMENTATION.batch_size == DETECTION.batch_size < CLASSIFICATION.batch_size
    for task in (CLASSIFICATION, SEGMENTATION, DETECTION):
        assert batch_size_of(RunConfig(), task) == task.batch_size
        assert batch_size_of(RunConfig(batch_size=64), task) == 64
        assert adder_train_config(RunConfig(), task, 1).batch_size == task.batch_size
    assert validate_config({"model": "ssdlite320_mobilenet_v3_large", "batch_size": 64}).batch_size == 64


def test_keep_none_converts_every_kind():
    assert validate_config({"keep": "none"}).keep == []
    assert validate_config({}).keep == ["depthwise", "squeeze_excitation"]


def test_default_bases_follow_the_convs_and_the_plan():
    """A classifier with grouped convs (depthwise ones included) gets the conversion's GROUPED_BASES (2), one with
    dense convs only 1, and one whose plan converts depthwise convs (MobileNetV3-Small: its kept kinds exceed the keep
    ceiling) CEILING_BASES (4), as the library's convert does (default_bases); segmentation and detection
    models 2 whatever their convs; --bases wins. Every model fine-tunes one epoch unless told."""
    from torchvision.models import mobilenet_v3_large, mobilenet_v3_small, regnet_y_400mf, resnet18, shufflenet_v2_x0_5

    from adderconvert.app.pipeline import _bases_note, _rules, adder_train_config, bases_of
    from adderconvert.conversion import CEILING_BASES, GROUPED_BASES, default_bases, plan_conversion
    from adderconvert.train.dense import DETECTION, SEGMENTATION
    from adderconvert.train.loop import CLASSIFICATION

    assert validate_config({}).bases is RunConfig.bases is None and "bases" in RESOLVED_BY_RUN
    example = torch.randn(2, 3, 32, 32)
    models = {build.__name__: build(num_classes=10).eval() for build in (mobilenet_v3_small, mobilenet_v3_large)}
    models |= {build.__name__: build(num_classes=10).eval() for build in (regnet_y_400mf, resnet18, shufflenet_v2_x0_5)}
    plans = {
        name: plan_conversion(model, example, **_rules(RunConfig(), CLASSIFICATION)) for name, model in models.items()
    }
    depthwise = {name: sum(d.depthwise for d in plan.converted) for name, plan in plans.items()}
    assert depthwise["mobilenet_v3_small"] > 0 and depthwise["mobilenet_v3_large"] == depthwise["resnet18"] == 0

    def bases(name, task=CLASSIFICATION, config=None):
        return bases_of(config or RunConfig(), task, models[name], plans[name])

    small = models["mobilenet_v3_small"]
    assert bases("mobilenet_v3_small") == default_bases(small, plans["mobilenet_v3_small"]) == 4
    assert CEILING_BASES == 4 and default_bases(small) == GROUPED_BASES == 2  # no plan: the convs alone
    assert bases("mobilenet_v3_large") == bases("regnet_y_400mf") == 2  # RegNet's grouped convs are not depthwise
    assert bases("resnet18") == 1
    # ShuffleNet-V2 x0.5's stem alone passes the keep ceiling: converted, it gives the network four bases too.
    shufflenet = plans["shufflenet_v2_x0_5"]
    assert shufflenet.layers[0].stem_over_ceiling and bases("shufflenet_v2_x0_5") == CEILING_BASES
    shuffle_config = RunConfig(model="shufflenet_v2_x0_5")
    note = _bases_note(shuffle_config, CLASSIFICATION, models["shufflenet_v2_x0_5"], shufflenet, 4)
    assert "where the plan converts the stem (alone past the keep ceiling) of shufflenet_v2_x0_5" in note
    assert bases("resnet18", SEGMENTATION) == bases("mobilenet_v3_small", SEGMENTATION) == 2
    # a detector with depthwise convs (SSDlite, Faster R-CNN on MobileNetV3) four, another two
    assert bases("resnet18", DETECTION) == 2 and bases("mobilenet_v3_small", DETECTION) == CEILING_BASES
    assert bases("mobilenet_v3_small", SEGMENTATION, RunConfig(bases=3)) == 3
    assert bases("mobilenet_v3_small", CLASSIFICATION, RunConfig(bases=1)) == 1
    assert RunConfig.epochs == TrainConfig.epochs == 1 and validate_config({}).epochs == 1
    for task in (CLASSIFICATION, SEGMENTATION, DETECTION):
        assert adder_train_config(RunConfig(), task, 2).epochs == 1
    assert adder_train_config(RunConfig(epochs=3), CLASSIFICATION, 2).epochs == 3


def test_the_keep_ceiling_is_the_tasks_unless_given():
    """Detection models keep every conv of the kept kinds (no ceiling); the others 15% of the MACs; --keep-ceiling
    wins. The run writes the value it used to config.yaml."""
    from adderconvert.app.pipeline import keep_ceiling_of
    from adderconvert.conversion import DEFAULT_KEEP_CEILING
    from adderconvert.train.dense import DETECTION, SEGMENTATION
    from adderconvert.train.loop import CLASSIFICATION

    assert validate_config({}).keep_ceiling is RunConfig.keep_ceiling is None and "keep_ceiling" in RESOLVED_BY_RUN
    assert keep_ceiling_of(RunConfig(), CLASSIFICATION) == keep_ceiling_of(RunConfig(), SEGMENTATION)
    assert keep_ceiling_of(RunConfig(), SEGMENTATION) == DEFAULT_KEEP_CEILING == 0.15
    assert keep_ceiling_of(RunConfig(), DETECTION) == 1.0
    assert (
        keep_ceiling_of(RunConfig(keep_ceiling=0.3), DETECTION)
        == keep_ceiling_of(RunConfig(keep_ceiling=0.3), CLASSIFICATION)
        == 0.3
    )
    with pytest.raises(ConfigError, match="keep_ceiling"):
        validate_config({"keep_ceiling": 1.5})


def test_the_default_lr_follows_the_bases():
    """TrainConfig.lr up to two bases, MANY_BASES_LR (half of it) from three, but TrainConfig.lr for detection
    models whatever their bases (their adder weights take a fiftieth of it); --lr wins."""
    from adderconvert.app.pipeline import adder_train_config, lr_of
    from adderconvert.train import MANY_BASES_LR
    from adderconvert.train.dense import DETECTION, SEGMENTATION
    from adderconvert.train.loop import CLASSIFICATION

    assert validate_config({}).lr is RunConfig.lr is None and "lr" in RESOLVED_BY_RUN
    assert lr_of(RunConfig(), 1, CLASSIFICATION) == lr_of(RunConfig(), 2, CLASSIFICATION) == TrainConfig.lr == 0.002
    assert lr_of(RunConfig(), 3, CLASSIFICATION) == lr_of(RunConfig(), 4, SEGMENTATION) == MANY_BASES_LR == 0.001
    assert lr_of(RunConfig(lr=0.01), 3, CLASSIFICATION) == lr_of(RunConfig(lr=0.01), 4, DETECTION) == 0.01
    assert adder_train_config(RunConfig(), DETECTION, 4).lr == TrainConfig.lr
    detection = adder_train_config(RunConfig(), DETECTION, 4)
    assert detection.lr * detection.adder_lr_scale == pytest.approx(0.0001)
    assert adder_train_config(RunConfig(), CLASSIFICATION, 3).lr == MANY_BASES_LR
    assert adder_train_config(RunConfig(lr=0.004), CLASSIFICATION, 3).lr == 0.004
    with pytest.raises(ConfigError, match="lr"):
        validate_config({"lr": 0})
    with pytest.raises(ConfigError, match="bases"):
        validate_config({"bases": 0})

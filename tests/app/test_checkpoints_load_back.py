"""Every checkpoint the tool writes loads back, for every model in `adderconvert list`: the CNN's (teacher)
through ``--weights``, ``--resume`` and ``adderconvert.load``, the adder model's through ``--resume`` and
``adderconvert.load``, at the smallest input each model takes. Nothing is trained: each model is built,
written as a run writes it (CheckpointSaver: last.pt, best.pt) and read back, and the model read back must
compute what the one written computed."""

import copy
import gc
import json
import shutil
from dataclasses import asdict, replace

import pytest
import torch
from torch.utils.data import TensorDataset

import adderconvert
from adderconvert.app.weights import load_weights
from adderconvert.architectures.cnn import build_model, list_cnn_models
from adderconvert.checkpoint import CheckpointMeta, load_state_dict
from adderconvert.conversion import plan_conversion, swap_layers
from adderconvert.train import TrainConfig, build_optimizer, fit
from adderconvert.train.saver import CheckpointSaver, rng_state
from tests._families import one_per_family

_SIZES = (16, 32, 48, 64, 96, 128, 160, 192, 224, 299)  # --image-size takes 16 and more


def _smallest_input(model) -> int:
    model.eval()
    for size in _SIZES:
        try:
            with torch.no_grad():
                model(torch.zeros(1, 3, size, size))
            return size
        except (RuntimeError, ValueError):
            continue
    raise AssertionError(f"{type(model).__name__} takes none of {_SIZES}")


def _write_run_checkpoint(folder, model, meta: CheckpointMeta, config: TrainConfig) -> None:
    """last.pt and best.pt as :func:`fit` writes them after epoch 1 of 1."""
    optimizer, scheduler = build_optimizer(model, config, total_steps=1)
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": rng_state(),
        "epoch": 0,
        "best_top1": 0.0,
    }
    CheckpointSaver(folder, replace(meta, recipe=asdict(config))).save(state, [], is_best=True)


def _resumed(model, path, data, config: TrainConfig):
    """``model`` with the weights ``--resume path`` restores (the run is finished: nothing is trained)."""
    history = fit(model, data, data, config, resume=path)
    assert history == []
    return model


def _logits(model, x):
    with torch.no_grad():
        return model.eval()(x)


def _blank(model):
    """``model`` with every parameter zeroed, to load into: weights that were not loaded show in its logits.
    (Cheaper than building the model again, which the largest models of the list make costly.)"""
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    return model


# The fast tier loads back the small representatives; the large ones write gigabytes (the full tier).
_FAST = one_per_family(exclude=("alexnet", "vgg", "wide_resnet", "resnext", "efficientnet_v2", "inception", "convnext"))


@pytest.mark.parametrize(
    "name", [n if n in _FAST else pytest.param(n, marks=pytest.mark.slow) for n in list_cnn_models()]
)
def test_every_models_checkpoints_load_back(name, tmp_path):
    torch.manual_seed(0)
    cnn = build_model(name, 10)
    size = _smallest_input(cnn)
    x = torch.rand(2, 3, size, size)
    data = TensorDataset(x, torch.tensor([0, 1]))
    config = TrainConfig(epochs=1, batch_size=2, kd=False, progress=False, log=False)
    meta = CheckpointMeta(model_name=name, num_classes=10, stage="teacher", dataset="fashion-mnist", image_size=size)
    try:
        # The CNN (teacher/last.pt, best.pt).
        report = plan_conversion(cnn, x)
        expected = _logits(cnn, x)
        _write_run_checkpoint(tmp_path / "teacher", cnn, meta, config)
        load_weights(_blank(cnn), name, str(tmp_path / "teacher" / "best.pt"))  # --weights teacher/best.pt
        torch.testing.assert_close(_logits(cnn, x), expected)
        resumed = _resumed(_blank(cnn), tmp_path / "teacher" / "last.pt", data, config)
        torch.testing.assert_close(_logits(resumed, x), expected)
        del cnn, resumed
        gc.collect()
        student = adderconvert.load(tmp_path / "teacher" / "best.pt")
        torch.testing.assert_close(_logits(student, x), expected)

        # The adder model (last.pt, best.pt), converted from the teacher as the run converts it.
        swap_layers(student, None, init="fresh", report=report)
        expected = _logits(student, x)
        _write_run_checkpoint(tmp_path, student, replace(meta, stage="adder", conversion=report.to_dict()), config)
        resumed = _resumed(_blank(student), tmp_path / "last.pt", data, config)
        torch.testing.assert_close(_logits(resumed, x), expected)
        del student, resumed
        gc.collect()
        torch.testing.assert_close(_logits(adderconvert.load(tmp_path / "best.pt"), x), expected)
    finally:
        shutil.rmtree(tmp_path, ignore_errors=True)  # the largest models write gigabytes


def test_a_state_dict_that_lost_its_module_versions_still_loads():
    """torchvision's MNASNet checks the version saved with its state dict; a filtered copy has none."""
    torch.manual_seed(0)
    source = build_model("mnasnet0_5", 10)
    stripped = {k: v.clone() for k, v in source.state_dict().items()}  # a plain dict: no _metadata
    target = build_model("mnasnet0_5", 10)
    with pytest.raises(ValueError, match="version should be set to 1 or 2"):
        copy.deepcopy(target).load_state_dict(stripped)  # torch's own loading refuses it
    load_state_dict(target, stripped)
    x = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(_logits(target, x), _logits(source, x))


@pytest.mark.slow
def test_a_mnasnet_teacher_is_taken_as_weights(tmp_path):
    """Why 10: teacher/best.pt of a mnasnet0_5 --no-finetune run was refused as --weights ("version should be
    set to 1 or 2 instead of None")."""
    from click.testing import CliRunner

    from adderconvert.app.cli import main
    from tests.app.test_cli import _fake_fashion_mnist

    data = _fake_fashion_mnist(tmp_path)
    args = ["mnasnet0_5", "--data", str(data), "--image-size", "32", "--batch-size", "16", "--max-steps", "3"]
    args += ["--eval-max-batches", "1", "--no-finetune", "--no-export", "--quiet"]
    first = CliRunner().invoke(
        main, [*args, "--weights", "none", "--pretrain-epochs", "1", "--output", str(tmp_path / "a")]
    )
    assert first.exit_code == 0, first.output
    teacher = tmp_path / "a" / "teacher" / "best.pt"
    second = CliRunner().invoke(
        main, [*args, "--weights", str(teacher), "--pretrain-epochs", "0", "--output", str(tmp_path / "b")]
    )
    assert second.exit_code == 0, second.output
    summary = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert summary["cnn_top1"] == json.loads((tmp_path / "a" / "summary.json").read_text())["cnn_top1"]

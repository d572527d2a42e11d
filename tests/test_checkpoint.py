"""The checkpoint format: atomic writes with the user's umask, stale temporaries, reading format 1 and 2,
clear errors for foreign or corrupt files, and rebuilding the model."""

import os
from pathlib import Path

import pytest
import torch
import torchvision

import adderconvert
from adderconvert.checkpoint import (
    CheckpointError,
    CheckpointMeta,
    check_compatible,
    load_checkpoint,
    read_meta,
    remove_stale_temporaries,
    save_checkpoint,
    write_atomic,
)
from adderconvert.conversion import plan_conversion, swap_layers
from adderconvert.nn import AdderConv2d

DATA = Path(__file__).parent / "data"
META = CheckpointMeta(model_name="resnet18", num_classes=10, stage="adder", dataset="fashion-mnist", image_size=32)


def test_writes_are_atomic_and_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        path = save_checkpoint(tmp_path / "c.pt", {"meta": META, "model": {"w": torch.ones(2)}})
    finally:
        os.umask(old)
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]
    assert (path.stat().st_mode & 0o777) == 0o644  # not mkstemp's 0600
    payload = load_checkpoint(path)
    assert payload["meta"] == META and torch.equal(payload["model"]["w"], torch.ones(2))


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "f.bin"
    write_atomic(path, lambda f: f.write(b"old"))

    def crash(f):
        f.write(b"half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_atomic(path, crash)
    assert path.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["f.bin"]


def test_stale_temporaries_of_a_killed_write_are_removed(tmp_path):
    (tmp_path / ".last.pt.abc123.tmp").write_bytes(b"partial")  # what SIGKILL during a save leaves
    (tmp_path / "last.pt").write_bytes(b"kept")
    removed = remove_stale_temporaries(tmp_path)
    assert [p.name for p in removed] == [".last.pt.abc123.tmp"]
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_foreign_and_corrupt_files_get_clear_errors(tmp_path):
    torch.save({"format": 2, "meta": {}, "evil": object()}, tmp_path / "objects.pt")
    with pytest.raises(CheckpointError, match="Python objects other than tensors") as info:
        load_checkpoint(tmp_path / "objects.pt")
    assert "weights_only" not in str(info.value)  # never suggests unsafe loading
    (tmp_path / "corrupt.pt").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(CheckpointError, match="not a readable PyTorch file"):
        load_checkpoint(tmp_path / "corrupt.pt")
    for text in ("epoch,lr,train_loss\n1,0.1,0.5\n", "a run's notes\n", "\u00e9t\u00e9"):  # pickle opcodes first
        (tmp_path / "metrics.csv").write_text(text)
        with pytest.raises(CheckpointError, match="not a"):
            load_checkpoint(tmp_path / "metrics.csv")
    official = Path(__file__).parent / "data" / "ResNet20-AdderNet.pth"
    with pytest.raises(CheckpointError, match="import-official"):
        load_checkpoint(official)
    torch.save({"conv1.weight": torch.ones(1)}, tmp_path / "state_dict.pt")
    with pytest.raises(CheckpointError, match="not an adderconvert checkpoint"):
        load_checkpoint(tmp_path / "state_dict.pt")
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")


def test_check_compatible_names_both_sides():
    teacher = CheckpointMeta(model_name="resnet18", num_classes=10, stage="teacher")
    check_compatible(teacher, "t.pt", stage="teacher", model_name="resnet18", num_classes=10)
    with pytest.raises(CheckpointError, match=r"resnet18 CNN .* needs stage 'adder'"):
        check_compatible(teacher, "t.pt", stage="adder")
    with pytest.raises(CheckpointError, match="needs model 'resnet34'"):
        check_compatible(teacher, "t.pt", model_name="resnet34")


def test_load_rebuilds_the_converted_model(tmp_path):
    model = torchvision.models.resnet18(num_classes=10)
    x = torch.randn(2, 3, 32, 32)
    report = plan_conversion(model, x, exclude=["layer4.*"])
    swap_layers(model, x, report=report)
    model.eval()
    meta = CheckpointMeta(model_name="resnet18", num_classes=10, conversion=report.to_dict())
    save_checkpoint(tmp_path / "m.pt", {"meta": meta, "model": model.state_dict()})
    rebuilt = adderconvert.load(tmp_path / "m.pt")
    assert isinstance(rebuilt.layer1[0].conv1, AdderConv2d)
    assert not isinstance(rebuilt.layer4[0].conv1, AdderConv2d)
    assert not rebuilt.training
    torch.testing.assert_close(rebuilt(x), model(x))


def test_format_1_checkpoints_still_load():
    """A file in the format of adderconvert 0.1 (commit dd055ac): no stage, training config beside meta."""
    path = DATA / "format1_squeezenet1_1.pt"
    meta = read_meta(path)
    assert (meta.model_name, meta.num_classes, meta.stage, meta.image_size) == ("squeezenet1_1", 10, "adder", 64)
    model = adderconvert.load(path)
    stored = torch.load(path, weights_only=True)["model"]
    assert all(torch.equal(v, stored[k]) for k, v in model.state_dict().items())
    adders = [n for n, m in model.named_modules() if isinstance(m, AdderConv2d)]
    assert len(adders) == len(meta.conversion["layers"]) - sum(not d["convert"] for d in meta.conversion["layers"])
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 10)

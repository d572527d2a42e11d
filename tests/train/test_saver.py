"""The run folder's last.pt / best.pt / metrics.csv: best is a link, never a second copy, and the CSV is
never ahead of last.pt."""

import os

import pytest
import torch

from adderconvert.checkpoint import CheckpointMeta, load_checkpoint
from adderconvert.train import saver as saver_module
from adderconvert.train.saver import CheckpointSaver

META = CheckpointMeta(model_name="resnet18", num_classes=4, stage="adder")


def _record(epoch, top1):
    return {"epoch": epoch, "lr": 0.1, "train_loss": 1.0, "train_top1": 50.0, "test_top1": top1}


def test_best_is_a_hard_link_that_keeps_the_best_epoch(tmp_path):
    saver = CheckpointSaver(tmp_path, META)
    history = [_record(1, 60.0)]
    saver.save({"model": {"w": torch.tensor([1.0])}, "epoch": 0}, history, is_best=True)
    assert os.path.samefile(saver.best, saver.last)  # one file on disk, not two
    history.append(_record(2, 40.0))
    saver.save({"model": {"w": torch.tensor([2.0])}, "epoch": 1}, history, is_best=False)
    assert not os.path.samefile(saver.best, saver.last)
    assert load_checkpoint(saver.best)["model"]["w"].item() == 1.0
    assert load_checkpoint(saver.last)["model"]["w"].item() == 2.0
    lines = (tmp_path / "metrics.csv").read_text().splitlines()
    assert lines[0] == "epoch,lr,train_loss,train_top1,test_top1" and len(lines) == 3


def test_csv_is_never_ahead_of_last(tmp_path, monkeypatch):
    saver = CheckpointSaver(tmp_path, META)
    saver.save({"model": {}, "epoch": 0}, [_record(1, 60.0)], is_best=True)

    def killed(path, payload):
        raise KeyboardInterrupt  # the process dies while writing last.pt

    monkeypatch.setattr(saver_module, "save_checkpoint", killed)
    with pytest.raises(KeyboardInterrupt):
        saver.save({"model": {}, "epoch": 1}, [_record(1, 60.0), _record(2, 70.0)], is_best=True)
    assert len((tmp_path / "metrics.csv").read_text().splitlines()) == 2  # header + epoch 1, as last.pt
    assert load_checkpoint(saver.last)["epoch"] == 0


def test_a_new_saver_removes_stale_temporaries(tmp_path):
    (tmp_path / ".last.pt.x1.tmp").write_bytes(b"partial")
    CheckpointSaver(tmp_path, META)
    assert list(tmp_path.iterdir()) == []

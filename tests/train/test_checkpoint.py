"""Checkpoints: atomic writes, weights_only loading, exact resume, rebuilding the model."""

import pytest
import torch
import torchvision

import adderconvert
from adderconvert.conversion import convert, plan_conversion
from adderconvert.nn import AdderConv2d
from adderconvert.train import TrainConfig, fit, load_checkpoint, save_checkpoint
from adderconvert.train import loop as train_loop
from tests.train._tiny import tiny_data, tiny_model

CONFIG = TrainConfig(epochs=2, batch_size=16, lr=0.05, kd=False, progress=False)


def test_resume_continues_exactly(tmp_path, monkeypatch):
    straight = tiny_model()
    fit(straight, tiny_data(flip=True), tiny_data(16, seed=2), CONFIG, output=tmp_path / "a")

    # Stop the second run right after its first checkpoint, as a crash would.
    real_save = train_loop.save_checkpoint

    def save_then_stop(path, payload):
        real_save(path, payload)
        if path.name == "last.pt":
            raise KeyboardInterrupt

    monkeypatch.setattr(train_loop, "save_checkpoint", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        fit(tiny_model(), tiny_data(flip=True), tiny_data(16, seed=2), CONFIG, output=tmp_path / "b")
    monkeypatch.setattr(train_loop, "save_checkpoint", real_save)
    assert load_checkpoint(tmp_path / "b" / "last.pt")["epoch"] == 0

    torch.manual_seed(123)  # the resumed run must not depend on the state it starts in
    resumed = tiny_model(seed=7)
    history = fit(
        resumed,
        tiny_data(flip=True),
        tiny_data(16, seed=2),
        CONFIG,
        output=tmp_path / "b",
        resume=tmp_path / "b" / "last.pt",
    )
    assert [r.epoch for r in history] == [1, 2]
    for (name, a), (_, b) in zip(straight.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), name
    lines = (tmp_path / "b" / "metrics.csv").read_text().splitlines()
    assert lines[0].startswith("epoch,lr,train_loss") and len(lines) == 3


def test_checkpoints_are_written_atomically_and_load_weights_only(tmp_path):
    path = save_checkpoint(tmp_path / "c.pt", {"model": {"w": torch.ones(2)}})
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.ones(2))
    torch.save({"format": 1, "evil": object()}, tmp_path / "bad.pt")
    with pytest.raises(Exception, match="[Ww]eights only"):
        load_checkpoint(tmp_path / "bad.pt")
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.pt")


def test_load_rebuilds_the_converted_model(tmp_path):
    model = torchvision.models.resnet18(num_classes=10)
    x = torch.randn(2, 3, 32, 32)
    report = plan_conversion(model, x, exclude=["layer4.*"])
    convert(model, x, report=report)
    model.eval()
    meta = {"model_name": "resnet18", "num_classes": 10, "conversion": report.to_dict()}
    save_checkpoint(tmp_path / "m.pt", {"meta": meta, "model": model.state_dict()})
    rebuilt = adderconvert.load(tmp_path / "m.pt")
    assert isinstance(rebuilt.layer1[0].conv1, AdderConv2d)
    assert not isinstance(rebuilt.layer4[0].conv1, AdderConv2d)
    torch.testing.assert_close(rebuilt(x), model(x))

"""The training loop: schedule, parameter groups, BatchNorm re-estimation, exact resume, refused resumes,
the divergence guard and the per-epoch records."""

import dataclasses
import math

import pytest
import torch
from torch import nn

from adderconvert.checkpoint import CheckpointMeta, load_checkpoint
from adderconvert.nn import AdderConv2d
from adderconvert.train import TrainConfig, TrainingDiverged, build_optimizer, fit, reestimate_batchnorm
from adderconvert.train import saver as saver_module
from adderconvert.train.loop import eta_at
from tests.train._tiny import tiny_data, tiny_model

CONFIG = TrainConfig(epochs=2, batch_size=16, lr=0.05, kd=False, progress=False, log=False)
META = CheckpointMeta(model_name="tiny", num_classes=4, stage="adder")


def test_reestimation_averages_the_batch_statistics():
    bn = nn.BatchNorm2d(3, momentum=0.1)
    bn.running_mean.fill_(100.0)  # stale statistics are discarded
    gen = torch.Generator().manual_seed(0)
    batches = [(torch.randn(4, 3, 5, 5, generator=gen) * (i + 1) + i, None) for i in range(4)]
    model = nn.Sequential(bn).eval()
    reestimate_batchnorm(model, batches, steps=3)
    used = [x for x, _ in batches[:3]]
    expected_mean = torch.stack([x.mean((0, 2, 3)) for x in used]).mean(0)
    expected_var = torch.stack([x.var((0, 2, 3), unbiased=True) for x in used]).mean(0)
    torch.testing.assert_close(bn.running_mean, expected_mean)
    torch.testing.assert_close(bn.running_var, expected_var)
    assert bn.momentum == 0.1 and not model.training  # settings restored


def test_reestimation_leaves_weights_alone():
    model = tiny_model()
    before = {k: v.clone() for k, v in model.state_dict().items() if "running" not in k and "tracked" not in k}
    reestimate_batchnorm(model, [(torch.randn(8, 3, 8, 8), None)], steps=5)
    after = model.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in before.items())


def test_schedule_warms_up_then_decays_by_cosine():
    config = TrainConfig(lr=0.1, warmup_steps=4)
    optimizer, scheduler = build_optimizer(tiny_model(), config, total_steps=14)
    lrs = []
    for _ in range(14):
        lrs.append(scheduler.get_last_lr()[0] / scheduler.base_lrs[0])  # every group the same factor
        optimizer.step()
        scheduler.step()
    expected = [0.25, 0.5, 0.75, 1.0] + [0.5 * (1 + math.cos(math.pi * k / 10)) for k in range(10)]
    assert lrs == pytest.approx(expected)


def test_adder_weights_get_their_own_lr_and_weight_decay():
    model = tiny_model()
    config = TrainConfig(lr=0.1, adder_lr_scale=0.3, weight_decay=5e-4, adder_weight_decay=0.0)
    optimizer, _ = build_optimizer(model, config, total_steps=10)
    groups = {g["name"]: g for g in optimizer.param_groups}
    assert groups["adder"]["params"] == [model[3].weight]
    assert groups["adder"]["lr"] == pytest.approx(0.03) and groups["adder"]["weight_decay"] == 0.0
    assert groups["decay"]["weight_decay"] == 5e-4 and groups["no_decay"]["weight_decay"] == 0.0
    n = sum(len(g["params"]) for g in optimizer.param_groups)
    assert n == len(list(model.parameters()))


def test_the_scales_of_extra_bases_get_no_weight_decay():
    model = nn.Sequential(AdderConv2d(3, 4, 3, bases=2), nn.BatchNorm2d(4))
    optimizer, _ = build_optimizer(model, TrainConfig(weight_decay=5e-4), total_steps=10)
    groups = {g["name"]: [id(p) for p in g["params"]] for g in optimizer.param_groups}
    assert groups["adder"] == [id(model[0].weight)]
    assert {id(model[0].base_scale), id(model[0].base_shift)} <= set(groups["no_decay"])
    assert "decay" not in groups


def test_eta_schedule():
    config = TrainConfig(eta=2.0, eta_final=0.2)
    assert eta_at(config, 0, 100) == pytest.approx(2.0)
    assert eta_at(config, 50, 100) == pytest.approx(1.1)
    assert eta_at(config, 100, 100) == pytest.approx(0.2)
    assert eta_at(TrainConfig(eta=2.0), 70, 100) == 2.0


def test_resume_continues_exactly(tmp_path, monkeypatch):
    straight = tiny_model()
    fit(straight, tiny_data(flip=True), tiny_data(16, seed=2), CONFIG, output=tmp_path / "a", meta=META)

    # Stop the second run right after its first checkpoint, as a crash would.
    real_save = saver_module.save_checkpoint

    def save_then_stop(path, payload):
        real_save(path, payload)
        raise KeyboardInterrupt

    monkeypatch.setattr(saver_module, "save_checkpoint", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        fit(tiny_model(), tiny_data(flip=True), tiny_data(16, seed=2), CONFIG, output=tmp_path / "b", meta=META)
    monkeypatch.setattr(saver_module, "save_checkpoint", real_save)
    assert load_checkpoint(tmp_path / "b" / "last.pt")["epoch"] == 0

    torch.manual_seed(123)  # the resumed run must not depend on the state it starts in
    resumed = tiny_model(seed=7)
    history = fit(
        resumed,
        tiny_data(flip=True),
        tiny_data(16, seed=2),
        CONFIG,
        output=tmp_path / "b",
        meta=META,
        resume=tmp_path / "b" / "last.pt",
    )
    assert [r.epoch for r in history] == [1, 2]
    for (name, a), (_, b) in zip(straight.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), name
    lines = (tmp_path / "b" / "metrics.csv").read_text().splitlines()
    assert lines[0].startswith("epoch,lr,train_loss") and len(lines) == 3


def test_resume_with_a_longer_schedule_is_refused(tmp_path):
    fit(tiny_model(), tiny_data(), tiny_data(16, seed=2), CONFIG, output=tmp_path, meta=META)
    longer = TrainConfig(**{**CONFIG.__dict__, "epochs": 3})
    with pytest.raises(ValueError, match="epochs 2 -> 3"):
        fit(
            tiny_model(),
            tiny_data(),
            tiny_data(16, seed=2),
            longer,
            output=tmp_path,
            meta=META,
            resume=tmp_path / "last.pt",
        )


def test_the_adder_weights_settings_bind_only_a_model_with_adder_weights(tmp_path):
    """A CNN teacher trained under other adder-weight defaults (adder_lr_scale, eta) resumes: it has no adder
    weights, so its schedule is the same; an adder model's resume is refused."""
    saved = TrainConfig(**{**CONFIG.__dict__, "max_steps": 2, "adder_lr_scale": 1.0, "eta": 4.0})
    other = TrainConfig(**{**saved.__dict__, "adder_lr_scale": 5.0, "eta": 2.0})

    def cnn() -> nn.Module:
        stem = [m for m in tiny_model() if not isinstance(m, AdderConv2d)][:2]  # the tiny model's conv and norm
        return nn.Sequential(*stem, nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))

    fit(cnn(), tiny_data(), tiny_data(16, seed=2), saved, output=tmp_path / "cnn", meta=META)
    history = fit(cnn(), tiny_data(), tiny_data(16, seed=2), other, output=tmp_path / "cnn", meta=META,
                  resume=tmp_path / "cnn" / "last.pt")  # fmt: skip
    assert [r.epoch for r in history] == [1, 2]
    fit(tiny_model(), tiny_data(), tiny_data(16, seed=2), saved, output=tmp_path / "adder", meta=META)
    with pytest.raises(ValueError, match=r"adder_lr_scale 1.0 -> 5.0; eta 4.0 -> 2.0"):
        fit(tiny_model(), tiny_data(), tiny_data(16, seed=2), other, output=tmp_path / "adder", meta=META,
            resume=tmp_path / "adder" / "last.pt")  # fmt: skip


def test_records_hold_the_lr_of_each_epochs_first_step(tmp_path):
    history = fit(tiny_model(), tiny_data(), tiny_data(16, seed=2), CONFIG)
    assert [r.lr for r in history] == pytest.approx([0.05, 0.05 * 0.5 * (1 + math.cos(math.pi * 4 / 8))])


def test_each_epochs_line_gives_the_lr_of_its_first_and_last_step(capsys):
    """Under a warm-up the first step's lr alone reads like a wrong lr: the line gives where the epoch ended too."""
    fit(tiny_model(), tiny_data(), tiny_data(16, seed=2), dataclasses.replace(CONFIG, log=True))
    out = capsys.readouterr().out

    def at(step: int) -> str:  # the cosine schedule over CONFIG's 8 steps, 4 per epoch
        return f"{0.05 * 0.5 * (1 + math.cos(math.pi * step / 8)):.4g}"

    assert "epoch 1/2: " in out and f"lr {at(0)} -> {at(3)} (" in out and f"lr {at(4)} -> {at(7)} (" in out


def test_per_epoch_lines_are_printed_without_progress_bars(capsys):
    config = TrainConfig(**{**CONFIG.__dict__, "epochs": 1, "log": True})
    fit(tiny_model(), tiny_data(), tiny_data(16, seed=2), config)
    assert "train epoch 1/1: loss" in capsys.readouterr().out


def _cnn_of(model: nn.Module) -> nn.Module:
    """``model`` with its adder layers swapped for convs of the same shape."""
    return nn.Sequential(*(nn.Conv2d(8, 8, 3, padding=1) if isinstance(m, AdderConv2d) else m for m in model))


@pytest.mark.parametrize("adders", [True, False])
def test_divergence_stops_with_advice_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch, adders):
    from adderconvert.train import loop

    real_build = loop.build_optimizer

    def huge_lr_from_epoch_2(model, config, total_steps):
        optimizer, scheduler = real_build(model, config, total_steps)
        scheduler.lr_lambdas[0] = lambda step: 1.0 if step < 4 else math.inf  # epoch 1 (4 steps) trains normally
        return optimizer, scheduler

    monkeypatch.setattr(loop, "build_optimizer", huge_lr_from_epoch_2)
    config = TrainConfig(**{**CONFIG.__dict__, "epochs": 3, "max_steps": 4})
    model = tiny_model() if adders else _cnn_of(tiny_model())
    with pytest.raises(TrainingDiverged) as info:
        fit(model, tiny_data(), tiny_data(16, seed=2), config, output=tmp_path, meta=META)
    message = str(info.value)
    assert "diverged" in message and "epoch 2" in message
    # eta scales adder weights' steps: no advice about it for a CNN, whose lr is the main job's pretrain_lr
    assert ("--eta" in message) == ("--lr" in message) == adders and ("pretrain_lr" in message) != adders
    assert f"last good checkpoint is kept: {tmp_path / 'last.pt'} (epoch 1)" in message
    kept = load_checkpoint(tmp_path / "last.pt")
    assert kept["epoch"] == 0 and all(torch.isfinite(v).all() for v in kept["model"].values() if v.is_floating_point())
    assert len((tmp_path / "metrics.csv").read_text().splitlines()) == 2  # header + the good epoch


def test_chance_accuracy_with_a_good_teacher_counts_as_divergence(tmp_path, monkeypatch):
    from adderconvert.train import loop

    monkeypatch.setattr(loop.CLASSIFICATION, "evaluate", lambda *a, **k: {"top1": 25.0})  # 4 classes: chance
    config = TrainConfig(**{**CONFIG.__dict__, "epochs": 1})
    with pytest.raises(TrainingDiverged, match="chance level"):
        fit(tiny_model(), tiny_data(16 * 50), tiny_data(16, seed=2), config, teacher_top1=90.0)
    fit(tiny_model(), tiny_data(16 * 50), tiny_data(16, seed=2), config, teacher_top1=30.0)  # a weak teacher
    fit(tiny_model(), tiny_data(16 * 4), tiny_data(16, seed=2), config, teacher_top1=90.0)  # 4 steps: no verdict


def test_evaluation_can_be_capped():
    from adderconvert.train import evaluate

    model = tiny_model().eval()
    data = tiny_data(64, seed=3)
    capped = evaluate(model, data, batch_size=16, max_batches=1)
    first = torch.stack([data[i][0] for i in range(16)])
    labels = torch.tensor([data[i][1] for i in range(16)])
    with torch.no_grad():
        assert capped == pytest.approx(100 * float((model(first).argmax(1) == labels).float().mean()))


def test_amp_trains_in_bfloat16_with_float32_adder_layers():
    seen = []
    model = tiny_model()
    model[3].register_forward_hook(lambda m, i, o: seen.append((i[0].dtype, o.dtype)))
    config = TrainConfig(**{**CONFIG.__dict__, "epochs": 1, "amp": True, "max_steps": 2})
    history = fit(model, tiny_data(), tiny_data(16, seed=2), config)
    assert math.isfinite(history[0].train_loss)
    assert (torch.bfloat16, torch.float32) in seen  # the conv before it ran in bf16; the adder op in float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        x = torch.randn(2, 3, 8, 8)
        assert model.eval()(x).dtype == torch.bfloat16  # the Linear head runs in bf16 under autocast

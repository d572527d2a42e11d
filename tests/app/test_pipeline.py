"""The main job's conversion steps."""

from dataclasses import replace

import torch
import torchvision

from adderconvert.app.pipeline import RunConfig, convert_trained
from adderconvert.data import DatasetSplits, TensorImages
from adderconvert.train.distributed import DistributedContext


def test_conversion_does_not_depend_on_or_change_the_callers_random_state():
    # a training split with random flips, as Fashion-MNIST's: the draws must come from the run's seed alone
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (64, 1, 8, 8), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (64,), generator=g)
    train = TensorImages(images, labels, flip=True, size=8)
    splits = DatasetSplits(train, train, [str(i) for i in range(10)], 8)
    torch.manual_seed(0)
    teacher = torchvision.models.resnet18(num_classes=10).eval()
    config = RunConfig(model="resnet18", batch_size=16, reconstruct="none")  # the flips are drawn before it
    ctx = DistributedContext()
    students = []
    for caller_seed in (1, 2):
        torch.manual_seed(caller_seed)
        state = torch.get_rng_state()
        student = convert_trained(teacher, splits, config, ctx, log=False).model
        assert torch.equal(torch.get_rng_state(), state)  # the caller's random state is untouched
        students.append(student.state_dict())
    assert students[0].keys() == students[1].keys()
    for key in students[0]:
        assert torch.equal(students[0][key], students[1][key]), key


def test_dry_run_plans_what_the_run_plans(tmp_path):
    """Issue 34, 2: with a teacher file and --keep-mac-budget the dry run's plan is the run's (same weights, same
    calibration images); a teacher file whose head fits is not trained again (issue 34, 3)."""
    from adderconvert.app.pipeline import _prepare, plan_only
    from adderconvert.data import load_dataset
    from tests.app.test_cli import _fake_fashion_mnist

    data = tmp_path / "fm"
    data.mkdir()
    _fake_fashion_mnist(data)
    torch.manual_seed(3)
    weights = tmp_path / "teacher.pt"
    torch.save(torchvision.models.mobilenet_v3_small(num_classes=10).state_dict(), weights)
    config = RunConfig(
        model="mobilenet_v3_small", data=str(data), weights=str(weights), keep_mac_budget=0.05, reconstruct="none",
        image_size=32, output=str(tmp_path / "run"),
    )  # fmt: skip
    dry, note = plan_only(config)
    resolved, prepared = _prepare(config, world_size=1)
    assert note == prepared.defaults_note  # only why four bases and their lr: the run trains no teacher
    assert prepared.pretrain_epochs == 0
    # Its keep ceiling converts depthwise convs, so it converts with four bases unless told, fine-tunes at their lr,
    # and the run says why.
    assert any(d.depthwise for d in prepared.report.converted)
    converted = sum(d.depthwise for d in prepared.report.converted)
    assert config.bases is None and resolved.bases == 4
    assert f"the default where the plan converts {converted} of the 11 depthwise convs of" in prepared.defaults_note
    assert config.lr is None and resolved.lr == 0.001 and "fine-tuning: lr 0.001" in prepared.defaults_note
    assert "bases: 4\n" in resolved.to_yaml() and "lr: 0.001\n" in resolved.to_yaml()  # what config.yaml records
    assert resolved.epochs == 1 and {d.bases for d in prepared.report.converted} == {4}
    told, told_prepared = _prepare(replace(config, bases=1), world_size=1)
    assert (told.bases, told.lr, told_prepared.defaults_note) == (1, 0.002, "")
    assert {d.bases for d in told_prepared.report.converted} == {1}
    splits = load_dataset("fashion-mnist", str(data), 32)
    run = convert_trained(prepared.teacher, splits, config, DistributedContext(), log=False).report
    assert [(d.name, d.convert, d.rule) for d in dry.layers] == [(d.name, d.convert, d.rule) for d in run.layers]
    assert any("keep_mac_budget" in d.rule for d in run.layers)
    _, note = plan_only(RunConfig(model="mobilenet_v3_small", data=str(data), weights=None, pretrain_epochs=1))
    assert note is not None and "before its 1 epoch(s) of training" in note


def test_a_detector_is_run_only_as_the_conversion_needs(tmp_path):
    """The detector's calibration images go to the conversion as the classifier's do (one tensor): its forwards in
    convert_trained are those of run_conversion on the drawn images, none spent collecting them."""
    from adderconvert.app.pipeline import _rules, draw_calibration_images
    from adderconvert.conversion import run_conversion
    from adderconvert.data_scenes import load_scenes
    from adderconvert.train.dense import DETECTION
    from tests.app.test_cli import _fake_fashion_mnist
    from tests.deploy._dense_models import small_ssd

    _fake_fashion_mnist(tmp_path, n_train=64, n_test=8)
    splits = load_scenes("detection", tmp_path, 32, counts={"train": 200, "test": 1})  # four chunks of 64
    torch.manual_seed(0)
    teacher = small_ssd(32).eval()
    config = RunConfig(model="ssdlite320_mobilenet_v3_large", reconstruct="none")
    forwards = []
    teacher.register_forward_pre_hook(lambda module, args: forwards.append(module is teacher))
    convert_trained(teacher, splits, config, DistributedContext(), log=False)
    run, forwards[:] = sum(forwards), []
    images = draw_calibration_images(splits, config.seed)
    run_conversion(teacher, images, init=config.init, reconstruct_method=None, **_rules(config, DETECTION))
    assert run == sum(forwards) > 0


def test_the_scores_of_a_trained_model_are_fits_of_its_last_epoch():
    """fit() leaves the last epoch's weights, whichever epoch best.pt holds: their scores are that epoch's record's
    (every score of the task), with no second evaluation; a record without them (a resumed run's) is scored again."""
    from adderconvert.app.pipeline import _scores
    from adderconvert.train import EpochRecord

    class Segmentation:
        metric = "miou"

        def evaluate(self, *args, **kwargs):
            return {"miou": 1.0, "pixel_accuracy": 2.0}

    def record(epoch, miou, scores):
        return EpochRecord(epoch, 0.1, 1.0, None, miou, 1.0, 10.0, test_scores=scores)

    best_first = [record(1, 50.0, {"miou": 50.0, "pixel_accuracy": 90.0}), record(2, 40.0, {"miou": 40.0})]
    args = (None, None, DistributedContext(), RunConfig(), "eval", Segmentation())
    assert _scores(best_first, *args) == {"miou": 40.0}
    assert _scores([record(1, 50.0, None)], *args) == {"miou": 1.0, "pixel_accuracy": 2.0}
    assert _scores([], *args) == {"miou": 1.0, "pixel_accuracy": 2.0}

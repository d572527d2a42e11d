"""Resume is a property of the run folder: ``--resume`` continues with the options in the run's
config.yaml, refuses flags that change them (naming both values) and files of another model, stage or
epoch; an interrupt (Ctrl-C or SIGTERM) keeps what was checkpointed and prints a command that continues
it, or leaves no folder when nothing was; config.yaml follows a resume."""

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from adderconvert.app.cli import main
from adderconvert.app.config import RunConfig
from adderconvert.app.resume import ResumeError, resume_command, resumed_options
from adderconvert.checkpoint import CheckpointMeta, save_checkpoint
from adderconvert.train import TrainConfig
from tests.app.test_cli import _fake_fashion_mnist, _input_error

OFFICIAL = Path(__file__).parents[1] / "data" / "ResNet20-AdderNet.pth"


def _tiny(data, out, *extra):
    """A tiny run: the CNN trained 3 steps, the adder model 3 steps, at Fashion-MNIST's own 28px."""
    args = ["resnet18", "--data", str(data), "--weights", "none", "--pretrain-epochs", "1", "--max-steps", "3"]
    return [*args, "--batch-size", "16", "--eval-max-batches", "1", "--no-export", "--quiet", "--output", str(out)]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """(data folder, a finished tiny run folder); tests work on copies of the run."""
    root = tmp_path_factory.mktemp("resume")
    data = _fake_fashion_mnist(root)
    result = CliRunner().invoke(main, _tiny(data, root / "run"))
    assert result.exit_code == 0, result.output
    return data, root / "run"


def _copy(run, tmp_path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(run, out)
    return out


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def offline(monkeypatch):
    """torchvision's weights cannot be fetched (as here): a run that fell back to --weights DEFAULT fails."""
    import torchvision.models._api

    def no_network(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", no_network)


@pytest.mark.slow
def test_bare_resume_continues_with_the_runs_own_options(finished, tmp_path, offline):
    """Why 8: `--resume --output DIR` alone used the defaults (--weights DEFAULT: a download error offline)."""
    _, run = finished
    out = _copy(run, tmp_path)
    checkpoints = {k: v for k, v in _files(out).items() if k.endswith(".pt")}
    result = CliRunner().invoke(main, ["resnet18", "--resume", "--output", str(out)])
    assert result.exit_code == 0, result.output
    assert result.output.count("all 1 epoch(s) already done") == 2, result.output  # the CNN and the adder model
    assert {k: v for k, v in _files(out).items() if k.endswith(".pt")} == checkpoints  # nothing trained again
    assert json.loads((out / "summary.json").read_text())["model"] == "resnet18"


@pytest.mark.slow
@pytest.mark.parametrize(
    "flags, named",
    [
        (["--image-size", "32"], "--image-size 28 -> 32"),  # Why 7; the run used the data set's own 28px
        (["--epochs", "2", "--lr", "0.05"], f"--epochs 1 -> 2, --lr {TrainConfig.lr} -> 0.05"),
        (["--weights", "DEFAULT"], "--weights none -> DEFAULT"),
        (["--no-kd"], "--kd true -> false"),
        (["--pretrain-epochs", "2"], "--pretrain-epochs 1 -> 2"),
    ],
)
def test_resume_refuses_flags_that_change_the_run(finished, tmp_path, flags, named):
    _, run = finished
    out = _copy(run, tmp_path)
    before = _files(out)
    result = CliRunner().invoke(main, ["resnet18", "--resume", "--output", str(out), *flags])
    _input_error(result, named, "config.yaml", "another --output")
    assert _files(out) == before  # data kept


def _unset_run(folder: Path, weights: str | None, num_classes: int | None) -> Path:
    """A run folder started without --pretrain-epochs (config.yaml: null), with a CNN checkpoint of
    ``num_classes`` classes (none when ``None``)."""
    folder.mkdir()
    (folder / "config.yaml").write_text(RunConfig(model="resnet18", weights=weights, pretrain_epochs=None).to_yaml())
    if num_classes is not None:
        (folder / "teacher").mkdir()
        meta = CheckpointMeta(model_name="resnet18", num_classes=num_classes, stage="teacher", image_size=28)
        save_checkpoint(folder / "teacher" / "last.pt", {"meta": meta, "model": {}})
    return folder


def test_resume_compares_what_an_unset_option_came_to(tmp_path):
    """A flag equal in effect to an option the run left unset is no change ("--pretrain-epochs none -> 1"
    refused the default); one that does change it is refused naming the value the run had."""
    resized = _unset_run(tmp_path / "resized", None, 10)  # a head trained from scratch: 1 CNN epoch
    assert resumed_options(resized, "resnet18", {"pretrain_epochs": 1})["pretrain_epochs"] == 1
    assert resumed_options(resized, "resnet18", {"image_size": 28})["image_size"] == 28
    with pytest.raises(ResumeError, match="--pretrain-epochs 1 -> 0"):
        resumed_options(resized, "resnet18", {"pretrain_epochs": 0})
    imagenet = _unset_run(tmp_path / "imagenet", "DEFAULT", 1000)  # torchvision's own head: no CNN epoch
    assert resumed_options(imagenet, "resnet18", {"pretrain_epochs": 0})["pretrain_epochs"] == 0
    with pytest.raises(ResumeError, match="--pretrain-epochs 0 -> 1"):
        resumed_options(imagenet, "resnet18", {"pretrain_epochs": 1})
    finished_without_checkpoints = _unset_run(tmp_path / "summary", "DEFAULT", None)
    (finished_without_checkpoints / "summary.json").write_text(json.dumps({"pretrain_epochs": 0}))
    assert resumed_options(finished_without_checkpoints, "resnet18", {"pretrain_epochs": 0})["pretrain_epochs"] == 0
    unknown = _unset_run(tmp_path / "unknown", None, None)  # nothing recorded says what it came to
    with pytest.raises(ResumeError, match="--pretrain-epochs none -> 1"):
        resumed_options(unknown, "resnet18", {"pretrain_epochs": 1})


@pytest.mark.slow
def test_resume_with_the_default_of_an_unset_option_continues(finished, tmp_path, offline):
    _, run = finished
    out = _copy(run, tmp_path)
    saved = yaml.safe_load((out / "config.yaml").read_text())
    (out / "config.yaml").write_text(yaml.safe_dump({**saved, "pretrain_epochs": None}))  # started without the flag
    before = _files(out)
    result = CliRunner().invoke(main, ["resnet18", "--resume", "--output", str(out), "--pretrain-epochs", "2"])
    _input_error(result, "--pretrain-epochs 1 -> 2")
    assert _files(out) == before
    args = ["resnet18", "--resume", "--output", str(out), "--pretrain-epochs", "1", "--image-size", "28"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert result.output.count("all 1 epoch(s) already done") == 2, result.output


@pytest.mark.slow
def test_resume_refuses_another_model_and_other_files(finished, tmp_path):
    _, run = finished
    out = _copy(run, tmp_path)
    before = _files(out)
    result = CliRunner().invoke(main, ["resnet34", "--resume", "--output", str(out)])
    _input_error(result, "holds a run of resnet18", "not of resnet34")
    # best.pt is the best epoch, not where the run stopped.
    _input_error(CliRunner().invoke(main, ["resnet18", "--resume", str(out / "best.pt")]), "last.pt", "best.pt")
    # teacher/last.pt names the run; a last.pt holding the CNN where the adder model belongs is refused.
    shutil.copy(out / "teacher" / "last.pt", tmp_path / "cnn.pt")
    (out / "last.pt").unlink()
    shutil.copy(tmp_path / "cnn.pt", out / "last.pt")
    before = _files(out)
    _input_error(
        CliRunner().invoke(main, ["resnet18", "--resume", str(out / "last.pt")]), "resnet18 CNN", "stage 'adder'"
    )
    assert _files(out) == before


@pytest.mark.slow
def test_resume_file_of_another_models_run_is_refused(finished, tmp_path):
    """Why 1: `--resume imp/best.pt` trained a ResNet-18 into an imported ResNet-20's folder."""
    data, _ = finished
    imp = tmp_path / "imp"
    result = CliRunner().invoke(main, ["import-official", str(OFFICIAL), "--arch", "resnet20", "--output", str(imp)])
    assert result.exit_code == 0, result.output
    before = _files(imp)
    result = CliRunner().invoke(main, [*_tiny(data, imp)[:-2], "--resume", str(imp / "best.pt")])
    _input_error(result, "--resume", "resnet20 adder model", "model 'resnet18'")
    assert _files(imp) == before  # the imported model is still there, nothing was added


@pytest.mark.slow
def test_config_yaml_follows_a_resume(finished, tmp_path):
    """Why 8: config.yaml could go stale after a resume; it records the options the resume ran with."""
    _, run = finished
    out = _copy(run, tmp_path)
    moved = tmp_path / "moved"
    out.rename(moved)  # a run folder that was moved: its config.yaml names the old place
    result = CliRunner().invoke(main, ["resnet18", "--resume", str(moved / "last.pt"), "--export", "--quiet"])
    assert result.exit_code == 0, result.output
    saved = yaml.safe_load((moved / "config.yaml").read_text())
    assert saved["export"] is True and saved["output"] == str(moved)
    assert saved["resume"] is False and saved["overwrite"] is False  # what to do is not a setting of the run
    assert saved["image_size"] is None and saved["weights"] is None and saved["max_steps"] == 3
    assert (moved / "resnet18_adder.onnx").is_file()


def _interrupted(tmp_path, data, out, block: str, signum: int):
    """Run the tiny job in a process whose ``block`` stage waits, send ``signum`` when it gets there."""
    ready = tmp_path / "ready"
    ready.unlink(missing_ok=True)
    env = {**os.environ, "ADDERCONVERT_BLOCK": block, "ADDERCONVERT_READY": str(ready), "OMP_NUM_THREADS": "1"}
    helper = Path(__file__).parent / "_blocking_cli.py"
    process = subprocess.Popen(
        [sys.executable, str(helper), *_tiny(data, out)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=Path(__file__).parents[2],
    )
    try:
        deadline = time.monotonic() + 240
        while not ready.exists():
            assert process.poll() is None and time.monotonic() < deadline, process.communicate()[0]
            time.sleep(0.2)
        process.send_signal(signum)
        output, _ = process.communicate(timeout=120)
    finally:
        process.kill()
    return process.returncode, output


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupt_before_the_first_checkpoint_leaves_no_folder(finished, tmp_path, signum):
    """Why 8: SIGTERM left a half folder, and the advice to resume was printed for a folder that was gone."""
    data, _ = finished
    out = tmp_path / "run"
    code, output = _interrupted(tmp_path, data, out, "CNN", signum)
    assert code == 1 and "Error: interrupted" in output and "Traceback" not in output, output
    assert "nothing was kept" in output and "--resume" not in output, output
    assert not out.exists()


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupt_prints_a_resume_command_that_works(finished, tmp_path, signum, offline):
    """Why 8: "continue with --resume --output DIR" failed; the command printed now finishes the run."""
    data, _ = finished
    out = tmp_path / "a run"  # a space: the command quotes it
    code, output = _interrupted(tmp_path, data, out, "adder", signum)
    assert code == 1 and "Traceback" not in output, output
    teacher = (out / "teacher" / "last.pt").read_bytes()
    assert not (out / "last.pt").exists()
    command = output.split("continue with: ")[1].splitlines()[0]
    words = shlex.split(command)
    assert words[:2] == ["adderconvert", "resnet18"] and words[-1] == str(out), command
    assert "--quiet" in words  # the interrupted run's own flag (issue 34, 9)
    result = CliRunner().invoke(main, words[1:])
    assert result.exit_code == 0, result.output
    assert "all 1 epoch(s) already done" in result.output  # the CNN's
    assert (out / "teacher" / "last.pt").read_bytes() == teacher and (out / "last.pt").is_file()


def test_the_resume_command_finds_a_run_that_resolved_its_batch_and_bases(tmp_path):
    """The CLI's config leaves the batch and the bases to the run, which writes the values it used to config.yaml:
    the interrupted run is still found as its own (another run's config.yaml is not)."""
    from dataclasses import replace

    config = RunConfig(model="mobilenet_v3_small", output=str(tmp_path / "run"), progress=False)
    assert config.batch_size is None and config.bases is None and config.epochs == 1
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text(replace(config, batch_size=128, bases=3).to_yaml())
    command = resume_command(config)
    assert command == f"adderconvert mobilenet_v3_small --resume --quiet --output {tmp_path / 'run'}", command
    assert resume_command(replace(config, epochs=3)) is None  # given 3, the folder holds a run of 1: not this one
    assert resume_command(replace(config, bases=2)) is None
    assert resume_command(replace(config, lr=0.5)) is None
    (tmp_path / "run" / "config.yaml").write_text("[unclosed")
    assert resume_command(config) is None


def test_resume_reads_the_batch_a_hand_written_config_left_unset(tmp_path):
    """config.yaml with ``batch_size: null`` (the run writes what it resolved; a user may not): the adder checkpoint's
    recipe says what the run trained with, and a flag is compared with that."""
    folder = _unset_run(tmp_path / "run", None, None)
    recipe = {"epochs": 1, "batch_size": 64}
    meta = CheckpointMeta(model_name="resnet18", num_classes=10, stage="adder", image_size=28, recipe=recipe)
    save_checkpoint(folder / "last.pt", {"meta": meta, "model": {}})
    assert resumed_options(folder, "resnet18", {"batch_size": 64})["batch_size"] == 64
    with pytest.raises(ResumeError, match="--epochs 1 -> 3"):
        resumed_options(folder, "resnet18", {"epochs": 3})
    with pytest.raises(ResumeError, match="--batch-size 64 -> 128"):
        resumed_options(folder, "resnet18", {"batch_size": 128})


def test_resume_reads_the_cnn_epochs_the_run_trained(tmp_path):
    """The CNN's epochs a run left unset came to what its teacher checkpoint records; a run with an adder checkpoint
    and no teacher one trained none (its --weights file's head fitted)."""
    trained = _unset_run(tmp_path / "trained", None, None)
    (trained / "teacher").mkdir()
    meta = CheckpointMeta(model_name="resnet18", num_classes=10, stage="teacher", image_size=28, recipe={"epochs": 2})
    save_checkpoint(trained / "teacher" / "last.pt", {"meta": meta, "model": {}})
    assert resumed_options(trained, "resnet18", {"pretrain_epochs": 2})["pretrain_epochs"] == 2
    with pytest.raises(ResumeError, match="--pretrain-epochs 2 -> 1"):
        resumed_options(trained, "resnet18", {"pretrain_epochs": 1})
    fitted = _unset_run(tmp_path / "fitted", "teacher.pt", None)
    adder = CheckpointMeta(model_name="resnet18", num_classes=10, stage="adder", image_size=28)
    save_checkpoint(fitted / "last.pt", {"meta": adder, "model": {}})
    assert resumed_options(fitted, "resnet18", {"pretrain_epochs": 0})["pretrain_epochs"] == 0


def test_a_run_from_before_bases_resumes_with_the_bases_its_checkpoint_holds(tmp_path):
    """A config.yaml without ``bases`` (written before the option) of a segmentation run: the adder checkpoint
    holds one base, whatever today's default for its task; --bases 2 would change the run."""
    folder = tmp_path / "old"
    folder.mkdir()
    text = RunConfig(model="lraspp_mobilenet_v3_large", weights=None, pretrain_epochs=1).to_yaml()
    (folder / "config.yaml").write_text("".join(line for line in text.splitlines(True) if not line.startswith("bases")))
    report = {"model": "LRASPP", "layers": [{"name": "backbone.1.0", "convert": True}]}  # no bases: one
    meta = CheckpointMeta(model_name="lraspp_mobilenet_v3_large", num_classes=11, conversion=report)
    save_checkpoint(folder / "last.pt", {"meta": meta, "model": {}})
    assert resumed_options(folder, "lraspp_mobilenet_v3_large", {})["bases"] == 1
    with pytest.raises(ResumeError, match="--bases 1 -> 2"):
        resumed_options(folder, "lraspp_mobilenet_v3_large", {"bases": 2})

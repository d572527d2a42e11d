"""What the commands write (adderconvert/app/outputs.py's policy), tried as a user would: every case of
issue 18's Why that lost work keeps the data, ends with one ``Error:`` line and exit status 2, and no
command replaces or deletes a file it should not."""

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from onnx import TensorProto, helper

from adderconvert.app import official_run, pipeline
from adderconvert.app.cli import main
from adderconvert.app.outputs import MARKER, REPLACED, ReplacedRun, check_run_folder, clear_run, find_run, run_files
from adderconvert.app.report import write_report
from adderconvert.checkpoint import CheckpointMeta, save_checkpoint
from tests.app.test_cli import _fake_fashion_mnist, _input_error

OFFICIAL = Path(__file__).parents[1] / "data" / "ResNet20-AdderNet.pth"
TINY = ["--weights", "none", "--pretrain-epochs", "1", "--max-steps", "1", "--batch-size", "32"]
TINY += ["--eval-max-batches", "1", "--quiet"]
ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def _digest(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` and a hash of its bytes."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _old_training_run(folder: Path) -> None:
    """The files a resnet18 training run leaves (its checkpoints are real checkpoints of this tool)."""
    (folder / "teacher").mkdir(parents=True)
    meta = CheckpointMeta(model_name="resnet18", num_classes=10, stage="adder", dataset="fashion-mnist", image_size=28)
    for name in ("last.pt", "best.pt", "teacher/last.pt", "teacher/best.pt"):
        save_checkpoint(folder / name, {"meta": meta, "model": {}})
    for name in ("metrics.csv", "teacher/metrics.csv"):
        (folder / name).write_text("epoch,test_top1\n1,50.0\n")
    (folder / "config.yaml").write_text("model: resnet18\n")
    (folder / "summary.json").write_text(json.dumps({"model": "resnet18", "adder_top1": 50.0}))
    (folder / "resnet18_adder.onnx").write_bytes(b"old onnx")
    (folder / "report.html").write_text("old report")
    (folder / MARKER).write_text(json.dumps({"tool": "adderconvert", "model": "resnet18", "command": "train"}))


@pytest.fixture
def data(tmp_path):
    (tmp_path / "fm").mkdir()
    return _fake_fashion_mnist(tmp_path / "fm")


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """Why 4: ``import-official --overwrite`` over a folder that held a resnet18 training run and a file
    of the user's. Returns the folder and the command's result."""
    out = tmp_path_factory.mktemp("imported") / "run"
    _old_training_run(out)
    (out / "notes.txt").write_text("mine")
    result = CliRunner().invoke(main, ["import-official", str(OFFICIAL), "--output", str(out), "--overwrite"])
    return out, result


@pytest.fixture
def run_copy(imported, tmp_path):
    out = tmp_path / "imp"
    shutil.copytree(imported[0], out)
    (out / "notes.txt").unlink()
    return out


def test_import_official_overwrite_replaces_the_old_run(imported):
    """Why 4: no stale last.pt, teacher/, metrics.csv or ONNX beside the new model; the user's file stays."""
    out, result = imported
    assert result.exit_code == 0, result.output
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(
        [MARKER, "best.pt", "notes.txt", "official_resnet20_adder.onnx", "report.html", "report.json", "summary.json"]
    )
    assert (out / "notes.txt").read_text() == "mine"
    report = json.loads((out / "report.json").read_text())
    assert report["model"] == "official_resnet20" and report["curves"] == {"cnn": [], "adder": []}
    assert report["accuracy"]["adder_top1"] is None  # not the old run's 50.0
    assert json.loads((out / "summary.json").read_text())["onnx_path"] == "official_resnet20_adder.onnx"


def test_import_official_refuses_a_run_without_overwrite_and_a_folder_of_other_files(run_copy, tmp_path):
    before = _digest(run_copy)
    _input_error(
        CliRunner().invoke(main, ["import-official", str(OFFICIAL), "--output", str(run_copy)]),
        "already holds a run",
        "--overwrite",
    )
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "config.yaml").write_text("my: own\n")
    for extra in ([], ["--overwrite"]):
        _input_error(
            CliRunner().invoke(main, ["import-official", str(OFFICIAL), "--output", str(foreign), *extra]),
            "folder of other files",
        )
    assert _digest(run_copy) == before and (foreign / "config.yaml").read_text() == "my: own\n"


def test_resume_file_of_another_model_is_refused(run_copy, tmp_path):
    """Why 1: ``--resume imp/best.pt`` must not train a resnet18 into the imported ResNet-20's folder."""
    data = _fake_fashion_mnist(tmp_path)
    before = _digest(run_copy)
    for resume in (["--resume", str(run_copy / "best.pt")], ["--resume", "--output", str(run_copy)]):
        result = CliRunner().invoke(main, ["resnet18", "--data", str(data), *TINY, *resume])
        _input_error(result, "resnet18", "resnet20")  # both models named
    assert _digest(run_copy) == before


def test_a_folder_is_a_run_only_by_evidence(tmp_path):
    folder = tmp_path / "f"
    folder.mkdir()
    (folder / "config.yaml").write_text("model: resnet18\n")
    (folder / "last.pt").write_bytes(b"not a checkpoint")
    assert find_run(folder) is None
    _old_training_run(tmp_path / "run")
    (tmp_path / "run" / MARKER).unlink()
    found = find_run(tmp_path / "run")  # a run of an older version: no marker, but its checkpoints
    assert found is not None and found.model == "resnet18" and found.evidence == "last.pt"


def test_clear_run_removes_only_what_a_run_writes(tmp_path):
    out = tmp_path / "run"
    _old_training_run(out)
    (out / "teacher" / "mine.txt").write_text("x")
    (out / "data").mkdir()
    (out / "data" / "last.pt").write_text("the user's")
    (out / "model.onnx").write_text("an export of the user's")
    (out / "resnet18_adder_v2.onnx").write_text("another export of the user's")
    (out / "resnet18_adder_int8.onnx").write_text("the main job's INT8 model")
    (out / "resnet50_adder.onnx").write_text("not this run's model: its marker names resnet18")
    listed = {p.name for p in run_files(out)}
    assert "resnet18_adder_int8.onnx" in listed and not listed & {"resnet50_adder.onnx", "resnet18_adder_v2.onnx"}
    removed = clear_run(out)
    assert {p.name for p in removed} >= {"last.pt", "best.pt", "metrics.csv", "resnet18_adder.onnx", MARKER}
    assert "resnet18_adder_int8.onnx" in {p.name for p in removed}
    left = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert left == ["data/last.pt", "model.onnx", "resnet18_adder_v2.onnx", "resnet50_adder.onnx", "teacher/mine.txt"]


def test_overwrite_refuses_a_folder_that_only_has_a_config_yaml(data, tmp_path):
    """Why 2: a folder with a file named config.yaml is not a run; --overwrite deletes nothing of it."""
    out = tmp_path / "mine"
    out.mkdir()
    (out / "config.yaml").write_text("my: settings\n")
    (out / "thesis.tex").write_text("years of work")
    before = _digest(out)
    result = CliRunner().invoke(main, ["resnet18", "--data", str(data), *TINY, "--output", str(out), "--overwrite"])
    _input_error(result, "folder of other files")
    assert _digest(out) == before


def test_overwrite_refuses_to_replace_the_weights_file_it_was_given(data, tmp_path):
    """Issue 34, 1: --weights RUN/teacher/best.pt with --output RUN --overwrite would delete the teacher it reads."""
    out = tmp_path / "run"
    _old_training_run(out)
    before = _digest(out)
    weights = str(out / "teacher" / "best.pt")
    args = ["resnet18", "--data", str(data), *TINY, "--weights", weights, "--pretrain-epochs", "0"]
    result = CliRunner().invoke(main, [*args, "--output", str(out), "--overwrite"])
    _input_error(result, "--weights", "--overwrite replaces")
    assert _digest(out) == before


@pytest.mark.slow
def test_overwrite_of_a_run_keeps_the_files_no_run_wrote(data, tmp_path):
    """Why 2: --overwrite of a real run folder removes the old run's files and keeps the user's."""
    out = tmp_path / "run"
    _old_training_run(out)
    (out / "notes.txt").write_text("mine")
    (out / "plots").mkdir()
    (out / "plots" / "a.png").write_bytes(b"png")
    args = ["resnet18", "--data", str(data), *TINY, "--output", str(out), "--no-finetune", "--no-export"]
    _input_error(CliRunner().invoke(main, args), "already holds a run", "--overwrite")
    result = CliRunner().invoke(main, [*args, "--overwrite"])
    assert result.exit_code == 0, result.output
    assert f"moved the 11 files of the old run in {out} to {REPLACED}/" in result.output
    assert "kept 2 other files" in result.output
    assert not (out / REPLACED).exists()  # the new run finished: the old run's files are gone
    assert (out / "notes.txt").read_text() == "mine" and (out / "plots" / "a.png").read_bytes() == b"png"
    for stale in ("best.pt", "last.pt", "metrics.csv", "resnet18_adder.onnx", "report.html"):
        assert not (out / stale).exists(), stale  # the new run (no fine-tuning, no export) wrote none of these
    for name in ("teacher/last.pt", "teacher/best.pt"):  # the new teacher's, not the old run's adder models
        assert torch.load(out / name, weights_only=True)["meta"]["stage"] == "teacher"
    assert find_run(out).model == "resnet18"


def _no_aside(folder: Path) -> bool:
    return not any(p.name.startswith(REPLACED) for p in folder.iterdir())


def test_overwrite_that_fails_before_its_first_checkpoint_keeps_the_old_run(data, tmp_path, monkeypatch):
    """An --overwrite run that stops early (bad data, an interrupt or a crash in its first epoch) leaves the
    old run's files as they were, byte for byte."""
    out = tmp_path / "run"
    _old_training_run(out)
    (out / "notes.txt").write_text("mine")
    before = _digest(out)
    args = [*TINY, "--output", str(out), "--overwrite", "--no-export"]
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "train-images-idx3-ubyte.gz").write_bytes(b"not gzip")
    for bad in (["--data", str(tmp_path / "missing")], ["--data", str(tmp_path / "bad")]):
        _input_error(CliRunner().invoke(main, ["resnet18", *bad, *args]), "Error:")
        assert _digest(out) == before
    seen, raising = [], []

    def stop_in_the_first_epoch(model, *a, output=None, **k):
        # The new run has started: its marker is written, the old run's files are aside, not deleted.
        seen.append(json.loads((out / MARKER).read_text())["command"])
        assert (out / REPLACED / "last.pt").is_file() and (out / REPLACED / "teacher" / "best.pt").is_file()
        assert not (out / "last.pt").exists() and (out / "notes.txt").is_file()
        raise raising[-1]

    monkeypatch.setattr(pipeline, "fit", stop_in_the_first_epoch)
    for exception in (KeyboardInterrupt(), RuntimeError("out of memory")):
        raising.append(exception)
        result = CliRunner().invoke(main, ["resnet18", "--data", str(data), *args])
        assert result.exit_code != 0
        assert "the old run is back" in result.output, result.output
        if isinstance(exception, KeyboardInterrupt):  # no advice to resume a run that is not there
            assert "the run it was replacing is back" in result.output and "--resume" not in result.output
        assert _digest(out) == before and _no_aside(out)
    assert seen == ["train", "train"]
    assert find_run(out).model == "resnet18"


@pytest.mark.slow  # two main jobs (45 s)
def test_overwrite_drops_the_old_run_once_the_new_one_has_a_checkpoint(data, tmp_path, monkeypatch):
    """Once the new run has written its teacher's checkpoints the old run's files go (the new run can be
    resumed); the user's files stay either way."""
    out = tmp_path / "run"
    _old_training_run(out)
    (out / "notes.txt").write_text("mine")
    real_fit = pipeline.fit

    def adder_fails(model, *a, **k):
        if k.get("teacher") is None:
            return real_fit(model, *a, **k)
        assert not (out / REPLACED).exists()  # the teacher's checkpoints replaced the old run
        raise RuntimeError("adder fine-tuning crashed")

    monkeypatch.setattr(pipeline, "fit", adder_fails)
    result = CliRunner().invoke(main, ["resnet18", "--data", str(data), *TINY, "--output", str(out), "--overwrite"])
    assert isinstance(result.exception, RuntimeError), result.output
    assert _no_aside(out) and (out / "notes.txt").read_text() == "mine"
    assert torch.load(out / "teacher" / "last.pt", weights_only=True)["meta"]["stage"] == "teacher"
    for stale in ("last.pt", "best.pt", "summary.json", "resnet18_adder.onnx", "report.html"):
        assert not (out / stale).exists(), stale


def test_a_killed_overwrite_loses_no_file(tmp_path):
    """--overwrite killed outright (SIGKILL) at each step: the next --overwrite of the folder still has the
    old run and puts it back when it fails in turn."""
    out = tmp_path / "run"
    _old_training_run(out)
    (out / "notes.txt").write_text("mine")
    before = _digest(out)
    # Killed while moving the old run aside: part of it in the partial folder, the rest (marker too) in place.
    partial = out / (REPLACED + ".partial")
    (partial / "teacher").mkdir(parents=True)
    for name in ("last.pt", "teacher/last.pt", "summary.json"):
        (out / name).rename(partial / name)
    assert check_run_folder(out, model="resnet18", overwrite=True) is not None
    ReplacedRun(out).restore()
    assert _digest(out) == before and _no_aside(out)
    # Killed after the move, with the new run's marker and config.yaml but no checkpoint: the old run stays.
    ReplacedRun(out)
    (out / MARKER).write_text(json.dumps({"tool": "adderconvert", "model": "resnet18", "command": "train"}))
    (out / "config.yaml").write_text("model: resnet18\nepochs: 5\n")
    again = ReplacedRun(out)
    assert again.moved == 11 and sorted(p.name for p in out.iterdir()) == sorted([REPLACED, "notes.txt"])
    again.restore()
    assert _digest(out) == before and _no_aside(out)
    # Killed between the move and the new marker: the folder is still one --overwrite may replace.
    ReplacedRun(out)
    assert find_run(out) is None and check_run_folder(out, model="resnet18", overwrite=True).model == "resnet18"
    ReplacedRun(out).restore()
    assert _digest(out) == before
    # Killed after the new run's first checkpoint: the old run had been replaced; the new one goes aside now.
    ReplacedRun(out)
    new = CheckpointMeta(model_name="resnet18", num_classes=10, stage="teacher", dataset="fashion-mnist")
    (out / "teacher").mkdir()
    save_checkpoint(out / "teacher" / "last.pt", {"meta": new, "model": {}})
    (out / MARKER).write_text(json.dumps({"tool": "adderconvert", "model": "resnet18", "command": "train"}))
    third = ReplacedRun(out)
    aside = sorted(p.name for p in (out / REPLACED).rglob("*") if p.is_file())
    assert third.moved == 2 and aside == [MARKER, "last.pt"]
    # Killed while deleting the old run: the next --overwrite finishes that.
    third.drop()
    (out / (REPLACED + ".deleting")).mkdir()
    (out / (REPLACED + ".deleting") / "last.pt").write_bytes(b"half deleted")
    ReplacedRun(out)
    assert not (out / (REPLACED + ".deleting")).exists() and (out / "notes.txt").read_text() == "mine"


def test_import_official_overwrite_that_fails_keeps_the_old_run(tmp_path, monkeypatch):
    out = tmp_path / "run"
    _old_training_run(out)
    before = _digest(out)

    seen = []

    def export_fails(*a, **k):
        seen.append((out / "best.pt").is_file() and (out / REPLACED / "best.pt").is_file())  # the import's, the old
        raise RuntimeError("export failed")

    monkeypatch.setattr(official_run, "export_onnx", export_fails)
    result = CliRunner().invoke(main, ["import-official", str(OFFICIAL), "--output", str(out), "--overwrite"])
    assert isinstance(result.exception, RuntimeError), result.output
    assert seen == [True] and _digest(out) == before and _no_aside(out)
    new = tmp_path / "new"
    result = CliRunner().invoke(main, ["import-official", str(OFFICIAL), "--output", str(new)])
    assert isinstance(result.exception, RuntimeError) and not new.exists()  # a failed import leaves nothing


def test_export_never_replaces_a_file_unasked_nor_its_input(run_copy, tmp_path):
    """Why 3."""
    best = run_copy / "best.pt"
    other = tmp_path / "other.txt"
    other.write_text("keep me")
    before = _digest(run_copy)
    _input_error(CliRunner().invoke(main, ["export", str(best), "-o", str(other)]), "already exists", "--overwrite")
    alias = tmp_path / ".." / tmp_path.name / "imp" / "best.pt"
    for args in (
        ["-o", str(best)],
        ["-o", str(best), "--overwrite"],
        ["-o", str(alias), "--overwrite"],
        ["--int8", "-o", str(alias), "--overwrite"],
    ):
        _input_error(CliRunner().invoke(main, ["export", str(best), *args]), "is the input")
    (run_copy / "best.onnx").write_text("an earlier export")
    _input_error(CliRunner().invoke(main, ["export", str(best)]), "best.onnx already exists")
    assert other.read_text() == "keep me" and (run_copy / "best.onnx").read_text() == "an earlier export"
    (run_copy / "best.onnx").unlink()
    assert _digest(run_copy) == before
    result = CliRunner().invoke(main, ["export", str(best), "-o", str(other), "--overwrite"])
    assert result.exit_code == 0, result.output
    assert onnx.load(str(other)).graph.node and not list(tmp_path.glob(".other.txt.*"))


def test_export_output_is_checked_before_the_work(run_copy, tmp_path):
    best = run_copy / "best.pt"
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "a_dir").mkdir()
    _input_error(CliRunner().invoke(main, ["export", str(best), "-o", str(tmp_path / "a_dir")]), "is a folder")
    _input_error(
        CliRunner().invoke(main, ["export", str(best), "-o", str(tmp_path / "a_file" / "m.onnx")]),
        "a_file is a file, not a folder",
    )
    assert (tmp_path / "a_file").read_text() == "x" and not any((tmp_path / "a_dir").iterdir())


def _lock(folder: Path) -> None:
    """Make ``folder`` read-only: mode 555, or for root (who writes through modes) the immutable flag."""
    if not ROOT:
        folder.chmod(0o555)
    elif subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode != 0:
        pytest.skip("running as root without chattr +i (CAP_LINUX_IMMUTABLE): no folder is read-only for root")


def _unlock(folder: Path) -> None:
    if ROOT:
        subprocess.run(["chattr", "-i", str(folder)], capture_output=True)
    folder.chmod(0o755)


def test_read_only_folders_are_refused_before_the_work(run_copy, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    try:
        _lock(locked)
        assert not os.access(locked, os.W_OK)
        _input_error(
            CliRunner().invoke(main, ["export", str(run_copy / "best.pt"), "-o", str(locked / "m.onnx")]),
            "not a writable folder",
        )
        _input_error(
            CliRunner().invoke(main, ["import-official", str(OFFICIAL), "--output", str(locked / "run")]),
            "not a writable folder",
        )
        before = _digest(run_copy)
        _lock(run_copy)
        _input_error(CliRunner().invoke(main, ["report", str(run_copy)]), "not a writable folder")
    finally:
        _unlock(locked)
        _unlock(run_copy)
    assert not any(locked.iterdir()) and _digest(run_copy) == before


def test_report_refuses_a_folder_that_is_not_a_run(run_copy, tmp_path):
    """`report DIR` writes report.html/json only into a run folder: not an empty folder, a folder of the
    user's files, one with only a config.yaml, nor one whose last.pt is not a checkpoint of this tool."""
    empty = tmp_path / "empty"
    empty.mkdir()
    home = tmp_path / "home"
    home.mkdir()
    (home / "thesis.tex").write_text("years of work")
    (home / "config.yaml").write_text("model: resnet18\n")
    (home / "last.pt").write_bytes(b"not a checkpoint")
    for folder in (empty, home):
        before = _digest(folder)
        result = CliRunner().invoke(main, ["report", str(folder)])
        _input_error(result, f"{folder} is not a run folder", MARKER, "--output of a training run", "import-official")
        assert _digest(folder) == before and not (folder / "report.html").exists()
    result = CliRunner().invoke(main, ["report", str(run_copy)])  # a run folder (import-official's)
    assert result.exit_code == 0 and (run_copy / "report.json").is_file(), result.output
    (run_copy / MARKER).unlink()  # a run of an older version: its checkpoint is the evidence
    result = CliRunner().invoke(main, ["report", str(run_copy)])
    assert result.exit_code == 0, result.output


def test_report_and_import_onto_a_file(run_copy, tmp_path):
    (tmp_path / "f").write_text("x")
    _input_error(CliRunner().invoke(main, ["report", str(tmp_path / "f")]), "is a file")
    _input_error(
        CliRunner().invoke(main, ["import-official", str(OFFICIAL), "--output", str(tmp_path / "f")]), "is a file"
    )
    _input_error(
        CliRunner().invoke(main, ["import-official", str(OFFICIAL), "--output", str(tmp_path / "f" / "run")]),
        "is a file, not a folder",
    )
    assert (tmp_path / "f").read_text() == "x"


def test_report_reads_the_onnx_model_of_its_own_folder(run_copy, tmp_path, monkeypatch):
    """Why 6: a copied run is measured with its own ONNX file, whatever the current folder holds."""
    monkeypatch.chdir(tmp_path)
    summary = json.loads((run_copy / "summary.json").read_text())
    own = run_copy / summary["onnx_path"]
    # As versions before this one wrote it: the path relative to where the command ran.
    Path("other").mkdir()
    Path("other/official_resnet20_adder.onnx").write_bytes(b"another run's model")
    summary["onnx_path"] = "other/official_resnet20_adder.onnx"
    (run_copy / "summary.json").write_text(json.dumps(summary))
    report = json.loads(write_report(run_copy, latency_budget_s=0.05)[1].read_text())
    assert report["onnx_file_bytes"]["adder"] == own.stat().st_size
    # An absolute path to another folder is not followed either.
    summary["onnx_path"] = str(tmp_path / "other" / "official_resnet20_adder.onnx")
    (run_copy / "summary.json").write_text(json.dumps(summary))
    report = json.loads(write_report(run_copy, latency_budget_s=0.05)[1].read_text())
    assert report["onnx_file_bytes"]["adder"] == own.stat().st_size


def test_report_notes_every_file_it_could_not_read(run_copy):
    """Why 9: a corrupt summary.json, metrics.csv or config.yaml is a note, not silent nulls."""
    (run_copy / "summary.json").write_text('{"model": "official_resnet20", "adder_top1": 9')
    (run_copy / "metrics.csv").write_text("epoch,test_top1\n1,not-a-number\n")
    (run_copy / "teacher").mkdir()
    (run_copy / "teacher" / "metrics.csv").write_bytes(b"epoch,test_top1\n1,\x00\x00\n")
    (run_copy / "config.yaml").write_text("batch_size: [unclosed\n")
    report = json.loads(write_report(run_copy, latency_budget_s=0.05)[1].read_text())
    notes = "\n".join(report["notes"])
    for name in ("summary.json", "metrics.csv", "teacher/metrics.csv", "config.yaml"):
        assert f"could not read {name}" in notes, (name, notes)
    assert report["multiplications"]["adder"] is not None  # what could be read still is


def _onnx_file(path: Path, shape, reshape_to=None, classes: int = 10) -> Path:
    """A small float model: global average pool -> flatten -> (C x classes) matmul, on an input of
    ``shape`` (None: a dynamic dim); ``reshape_to`` adds a Reshape that fails at run time."""
    channels = shape[1] or 3
    weight = helper.make_tensor(
        "w", TensorProto.FLOAT, [channels, classes], np.ones(channels * classes, np.float32).tolist()
    )
    nodes = [
        helper.make_node("GlobalAveragePool", ["input"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("MatMul", ["f", "w"], ["output"]),
    ]
    initializers = [weight]
    if reshape_to is not None:
        initializers.append(helper.make_tensor("s", TensorProto.INT64, [len(reshape_to)], reshape_to))
        nodes.insert(0, helper.make_node("Reshape", ["input", "s"], ["r"]))
        nodes[1] = helper.make_node("GlobalAveragePool", ["r"], ["p"])
    dims = [d if d is not None else n for d, n in zip(shape, "NCHW")]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, dims)],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, None)],
        initializers,
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    return path


def test_evaluate_errors_name_the_cause(data, tmp_path):
    ev = ["evaluate", "--data", str(data)]
    (tmp_path / "empty.onnx").write_bytes(b"")
    _input_error(CliRunner().invoke(main, [*ev, str(tmp_path / "empty.onnx")]), "holds no graph")
    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "state.pt")
    _input_error(CliRunner().invoke(main, [*ev, str(tmp_path / "state.pt")]), "not an adderconvert checkpoint")
    meta = CheckpointMeta(model_name="resnet18", num_classes=10)
    torch.save({"format": 2, "meta": meta.to_dict()}, tmp_path / "nomodel.pt")  # was a KeyError
    _input_error(CliRunner().invoke(main, [*ev, str(tmp_path / "nomodel.pt")]), "holds no model weights")
    torch.save({"format": 2, "meta": {"stage": "adder"}}, tmp_path / "nometa.pt")
    _input_error(CliRunner().invoke(main, [*ev, str(tmp_path / "nometa.pt")]), "nometa.pt", "lacks model_name")
    channels = _onnx_file(tmp_path / "c1.onnx", [None, 1, None, None])
    _input_error(CliRunner().invoke(main, [*ev, str(channels)]), "1-channel input")
    size = _onnx_file(tmp_path / "s32.onnx", [None, 3, 32, 32])
    result = CliRunner().invoke(main, [*ev, str(size)])  # the data is resized to the model's fixed 32x32
    assert result.exit_code == 0 and "on 64 fashion-mnist test images" in result.output, result.output
    _input_error(CliRunner().invoke(main, [*ev, str(size), "--image-size", "40"]), "--image-size 40 does not fit")
    broken = _onnx_file(tmp_path / "r.onnx", [None, 3, None, None], reshape_to=[-1, 3, 5, 7])
    _input_error(CliRunner().invoke(main, [*ev, str(broken)]), "ONNX Runtime cannot run")
    unloadable = _onnx_file(tmp_path / "u.onnx", [None, 3, None, None], reshape_to=[-1, 7, 1, 1])
    _input_error(CliRunner().invoke(main, [*ev, str(unloadable)]), "ONNX Runtime cannot load")
    wrong = _onnx_file(tmp_path / "k.onnx", [None, 3, None, None], classes=7)
    _input_error(CliRunner().invoke(main, [*ev, str(wrong)]), "has 7 classes", "fashion-mnist has 10")


def test_evaluate_runs_a_model_of_fixed_batch_and_warns_about_other_data(data, run_copy, tmp_path):
    fixed = _onnx_file(tmp_path / "b1.onnx", [1, 3, 28, 28])
    result = CliRunner().invoke(main, ["evaluate", str(fixed), "--data", str(data)])
    assert result.exit_code == 0, result.output
    assert "on 64 fashion-mnist test images" in result.output  # 64 batches of one
    _input_error(CliRunner().invoke(main, ["evaluate", str(run_copy / "best.pt"), "--device", "bogus"]), "--device")
    # The imported model was trained on CIFAR-10 at 32 px: Fashion-MNIST at 32 px is scored, with a warning.
    result = CliRunner().invoke(
        main,
        [
            "evaluate",
            str(run_copy / "best.pt"),
            "--dataset",
            "fashion-mnist",
            "--data",
            str(data),
            "--image-size",
            "32",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "trained on cifar10, not fashion-mnist" in result.stderr
    onnx_file = run_copy / "official_resnet20_adder.onnx"
    result = CliRunner().invoke(main, ["evaluate", str(onnx_file), "--dataset", "fashion-mnist", "--data", str(data)])
    assert result.exit_code == 0, result.output
    assert "trained on cifar10" in result.stderr


def test_wrong_cause_messages(data, run_copy, tmp_path):
    onnx_as_pt = tmp_path / "model.pt"
    shutil.copyfile(run_copy / "official_resnet20_adder.onnx", onnx_as_pt)
    _input_error(CliRunner().invoke(main, ["evaluate", str(onnx_as_pt)]), "is an ONNX model")
    _input_error(
        CliRunner().invoke(main, ["export", str(onnx_as_pt)]),
        "is already an ONNX model",
        "export takes a .pt checkpoint",
    )
    _input_error(
        CliRunner().invoke(main, ["evaluate", str(run_copy / "best.pt"), "--dataset", "foo"]), "unknown data set"
    )
    result = CliRunner().invoke(main, ["import-official", str(run_copy / "best.pt"), "--output", str(tmp_path / "o")])
    _input_error(result, "is a checkpoint of adderconvert", "not of the official AdderNet code")
    assert not (tmp_path / "o").exists()


def test_weights_that_are_not_a_checkpoint_even_in_a_dry_run(data, run_copy, tmp_path):
    torch.save({"conv1.weight": 3, "fc.bias": "x"}, tmp_path / "junk.pt")  # was an AttributeError
    torch.save([torch.zeros(2)], tmp_path / "list.pt")
    onnx_as_pt = tmp_path / "model.pt"
    shutil.copyfile(run_copy / "official_resnet20_adder.onnx", onnx_as_pt)
    out = tmp_path / "o"
    for dry in ([], ["--dry-run"]):
        base = ["resnet18", "--data", str(data), "--pretrain-epochs", "1", "--output", str(out), *dry]
        _input_error(CliRunner().invoke(main, [*base, "--weights", str(tmp_path / "junk.pt")]), "no named tensors")
        _input_error(CliRunner().invoke(main, [*base, "--weights", str(tmp_path / "list.pt")]), "holds no state dict")
        _input_error(CliRunner().invoke(main, [*base, "--weights", str(onnx_as_pt)]), "is an ONNX model")
        _input_error(CliRunner().invoke(main, [*base, "--weights", "IMAGENET9K"]), "torchvision weights name")
        _input_error(
            CliRunner().invoke(main, [*base, "--weights", str(run_copy / "best.pt")]), "--weights takes CNN weights"
        )
    assert not out.exists()


def test_a_run_stopped_before_its_first_checkpoint_removes_only_what_it_wrote(data, tmp_path, monkeypatch):
    """The user's empty folder stays (empty); a folder the run created goes."""
    import adderconvert.app.pipeline

    def stopped(*args, output=None, **kwargs):  # Ctrl-C in the first teacher epoch: its folder is made
        output.mkdir(parents=True, exist_ok=True)
        raise KeyboardInterrupt

    monkeypatch.setattr(adderconvert.app.pipeline, "fit", stopped)
    mine = tmp_path / "mine"
    mine.mkdir()
    for out, kept in ((mine, True), (tmp_path / "new", False)):
        result = CliRunner().invoke(main, ["resnet18", "--data", str(data), *TINY, "--output", str(out)])
        assert result.exit_code == 1 and "interrupted" in result.output, result.output
        assert out.exists() == kept and (not kept or not any(out.iterdir()))

"""Issue 34: every subcommand given a wrong file (empty, text, binary, a broken gzip, a checkpoint of the wrong
stage, another model's ONNX) ends with one ``Error:`` line and exit status 2, never a traceback."""

import gzip

import pytest
import torch
from click.testing import CliRunner

from adderconvert.app.cli import main
from adderconvert.checkpoint import CheckpointMeta, save_checkpoint
from adderconvert.deploy.export import export_onnx


@pytest.fixture(scope="module")
def wrong(tmp_path_factory):
    """A folder of wrong inputs, by name."""
    folder = tmp_path_factory.mktemp("wrong")
    files = {
        "empty": folder / "empty.pt",
        "text": folder / "metrics.csv",
        "binary": folder / "noise.bin",
        "gzip": folder / "cut.pt.gz",
        "teacher": folder / "teacher.pt",
        "onnx": folder / "other.onnx",
    }
    files["empty"].write_bytes(b"")
    files["text"].write_text("epoch,lr,train_loss\n1,0.1,0.5\n")
    files["binary"].write_bytes(bytes(range(256)) * 8)
    files["gzip"].write_bytes(gzip.compress(b"x" * 1000)[:20])
    meta = CheckpointMeta(
        model_name="resnet18", num_classes=10, stage="teacher", dataset="fashion-mnist", image_size=28
    )
    save_checkpoint(files["teacher"], {"meta": meta, "model": {}})
    export_onnx(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3)), files["onnx"], torch.zeros(1, 3, 2, 2))
    return folder, files


COMMANDS = {
    "evaluate": lambda f, out: ["evaluate", str(f)],
    "export": lambda f, out: ["export", str(f), "-o", str(out / "x.onnx")],
    "export --int8": lambda f, out: ["export", str(f), "--int8", "-o", str(out / "x.onnx")],
    "--weights": lambda f, out: ["resnet18", "--weights", str(f), "--pretrain-epochs", "0", "--dry-run"],
    "-c": lambda f, out: ["resnet18", "-c", str(f), "--dry-run"],
    "--resume": lambda f, out: ["resnet18", "--resume", str(f), "--output", str(out / "run")],
    "import-official": lambda f, out: ["import-official", str(f), "--output", str(out / "imported")],
}  # `report` takes a run folder: tests/app/test_outputs.py gives it wrong folders


# Inputs that are right for the command: not wrong files.
VALID = {
    ("-c", "empty"): "an empty options file sets nothing",
}


@pytest.mark.parametrize("kind", ["empty", "text", "binary", "gzip", "teacher", "onnx"])
@pytest.mark.parametrize("command", list(COMMANDS))
def test_no_traceback_for_a_wrong_file(wrong, tmp_path, command, kind):
    _, files = wrong
    if (command, kind) in VALID:
        pytest.skip(VALID[command, kind])
    result = CliRunner().invoke(main, COMMANDS[command](files[kind], tmp_path))
    assert result.exit_code == 2, (result.output, result.exception)
    assert "Error:" in result.output and "Traceback" not in result.output, result.output
    assert files[kind].name in result.output, result.output  # the error names the file, not something else
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)

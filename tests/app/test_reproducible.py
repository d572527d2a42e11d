"""--seed makes a run reproducible: the same tiny run twice gives the same weights, bit for bit (CPU)."""

import pytest
import torch
from click.testing import CliRunner

from adderconvert.app.cli import main
from tests.app.test_cli import _fake_fashion_mnist


def _tiny_run(data, out, *extra):
    args = ["resnet18", "--data", str(data), "--weights", "none", "--pretrain-epochs", "1", "--max-steps", "3"]
    args += ["--image-size", "16", "--batch-size", "16", "--eval-max-batches", "1", "--no-export", "--quiet"]
    result = CliRunner().invoke(main, [*args, "--output", str(out), *extra])
    assert result.exit_code == 0, result.output
    return {name: torch.load(out / name, weights_only=True)["model"] for name in ("teacher/last.pt", "last.pt")}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_same_seed_same_weights_bit_for_bit(tmp_path):
    data = _fake_fashion_mnist(tmp_path)
    first = _tiny_run(data, tmp_path / "a")
    second = _tiny_run(data, tmp_path / "b")
    for name in first:
        assert _same(first[name], second[name]), name
    # The seed is what decides: another one gives other initial weights, hence another CNN and adder model.
    other = _tiny_run(data, tmp_path / "c", "--seed", "1")
    for name in first:
        assert not _same(first[name], other[name]), name

"""``import-official``: the published ResNet-20 turned into a run folder that ONNX Runtime agrees with."""

import json

import numpy as np
import torch

import adderconvert
from adderconvert.app.official_run import import_official
from adderconvert.architectures.official import load
from adderconvert.deploy.runtime import make_session
from tests.architectures.test_official import (  # noqa: F401  (fixtures)
    PUBLISHED,
    _tolerance,
    inputs,
    published,
    reference_forward,
)


def test_import_official_writes_a_run_folder_that_onnx_runtime_agrees_with(published, inputs, tmp_path):  # noqa: F811
    summary = import_official(PUBLISHED, "resnet20", tmp_path)
    expected = reference_forward(published, inputs.double())
    session = make_session(tmp_path / summary["onnx_path"], providers=["CPUExecutionProvider"])
    got = session.run(None, {"input": inputs.numpy()})[0]
    assert np.abs(got - expected.numpy()).max() <= _tolerance(expected)
    # The checkpoint rebuilds the same model through the generic loader.
    reloaded = adderconvert.load(tmp_path / "best.pt")
    with torch.no_grad():
        torch.testing.assert_close(reloaded(inputs), load(PUBLISHED)(inputs), rtol=0, atol=0)
    assert json.loads((tmp_path / "summary.json").read_text())["official_arch"] == "resnet20"
    report = json.loads((tmp_path / "report.json").read_text())
    # Adder model: only the stem (16x3x3x3 at 32x32) and the 64->10 classifier multiply.
    assert report["multiplications"]["adder"] == 16 * 27 * 32 * 32 + 640
    assert report["accuracy"]["adder_top1"] is None  # no CIFAR-10 here: nothing is claimed
    assert (tmp_path / "report.html").stat().st_size > 10_000

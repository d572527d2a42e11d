"""``adderconvert import-official``: an official AdderNet checkpoint turned into a run folder."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from adderconvert.app.outputs import (
    ReplacedRun,
    check_run_folder,
    discard_new_run,
    mark_run,
    write_text,
    write_through,
)
from adderconvert.app.report import write_report
from adderconvert.app.saved_models import deployment_metadata
from adderconvert.architectures.official import ARCHS, load
from adderconvert.checkpoint import CheckpointError, CheckpointMeta, read_meta, save_checkpoint
from adderconvert.deploy.export import export_onnx
from adderconvert.deploy.runtime import make_session

__all__ = ["import_official"]


def _refuse_own_checkpoint(path: Path) -> None:
    """A checkpoint of this tool is not an official one: say so instead of "no state dict of tensors"."""
    if not path.is_file():
        return  # the official loader names a missing file
    try:
        meta = read_meta(path)
    except CheckpointError:
        return  # not ours: the official loader judges it
    raise CheckpointError(
        f"{path} is a checkpoint of adderconvert ({meta.describe()}), not of the official AdderNet code: "
        "`adderconvert evaluate` and adderconvert.load read it as it is"
    )


def import_official(
    path: str | os.PathLike, arch: str, output: str | os.PathLike, *, overwrite: bool = False
) -> dict[str, Any]:
    """Turn an official checkpoint into a run folder and return its summary (also ``OUTPUT/summary.json``).

    Writes ``best.pt`` (an adderconvert checkpoint whose meta names ``official_arch``), the ONNX model
    (``official_ARCH_adder.onnx`` with the input size, normalisation and classes as metadata, checked
    against PyTorch on random inputs: ``onnx_max_abs_diff``) and
    ``report.html``/``report.json``. No data set is evaluated, so the accuracies are ``None``.

    ``output`` must be new, empty or hold a run; a run is replaced only with ``overwrite``, which moves the
    old run's files (checkpoints, ``teacher/``, ``metrics.csv``, ONNX, ...) aside once the checkpoint has
    loaded, deletes them when the import is done and puts them back when it fails; every other file stays.
    """
    name = f"official_{arch}"
    out = Path(output)
    found = check_run_folder(out, model=name, overwrite=overwrite, resumable=False)
    _refuse_own_checkpoint(Path(path))
    model = load(path, arch)
    created = not out.exists()
    replaced = ReplacedRun(out) if found is not None else None
    try:
        summary = _write_run(model, arch, path, out)
    except BaseException:
        if replaced is not None:
            replaced.restore()  # what the import wrote goes, the old run comes back
        else:
            discard_new_run(out, created)
        raise
    if replaced is not None:
        replaced.drop()
    return summary


def _write_run(model, arch: str, path: str | os.PathLike, out: Path) -> dict[str, Any]:
    name = f"official_{arch}"
    spec = ARCHS[arch]
    dataset, image_size, num_classes = spec.dataset, spec.image_size, model.fc.out_channels
    out.mkdir(parents=True, exist_ok=True)
    mark_run(out, name, "import-official")
    meta = CheckpointMeta(
        model_name=name,
        num_classes=num_classes,
        stage="adder",
        dataset=dataset,
        image_size=image_size,
        classes=spec.classes if num_classes == spec.num_classes else None,
        mean=list(spec.mean),
        std=list(spec.std),
        official_arch=arch,
    )
    save_checkpoint(out / "best.pt", {"meta": meta, "model": model.state_dict()})
    torch.manual_seed(0)
    x = torch.randn(2, 3, image_size, image_size)
    onnx_path = write_through(
        out / f"{name}_adder.onnx", lambda tmp: export_onnx(model, tmp, x, metadata=deployment_metadata(meta))
    )
    with torch.no_grad():
        expected = model(x).numpy()
    got = make_session(onnx_path, providers=["CPUExecutionProvider"]).run(None, {"input": x.numpy()})[0]
    summary = {
        "model": name,
        "dataset": dataset,
        "official_arch": arch,
        "source": str(Path(path).resolve()),
        "cnn_top1": None,
        "adder_top1": None,
        "onnx_top1": None,
        "onnx_path": onnx_path.name,  # relative to the run folder
        "onnx_max_abs_diff": float(np.abs(got - expected).max()),
        "max_abs_logit": float(np.abs(expected).max()),
        "notes": [
            f"imported from the official AdderNet {arch} checkpoint {Path(path).name}; no {dataset} data set was "
            "evaluated, so accuracies are n/a",
            f"ONNX Runtime vs PyTorch on 2 random inputs: max |diff| {np.abs(got - expected).max():.3g} "
            f"(max |logit| {np.abs(expected).max():.3g})",
        ],
    }
    if not np.isfinite(expected).all():
        summary["notes"].append("PyTorch's logits on random inputs are not finite: are the weights trained?")
    write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    html, js = write_report(out)
    summary["report_html"], summary["report_json"] = str(html), str(js)
    return summary

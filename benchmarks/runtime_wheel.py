"""The runtime wheel against the full package: a model's FP32 (custom op), fused and INT8 ONNX forms (and the
portable one) run in this environment and in a fresh virtual environment holding only adderconvert-ort, numpy
and onnxruntime (no torch); the largest output difference per form is reported.

    make runtime-wheel && python benchmarks/runtime_wheel.py runs/demo/best.pt --output runs/runtime_wheel.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

# Runs in the fresh environment: argv = expected.npz, then the forms (ONNX files FORM.onnx in the working folder).
_FRESH_RUN = textwrap.dedent(
    """
    import importlib.util, json, sys
    import numpy as np
    import adderconvert_ort

    data = np.load(sys.argv[1])
    results = {"torch_importable": importlib.util.find_spec("torch") is not None,
               "build_info": adderconvert_ort.build_info(), "forms": {}}
    for form in sys.argv[2:]:
        session = adderconvert_ort.make_session(f"{form}.onnx", intra_op_num_threads=1)
        got = session.run(None, {session.get_inputs()[0].name: data["x"]})[0]
        results["forms"][form] = {
            "max_abs_difference": float(np.abs(got.astype(np.float64) - data[form]).max()),
            "equal": bool(np.array_equal(got, data[form])),
            "adder_form": adderconvert_ort.model_metadata(session).get("adder_form"),
        }
    print(json.dumps(results))
    """
)


def export_forms(model, example, calibration, folder: Path) -> dict[str, Path]:
    """``model``'s ONNX forms in ``folder``: custom_op (AdderConv, BatchNorm separate), fused (FusedAdderConv),
    int8 (QuantizedAdderConv, min/max ranges on ``calibration``) and portable (standard ops only)."""
    from adderconvert import export_onnx, quantize

    model = model.eval()
    return {
        "custom_op": export_onnx(model, folder / "custom_op.onnx", example, fuse_bn=False),
        "fused": export_onnx(model, folder / "fused.onnx", example),
        "int8": export_onnx(quantize(model, [calibration], "minmax"), folder / "int8.onnx", example),
        "portable": export_onnx(model, folder / "portable.onnx", example, portable=True),
    }


def fresh_environment(wheel: Path, folder: Path) -> Path:
    """A new virtual environment in ``folder`` (anything there before is removed) with ``wheel`` and this
    environment's onnxruntime version (from the machine's package index); returns its python."""
    import onnxruntime

    shutil.rmtree(folder, ignore_errors=True)  # never an earlier wheel of the same version
    subprocess.run([sys.executable, "-m", "venv", str(folder)], check=True)
    python = folder.resolve() / "bin" / "python"
    install = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    subprocess.run([*install, str(wheel), f"onnxruntime=={onnxruntime.__version__}"], check=True)
    return python


def compare(forms: dict[str, Path], x: np.ndarray, python: Path, folder: Path) -> dict:
    """Runs every form (``folder``/FORM.onnx) here and with ``python``; the fresh run's report."""
    import adderconvert_ort

    expected = {}
    for form, path in forms.items():
        session = adderconvert_ort.make_session(path, intra_op_num_threads=1)
        expected[form] = session.run(None, {session.get_inputs()[0].name: x})[0]
    np.savez(folder / "expected.npz", x=x, **expected)
    run = subprocess.run(
        [str(python), "-c", _FRESH_RUN, str((folder / "expected.npz").resolve()), *forms],
        cwd=folder,
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(run.stdout)


def newest_wheel() -> Path:
    """The runtime wheel of this version in dist/ (``make runtime-wheel``)."""
    import adderconvert_ort

    wheels = sorted((ROOT / "dist").glob(f"adderconvert_ort-{adderconvert_ort.__version__}-*.whl"))
    if not wheels:
        raise FileNotFoundError("no runtime wheel of this version in dist/: run `make runtime-wheel`")
    return wheels[-1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="an adder checkpoint (e.g. runs/demo/best.pt)")
    parser.add_argument("--images", type=int, default=64, help="random inputs of the checkpoint's size")
    parser.add_argument("--work", default="runs/runtime_wheel", help="folder for the forms and the environment")
    parser.add_argument("--output", help="write the report as JSON here")
    args = parser.parse_args()

    import torch

    from adderconvert import load
    from adderconvert.checkpoint import load_checkpoint

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    model = load(args.checkpoint)
    size = load_checkpoint(args.checkpoint)["meta"].image_size or 32
    torch.manual_seed(0)
    x = torch.randn(args.images, 3, size, size)
    forms = export_forms(model, x[:2], x, work)
    python = fresh_environment(newest_wheel(), work / "venv")
    report = compare(forms, x.numpy(), python, work)
    report["checkpoint"] = args.checkpoint
    report["command"] = "python " + " ".join(sys.argv)
    print(json.dumps(report, indent=2))
    if args.output:
        Path(args.output).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

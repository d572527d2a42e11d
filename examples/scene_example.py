"""What examples/segment_scenes.py and examples/detect_scenes.py share: their command line, the ONNX Runtime
session of an exported model (adderconvert.deploy.runtime.make_session) checked for its task, the built-in test
scenes at the model's size (adderconvert.data_scenes.load_scenes), and a scene as an RGB picture to draw on."""

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from ort_inference import count_of
from PIL import Image

from adderconvert.data_scenes import load_scenes
from adderconvert.deploy.runtime import make_session, model_metadata

# The largest number of scenes the examples take (the built-in test split's default size).
MAX_SCENES = 1_000


def parser(description: str, output: str) -> argparse.ArgumentParser:
    """The examples' arguments: the model, how many scenes, the output folder, threads and the drawing scale."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("model", help="an .onnx file of the task written by adderconvert (export_onnx, `export`)")
    parser.add_argument("--images", type=count_of(1), default=8, help=f"test scenes to run (at most {MAX_SCENES})")
    parser.add_argument("--output", default=output, help="the folder the PNGs are written to (made if missing)")
    parser.add_argument("--threads", type=count_of(0), default=0, help="intra-op threads (0: ONNX Runtime's default)")
    parser.add_argument("--scale", type=count_of(1), default=3, help="the PNGs' size as a multiple of the scene's")
    return parser


def fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 1


def open_model(args: argparse.Namespace, task: str):
    """The session, its metadata and the scenes' size, or an error message for the user."""
    if args.images > MAX_SCENES:
        return f"--images: at most {MAX_SCENES} test scenes, not {args.images}"
    output = Path(args.output)
    blocking = next((p for p in (output, *output.parents) if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        return f"--output {output}: {blocking} is a file, not a folder"
    try:
        session = make_session(args.model, intra_op_num_threads=args.threads)
    except Exception as error:  # a missing file, a folder, a file that is no ONNX model, no onnxruntime
        return str(error)
    metadata = model_metadata(session)
    found = metadata.get("task", "classification")
    if found != task:
        outputs = [o.name for o in session.get_outputs()]
        return f"{args.model} is a {found} model (outputs {outputs}), not a {task} model"
    shape = session.get_inputs()[0].shape
    size = (metadata.get("image_size") or [shape[-1] if isinstance(shape[-1], int) else 128])[-1]
    return session, metadata, size


def scenes(task: str, count: int, size: int, seed: int = 0):
    """The first ``count`` test scenes of ``task`` at ``size`` made from ``seed`` (the run's: its model's metadata
    records it): the data set, the images as one batch, the truths."""
    data = load_scenes(task, image_size=size, seed=seed, counts={"train": 0, "test": count})
    samples = [data.test[i] for i in range(count)]
    return data, torch.stack([image for image, _ in samples]), [truth for _, truth in samples]


def picture(image: torch.Tensor, data, scale: int) -> Image.Image:
    """A normalised scene as an RGB picture, ``scale`` times larger."""
    mean, std = torch.tensor(data.mean)[:, None, None], torch.tensor(data.std)[:, None, None]
    pixels = ((image * std + mean).clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    size = image.shape[-1] * scale
    return Image.fromarray(np.ascontiguousarray(pixels)).resize((size, size), Image.NEAREST)


def colour(label: int, count: int) -> tuple[int, int, int]:
    """A distinct colour per class (the background's is black)."""
    if label == 0:
        return (0, 0, 0)
    hue = (label - 1) / max(1, count - 1) * 6
    sector, rest = int(hue) % 6, hue - int(hue)
    ramps = [(1, rest, 0), (1 - rest, 1, 0), (0, 1, rest), (0, 1 - rest, 1), (rest, 0, 1), (1, 0, 1 - rest)]
    return tuple(int(55 + 200 * v) for v in ramps[sector])

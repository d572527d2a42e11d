"""Run an exported adder model with ONNX Runtime, as a deployment would: the runtime package
adderconvert_ort (the adderconvert-ort wheel: no PyTorch) registers the custom-op library and reads the
model's metadata (input size, normalisation, class names, data set); Fashion-MNIST test images are classified.
Reading the data set uses adderconvert.data (and torch, only to resize images to another input size).

    python examples/ort_inference.py runs/demo/resnet18_adder.onnx

``--save-inputs F.f32`` writes the normalised images it classifies as raw float32 and ``--predictions F`` its
predictions, one "index<TAB>class<TAB>name" line per image: the C++ example (examples/cpp) reads the one and
prints the other.
"""

import argparse
import sys

import numpy as np

import adderconvert_ort
from adderconvert.data import FASHION_MNIST_CLASSES, FASHION_MNIST_DIR, GRAY_MEAN, GRAY_STD, read_idx

DATASET = "fashion-mnist"


def load_images(count: int, size: int, mean: list[float], std: list[float]) -> tuple[np.ndarray, np.ndarray]:
    """The first ``count`` Fashion-MNIST test images as normalised NCHW float32 (gray repeated over the
    channels) and their labels."""
    images = read_idx(FASHION_MNIST_DIR / "t10k-images-idx3-ubyte.gz")[:count].astype(np.float32) / 255
    labels = read_idx(FASHION_MNIST_DIR / "t10k-labels-idx1-ubyte.gz")[:count].astype(np.int64)
    x = np.repeat(images[:, None], len(mean), axis=1)
    if x.shape[-1] != size:
        import torch

        x = torch.nn.functional.interpolate(torch.from_numpy(x), size=(size, size), mode="bilinear").numpy()
    x = (x - np.array(mean, np.float32)[:, None, None]) / np.array(std, np.float32)[:, None, None]
    return x.astype(np.float32), labels


def count_of(least: int):
    """An argparse type: a whole number of at least ``least``."""

    def parse(text: str) -> int:
        value = int(text)
        if value < least:
            raise argparse.ArgumentTypeError(f"must be {least} or more, not {value}")
        return value

    parse.__name__ = "whole number"  # argparse's "invalid whole number value: 'abc'"
    return parse


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="an .onnx file written by adderconvert (the main job, `export` or export_onnx)")
    parser.add_argument("--threads", type=count_of(0), default=0, help="intra-op threads (0: ONNX Runtime's default)")
    parser.add_argument("--images", type=count_of(1), default=1000, help="Fashion-MNIST test images to classify")
    parser.add_argument("--save-inputs", help="write the normalised images as raw float32 (NCHW) to this .f32 file")
    parser.add_argument("--predictions", help="write 'index<TAB>class<TAB>name' per image to this file")
    args = parser.parse_args()

    try:
        session = adderconvert_ort.make_session(args.model, intra_op_num_threads=args.threads)
    except Exception as error:  # a missing file, a folder, a file that is no ONNX model, no onnxruntime
        print(f"error: {error}", file=sys.stderr)
        return 1
    metadata = adderconvert_ort.model_metadata(session)
    shape = session.get_inputs()[0].shape
    print(f"{args.model}: input {shape}, providers {session.get_providers()}, form {metadata.get('adder_form', '?')}")

    trained_on = metadata.get("dataset")
    if trained_on is not None and trained_on != DATASET:
        print(
            f"warning: the model's metadata says it was trained on {trained_on!r}; scoring it on {DATASET} "
            "measures nothing useful",
            file=sys.stderr,
        )
    size = (metadata.get("image_size") or [shape[-1] if isinstance(shape[-1], int) else 28])[-1]
    if "mean" in metadata and "std" in metadata:
        mean, std = metadata["mean"], metadata["std"]
    else:
        # adderconvert's Fashion-MNIST preprocessing: the mean of ImageNet's statistics on every channel.
        mean, std = [GRAY_MEAN] * 3, [GRAY_STD] * 3
        print("warning: the model has no normalisation metadata; using adderconvert's defaults", file=sys.stderr)
    classes = metadata.get("classes") or FASHION_MNIST_CLASSES

    count = min(args.images, 10_000)
    images, labels = load_images(count, size, mean, std)
    if args.save_inputs:
        images.astype("<f4").tofile(args.save_inputs)
    name = session.get_inputs()[0].name
    logits = np.concatenate([session.run(None, {name: images[i : i + 256]})[0] for i in range(0, count, 256)])
    if logits.shape[1] != len(FASHION_MNIST_CLASSES):
        print(f"error: the model has {logits.shape[1]} outputs, {DATASET} has 10 classes", file=sys.stderr)
        return 1
    predicted = logits.argmax(1)
    if args.predictions:
        with open(args.predictions, "w") as file:
            file.writelines(f"{i}\t{p}\t{classes[p]}\n" for i, p in enumerate(predicted))
    print(
        "first predictions: "
        + ", ".join(f"{classes[p]} ({FASHION_MNIST_CLASSES[t]})" for p, t in zip(predicted[:5], labels))
    )
    print(f"top-1 on {count} test images: {100 * (predicted == labels).mean():.2f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())

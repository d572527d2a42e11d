"""Run an exported adder model with plain ONNX Runtime, as a deployment would: register the custom-op
library and feed images. Only onnxruntime, numpy and the library path are needed at run time.

    python examples/ort_inference.py runs/demo/resnet18_adder.onnx
"""

import argparse
import sys

import numpy as np
import onnxruntime as ort

from adderconvert.runtime import get_library_path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="an .onnx file written by adderconvert (--export or export_onnx)")
    parser.add_argument("--threads", type=int, default=0, help="intra-op threads (0: ONNX Runtime's default)")
    parser.add_argument("--images", type=int, default=1000, help="Fashion-MNIST test images to classify")
    args = parser.parse_args()

    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    options.register_custom_ops_library(get_library_path())
    providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()]
    session = ort.InferenceSession(args.model, sess_options=options, providers=providers)
    shape = session.get_inputs()[0].shape
    print(f"{args.model}: input {shape}, providers {session.get_providers()}")

    from adderconvert.data import load_dataset

    test = load_dataset("fashion-mnist", image_size=shape[-1]).test
    count = min(args.images, len(test))
    images = np.stack([test[i][0].numpy() for i in range(count)])
    labels = np.array([test[i][1] for i in range(count)])
    logits = np.concatenate(
        [session.run(None, {session.get_inputs()[0].name: images[i : i + 256]})[0] for i in range(0, count, 256)]
    )
    print(f"top-1 on {count} test images: {100 * (logits.argmax(1) == labels).mean():.2f}%")


if __name__ == "__main__":
    sys.exit(main())

"""One fine-tuning step of the main job, adder model vs its CNN, side by side in one run.

A step is what `fit` does per batch: the teacher's forward (distillation), the student's forward and
backward, the adaptive learning rate and the optimizer step. ResNet-18 on Fashion-MNIST-sized images
(28x28), batch 128, on this machine's CPU threads or a GPU (`--device cuda`). `--amp` adds rows with
bfloat16 autocast (`fit`'s `--amp`: teacher and non-adder layers in bf16, adder layers in float32).

Usage: python benchmarks/train_step.py [--model resnet18] [--batch 128] [--image-size 28] [--repeats 10]
       [--device auto] [--amp]
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from adderconvert.app.pipeline import resolve_device  # noqa: E402
from adderconvert.architectures.cnn import build_model  # noqa: E402
from adderconvert.conversion import swap_layers  # noqa: E402
from adderconvert.nn import scale_adder_gradients_  # noqa: E402
from adderconvert.train import FeatureDistillation, TrainConfig, distillation_loss  # noqa: E402
from benchmarks._measure import time_call  # noqa: E402


def step_fn(student, teacher, images, labels, features: FeatureDistillation | None, adder: bool, amp: bool):
    optimizer = torch.optim.SGD(student.parameters(), lr=0.01, momentum=0.9)
    config = TrainConfig()
    autocast = torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=amp)

    def step() -> None:
        with autocast:
            with torch.no_grad():
                teacher_logits = teacher(images)
            loss = distillation_loss(student(images).float(), labels, teacher_logits.float())
            if features is not None:
                loss = loss + config.feature_kd * features.loss()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if adder:
            scale_adder_gradients_(student, config.eta)
        optimizer.step()
        if images.is_cuda:
            torch.cuda.synchronize()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--image-size", type=int, default=28)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--amp", action="store_true", help="also time each step under bf16 autocast")
    args = parser.parse_args()
    device = torch.device(resolve_device(args.device))
    torch.manual_seed(0)
    images = torch.randn(args.batch, 3, args.image_size, args.image_size)
    labels = torch.randint(0, 10, (args.batch,))
    teacher = build_model(args.model, 10).eval()
    cnn = copy.deepcopy(teacher).train().to(device)
    adder = swap_layers(copy.deepcopy(teacher), images[:32]).train().to(device)
    teacher.to(device)
    images, labels = images.to(device), labels.to(device)
    features = FeatureDistillation(adder, teacher)
    rows = []
    for amp in (False, True) if args.amp else (False,):
        suffix = ", bf16 autocast" if amp else ""
        rows += [
            (f"CNN (logit distillation){suffix}", step_fn(cnn, teacher, images, labels, None, False, amp)),
            (
                f"AdderNet (logit + feature distillation){suffix}",
                step_fn(adder, teacher, images, labels, features, True, amp),
            ),
        ]
    results = [(name, time_call(fn, args.repeats, warmup=2)) for name, fn in rows]
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{torch.get_num_threads()} CPU threads"
    print(f"{args.model}, batch {args.batch}, {args.image_size}x{args.image_size}, {where}, median of {args.repeats}\n")
    print("| model | step ms | images/s |")
    print("|---|---:|---:|")
    for name, ms in results:
        print(f"| {name} | {ms:.0f} | {args.batch / ms * 1e3:.0f} |")
    print(f"\nadder step / CNN step: {results[1][1] / results[0][1]:.2f}x")
    if args.amp:
        cnn_gain, adder_gain = results[0][1] / results[2][1], results[1][1] / results[3][1]
        print(f"bf16 autocast speed-up: CNN {cnn_gain:.2f}x, adder {adder_gain:.2f}x")


if __name__ == "__main__":
    main()

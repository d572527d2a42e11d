"""One fine-tuning step of the main job, adder model vs its CNN, side by side in one run.

A step is what `fit` does per batch: the teacher's forward (distillation), the student's forward and
backward, the adaptive learning rate and the optimizer step. ResNet-18 on Fashion-MNIST-sized images
(28x28), batch 128, on this machine's CPU threads.

Usage: python benchmarks/train_step.py [--model resnet18] [--batch 128] [--image-size 28] [--repeats 10]
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from adderconvert.conversion import convert  # noqa: E402
from adderconvert.models import build_model  # noqa: E402
from adderconvert.nn import scale_adder_gradients_  # noqa: E402
from adderconvert.train import FeatureDistillation, TrainConfig, distillation_loss  # noqa: E402
from benchmarks._measure import time_call  # noqa: E402


def step_fn(student, teacher, images, labels, features: FeatureDistillation | None, adder: bool):
    optimizer = torch.optim.SGD(student.parameters(), lr=0.01, momentum=0.9)
    config = TrainConfig()

    def step() -> None:
        with torch.no_grad():
            teacher_logits = teacher(images)
        loss = distillation_loss(student(images), labels, teacher_logits)
        if features is not None:
            loss = loss + config.feature_kd * features.loss()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if adder:
            scale_adder_gradients_(student, config.eta)
        optimizer.step()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--image-size", type=int, default=28)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    torch.manual_seed(0)
    images = torch.randn(args.batch, 3, args.image_size, args.image_size)
    labels = torch.randint(0, 10, (args.batch,))
    teacher = build_model(args.model, 10).eval()
    cnn = copy.deepcopy(teacher).train()
    adder = convert(copy.deepcopy(teacher), images[:32]).train()
    features = FeatureDistillation(adder, teacher)
    rows = [
        ("CNN (logit distillation)", step_fn(cnn, teacher, images, labels, None, False)),
        ("AdderNet (logit + feature distillation)", step_fn(adder, teacher, images, labels, features, True)),
    ]
    results = [(name, time_call(fn, args.repeats, warmup=2)) for name, fn in rows]
    print(
        f"{args.model}, batch {args.batch}, {args.image_size}x{args.image_size}, "
        f"{torch.get_num_threads()} CPU threads, median of {args.repeats}\n"
    )
    print("| model | step ms | images/s |")
    print("|---|---:|---:|")
    for name, ms in results:
        print(f"| {name} | {ms:.0f} | {args.batch / ms * 1e3:.0f} |")
    print(f"\nadder step / CNN step: {results[1][1] / results[0][1]:.2f}x")


if __name__ == "__main__":
    main()

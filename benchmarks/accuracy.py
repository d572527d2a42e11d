"""Fashion-MNIST accuracy of a ResNet-18 CNN vs its AdderNet: weight init choices x distillation.

The CNN teacher is trained once; each adder variant is converted from it and fine-tuned with the same
schedule (the fine-tuning defaults of adderconvert.train.TrainConfig unless overridden). Distillation
modes: off, logits (soft targets), features (soft targets and BatchNorm features, --feature-kd).
Usage: python benchmarks/accuracy.py [--device cuda] [--cnn-epochs 3] [--epochs 3] [--kd-modes off features]
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from adderconvert.architectures.cnn import build_model  # noqa: E402
from adderconvert.conversion import INIT_CHOICES, plan_conversion, swap_layers  # noqa: E402
from adderconvert.data import load_dataset  # noqa: E402
from adderconvert.train import TrainConfig, evaluate, fit  # noqa: E402
from adderconvert.train.distributed import DistributedContext  # noqa: E402

KD_MODES = {"off": "off", "logits": "logits", "features": "logits + features"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--cnn-epochs", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--cnn-lr", type=float, default=0.05)
    parser.add_argument("--lr", type=float, default=TrainConfig.lr)
    parser.add_argument("--eta", type=float, default=TrainConfig.eta)
    parser.add_argument("--feature-kd", type=float, default=5.0, help="the features mode's weight (the recipe: 0)")
    parser.add_argument("--max-steps", type=int, default=None, help="batches per epoch (for a quick look)")
    parser.add_argument("--inits", nargs="+", default=list(INIT_CHOICES), choices=INIT_CHOICES)
    parser.add_argument("--kd-modes", nargs="+", default=list(KD_MODES), choices=KD_MODES)
    parser.add_argument("--output", default="runs/accuracy")
    args = parser.parse_args()
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    ctx = DistributedContext(device=torch.device(args.device))
    splits = load_dataset("fashion-mnist")
    common = dict(batch_size=args.batch_size, max_steps=args.max_steps, progress=False)

    torch.manual_seed(0)
    started = time.perf_counter()
    teacher = build_model(args.model, splits.num_classes)
    fit(
        teacher,
        splits.train,
        splits.test,
        TrainConfig(epochs=args.cnn_epochs, lr=args.cnn_lr, kd=False, **common),
        ctx=ctx,
    )
    cnn_top1 = evaluate(teacher, splits.test, device=args.device)
    print(
        f"{args.model} CNN, {args.cnn_epochs} epochs: {cnn_top1:.2f}% ({time.perf_counter() - started:.0f}s)",
        flush=True,
    )

    example = torch.stack([splits.train[i][0] for i in range(64)])
    results = []
    for init in args.inits:
        for kd in args.kd_modes:
            started = time.perf_counter()
            student = copy.deepcopy(teacher).cpu()
            report = plan_conversion(student, example)
            swap_layers(student, None, init=init, report=report)
            history = fit(
                student,
                splits.train,
                splits.test,
                TrainConfig(
                    epochs=args.epochs,
                    lr=args.lr,
                    eta=args.eta,
                    kd=kd != "off",
                    feature_kd=args.feature_kd if kd == "features" else 0.0,
                    **common,
                ),
                teacher=teacher,
                ctx=ctx,
            )
            top1 = evaluate(student, splits.test, device=args.device)
            results.append(
                {
                    "init": init,
                    "kd": kd,
                    "adder_top1": top1,
                    "drop": cnn_top1 - top1,
                    "epoch_top1": [r.test_top1 for r in history],
                    "seconds": time.perf_counter() - started,
                }
            )
            print(f"init={init} distillation={kd}: {top1:.2f}% ({time.perf_counter() - started:.0f}s)", flush=True)

    print(
        f"\n{args.model} on Fashion-MNIST: CNN {cnn_top1:.2f}% after {args.cnn_epochs} epochs; adder models "
        f"fine-tuned {args.epochs} epochs from it ({args.device}; lr {args.lr}, eta {args.eta}, "
        f"feature distillation weight {args.feature_kd})\n"
    )
    print("| init | distillation | adder top-1 | vs CNN |")
    print("|---|---|---:|---:|")
    for r in results:
        print(f"| {r['init']} | {KD_MODES[r['kd']]} | {r['adder_top1']:.2f}% | {-r['drop']:+.2f} |")
    payload = {"model": args.model, "cnn_top1": cnn_top1, "args": vars(args), "results": results}
    (out / "accuracy.json").write_text(json.dumps(payload, indent=2) + "\n")


if __name__ == "__main__":
    main()

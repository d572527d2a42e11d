"""The Python API in a plain training loop: convert a CNN with the one call (``adderconvert.convert``, as the main
job does), evaluate it before any step, fine-tune it with the adaptive learning rate and distillation from the
CNN's logits (the recipe's settings, read from ``TrainConfig``), evaluate.

    python examples/convert_finetune.py --steps 300
"""

import argparse

import torch
import torchvision
from torch.utils.data import DataLoader

import adderconvert
from adderconvert.data import load_dataset
from adderconvert.train import TrainConfig, build_optimizer, distillation_loss, evaluate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300, help="training steps for the CNN and for the adder model")
    parser.add_argument("--batch-size", type=int, default=128)
    args = parser.parse_args()
    torch.manual_seed(0)

    data = load_dataset("fashion-mnist")  # Debian's dataset-fashion-mnist
    loader = DataLoader(data.train, batch_size=args.batch_size, shuffle=True, drop_last=True)

    def batches():
        while True:
            yield from loader

    # 1. A CNN teacher (offline, so trained here briefly instead of torchvision's pretrained weights).
    cnn = torchvision.models.resnet18(num_classes=data.num_classes)
    opt = torch.optim.SGD(cnn.parameters(), lr=0.05, momentum=0.9)
    cnn.train()
    for _, (x, y) in zip(range(args.steps), batches()):
        loss = torch.nn.functional.cross_entropy(cnn(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    print(f"CNN top-1: {evaluate(cnn, data.test):.2f}%")

    # 2. Convert: every conv but the stem becomes an AdderConv2d, each just past its inputs' range so that it
    #    computes a binary-weight copy of the conv, then refitted to the CNN's outputs. The CNN stays as it was.
    calibration = next(iter(DataLoader(data.train, batch_size=1024, shuffle=True)))[0]
    cnn.eval()
    adder = adderconvert.convert(cnn, calibration, log=lambda line: print(line.splitlines()[-1]))
    print(f"AdderNet top-1 before any step: {evaluate(adder, data.test):.2f}%")

    # 3. Fine-tune: distillation of the CNN's logits, the adaptive LR applied to adder gradients before each step.
    #    The settings are the recipe's (TrainConfig's defaults, which the main job uses); build_optimizer gives the
    #    adder weights their own learning rate (adder_lr_scale times lr) and a warm-up + cosine schedule.
    recipe = TrainConfig()
    opt, schedule = build_optimizer(adder, recipe, total_steps=args.steps)
    adder.train()
    for step, (x, y) in zip(range(args.steps), batches()):
        with torch.no_grad():
            teacher_logits = cnn(x)
        loss = distillation_loss(adder(x), y, teacher_logits, recipe.kd_alpha, recipe.kd_temperature)
        opt.zero_grad()
        loss.backward()
        adderconvert.scale_adder_gradients_(adder, eta=recipe.eta)
        opt.step()
        schedule.step()
        if step % 50 == 0:
            print(f"step {step}: loss {loss.item():.3f}")
    print(f"AdderNet top-1: {evaluate(adder, data.test):.2f}%")


if __name__ == "__main__":
    main()

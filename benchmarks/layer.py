"""Forward+backward time and peak memory of AdderConv2d vs the official-style AdderNet layer (CPU).

Each measurement runs in its own process so that peak RSS belongs to one implementation only.
Usage: python benchmarks/layer.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._measure import peak_rss_mb, rss_mb, run_child, time_call  # noqa: E402

# (name, batch, channels, size): 3x3, stride 1, padding 1, channels -> channels.
SHAPES = [
    ("ResNet-20 stage 1", 64, 16, 32),
    ("ResNet-20 stage 2", 64, 32, 16),
    ("ResNet-20 stage 3", 64, 64, 8),
    ("ResNet-50 stage 1", 8, 64, 56),
    ("ResNet-50 stage 2", 8, 128, 28),
    ("ResNet-50 stage 3", 8, 256, 14),
    ("ResNet-50 stage 4", 8, 512, 7),
]


def child(impl: str, batch: int, channels: int, size: int, repeats: int) -> dict:
    import torch

    from adderconvert.nn.functional import adder_conv2d
    from adderconvert.nn.reference import reference_adder_conv2d

    def make_step(batch, channels, size):
        x = torch.randn(batch, channels, size, size, requires_grad=True)
        w = torch.randn(channels, channels, 3, 3, requires_grad=True)
        grad = torch.randn(batch, channels, size, size)

        def step():
            x.grad = w.grad = None
            if impl == "ours":
                y = adder_conv2d(x, w, padding=1)
            else:
                y = reference_adder_conv2d(x, w, None, (1, 1), (1, 1, 1, 1), (1, 1), 1)
            y.backward(grad)

        return step

    torch.manual_seed(0)
    make_step(2, 4, 6)()  # loads libraries and starts thread pools outside the measured peak
    step = make_step(batch, channels, size)
    before = rss_mb()
    ms = time_call(step, repeats=repeats)
    return {"ms": ms, "peak_mb": peak_rss_mb() - before}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="only the ResNet-20 shapes")
    parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        impl, *numbers = args.child
        print(json.dumps(child(impl, *map(int, numbers))))
        return

    import torch

    shapes = SHAPES[:3] if args.quick else SHAPES
    print(f"CPU, {torch.get_num_threads()} threads, float32, 3x3 stride 1 padding 1, forward+backward\n")
    print("| layer | input | official ms | ours ms | speed-up | official peak MiB | ours peak MiB | memory ratio |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for name, batch, channels, size in shapes:
        params = [str(batch), str(channels), str(size)]
        official = run_child(Path(__file__), ["official", *params, "2"])
        ours = run_child(Path(__file__), ["ours", *params, "5"])
        print(
            f"| {name} | {batch}x{channels}x{size}x{size} | {official['ms']:.0f} | {ours['ms']:.1f} "
            f"| {official['ms'] / ours['ms']:.1f}x | {official['peak_mb']:.0f} | {ours['peak_mb']:.0f} "
            f"| 1/{official['peak_mb'] / max(ours['peak_mb'], 1):.0f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()

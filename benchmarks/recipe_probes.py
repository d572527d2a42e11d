"""Probes of the fine-tuning recipe that are not in the package: benchmarks/recipes.py with one change applied, and
how far fine-tuning moved each adder layer's weights.

  python benchmarks/recipe_probes.py step-scale [--width-ref 48] RECIPES_ARGS...
      the adaptive LR's step of each adder layer times max(1, input span / width_ref), the span measured at
      planning (input_max - input_min), so that layers whose inputs span far more than a BatchNorm'd input's move
      as far relative to their scale;
  python benchmarks/recipe_probes.py no-stochastic-depth RECIPES_ARGS...
      torchvision's StochasticDepth off (p = 0) in the converted model: its norm statistics, fine-tuning and
      BatchNorm re-estimation;
  python benchmarks/recipe_probes.py fit-images [--images 1024] RECIPES_ARGS...
      the reconstruction fitted on the first N calibration images (the conversion's default: the 256 planning
      images; its plan and norm statistics unchanged);
  python benchmarks/recipe_probes.py channel-edges RECIPES_ARGS...
      after the conversion, every saturated adder weight moved from the layer's edge to its own input channel's
      (that channel's range on the planning images, beyond it by the sign init's margin and gap): the same
      binary-weight function (the norm after the layer takes the change of constant), with each weight as near
      its inputs as the init allows, so that fine-tuning can move it into their range;
  python benchmarks/recipe_probes.py equalize [--power 1.0] RECIPES_ARGS...
      before the conversion, a copy of the CNN rescaled without changing its function: every input channel of a conv
      that reads BatchNorm -> (ReLU) -> conv alone is scaled by its columns' mean magnitude (to the power --power),
      the BatchNorm's scale and shift taking the inverse, so that the binary weights' per-row scale times it is a
      rank-1 magnitude of the CNN's weights;
  python benchmarks/recipe_probes.py depthwise-bases [--count 4] RECIPES_ARGS...
      every converted depthwise conv gets COUNT binary bases, the other adder layers the recipe's (a depthwise
      channel's binary copy keeps nine signs; these layers are a small share of the MACs, so their extra bases
      cost few additions);
  python benchmarks/recipe_probes.py bases-fidelity --models M... [--counts 1 2 3 4] [--teacher-epochs 8]
      per model (its CNN from the recipes' teacher cache, trained there if missing), converted as the main job
      converts with each count of binary bases: the zero-step top-1, and how often the adder model's top-1 class is
      the CNN's on the calibration images the conversion read and on as many training images it did not;
  python benchmarks/recipe_probes.py displacement MODEL FOLDER
      per adder layer of FOLDER/MODEL.pt (a recipes.py output), the spread of its weights at zero steps
      (MODEL_cnn.pt converted again as the main job converts) and the RMS and relative size of what fine-tuning
      changed.

RECIPES_ARGS are benchmarks/recipes.py's (e.g. --budget cpu --threads 1 --teacher-epochs 8 --models efficientnet_b0
--output runs/recipes/probe). Results: docs/results/recipes_cpu_converged.md.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import sys
from pathlib import Path

import torch
from torchvision.ops import StochasticDepth

sys.path.insert(0, str(Path(__file__).resolve().parent))
import recipes  # noqa: E402

import adderconvert.conversion.recipe as conversion_recipe  # noqa: E402
import adderconvert.train.loop as loop  # noqa: E402
from adderconvert.app.pipeline import RunConfig, convert_trained, draw_calibration_images  # noqa: E402
from adderconvert.checkpoint import load_checkpoint  # noqa: E402
from adderconvert.conversion import PLAN_IMAGES, SIGN_MARGIN, SIGN_MIN_GAP, norms_after_adders, run_hooked  # noqa: E402
from adderconvert.data import load_dataset  # noqa: E402
from adderconvert.nn import AdderConv2d, scale_adder_gradients_  # noqa: E402
from adderconvert.train.diagnostics import _per_weight  # noqa: E402 (the per-tap layout of a weight)
from adderconvert.train.distributed import DistributedContext  # noqa: E402


def step_scale(width_ref: float) -> None:
    """Patch recipes.py's conversion and the training loop's adaptive LR for the ``step-scale`` probe."""
    convert = recipes.convert_student

    def convert_student(*args, **kwargs):
        student, report, row = convert(*args, **kwargs)
        for decision in report.converted:
            span = decision.input_max - decision.input_min
            student.get_submodule(decision.name).step_factor = max(1.0, span / width_ref)
        factors = sorted(round(m.step_factor, 2) for m in student.modules() if isinstance(m, AdderConv2d))
        print(f"step factors: {factors}", flush=True)
        return student, report, row

    def scaled(model, eta):
        for module in model.modules():
            if isinstance(module, AdderConv2d):  # the package's rule, per layer, at eta times the layer's factor
                scale_adder_gradients_(module, eta * getattr(module, "step_factor", 1.0))

    recipes.convert_student = convert_student
    loop.scale_adder_gradients_ = scaled


def no_stochastic_depth() -> None:
    """Patch recipes.py's conversion for the ``no-stochastic-depth`` probe: stochastic depth is switched off in the
    teacher (where eval mode ignores it) before the conversion copies it."""
    convert = recipes.convert_student

    def convert_student(name, teacher, *args, **kwargs):
        found = [m for m in teacher.modules() if isinstance(m, StochasticDepth)]
        for module in found:
            module.p = 0.0  # the teacher evaluates in eval mode, where p does nothing
        print(f"stochastic depth off in {len(found)} modules", flush=True)
        return convert(name, teacher, *args, **kwargs)

    recipes.convert_student = convert_student


def fit_images(count: int) -> None:
    """Patch the conversion for the ``fit-images`` probe: the reconstruction reads the first ``count`` calibration
    images, not the planning ones."""
    drawn = []
    calibration_images, reconstruction_images = (
        conversion_recipe.calibration_images,
        conversion_recipe._reconstruction_images,
    )

    def keep_calibration(*args):
        drawn.append(calibration_images(*args))
        return drawn[-1]

    def first_images(report, planning):
        images = reconstruction_images(report, drawn[-1][:count])
        print(f"reconstruction on {len(images)} of {len(drawn[-1])} calibration images", flush=True)
        return images

    conversion_recipe.calibration_images = keep_calibration
    conversion_recipe._reconstruction_images = first_images


@torch.no_grad()
def move_to_channel_edges(model: torch.nn.Module, images: torch.Tensor, margin: float = SIGN_MARGIN) -> int:
    """Move each adder weight of ``model`` that lies beyond its input channel's range on ``images`` (zero, the
    padding, included) to that channel's edge, ``margin`` of its span and at least SIGN_MIN_GAP beyond; the
    running mean of the norm after the layer takes the change of constant, so that the model computes the same.
    Returns the number of weights moved."""
    lows, highs = {}, {}

    def observe(name):
        def hook(module, inputs):
            x = inputs[0].transpose(0, 1).flatten(1)
            low, high = x.amin(1), x.amax(1)
            lows[name] = torch.minimum(lows.get(name, low), low)
            highs[name] = torch.maximum(highs.get(name, high), high)

        return hook

    adders = {n: m for n, m in model.named_modules() if isinstance(m, AdderConv2d)}
    run_hooked(model, images.split(128), [m.register_forward_pre_hook(observe(n)) for n, m in adders.items()])
    norms, modules, moved = norms_after_adders(model, images[:2]), dict(model.named_modules()), 0
    for name, layer in adders.items():
        norm = modules.get(norms.get(name, ""))
        if norm is None or not hasattr(norm, "running_mean"):
            raise ValueError(f"{name}: no BatchNorm after it to take the change of constant")
        if layer.bases != 1:
            raise ValueError(f"{name}: the channel-edges probe moves the weights of one-base adder layers only")
        if name not in lows:
            continue
        low, high = lows[name].clamp(max=0), highs[name].clamp(min=0)
        gap = torch.clamp(margin * (high - low), min=SIGN_MIN_GAP)
        taps = layer.kernel_size[0] * layer.kernel_size[1]  # per channel -> per tap, laid out like the weight
        lower, upper = _per_weight(layer, (low - gap).repeat_interleave(taps), (high + gap).repeat_interleave(taps))
        weight = layer.weight
        new = torch.where(weight > upper, upper, torch.where(weight < lower, lower, weight))
        moved += int((new != weight).sum())
        # Saturated taps compute sign(w) x - |w|: the output rises by the sum of |w| given up.
        rise = (weight.abs() - new.abs()).flatten(1).sum(1)
        weight.copy_(new)
        norm.running_mean.add_(rise)
    return moved


def channel_edges() -> None:
    """Patch recipes.py's conversion for the ``channel-edges`` probe."""
    convert = recipes.convert_student

    def convert_student(name, teacher, splits, test_set, ctx, conversion, *args, **kwargs):
        student, report, row = convert(name, teacher, splits, test_set, ctx, conversion, *args, **kwargs)
        images = draw_calibration_images(splits, RunConfig.seed, PLAN_IMAGES).to(ctx.device)
        moved = move_to_channel_edges(student, images)
        before = row["zero_step_top1"]
        row["zero_step_top1"] = recipes.CLASSIFICATION.evaluate(student, test_set, device=ctx.device)["top1"]
        total = sum(m.weight.numel() for m in student.modules() if isinstance(m, AdderConv2d))
        print(f"channel edges: {moved} of {total} weights moved; zero steps {before:.2f}% -> "
              f"{row['zero_step_top1']:.2f}%", flush=True)  # fmt: skip
        return student, report, row

    recipes.convert_student = convert_student


def _consumers(roots) -> dict:
    """How many edges of the autograd graph under ``roots`` lead into each node."""
    count, seen, stack = {}, set(), list(roots)
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        for child, _ in node.next_functions:
            if child is not None:
                count[child] = count.get(child, 0) + 1
                stack.append(child)
    return count


@torch.no_grad()
def equalize_columns(model: torch.nn.Module, example: torch.Tensor, power: float = 1.0) -> list[str]:
    """Rescale, in place and without changing the function, every conv of ``model`` whose input is a BatchNorm's
    output (through a ReLU) read by nothing else: input channel c of the conv is multiplied by s_c (its weights
    divided), the BatchNorm's scale and shift by s_c, with s_c the mean magnitude of the conv's weights reading
    channel c to the power ``power`` (geometric mean 1). Returns the convs rescaled."""
    norms, inputs = {}, {}
    hooks = []
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            hooks.append(module.register_forward_hook(lambda m, i, o: norms.__setitem__(o.grad_fn, m)))
        elif isinstance(module, torch.nn.Conv2d):
            hooks.append(module.register_forward_pre_hook(lambda m, i, n=name: inputs.__setitem__(n, i[0].grad_fn)))
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            out = model(example.clone().requires_grad_())
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    count = _consumers([out.grad_fn])
    done = []
    for name, node in inputs.items():
        if node is None or count.get(node, 0) != 1:
            continue
        if type(node).__name__.startswith("ReluBackward"):
            node = node.next_functions[0][0]
            if count.get(node, 0) != 1:
                continue
        norm = norms.get(node)
        conv = model.get_submodule(name)
        if norm is None or norm.num_features != conv.in_channels or conv.padding_mode != "zeros":
            continue
        groups, cin = conv.groups, conv.in_channels // conv.groups
        w = conv.weight.view(groups, conv.out_channels // groups, cin, -1)  # (G, O/G, cin, kk)
        magnitude = w.abs().mean((1, 3)).reshape(-1).clamp_min(1e-12) ** power  # per input channel
        scale = magnitude / magnitude.log().mean().exp()
        norm.weight.mul_(scale)
        norm.bias.mul_(scale)
        w.div_(scale.view(groups, 1, cin, 1))
        done.append(name)
    return done


def equalize(power: float) -> None:
    """Patch recipes.py's conversion for the ``equalize`` probe: the conversion reads an equalized copy of the CNN."""
    convert = recipes.convert_student

    def convert_student(name, teacher, *args, **kwargs):
        equalized = copy.deepcopy(teacher)
        example = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
        done = equalize_columns(equalized, example.to(next(teacher.parameters()).device), power)
        print(f"equalized {len(done)} convs: {done}", flush=True)
        return convert(name, equalized, *args, **kwargs)

    recipes.convert_student = convert_student


def depthwise_bases(count: int) -> None:
    """Patch the conversion for the ``depthwise-bases`` probe: converted depthwise convs get ``count`` bases."""
    swap = conversion_recipe.swap_layers

    def swap_layers(model, *args, report, **kwargs):
        changed = [d.name for d in report.converted if d.depthwise]
        for decision in report.converted:
            decision.bases = count if decision.depthwise else decision.bases
        print(f"{count} bases on {len(changed)} depthwise adder layers: {changed}", flush=True)
        return swap(model, *args, report=report, **kwargs)

    conversion_recipe.swap_layers = swap_layers


@torch.no_grad()
def _top1(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """``model``'s top-1 class of each of ``images``, in batches of 256."""
    return torch.cat([model(batch).argmax(1) for batch in images.split(256)])


def _agreement(student: torch.nn.Module, reference: torch.Tensor, images: torch.Tensor) -> float:
    """The share of ``images`` on which ``student``'s top-1 class is ``reference``'s (another model's :func:`_top1`)."""
    return int((_top1(student, images) == reference).sum()) / len(images)


def bases_fidelity(names: list[str], counts: list[int], teacher_epochs: int, teachers: Path) -> None:
    """Print, per model of ``names`` (its CNN from the recipes' cache, ``teacher_epochs`` epochs at the cpu budget)
    and per count of ``counts``, the main job's conversion with that many bases: zero-step top-1, the top-1
    agreement with the CNN on the calibration images and on as many unseen training images, the MACs converted."""
    budget = dataclasses.replace(recipes.BUDGETS["cpu"], cnn_epochs=teacher_epochs)
    splits = load_dataset("fashion-mnist", image_size=budget.image_size)
    ctx = DistributedContext()
    calibration = draw_calibration_images(splits, RunConfig.seed)
    order = torch.randperm(len(splits.train), generator=torch.Generator().manual_seed(RunConfig.seed))
    unseen = torch.stack([splits.train[int(i)][0] for i in order[len(calibration) : 2 * len(calibration)]])
    print(
        "| model | bases | CNN | zero steps (% of CNN) | top-1 agreement, calibration images | unseen training "
        "images | MACs converted, 224 px |\n|---|---:|---:|---:|---:|---:|---:|",
        flush=True,
    )
    for name in names:
        teacher, row = recipes.train_teacher(name, budget, splits, splits.test, ctx, teachers)
        teacher.eval()
        references = _top1(teacher, calibration), _top1(teacher, unseen)
        for count in counts:
            student, _, zero = recipes.convert_student(name, teacher, splits, splits.test, ctx, {"bases": count})
            student.eval()
            print(
                f"| {name} | {count} | {row['cnn_top1']:.2f}% | {zero['zero_step_top1']:.2f}% "
                f"({100 * zero['zero_step_top1'] / row['cnn_top1']:.1f}%) | "
                f"{100 * _agreement(student, references[0], calibration):.2f}% | "
                f"{100 * _agreement(student, references[1], unseen):.2f}% | "
                f"{100 * zero[f'converted_macs_share_{recipes.DEPLOYMENT_SIZE}']:.0f}% |",
                flush=True,
            )


def displacement(name: str, folder: Path) -> None:
    """Print, per adder layer, how far fine-tuning moved its weights against their zero-step spread."""
    splits = load_dataset("fashion-mnist", image_size=32)
    teacher = recipes.build_model(name, splits.num_classes)
    teacher.load_state_dict(load_checkpoint(folder / f"{name}_cnn.pt")["model"])
    zero = convert_trained(teacher.eval(), splits, RunConfig(progress=False), DistributedContext(), log=False).model
    tuned = load_checkpoint(folder / f"{name}.pt")["model"]
    print("| layer | weight std at zero steps | RMS change | change / zero-step norm |\n|---|---:|---:|---:|")
    for layer_name, module in zero.named_modules():
        if isinstance(module, AdderConv2d):
            before = module.weight.detach()
            change = tuned[f"{layer_name}.weight"] - before
            print(
                f"| {layer_name} | {float(before.std()):.2f} | {float(change.pow(2).mean().sqrt()):.3f} | "
                f"{float(change.norm() / before.norm()):.4f} |"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "probe",
        choices=(
            "step-scale",
            "no-stochastic-depth",
            "fit-images",
            "channel-edges",
            "equalize",
            "depthwise-bases",
            "bases-fidelity",
            "displacement",
        ),
    )
    parser.add_argument("--width-ref", type=float, default=48.0, help="step-scale: the input span of factor 1")
    parser.add_argument("--power", type=float, default=1.0, help="equalize: the power of the columns' magnitude")
    parser.add_argument("--images", type=int, default=1024, help="fit-images: calibration images the fit reads")
    parser.add_argument("--count", type=int, default=4, help="depthwise-bases: bases per depthwise adder layer")
    parser.add_argument("--counts", type=int, nargs="+", default=[1, 2, 3, 4], help="bases-fidelity: bases counts")
    args, rest = parser.parse_known_args()
    torch.set_num_threads(1)
    if args.probe == "bases-fidelity":
        probe = argparse.ArgumentParser(prog="bases-fidelity")
        probe.add_argument("--models", nargs="+", required=True)
        probe.add_argument("--teacher-epochs", type=int, default=8)
        probe.add_argument("--teachers", type=Path, default=Path.home() / ".cache" / "adderconvert" / "teachers")
        known = probe.parse_args(rest)
        bases_fidelity(known.models, args.counts, known.teacher_epochs, known.teachers)
        return
    if args.probe == "displacement":
        if len(rest) != 2:
            parser.error("displacement takes MODEL FOLDER")
        displacement(rest[0], Path(rest[1]))
        return
    if args.probe == "step-scale":
        step_scale(args.width_ref)
    elif args.probe == "fit-images":
        fit_images(args.images)
    elif args.probe == "channel-edges":
        channel_edges()
    elif args.probe == "equalize":
        equalize(args.power)
    elif args.probe == "depthwise-bases":
        depthwise_bases(args.count)
    else:
        no_stochastic_depth()
    sys.argv = [sys.argv[0], *rest]
    recipes.main()


if __name__ == "__main__":
    main()

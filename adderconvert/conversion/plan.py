"""Planning a conversion: which ``nn.Conv2d`` layers of a CNN become adder layers, and what each one's inputs
look like on calibration images (range, scale, the binary-weight twin's error).

:func:`plan_conversion` is a dry run with a report (:class:`ConversionReport`); :func:`norms_after_adders`
finds the norm after each adder layer. AdderNets need a normalisation after every adder layer, so the plan
marks where one is inserted: a converted conv not followed by one. "The norm after a layer" is the leaf
module that runs next in one forward pass, the same rule for conversion, feature distillation and anything
else that asks. A ``FrozenBatchNorm2d`` after a converted conv (torchvision's pretrained detectors) counts as its
BatchNorm: the swap makes it a trainable ``BatchNorm2d``.

Prediction convs (a segmentation model's classifier, a detector's class logits and box regression) are found by
data flow: convs whose output no layer with weights reads (:func:`prediction_convs`).

Without an example batch, the model runs on standard-normal images with the channels of its first conv,
at the first of :data:`DEFAULT_INPUT_SIZES` it accepts (224, ImageNet's, for torchvision's models).
"""

from __future__ import annotations

import fnmatch
import inspect
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

from adderconvert.conversion.observers import RangeObserver
from adderconvert.nn import AdderConv2d

__all__ = [
    "DEFAULT_INPUT_SIZES",
    "KEEP_KINDS",
    "ConversionReport",
    "LayerDecision",
    "conv_macs_at",
    "is_depthwise",
    "is_image_list",
    "norms_after_adders",
    "plan_conversion",
    "prediction_convs",
    "run_hooked",
]

_POOLS = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
# Leaves whose output, on a pooled vector, is a pooled vector still (a squeeze-excitation branch's layers).
_ON_POOLED = (nn.Conv2d, nn.ReLU, nn.ReLU6, nn.SiLU, nn.Hardswish, nn.Hardsigmoid, nn.Sigmoid, nn.GELU, nn.Identity)
# Square image sizes tried in order when no example batch is given; the first the model accepts is used.
DEFAULT_INPUT_SIZES = (224, 32, 28, 64, 96, 299)
_NORMS = (nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm, nn.InstanceNorm2d, nn.SyncBatchNorm)
# What takes an adder layer's scale and constant when it follows the conv: a BatchNorm, or a frozen one that the
# swap turns into a BatchNorm.
_BATCHNORMS = (nn.modules.batchnorm._BatchNorm, FrozenBatchNorm2d)


@dataclass
class LayerDecision:
    """What happens to one ``nn.Conv2d``."""

    name: str
    in_channels: int
    out_channels: int
    kernel_size: tuple[int, int]
    stride: tuple[int, int]
    groups: int
    macs: int
    convert: bool
    rule: str
    insert_bn: bool = False
    input_std: float = 1.0
    input_min: float = 0.0
    input_max: float | None = None  # None: not measured (reports written before it was)
    # 1 - r^2 between the conv's output and that of its binary-weight twin (sign(W)), mean over output
    # channels, on the planning batch: what a function-preserving (`sign`) conversion loses in this layer.
    sign_error: float | None = None
    supported: bool = True  # False: adder layers cannot replace it (Conv1d, Conv3d, transposed, non-zero padding)
    # The BatchNorm (or FrozenBatchNorm2d) right after the conv, which takes the adder layer's scale and constant;
    # None where there is none (and one is inserted).
    norm: str | None = None
    # The CNN's conv was frozen (requires_grad False, as pretrained detectors freeze early backbone layers): the
    # adder layer and its norm are trained all the same.
    frozen: bool = False
    # Binary bases of the adder layer (AdderConv2d's ``bases``): 1, or 2 for twice the additions and a closer fit.
    bases: int = 1

    @property
    def depthwise(self) -> bool:
        """Whether the conv is depthwise (:func:`is_depthwise`)."""
        return is_depthwise(self)

    @property
    def stem_over_ceiling(self) -> bool:
        """Whether this is a stem converted because it alone passes the keep ceiling (:func:`plan_conversion`)."""
        return self.rule.startswith(STEM_OVER_CEILING)


@dataclass
class ConversionReport:
    """Per-layer decisions and totals of a conversion."""

    model: str
    layers: list[LayerDecision] = field(default_factory=list)

    @property
    def converted(self) -> list[LayerDecision]:
        return [layer for layer in self.layers if layer.convert]

    @property
    def total_macs(self) -> int:
        return sum(layer.macs for layer in self.layers)

    @property
    def converted_macs(self) -> int:
        return sum(layer.macs for layer in self.converted)

    def to_dict(self) -> dict:
        return {
            "model": self.model,
            "converted_layers": len(self.converted),
            "kept_layers": len(self.layers) - len(self.converted),
            "converted_macs": self.converted_macs,
            "total_conv_macs": self.total_macs,
            "layers": [asdict(layer) for layer in self.layers],
        }

    @classmethod
    def from_dict(cls, data: dict) -> ConversionReport:
        """The report :meth:`to_dict` wrote (totals are recomputed, not read)."""
        tuples = ("kernel_size", "stride")
        names = set(LayerDecision.__dataclass_fields__)
        layers = [
            LayerDecision(**{k: tuple(v) if k in tuples else v for k, v in row.items() if k in names})
            for row in data["layers"]
        ]
        return cls(data["model"], layers)

    def table(self, part_of: Callable[[str], str] | None = None) -> str:
        """A plain-text table of every conv and the totals; with ``part_of`` (a layer name -> the part of the
        model it belongs to, e.g. backbone, neck, head) the totals of each part too."""
        header = f"{'layer':<40} {'shape':>14} {'kernel':>7} {'stride':>6} {'groups':>6} {'MMACs':>9}  decision"
        lines = [header, "-" * len(header)]
        for layer in self.layers:
            shape = f"{layer.in_channels}->{layer.out_channels}"
            kernel = "x".join(map(str, layer.kernel_size))
            stride = "x".join(map(str, layer.stride))
            action = "adder" if layer.convert else "kept" if layer.supported else "not supported"
            action += f" x{layer.bases} bases" if layer.convert and layer.bases > 1 else ""
            bn = " +BN" if layer.insert_bn else ""
            thawed = ", frozen in the CNN: trained" if layer.convert and layer.frozen else ""
            lines.append(
                f"{layer.name:<40} {shape:>14} {kernel:>7} {stride:>6} {layer.groups:>6} "
                f"{layer.macs / 1e6:>9.2f}  {action}{bn} ({layer.rule}{thawed})"
            )
        lines.append("-" * len(header))
        if part_of is not None:
            parts: dict[str, list[LayerDecision]] = {}
            for layer in self.layers:
                parts.setdefault(part_of(layer.name), []).append(layer)
            lines.extend(f"{part + ':':<10}{_totals(layers)}" for part, layers in parts.items())
        lines.append(_totals(self.layers))
        return "\n".join(lines)


def _totals(layers: Sequence[LayerDecision]) -> str:
    converted = [layer for layer in layers if layer.convert]
    done, total = sum(layer.macs for layer in converted), sum(layer.macs for layer in layers)
    return (
        f"{len(converted)} of {len(layers)} convs to adder layers: {done / 1e6:.1f} of {total / 1e6:.1f} M "
        f"multiply-accumulates ({100 * done / max(total, 1):.1f}%) become additions"
    )


def _sign_error(conv: nn.Conv2d, x: torch.Tensor, y: torch.Tensor) -> float:
    """1 - r^2 of ``conv``'s output ``y`` against its binary-weight twin's on ``x``, mean over channels
    whose output varies."""
    twin = F.conv2d(x, torch.sign(conv.weight), None, conv.stride, conv.padding, conv.dilation, conv.groups)
    a = y.detach().float().transpose(0, 1).flatten(1)
    b = twin.float().transpose(0, 1).flatten(1)
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    var_a, var_b = (a * a).sum(1), (b * b).sum(1)
    alive = (var_a > 1e-12 * var_a.max().clamp_min(1e-30)) & (var_b > 0)
    if not alive.any():
        return 0.0
    r = (a * b).sum(1)[alive] / (var_a[alive] * var_b[alive]).sqrt()
    return float((1 - r * r).mean())


def _trace_leaves(model: nn.Module, example_input: torch.Tensor, measure: bool = False):
    """Run the model once; return leaf modules in execution order with input std, input minimum (convs only), input and
    output shapes and a dict: ``pooled`` (the leaf reads a globally pooled vector: an adaptive pool's 1x1 output,
    through activations and other such leaves only) and (``measure``) what planning measures on convs:
    ``input_max`` and ``sign_error``."""
    order: list[tuple[str, nn.Module, float, float, torch.Size, torch.Size, dict]] = []
    names = {module: name for name, module in model.named_modules()}
    hooks = []
    pooled: list[torch.Tensor] = []  # tensors derived from pooled vectors, kept alive so that their ids stay theirs

    def hook(module, inputs, output):
        x = inputs[0] if inputs and isinstance(inputs[0], torch.Tensor) else None
        std = float(x.detach().float().std()) if x is not None and x.numel() > 1 else 1.0
        low, high = 0.0, None  # the input range, measured on convs only (planning reads no other)
        if x is not None and isinstance(module, nn.modules.conv._ConvNd):
            observer = RangeObserver()
            observer.observe(x)
            if observer.observed:
                low, high = observer.range()
        shape = output.shape if isinstance(output, torch.Tensor) else torch.Size()
        extra = {"pooled": x is not None and any(x is t for t in pooled)}
        is_global_pool = isinstance(module, _POOLS) and len(shape) == 4 and tuple(shape[-2:]) == (1, 1)
        if isinstance(output, torch.Tensor) and (
            is_global_pool or (extra["pooled"] and isinstance(module, _ON_POOLED))
        ):
            pooled.append(output)
        if measure and isinstance(module, nn.Conv2d) and high is not None:
            extra["input_max"] = high
            if module.padding_mode == "zeros" and isinstance(output, torch.Tensor):
                extra["sign_error"] = _sign_error(module, x, output)
        order.append((names[module], module, std, low, x.shape if x is not None else torch.Size(), shape, extra))

    for module in model.modules():
        if not list(module.children()):
            hooks.append(module.register_forward_hook(hook))
    run_hooked(model, example_input, hooks)
    return order


def takes_targets(module: nn.Module) -> bool:
    """Whether ``module``'s forward takes ``targets``: torchvision's detectors and their parts (the transform, the
    region proposal network, the RoI heads), which in training mode compute their losses and need targets."""
    try:
        return "targets" in inspect.signature(module.forward).parameters
    except (TypeError, ValueError):  # a forward without a readable signature
        return False


def is_image_list(batch: object) -> bool:
    """Whether ``batch`` is a list (or tuple) of image tensors (C, H, W), as detection models take them."""
    return (
        isinstance(batch, (list, tuple))
        and len(batch) > 0
        and all(isinstance(t, torch.Tensor) and t.dim() == 3 for t in batch)
    )


def run_hooked(
    model: nn.Module,
    batches: torch.Tensor | Iterable | Callable[[nn.Module], object],
    hooks: Sequence[torch.utils.hooks.RemovableHandle],
    device: str | torch.device | None = None,
) -> int:
    """Run ``model`` in eval mode without gradients on ``batches`` (one tensor, an iterable of image tensors,
    lists of image tensors (C, H, W) as detection models take them, or ``(images, targets)`` pairs of either, moved
    to ``device`` when given, or a callable ``forward_loop(model)`` that runs it itself) for what its ``hooks``
    record; then remove the hooks and give the model back its mode, whatever happened. Returns the number of
    batches run (1 for a forward loop)."""
    was_training = model.training
    model.eval()
    seen = 0
    try:
        with torch.no_grad():
            if callable(batches) and not isinstance(batches, (torch.Tensor, Iterable)):
                batches(model)
                return 1
            if not isinstance(batches, (torch.Tensor, Iterable)):
                raise TypeError(
                    "batches must be a tensor of images, an iterable of batches (a DataLoader) or a callable "
                    f"forward_loop(model); got {type(batches).__name__}"
                )
            for batch in [batches] if isinstance(batches, torch.Tensor) else batches:
                images = batch[0] if isinstance(batch, (tuple, list)) and batch and not is_image_list(batch) else batch
                if is_image_list(images):
                    model([t if device is None else t.to(device) for t in images])
                elif isinstance(images, torch.Tensor):
                    model(images if device is None else images.to(device))
                else:
                    raise TypeError(
                        f"a batch must be an image tensor, a list of image tensors or (images, labels), got "
                        f"{type(images).__name__}"
                    )
                seen += 1
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return seen


def _trace(
    model: nn.Module,
    example_input: torch.Tensor | None,
    sizes: Sequence[int] = DEFAULT_INPUT_SIZES,
    measure: bool = False,
):
    """:func:`_trace_leaves` on ``example_input``, or on the first default input of ``sizes`` the model accepts;
    and the input it ran on."""
    if example_input is not None:
        return _trace_leaves(model, example_input, measure), example_input
    first = next((m for m in model.modules() if isinstance(m, (nn.modules.conv._ConvNd, AdderConv2d))), None)
    if not isinstance(first, (nn.Conv2d, AdderConv2d)):
        found = f"its first convolution is {type(first).__name__}" if first is not None else "it has no convolution"
        raise ValueError(f"no default input for {type(model).__name__} ({found}): pass an example batch")
    param = next(model.parameters())
    generator = torch.Generator().manual_seed(0)
    failures = []
    for size in sizes:
        x = torch.randn(2, first.in_channels, size, size, generator=generator)
        x = x.to(param.device, param.dtype)
        try:
            return _trace_leaves(model, x, measure), x
        except RuntimeError as e:  # the model does not take this size
            failures.append(f"{size}x{size}: {str(e).splitlines()[0]}")
    raise ValueError(
        f"{type(model).__name__} accepts none of the default input sizes; pass an example batch. Tried:\n  "
        + "\n  ".join(failures)
    )


def _norm_after(order, index: int) -> str | None:
    """The name of the normalisation layer that runs right after leaf ``index`` of ``order``, if one does."""
    if index + 1 < len(order) and isinstance(order[index + 1][1], _NORMS):
        return order[index + 1][0]
    return None


def norms_after_adders(model: nn.Module, example_input: torch.Tensor | None = None) -> dict[str, str]:
    """Each adder layer of ``model`` that a normalisation layer directly follows, in execution order, mapped
    to that layer's name (inserted BatchNorms included: ``{"features.3.0": "features.3.1", ...}``).

    The model runs once, in eval mode and without gradients, on ``example_input`` or a default input (the
    smallest it accepts: the order of execution does not depend on the size).
    """
    order, _ = _trace(model, example_input, sorted(DEFAULT_INPUT_SIZES))
    pairs = {}
    for index, (name, module, *_) in enumerate(order):
        norm = _norm_after(order, index)
        if isinstance(module, AdderConv2d) and norm is not None:
            pairs.setdefault(name, norm)
    return pairs


def _tensors(value: object) -> Iterable[torch.Tensor]:
    """The tensors in ``value`` and in the lists, tuples and dicts it holds."""
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _tensors(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _tensors(item)


def prediction_convs(model: nn.Module, example_input: torch.Tensor) -> set[str]:
    """The ``nn.Conv2d`` layers of ``model`` whose output no layer with weights (parameters or buffers) reads,
    directly or through other operations: those that make the model's outputs, as a classifier's last conv, a
    segmentation model's classifier, a detector's class logits, box regression and mask logits. A detector's
    region proposals count: torchvision detaches them from the graph before the RoI heads read them.

    The model runs once in eval mode, with gradients, on ``example_input`` (a few images are enough); the data
    flow is read from the autograd graph."""
    names = {module: name for name, module in model.named_modules()}
    produced: dict[str, list] = {}
    read: list = []

    def reader(module, args, kwargs):
        read.extend(t.grad_fn for t in _tensors((args, kwargs)) if t.grad_fn is not None)

    def producer(module, args, output):
        if isinstance(output, torch.Tensor) and output.grad_fn is not None:
            produced.setdefault(names[module], []).append(output.grad_fn)

    hooks = []
    for module in model.modules():
        weights = (*module.parameters(recurse=False), *module.buffers(recurse=False))
        if weights:
            hooks.append(module.register_forward_pre_hook(reader, with_kwargs=True))
        if isinstance(module, nn.Conv2d):
            hooks.append(module.register_forward_hook(producer))
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            model(example_input.detach().requires_grad_().clone())  # not a leaf: in-place ops on it are allowed
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    seen, stack = set(), list(read)
    while stack:
        node = stack.pop()
        if node not in seen:
            seen.add(node)
            stack.extend(n for n, _ in node.next_functions if n is not None)
    return {name for name, nodes in produced.items() if not any(node in seen for node in nodes)}


def _macs(conv: nn.modules.conv._ConvNd, in_shape: torch.Size, out_shape: torch.Size) -> int:
    """Multiply-accumulates of one image through ``conv``."""
    if conv.transposed:  # every input element meets out_channels / groups filters
        return int(in_shape[1:].numel()) * (conv.out_channels // conv.groups) * math.prod(conv.kernel_size)
    return int(out_shape[1:].numel()) * (conv.in_channels // conv.groups) * math.prod(conv.kernel_size)


# Kinds of conv the ``keep`` rule keeps multiplicative: a depthwise conv (one input channel per filter: a 3x3 one
# has nine weights, whose binary copy loses most of its function) and a squeeze-excitation conv (on a globally
# pooled vector: few MACs at deployment sizes, yet it scales every channel of its block).
KEEP_KINDS = ("depthwise", "squeeze_excitation")
# The rule of a stem converted because it alone passes the keep ceiling (LayerDecision.stem_over_ceiling).
STEM_OVER_CEILING = "stem over keep_ceiling"


def _squeeze_excitation_convs(order) -> set[str]:
    """Convs that run on a globally pooled vector (torchvision's ``SqueezeExcitation``: avgpool, fc1, activation,
    fc2, scale), found by following the pooled tensors themselves, not their shapes: at 32 px a ResNet's or a
    MobileNet's last maps are 1x1 too."""
    return {name for name, module, *_, extra in order if isinstance(module, nn.Conv2d) and extra.get("pooled")}


def is_depthwise(conv: nn.Conv2d | LayerDecision) -> bool:
    """Whether ``conv`` (or the conv a decision is about) is depthwise: one input channel per filter (groups equal to
    its input channels)."""
    return conv.groups > 1 and conv.groups == conv.in_channels


def _kind(conv: nn.Conv2d, name: str, squeeze_excitation: set[str]) -> str | None:
    if is_depthwise(conv):
        return "depthwise"
    return "squeeze_excitation" if name in squeeze_excitation else None


def _matches(name: str, patterns: Sequence[str]) -> str | None:
    return next((p for p in patterns if fnmatch.fnmatchcase(name, p)), None)


def plan_conversion(
    model: nn.Module,
    example_input: torch.Tensor | None = None,
    *,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    keep_stem: bool = True,
    keep_classifier: bool = True,
    insert_bn: bool = True,
    keep: Sequence[str] | None = None,
    keep_ceiling: float = 1.0,
    mac_size: int | None = None,
    keep_mac_budget: float = 0.0,
) -> ConversionReport:
    """Decide which convs become adder layers, without changing the model.

    ``include``/``exclude`` are shell-style wildcard patterns (``fnmatch``) on module names, e.g.
    ``layer4.*``. With ``include`` only matching convs are converted; ``exclude`` wins over
    ``include``. A pattern that matches no conv is an error naming it. ``example_input`` is one batch
    the model accepts; it is used to order layers, count MACs and measure each conv's input scale
    (``None``: a default input, see the module's docstring). It should be real data (a few hundred training
    images): the ``sign`` init places weights past the input range measured on it. Other convolutions
    (Conv1d, Conv3d, transposed) are listed as not supported and left as they are. A conv the model runs more
    than once (a detection head on each level of a feature pyramid) counts the MACs of every run.

    ``keep_classifier`` keeps the classifier (the last layer with weights, when it is a conv) and every other
    prediction conv (:func:`prediction_convs`: a segmentation classifier, a detector's class logits and box
    regression) multiplicative, as a classifier's Linear is. A frozen conv (``requires_grad`` False) that is
    converted becomes a trainable adder layer; the report marks it (``frozen``).

    ``keep`` names kinds of conv kept multiplicative (:data:`KEEP_KINDS`): ``"depthwise"`` (groups equal to
    the input channels) and ``"squeeze_excitation"`` (a conv on a globally pooled vector). ``keep_ceiling`` caps
    the conv MACs left multiplicative, counted at ``mac_size`` px (a square input; ``None``: the example's size),
    at that share: together with the stem, the classifier and prediction convs, the convs of the kept kinds whose
    binary-weight twin matches them worst per MAC stay, the others are converted (what ``include``/``exclude``
    leave multiplicative is the user's choice: it neither counts nor is converted). A stem that alone passes the
    ceiling (ShuffleNet-V2 x0.5's is 21% of its MACs at 224 px) is converted too. Count at the size
    the model is deployed at: a squeeze-excitation conv's MACs do not grow with the image, so its share at 32 px is
    many times its share at 224.

    ``keep_mac_budget`` (a share of all conv MACs, e.g. 0.05) keeps multiplicative the convs the rules
    would convert whose binary-weight twin matches them worst per MAC (``sign_error / macs``, highest
    first: depthwise and squeeze-excitation convs in mobile networks), as long as their MACs fit the budget.
    """
    for option, share in (("keep_ceiling", keep_ceiling), ("keep_mac_budget", keep_mac_budget)):
        if not 0.0 <= share <= 1.0:
            raise ValueError(f"{option} is a share of the MACs, from 0 to 1; got {share}")
    if mac_size is not None and (isinstance(mac_size, bool) or not isinstance(mac_size, int) or mac_size < 1):
        raise ValueError(f"mac_size is an input size in pixels (a positive integer); got {mac_size!r}")
    keep = () if keep is None else keep
    unknown = [keep] if isinstance(keep, str) else sorted(set(keep) - set(KEEP_KINDS))
    if unknown:
        raise ValueError(f"keep takes kinds of conv from {KEEP_KINDS}; got {keep!r}")
    include, exclude = list(include or []), list(exclude or [])
    order, used = _trace(model, example_input, measure=True)
    predictions = prediction_convs(model, used[:2]) if keep_classifier else set()
    squeeze_excitation = _squeeze_excitation_convs(order) if "squeeze_excitation" in keep else set()
    conv_names = [name for name, module, *_ in order if isinstance(module, nn.Conv2d)]
    for kind, patterns in (("include", include), ("exclude", exclude)):
        for pattern in patterns:
            if not any(fnmatch.fnmatchcase(name, pattern) for name in conv_names):
                examples = ", ".join(conv_names[:3])
                raise ValueError(f"{kind} rule {pattern!r} matches no Conv2d module (conv names look like: {examples})")
    layers_after = [e for e in order if isinstance(e[1], (nn.modules.conv._ConvNd, nn.Linear))]
    classifier = layers_after[-1][0] if layers_after and isinstance(layers_after[-1][1], nn.Conv2d) else None
    stem = conv_names[0] if conv_names else None

    report = ConversionReport(model=type(model).__name__)
    planned: dict[str, LayerDecision] = {}
    kept_kinds: dict[str, bool] = {}  # conv kept by its kind -> whether converting it would insert a norm
    kept_stem: dict[str, bool] = {}  # the stem kept by default -> the same
    kept_by_default: set[str] = set()  # the stem, the classifier and prediction convs
    for index, (name, conv, std, low, in_shape, out_shape, extra) in enumerate(order):
        if not isinstance(conv, nn.modules.conv._ConvNd):
            continue
        # A conv run again (a head on each pyramid level) is planned once: MACs summed, ranges joined.
        if name in planned:
            again = planned[name]
            again.macs += _macs(conv, in_shape, out_shape)
            again.input_min = min(again.input_min, low)
            if again.input_max is not None and "input_max" in extra:
                again.input_max = max(again.input_max, extra["input_max"])
            continue
        supported = isinstance(conv, nn.Conv2d) and conv.padding_mode == "zeros"
        if not isinstance(conv, nn.Conv2d):
            do, rule = False, f"{type(conv).__name__}: adder layers replace Conv2d only"
        elif not supported:
            do, rule = False, f"padding_mode={conv.padding_mode!r}: adder layers pad with zeros only"
        elif keep_stem and name == stem:
            do, rule = False, "stem kept (keep_stem)"
        elif keep_classifier and name == classifier:
            do, rule = False, "classifier kept (keep_classifier)"
        elif name in predictions:
            do, rule = False, "prediction conv kept (keep_classifier)"
        elif (pattern := _matches(name, exclude)) is not None:
            do, rule = False, f"exclude {pattern!r}"
        elif (kind := _kind(conv, name, squeeze_excitation)) in keep:
            do, rule = False, f"{kind.replace('_', '-')} kept (keep)"
        elif include:
            pattern = _matches(name, include)
            do, rule = (True, f"include {pattern!r}") if pattern else (False, "not included")
        else:
            do, rule = True, "default"
        # A BatchNorm after every adder layer: its per-channel affine takes the sign init's scale and constant, and
        # reconstruction refits it. A GroupNorm, LayerNorm or InstanceNorm after the conv cannot, nor can nothing (a
        # feature pyramid's convs): one is inserted before it.
        following = (
            order[index + 1][0] if index + 1 < len(order) and isinstance(order[index + 1][1], _BATCHNORMS) else None
        )
        needs_bn = do and insert_bn and following is None
        if rule.endswith("kept (keep)") and (not include or _matches(name, include)):  # else not included anyway
            kept_kinds[name] = insert_bn and following is None
        elif rule.endswith("(keep_stem)") and (_matches(name, exclude) or (include and not _matches(name, include))):
            pass  # a stem the user leaves out by name: their choice, neither counted nor converted by the ceiling
        elif rule.endswith(("(keep_stem)", "(keep_classifier)")):
            kept_by_default.add(name)
            if rule.endswith("(keep_stem)"):
                kept_stem[name] = insert_bn and following is None
        planned[name] = LayerDecision(
            name=name,
            in_channels=conv.in_channels,
            out_channels=conv.out_channels,
            kernel_size=tuple(conv.kernel_size),
            stride=tuple(conv.stride),
            groups=conv.groups,
            macs=_macs(conv, in_shape, out_shape),
            convert=do,
            rule=rule,
            insert_bn=needs_bn,
            input_std=std,
            input_min=low,
            input_max=extra.get("input_max"),
            sign_error=extra.get("sign_error"),
            supported=supported,
            norm=following,
            frozen=not all(p.requires_grad for p in conv.parameters()),
        )
        report.layers.append(planned[name])
    if (kept_kinds or kept_stem) and keep_ceiling < 1.0:
        at_size = _conv_macs_at(model, used, mac_size)
        _keep_within_ceiling(report, kept_kinds, kept_stem, kept_by_default, keep_ceiling, at_size, mac_size)
    if keep_mac_budget > 0:
        _keep_within_budget(report, keep_mac_budget)
    return report


def _conv_macs_at(model: nn.Module, example: object, size: int | None) -> dict[str, int] | None:
    """:func:`conv_macs_at` ``size`` px, or None where that is the example's own size or the model is a detector (its
    transform resizes any image to its own size)."""
    if size is None or not isinstance(example, torch.Tensor) or example.dim() != 4 or example.shape[-2:] == (size,) * 2:
        return None
    if any(takes_targets(m) for m in model.modules()):
        return None
    return conv_macs_at(model, size, example)


def conv_macs_at(model: nn.Module, size: int, example: torch.Tensor | None = None) -> dict[str, int]:
    """Each conv's multiply-accumulates (every run summed), by name, when ``model`` runs on one square image of
    ``size`` px of ``example``'s channels, dtype and device (3 channels of float32 on the CPU without one): what the
    MAC shares of a plan made at another size are at ``size``."""
    image = torch.zeros(1, 3, size, size) if example is None else example.new_zeros(1, example.shape[1], size, size)
    macs: dict[str, int] = {}
    for name, module, _, _, in_shape, out_shape, _ in _trace_leaves(model, image):
        if isinstance(module, nn.modules.conv._ConvNd):
            macs[name] = macs.get(name, 0) + _macs(module, in_shape, out_shape)
    return macs


def _keep_within_ceiling(
    report: ConversionReport,
    kept_kinds: dict[str, bool],
    kept_stem: dict[str, bool],
    kept_by_default: set[str],
    ceiling: float,
    at_size: dict[str, int] | None,
    size: int | None,
) -> None:
    """Convert the convs kept by their kind where they and the convs kept by default (the stem, the classifier,
    prediction convs) would pass ``ceiling`` of the conv MACs (``at_size``'s counts, or the report's), keeping those
    whose binary-weight error per MAC is highest; first the stem, where it alone passes ``ceiling``. What
    ``include``/``exclude`` leave out does not count: the user chose it. ``kept_kinds`` and ``kept_stem`` map each
    candidate to whether converting it inserts a norm."""

    def macs(decision: LayerDecision) -> int:
        return at_size.get(decision.name, decision.macs) if at_size is not None else decision.macs

    where = f" at {size} px" if at_size is not None else ""
    total = sum(macs(d) for d in report.layers)
    for decision in report.layers:
        if decision.name in kept_stem and macs(decision) > ceiling * total:
            decision.convert, decision.insert_bn = True, kept_stem[decision.name]
            decision.rule = f"{STEM_OVER_CEILING} {ceiling:g} of the MACs{where}: converted"
    allowed = ceiling * total - sum(macs(d) for d in report.layers if d.name in kept_by_default and not d.convert)
    kept = [d for d in report.layers if d.name in kept_kinds]
    kept.sort(key=lambda d: (d.sign_error or 0.0) / max(macs(d), 1), reverse=True)
    spent = 0
    for decision in kept:
        if spent + macs(decision) <= allowed:
            spent += macs(decision)
            continue
        decision.convert, decision.insert_bn = True, kept_kinds[decision.name]
        kind = decision.rule.split(" kept")[0]
        decision.rule = f"{kind} over keep_ceiling {ceiling:g} of the MACs{where}: converted"


def _keep_within_budget(report: ConversionReport, budget: float) -> None:
    """Keep the convs whose binary-weight error per MAC is highest multiplicative, within ``budget``."""
    allowed = budget * report.total_macs
    candidates = [d for d in report.converted if d.sign_error is not None and d.sign_error > 0]
    candidates.sort(key=lambda d: d.sign_error / max(d.macs, 1), reverse=True)
    spent = 0
    for decision in candidates:
        if spent + decision.macs > allowed:
            continue
        spent += decision.macs
        decision.convert, decision.insert_bn = False, False
        decision.rule = f"kept: binary-weight error {decision.sign_error:.2f} (keep_mac_budget {budget:g})"

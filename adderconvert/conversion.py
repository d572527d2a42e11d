"""Model surgery: swap the ``nn.Conv2d`` layers of a CNN for :class:`~adderconvert.nn.AdderConv2d`.

:func:`plan_conversion` decides, per conv, whether it is converted and which rule decided (a dry run
with a report); :func:`convert` applies the plan in place. AdderNets need a normalisation after every
adder layer, so one ``BatchNorm2d`` is inserted where a converted conv is not followed by one: the conv
``name`` becomes ``nn.Sequential(adder, bn)`` (``name.0``, ``name.1``). "The norm after a layer" is the
leaf module that runs next in one forward pass (:func:`norms_after_adders`), the same rule for conversion,
feature distillation and anything else that asks.

Without an example batch, the model runs on standard-normal images with the channels of its first conv,
at the first of :data:`DEFAULT_INPUT_SIZES` it accepts (224, ImageNet's, for torchvision's models).
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from adderconvert.nn import AdderConv2d

__all__ = [
    "DEFAULT_INPUT_SIZES",
    "DEFAULT_INIT",
    "INIT_CHOICES",
    "SIGN_MARGIN",
    "SIGN_MIN_GAP",
    "calibrate_norms",
    "ConversionReport",
    "LayerDecision",
    "convert",
    "norms_after_adders",
    "plan_conversion",
    "restore",
    "run_hooked",
    "sign_edges",
]

INIT_CHOICES = ("sign", "fresh", "rescale", "copy")
DEFAULT_INIT = "sign"
# "sign": each adder weight is placed this share of the layer's input span beyond the inputs measured in
# planning, so that inputs calibration did not see (up to that far out) still lie inside.
SIGN_MARGIN = 0.1
# ... and never closer than this to any of them: the training rule's input gradient HardTanh(W - X) is the
# tap's true slope sign(W - X) only where |W - X| >= 1. Closer, the backward pass stops matching the forward
# (after a ReLU, weights at 0 passed back -x, not -1, for every input x < 1), and the error compounds: on
# RegNet-Y the first step's input gradients grew ~10x per block (1.6e9 at block 1 against 0.06 for the CNN).
SIGN_MIN_GAP = 1.0
# Square image sizes tried in order when no example batch is given; the first the model accepts is used.
DEFAULT_INPUT_SIZES = (224, 32, 28, 64, 96, 299)
_NORMS = (nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm, nn.InstanceNorm2d, nn.SyncBatchNorm)


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

    def table(self) -> str:
        """A plain-text table of every conv and the totals."""
        header = f"{'layer':<40} {'shape':>14} {'kernel':>7} {'stride':>6} {'groups':>6} {'MMACs':>9}  decision"
        lines = [header, "-" * len(header)]
        for layer in self.layers:
            shape = f"{layer.in_channels}->{layer.out_channels}"
            kernel = "x".join(map(str, layer.kernel_size))
            stride = "x".join(map(str, layer.stride))
            action = "adder" if layer.convert else "kept" if layer.supported else "not supported"
            bn = " +BN" if layer.insert_bn else ""
            lines.append(
                f"{layer.name:<40} {shape:>14} {kernel:>7} {stride:>6} {layer.groups:>6} "
                f"{layer.macs / 1e6:>9.2f}  {action}{bn} ({layer.rule})"
            )
        share = 100 * self.converted_macs / max(self.total_macs, 1)
        lines.append("-" * len(header))
        lines.append(
            f"{len(self.converted)} of {len(self.layers)} convs to adder layers: "
            f"{self.converted_macs / 1e6:.1f} of {self.total_macs / 1e6:.1f} M multiply-accumulates "
            f"({share:.1f}%) become additions"
        )
        return "\n".join(lines)


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
    """Run the model once; return leaf modules in execution order with input std, input minimum, input and
    output shapes and (``measure``) a dict of what planning measures on convs: ``input_max`` and
    ``sign_error``."""
    order: list[tuple[str, nn.Module, float, float, torch.Size, torch.Size, dict]] = []
    names = {module: name for name, module in model.named_modules()}
    hooks = []

    def hook(module, inputs, output):
        x = inputs[0] if inputs and isinstance(inputs[0], torch.Tensor) else None
        std = float(x.detach().float().std()) if x is not None and x.numel() > 1 else 1.0
        low = float(x.detach().min()) if x is not None and x.numel() > 0 else 0.0
        shape = output.shape if isinstance(output, torch.Tensor) else torch.Size()
        extra = {}
        if measure and isinstance(module, nn.Conv2d) and x is not None and x.numel() > 0:
            extra["input_max"] = float(x.detach().max())
            if module.padding_mode == "zeros" and isinstance(output, torch.Tensor):
                extra["sign_error"] = _sign_error(module, x, output)
        order.append((names[module], module, std, low, x.shape if x is not None else torch.Size(), shape, extra))

    for module in model.modules():
        if not list(module.children()):
            hooks.append(module.register_forward_hook(hook))
    run_hooked(model, example_input, hooks)
    return order


def run_hooked(model: nn.Module, inputs: torch.Tensor, hooks: Sequence[torch.utils.hooks.RemovableHandle]) -> None:
    """Run ``model`` once on ``inputs`` in eval mode without gradients, for what its ``hooks`` record; then
    remove the hooks and give the model back its mode, whatever happened."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(inputs)
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()


def _trace(
    model: nn.Module,
    example_input: torch.Tensor | None,
    sizes: Sequence[int] = DEFAULT_INPUT_SIZES,
    measure: bool = False,
):
    """:func:`_trace_leaves` on ``example_input``, or on the first default input of ``sizes`` the model accepts."""
    if example_input is not None:
        return _trace_leaves(model, example_input, measure)
    first = next((m for m in model.modules() if isinstance(m, (nn.modules.conv._ConvNd, AdderConv2d))), None)
    if not isinstance(first, (nn.Conv2d, AdderConv2d)):
        found = f"its first convolution is {type(first).__name__}" if first is not None else "it has no convolution"
        raise ValueError(f"no default input for {type(model).__name__} ({found}): pass an example batch")
    param = next(model.parameters())
    generator = torch.Generator().manual_seed(0)
    failures = []
    for size in sizes:
        x = torch.randn(2, first.in_channels, size, size, generator=generator)
        try:
            return _trace_leaves(model, x.to(param.device, param.dtype), measure)
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
    order = _trace(model, example_input, sorted(DEFAULT_INPUT_SIZES))
    pairs = {}
    for index, (name, module, *_) in enumerate(order):
        norm = _norm_after(order, index)
        if isinstance(module, AdderConv2d) and norm is not None:
            pairs.setdefault(name, norm)
    return pairs


def _macs(conv: nn.modules.conv._ConvNd, in_shape: torch.Size, out_shape: torch.Size) -> int:
    """Multiply-accumulates of one image through ``conv``."""
    if conv.transposed:  # every input element meets out_channels / groups filters
        return int(in_shape[1:].numel()) * (conv.out_channels // conv.groups) * math.prod(conv.kernel_size)
    return int(out_shape[1:].numel()) * (conv.in_channels // conv.groups) * math.prod(conv.kernel_size)


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
    keep_mac_budget: float = 0.0,
) -> ConversionReport:
    """Decide which convs become adder layers, without changing the model.

    ``include``/``exclude`` are shell-style wildcard patterns (``fnmatch``) on module names, e.g.
    ``layer4.*``. With ``include`` only matching convs are converted; ``exclude`` wins over
    ``include``. A pattern that matches no conv is an error naming it. ``example_input`` is one batch
    the model accepts; it is used to order layers, count MACs and measure each conv's input scale
    (``None``: a default input, see the module's docstring). It should be real data (a few hundred training
    images): the ``sign`` init places weights past the input range measured on it. Other convolutions
    (Conv1d, Conv3d, transposed) are listed as not supported and left as they are.

    ``keep_mac_budget`` (a share of all conv MACs, e.g. 0.05) keeps multiplicative the convs the rules
    would convert whose binary-weight twin matches them worst per MAC (``sign_error / macs``, highest
    first: depthwise and squeeze-excitation convs in mobile networks), as long as their MACs fit the budget.
    """
    if not 0.0 <= keep_mac_budget <= 1.0:
        raise ValueError(f"keep_mac_budget is a share of the MACs, from 0 to 1; got {keep_mac_budget}")
    include, exclude = list(include or []), list(exclude or [])
    order = _trace(model, example_input, measure=True)
    conv_names = [name for name, module, *_ in order if isinstance(module, nn.Conv2d)]
    for kind, patterns in (("include", include), ("exclude", exclude)):
        for pattern in patterns:
            if not any(fnmatch.fnmatchcase(name, pattern) for name in conv_names):
                examples = ", ".join(conv_names[:3])
                raise ValueError(f"{kind} rule {pattern!r} matches no Conv2d module (conv names look like: {examples})")
    layers_after = [e for e in order if isinstance(e[1], (nn.Conv2d, nn.Linear))]
    classifier = layers_after[-1][0] if layers_after and isinstance(layers_after[-1][1], nn.Conv2d) else None
    stem = conv_names[0] if conv_names else None

    report = ConversionReport(model=type(model).__name__)
    seen = set()
    for index, (name, conv, std, low, in_shape, out_shape, extra) in enumerate(order):
        if name in seen or not isinstance(conv, nn.modules.conv._ConvNd):  # a conv called twice is planned once
            continue
        seen.add(name)
        supported = isinstance(conv, nn.Conv2d) and conv.padding_mode == "zeros"
        if not isinstance(conv, nn.Conv2d):
            do, rule = False, f"{type(conv).__name__}: adder layers replace Conv2d only"
        elif not supported:
            do, rule = False, f"padding_mode={conv.padding_mode!r}: adder layers pad with zeros only"
        elif keep_stem and name == stem:
            do, rule = False, "stem kept (keep_stem)"
        elif keep_classifier and name == classifier:
            do, rule = False, "classifier kept (keep_classifier)"
        elif (pattern := _matches(name, exclude)) is not None:
            do, rule = False, f"exclude {pattern!r}"
        elif include:
            pattern = _matches(name, include)
            do, rule = (True, f"include {pattern!r}") if pattern else (False, "not included")
        else:
            do, rule = True, "default"
        needs_bn = do and insert_bn and _norm_after(order, index) is None
        report.layers.append(
            LayerDecision(
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
            )
        )
    if keep_mac_budget > 0:
        _keep_within_budget(report, keep_mac_budget)
    return report


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


def sign_edges(decision: LayerDecision, margin: float = SIGN_MARGIN) -> tuple[float, float]:
    """Where the ``sign`` init puts the weights of the layer ``decision`` describes: (lower, upper), beyond
    the measured input range and zero (the padding) by ``margin`` of its span, and by at least
    :data:`SIGN_MIN_GAP`, so that the training rule's gradient is the true one at the start."""
    if decision.input_max is None:
        raise ValueError(
            f"{decision.name}: the conversion plan has no measured input range (a report from before it was "
            "measured); plan again with example batches, or use another init"
        )
    low, high = min(decision.input_min, 0.0), max(decision.input_max, 0.0)
    gap = max(margin * max(high - low, 0.0), SIGN_MIN_GAP)
    return low - gap, high + gap


def _init_weights(
    layer: AdderConv2d, conv: nn.Conv2d, init: str, decision: LayerDecision, sign_margin: float = SIGN_MARGIN
) -> None:
    input_std = decision.input_std
    with torch.no_grad():
        if init == "sign":
            # A tap whose weight lies beyond every input it meets computes -|x - w| = sign(w) * x - |w|: the
            # layer is the conv's binary-weight twin plus a per-channel constant that the norm after it takes.
            lower, upper = sign_edges(decision, sign_margin)
            layer.weight.copy_(torch.where(conv.weight >= 0, upper, lower))
        elif init == "fresh":
            nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu")
            layer.weight.mul_(input_std / max(float(layer.weight.std()), 1e-12))
            if decision.input_min >= 0:
                # Inputs after a ReLU are never negative, and against them a negative weight only adds
                # |w| + x, the same for every filter: keep weights where the inputs are.
                layer.weight.abs_()
        elif init == "rescale":
            # Keep the pretrained filters' pattern, at the scale of the activations they meet:
            # |x - w| only discriminates when w lives where x does.
            layer.weight.mul_(input_std / max(float(conv.weight.std()), 1e-12))


def convert(
    model: nn.Module,
    example_input: torch.Tensor | None = None,
    *,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    keep_stem: bool = True,
    keep_classifier: bool = True,
    insert_bn: bool = True,
    init: str = DEFAULT_INIT,
    report: ConversionReport | None = None,
    sign_margin: float = SIGN_MARGIN,
) -> nn.Module:
    """Swap convs for adder layers in place and return ``model``.

    ``init`` chooses the adder weights: ``"sign"`` (the default: each weight just past the range of the
    inputs measured on ``example_input``, on the side of the conv weight's sign, see :func:`sign_edges`;
    the model keeps the CNN's function up to binary weights, once its norms are recalibrated with
    :func:`calibrate_norms`), ``"fresh"`` (Kaiming init scaled to the
    std of the layer's input activations and made non-negative where those inputs are, as after a ReLU),
    ``"rescale"`` (the conv's weights scaled to that std) or ``"copy"`` (the conv's weights as they are).
    Rules are those of :func:`plan_conversion`; pass its ``report`` to apply a plan already made.
    ``sign_margin`` is :func:`sign_edges`' margin.

    With ``sign``, a BatchNorm inserted after an adder layer is set to give the conv's output scale:
    weight ``mean|W|`` per channel (the binary-weight twin's least-squares scale), its running statistics
    taking away the adder layer's constant; in eval mode the pair computes ``conv(x, mean|W| sign(W)) + b``.
    """
    if init not in INIT_CHOICES:
        raise ValueError(f"init must be one of {INIT_CHOICES}, got {init!r}")
    if report is None:
        report = plan_conversion(
            model,
            example_input,
            include=include,
            exclude=exclude,
            keep_stem=keep_stem,
            keep_classifier=keep_classifier,
            insert_bn=insert_bn,
        )
    for decision in report.converted:
        conv = model.get_submodule(decision.name)
        layer = AdderConv2d.from_conv(conv).train(conv.training)
        _init_weights(layer, conv, init, decision, sign_margin)
        if decision.insert_bn:
            bn = nn.BatchNorm2d(conv.out_channels).to(device=conv.weight.device, dtype=conv.weight.dtype)
            bn.train(conv.training)
            if init == "sign":
                _match_conv_scale(bn, layer, conv)
            model.set_submodule(decision.name, nn.Sequential(layer, bn))
        else:
            model.set_submodule(decision.name, layer)
    return model


def _match_conv_scale(bn: nn.BatchNorm2d, layer: AdderConv2d, conv: nn.Conv2d) -> None:
    """Set an inserted BatchNorm so that, in eval mode, it maps the sign-initialised ``layer``'s output
    ``sign(W) * x - sum|w| + b`` to ``mean|W| * sign(W) * x + b``."""
    with torch.no_grad():
        scale = conv.weight.abs().flatten(1).mean(1)
        constant = layer.weight.abs().flatten(1).sum(1)
        bias = conv.bias if conv.bias is not None else torch.zeros_like(scale)
        bn.weight.copy_(scale)
        bn.bias.copy_(bias)
        bn.running_mean.copy_(bias - constant if layer.bias is not None else -constant)
        bn.running_var.fill_(1.0 - bn.eps)


def _inserted_norms(model: nn.Module, report: ConversionReport) -> list[nn.modules.batchnorm._BatchNorm]:
    return [model.get_submodule(f"{d.name}.1") for d in report.converted if d.insert_bn]


@torch.no_grad()
def calibrate_norms(model: nn.Module, report: ConversionReport, images: torch.Tensor, init: str = "sign") -> None:
    """Re-estimate every BatchNorm's statistics on ``images`` after :func:`convert`, keeping what the
    BatchNorms it inserted compute.

    One forward pass in training mode: each BatchNorm's running statistics become those of its input on
    ``images`` (after a conversion they are the CNN's, for outputs on another scale). An inserted norm set
    to give the conv's output scale (the ``sign`` init) would lose that scale to batch statistics; just
    before it runs, its eval-mode mapping ``a * x + c`` is folded into its weight and bias for the batch's
    statistics, so that in training mode on such data, in eval mode and after any later re-estimation it
    computes the same thing (``init`` is the one :func:`convert` used: other inits leave inserted norms to
    learn their scale, as before). Call it once, after :func:`convert` and before any training step; a
    longer re-estimation may follow (e.g. ``adderconvert.train.recalibrate_batchnorm``).
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    inserted = set(_inserted_norms(model, report)) if init == "sign" else set()

    # Each inserted norm's eval-mode mapping a * x + c, taken before the statistics are reset.
    mappings = {}
    for m in inserted:
        if m.affine:
            a = m.weight / torch.sqrt(m.running_var + m.eps)
            mappings[m] = (a, m.bias - a * m.running_mean)

    def fold(module, inputs):
        x = inputs[0].transpose(0, 1).flatten(1)
        mean, var = x.mean(1), x.var(1, correction=0)
        a, c = mappings[module]
        module.weight.copy_(a * torch.sqrt(var + module.eps))
        module.bias.copy_(a * mean + c)

    momenta = [m.momentum for m in norms]
    hooks = [m.register_forward_pre_hook(fold) for m in mappings]
    was_training = model.training
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average: the statistics of this one batch
    model.train()
    try:
        model(images)
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum


def restore(model: nn.Module, report: ConversionReport | dict) -> nn.Module:
    """Give a freshly built CNN the structure ``report`` describes (adder layers, inserted BatchNorms), in
    place, so that a state dict saved after :func:`convert` loads into it. Weights are left to that load."""
    if isinstance(report, dict):
        report = ConversionReport.from_dict(report)
    return convert(model, None, report=report, init="copy")

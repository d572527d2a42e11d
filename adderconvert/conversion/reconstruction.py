"""Layer-wise reconstruction after a ``sign`` conversion: fit each adder layer and the norm after it to the
CNN's output of that layer, in execution order, on the adder model's own inputs (as post-training
quantisation tools do).

The ``sign`` init makes each adder layer the conv's binary-weight twin: a weight past every input it meets
computes ``-|x - w| = sign(w) x - |w|``. That keeps the CNN's signs and loses its magnitudes. Two steps, each
kept for a layer only where it lowers that layer's output error on the calibration images:

* ``"affine"``: the norm after the layer maps the adder output ``z`` to ``A z + C`` per channel, with ``A``
  and ``C`` the least-squares fit to the CNN's output (closed form);
* ``"signs"`` (the default, ``"affine"`` included): the binary weights are chosen with error feedback
  (the GPTQ rule, Frantar et al. 2023): weights are taken one input tap at a time, and the rounding error of
  each is spread over the taps not yet taken through the inverse of the inputs' second-moment matrix, so
  that the binary layer ``a * sign`` matches ``W x`` on the inputs the layer actually sees rather than tap
  by tap. With ``inside=True`` a tap may also take a weight ``t`` inside its input range: ``-|x - t|`` is
  ``beta(t) x`` plus a nonlinear residual, and the rule picks, per tap, the place whose slope and residual
  cost least (small CNN weights then get small slopes). With ``correct=True`` (the default) the weights
  rounded are not the CNN's ``W`` but the least-squares weights that give the CNN's output on *its* inputs
  from the adder model's inputs, ``W C_ts (H + d)^-1`` (ridge towards ``W``): each layer then also undoes
  the drift the layers before it left (on RegNet-Y-400MF, 61.7% -> 81.2% zero-step top-1).

Every weight stays at the layer's two edges or (``inside``) at a measured input value: the model is an
ordinary adder model (ordinary ``AdderConv2d`` weights, BatchNorm statistics and affine) that loads,
trains and exports as any other.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from adderconvert.conversion.plan import ConversionReport, norms_after_adders, run_hooked
from adderconvert.nn import AdderConv2d
from adderconvert.nn.functional import adder_conv2d

__all__ = [
    "RECONSTRUCT_METHODS",
    "LayerFit",
    "ReconstructionResult",
    "layer_errors",
    "reconstruct",
]

RECONSTRUCT_METHODS = ("affine", "signs")
# Samples (image positions) per layer that the fits read at most: enough for the per-channel affine and the
# inputs' second moments of the widest layers at 32 px, and cheap on two cores.
MAX_SAMPLES = 16384
# Damping of the inputs' second-moment matrix, as a share of its mean diagonal (GPTQ uses 0.01).
DAMPING = 0.01
# Candidate places inside the range per input channel (quantiles of its inputs) for ``inside=True``.
INSIDE_PLACES = 15
# Ridge towards the CNN's weights when correcting for the inputs' drift (share of the mean diagonal).
CORRECTION_DAMPING = 0.1
# Share of the calibration images each layer is fitted on; the rest decide whether the fit is kept.
FIT_SHARE = 0.75
_BLOCK = 128  # error-feedback columns handled per block (GPTQ's lazy batch update)


@dataclass
class _Unit:
    name: str  # the adder layer's name in the adder model
    adder: AdderConv2d
    norm: nn.modules.batchnorm._BatchNorm
    target: str  # the module of the CNN whose output the unit reproduces: the norm, or the conv if inserted


@dataclass
class LayerFit:
    """What reconstruction did to one adder layer: its relative output error (MSE over the target's
    variance) on the calibration images, before (sign init, the norm as fitted) and after, and the step
    kept (``"none"`` where neither step lowered the error)."""

    name: str
    error_before: float
    error_after: float
    kept: str
    inside_share: float = 0.0  # share of the weights placed inside the input range


@dataclass
class ReconstructionResult:
    layers: list[LayerFit] = field(default_factory=list)
    seconds: float = 0.0


def _units(student: nn.Module, report: ConversionReport) -> list[_Unit]:
    """The converted layers of ``student`` followed by a BatchNorm, in execution order."""
    pairs = norms_after_adders(student)
    inserted = {d.name: d.insert_bn for d in report.converted}
    units = []
    for adder_name, norm_name in pairs.items():
        norm = student.get_submodule(norm_name)
        if not isinstance(norm, nn.modules.batchnorm._BatchNorm) or not norm.affine or not norm.track_running_stats:
            continue
        conv_name = adder_name[:-2] if adder_name.endswith(".0") and adder_name[:-2] in inserted else adder_name
        if conv_name not in inserted:
            continue
        target = conv_name if inserted[conv_name] else norm_name
        units.append(_Unit(adder_name, student.get_submodule(adder_name), norm, target))
    return units


def _channels_last(t: torch.Tensor, limit: int | None = MAX_SAMPLES) -> torch.Tensor:
    """(N, C, H, W) -> (C, samples), the first ``limit`` samples of a fixed random draw."""
    flat = t.transpose(0, 1).flatten(1)
    if limit is not None and flat.shape[1] > limit:
        index = torch.randperm(flat.shape[1], generator=torch.Generator().manual_seed(0))[:limit]
        flat = flat[:, index.to(flat.device)]
    return flat


def _affine(z: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Per channel least squares ``y ~ A z + C`` over (C, S) samples; (A, C, relative error)."""
    zm, ym = z.mean(1, keepdim=True), y.mean(1, keepdim=True)
    zc, yc = z - zm, y - ym
    var = (zc * zc).mean(1)
    cov = (zc * yc).mean(1)
    scale = torch.where(var > 0, cov / var.clamp_min(1e-30), torch.zeros_like(var))
    shift = ym.squeeze(1) - scale * zm.squeeze(1)
    return scale, shift, _relative_error(scale[:, None] * z + shift[:, None], y)


def _relative_error(pred: torch.Tensor, y: torch.Tensor) -> float:
    """MSE of ``pred`` against ``y`` over the variance of ``y`` (both (C, S)), all channels together."""
    return float(((pred - y) ** 2).mean() / y.var(1, correction=0).mean().clamp_min(1e-30))


def _eval_mapping(norm: nn.modules.batchnorm._BatchNorm) -> tuple[torch.Tensor, torch.Tensor]:
    scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)
    return scale, norm.bias - scale * norm.running_mean


def _set_mapping(norm, z: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> None:
    """Make ``norm`` compute ``scale * z + shift`` in eval mode, with running statistics those of ``z``
    (C, S), so that a later re-estimation of its statistics on like data keeps the mapping."""
    mean, var = z.mean(1), z.var(1, correction=0)
    norm.running_mean.copy_(mean)
    norm.running_var.copy_(var)
    norm.weight.copy_(scale * torch.sqrt(var + norm.eps))
    norm.bias.copy_(scale * mean + shift)


def _forward(adder: AdderConv2d, x: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """The adder layer's output on ``x`` (with ``weight`` instead of its own), bypassing its hooks."""
    weight = adder.weight if weight is None else weight
    return adder_conv2d(x, weight, adder.bias, adder.stride, adder.padding, adder.dilation, adder.groups)


def _damping(hessian: torch.Tensor, factor: float) -> torch.Tensor:
    """Per group, ``factor`` times the mean diagonal of ``hessian`` (G, K, K): the ridge its solves add."""
    return factor * hessian.diagonal(dim1=1, dim2=2).mean(1).clamp_min(1e-12)


def _damped_solve(hessian: torch.Tensor, rhs: torch.Tensor, damp: torch.Tensor) -> torch.Tensor:
    """``rhs (H + d I)^-1`` per group, ``d`` the group's ``damp`` (:func:`_damping`): hessian (G, K, K), rhs
    (G, O, K)."""
    eye = torch.eye(hessian.shape[1], dtype=hessian.dtype, device=hessian.device)
    return torch.linalg.solve(hessian + damp[:, None, None] * eye, rhs.transpose(1, 2)).transpose(1, 2)


def _single_base(adder: AdderConv2d, base: int) -> AdderConv2d:
    """A one-base copy of ``base`` of ``adder`` (with its bias for base 0): what the fits read and round."""
    layer = AdderConv2d(
        adder.in_channels, adder.out_channels, adder.kernel_size, adder.stride, adder.padding, adder.dilation,
        adder.groups, bias=base == 0 and adder.bias is not None, device=adder.weight.device, dtype=adder.weight.dtype,
    )  # fmt: skip
    with torch.no_grad():
        layer.weight.copy_(adder.base_weight(base))
        if layer.bias is not None:
            layer.bias.copy_(adder.bias)
    return layer


@torch.no_grad()
def _fit_extra_base(unit: _Unit, x: torch.Tensor, y: torch.Tensor, base: int, fitted: int) -> float | None:
    """Fit ``base`` (> 0) of ``unit.adder`` to what the layer's other bases and its norm leave of the CNN's output
    ``y``: the least-squares weights from the inputs ``x`` to that residual, rounded to the layer's edges with error
    feedback, and the base's per-channel scale and the shift. Kept only where the error on the images after the
    first ``fitted`` falls; returns that error then (None: not kept)."""
    layer = unit.adder
    a, c = _eval_mapping(unit.norm)
    current = a[:, None, None] * type(layer).forward(layer, x) + c[:, None, None]
    safe = torch.where(a.abs() > 1e-12, a, torch.ones_like(a))
    residual = (y - current) / safe[:, None, None]  # in the layer's output units
    single = _single_base(layer, base)
    cols = _patches(single, x[:fitted])  # (G, K, S)
    target = _channels_last(residual[:fitted])  # (O, S): the same positions
    centred = (cols - cols.mean(2, keepdim=True)).double()
    target = (target - target.mean(1, keepdim=True)).double().view(layer.groups, -1, target.shape[1])
    hessian = centred @ centred.transpose(1, 2) / cols.shape[2]
    cross = target @ centred.transpose(1, 2) / cols.shape[2]  # (G, O/G, K)
    weight = _damped_solve(hessian, cross, _damping(hessian, DAMPING))
    chosen, _ = _error_feedback(weight, hessian, weight.abs().mean(2), None, None)
    lower, upper = float(layer.base_weight(0).min()), float(layer.base_weight(0).max())
    new = torch.where(chosen >= 0, upper, lower).to(layer.weight.dtype).reshape_as(single.weight)
    z = _forward(single, x, new)
    scale, shift, _ = _affine(_channels_last(z[:fitted]), _channels_last(residual[:fitted]))
    truth, mapped = _channels_last(y[fitted:]), _channels_last(current[fitted:])
    added = a[:, None] * (scale[:, None] * _channels_last(z[fitted:]) + shift[:, None])
    before, after = _relative_error(mapped, truth), _relative_error(mapped + added, truth)
    if after >= before:
        return None
    layer.set_base_weight(base, new)
    layer.base_scale[base - 1].copy_(scale)
    layer.base_shift.add_(shift)
    return after


def _patches(adder: AdderConv2d, x: torch.Tensor, limit: int = MAX_SAMPLES) -> torch.Tensor:
    """The layer's receptive fields as (groups, K, samples), K = in/groups * kh * kw (the weight's order)."""
    top, left, bottom, right = adder.pads
    padded = F.pad(x, (left, right, top, bottom))
    cols = F.unfold(padded, adder.kernel_size, dilation=adder.dilation, stride=adder.stride)  # (N, C*kk, L)
    cols = cols.transpose(0, 1).flatten(1)  # (C*kk, N*L)
    if cols.shape[1] > limit:
        index = torch.randperm(cols.shape[1], generator=torch.Generator().manual_seed(0))[:limit]
        cols = cols[:, index.to(cols.device)]
    return cols.view(adder.groups, -1, cols.shape[1])


def _inside_candidates(x: torch.Tensor, places: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per input channel (C, S samples of ``x``): places ``t`` (C, P) inside the range (quantiles), the
    least-squares slope ``beta`` of ``-|x - t|`` on ``x`` and the variance left over (C, P)."""
    q = torch.linspace(0.0, 1.0, places + 2, device=x.device, dtype=x.dtype)[1:-1]
    t = torch.quantile(x, q, dim=1).T.contiguous()  # (C, P)
    f = -(x[:, None, :] - t[:, :, None]).abs()  # (C, P, S)
    xc = x - x.mean(1, keepdim=True)
    fc = f - f.mean(2, keepdim=True)
    var_x = (xc * xc).mean(1).clamp_min(1e-30)
    beta = (fc * xc[:, None, :]).mean(2) / var_x[:, None]
    residual = ((fc - beta[:, :, None] * xc[:, None, :]) ** 2).mean(2)
    return t, beta, residual


def _error_feedback(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    scale: torch.Tensor,
    slopes: torch.Tensor | None,
    noise: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """GPTQ with a per-row scale over groups. ``weight`` (G, O, K), ``hessian`` (G, K, K), ``scale`` (G, O);
    ``slopes``/``noise`` (G, K, P): the inside places of each column (or None: signs only). Returns the
    chosen slope per weight (G, O, K, in -1..1: +-1 at the edges) and the place index (-1: an edge)."""
    groups, rows, k = weight.shape
    w = weight.clone()
    diag = hessian.diagonal(dim1=1, dim2=2)
    damp = _damping(hessian, DAMPING)
    h = hessian + damp[:, None, None] * torch.eye(k, dtype=hessian.dtype, device=hessian.device)
    dead = diag <= 0
    h[dead.unsqueeze(1).expand_as(h) & dead.unsqueeze(2).expand_as(h)] = 0
    h.diagonal(dim1=1, dim2=2)[dead] = 1.0
    chol = torch.linalg.cholesky(h)
    inverse = torch.cholesky_inverse(chol)
    upper = torch.linalg.cholesky(inverse, upper=True)  # (G, K, K)
    chosen = torch.empty_like(w)
    place = torch.full(w.shape, -1, dtype=torch.long, device=w.device)
    a = scale[:, :, None]
    for i1 in range(0, k, _BLOCK):
        i2 = min(i1 + _BLOCK, k)
        block = w[:, :, i1:i2].clone()
        errors = torch.zeros_like(block)
        u = upper[:, i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = block[:, :, i]  # (G, O)
            d = u[:, i, i][:, None]  # (G, 1)
            slope = torch.where(col >= 0, 1.0, -1.0)
            best = ((col - scale * slope) / d) ** 2
            index = torch.full_like(col, -1, dtype=torch.long)
            if slopes is not None:
                beta, extra = slopes[:, i1 + i][:, None, :], noise[:, i1 + i][:, None, :]  # (G, 1, P)
                cost = ((col[:, :, None] - a * beta) / d[:, :, None]) ** 2 + (a * a) * extra
                inside_best, inside_index = cost.min(2)
                take = inside_best < best
                inside_slope = torch.gather(beta.expand(-1, rows, -1), 2, inside_index[:, :, None])[..., 0]
                slope = torch.where(take, inside_slope, slope)
                index = torch.where(take, inside_index, index)
            chosen[:, :, i1 + i] = slope
            place[:, :, i1 + i] = index
            error = (col - scale * slope) / d
            block[:, :, i:] -= error[:, :, None] * u[:, i, i:][:, None, :]
            errors[:, :, i] = error
        w[:, :, i2:] -= errors @ upper[:, i1:i2, i2:]
    return chosen, place


@torch.no_grad()
def _fit_signs(
    unit: _Unit, conv_weight: torch.Tensor, x: torch.Tensor, inside: bool, x_teacher: torch.Tensor | None = None
) -> tuple[torch.Tensor, float]:
    """New adder weights for ``unit`` from the CNN's ``conv_weight`` and the layer's inputs ``x``; and the
    share placed inside the range."""
    adder = unit.adder
    groups = adder.groups
    out = conv_weight.shape[0]
    k = conv_weight[0].numel()
    lower, upper = float(adder.weight.min()), float(adder.weight.max())
    cols = _patches(adder, x)  # (G, K, S)
    centred = cols - cols.mean(2, keepdim=True)
    hessian = (centred @ centred.transpose(1, 2)).double() / cols.shape[2]
    weight = conv_weight.detach().double().reshape(groups, out // groups, k)
    if x_teacher is not None:
        # Match the CNN's output on its own inputs, W x_t, from the student's inputs x_s: the least-squares
        # weights W C_ts H^-1 (C_ts the cross moments), pulled towards W by the damping.
        theirs = _patches(adder, x_teacher)
        cross = ((theirs - theirs.mean(2, keepdim=True)) @ centred.transpose(1, 2)).double() / cols.shape[2]
        damp = _damping(hessian, CORRECTION_DAMPING)
        weight = _damped_solve(hessian, weight @ cross + damp[:, None, None] * weight, damp)
        del theirs, cross
    del cols, centred
    scale = weight.abs().mean(2)
    slopes = noise = places = None
    kk = adder.kernel_size[0] * adder.kernel_size[1]
    if inside:
        samples = _channels_last(x, 2048)
        places, beta, residual = _inside_candidates(samples, INSIDE_PLACES)  # (C, P)
        cin = x.shape[1] // groups
        # Column j of group g reads input channel g * cin + j // kk.
        channel = (torch.arange(groups)[:, None] * cin + torch.arange(k)[None, :] // kk).to(x.device)  # (G, K)
        slopes, noise = beta[channel].double(), residual[channel].double()
    chosen, index = _error_feedback(weight, hessian, scale, slopes, noise)
    new = torch.where(chosen >= 0, upper, lower).to(adder.weight.dtype)
    share = 0.0
    if inside:
        taken = index >= 0
        share = float(taken.double().mean())
        values = places[channel][:, None, :, :].expand(-1, out // groups, -1, -1)  # (G, O, K, P)
        at = torch.gather(values, 3, index.clamp_min(0)[..., None])[..., 0]
        new = torch.where(taken, at.to(new.dtype), new)
    return new.reshape_as(adder.weight), share


def _keeper(store: dict[str, torch.Tensor], name: str, output: bool):
    """A forward (``output``) or forward-pre hook that keeps a copy of the module's output or input in
    ``store[name]`` (a copy: in-place activations after it would change the tensor); of its first run only, where
    the model runs it more than once (a detection head on each pyramid level)."""

    def keep(tensor: torch.Tensor) -> None:
        if name not in store:
            store[name] = tensor.detach().clone()

    if output:
        return lambda module, inputs, out: keep(out)
    return lambda module, inputs: keep(inputs[0])


@torch.no_grad()
def _targets(
    teacher: nn.Module, names: Sequence[str], images: torch.Tensor, inputs_of: Sequence[str] = ()
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The CNN's (eval mode) output of each module in ``names`` on ``images``, and the input of each module in
    ``inputs_of``."""
    found, inputs = {}, {}
    hooks = []
    for name in set(names):
        hook = _keeper(found, name, output=True)
        hooks.append(teacher.get_submodule(name).register_forward_hook(hook))
    for name in set(inputs_of):
        hooks.append(teacher.get_submodule(name).register_forward_pre_hook(_keeper(inputs, name, output=False)))
    run_hooked(teacher, images, hooks)
    return found, inputs


def _conv_names(units: list[_Unit], report: ConversionReport) -> dict[str, str]:
    """Each unit's adder layer name -> the name of the conv it replaced (in the CNN)."""
    names = {d.name for d in report.converted}
    return {u.name: u.name[:-2] if u.name.endswith(".0") and u.name[:-2] in names else u.name for u in units}


def reconstruct(
    teacher: nn.Module,
    student: nn.Module,
    report: ConversionReport,
    images: torch.Tensor,
    method: str = "signs",
    inside: bool = False,
    correct: bool = True,
) -> ReconstructionResult:
    """Fit each adder layer of ``student`` (converted from ``teacher`` with ``init="sign"`` following
    ``report``) and the BatchNorm after it to ``teacher``'s output of that layer on ``images``, in
    execution order, each on the student's own inputs (so that a layer also corrects what the layers before
    it got wrong). Call it after :func:`~adderconvert.conversion.fit_norm_statistics` (and any BatchNorm
    re-estimation); ``images`` are calibration images from the training set (a few hundred).

    ``method`` is ``"affine"`` (the norm's per-channel scale and shift only) or ``"signs"`` (also the binary
    weights, chosen with error feedback; ``inside`` also lets taps take places inside their input range;
    ``correct`` rounds the weights that map the student's inputs to the CNN's output rather than the CNN's
    own, see the module's docstring). Each layer is fitted on the first :data:`FIT_SHARE` of ``images``.
    Each layer keeps the best of as it was, the affine, the step, measured on the rest of ``images``. A layer the
    model runs more than once (a detection head on each pyramid level) is fitted on its first run. The
    student is changed in place; it stays an ordinary adder model. Returns each layer's errors and the wall time.
    """
    if method not in RECONSTRUCT_METHODS:
        raise ValueError(f"method must be one of {RECONSTRUCT_METHODS}, got {method!r}")
    started = time.perf_counter()
    units = _units(student, report)
    convs = _conv_names(units, report)
    targets, teacher_inputs = _targets(
        teacher, [u.target for u in units], images, list(convs.values()) if correct and method == "signs" else ()
    )
    result = ReconstructionResult()

    fitted = max(1, min(len(images) - 1, round(FIT_SHARE * len(images))))

    def held_out(z: torch.Tensor, y: torch.Tensor, mapping=None) -> float:
        """Error on the held-out images of ``z`` mapped by ``mapping`` or by the affine fitted on the rest."""
        if mapping is None:
            a, c, _ = _affine(_channels_last(z[:fitted]), _channels_last(y[:fitted]))
        else:
            a, c = mapping
        return _relative_error(a[:, None] * _channels_last(z[fitted:]) + c[:, None], _channels_last(y[fitted:]))

    done: set[str] = set()

    def fit(unit: _Unit, x: torch.Tensor) -> None:
        if unit.name in done:  # run again (a head on each pyramid level): fitted on its first run's data
            return
        done.add(unit.name)
        layer = unit.adder
        if layer.bases > 1:  # the first base is fitted alone, as a one-base layer; the others after it
            layer.base_scale.zero_()
            layer.base_shift.zero_()
            unit = _Unit(unit.name, _single_base(layer, 0), unit.norm, unit.target)
        y = targets[unit.target]
        z = _forward(unit.adder, x)
        everything = _channels_last(y)
        mapping = _eval_mapping(unit.norm)
        before = _relative_error(mapping[0][:, None] * _channels_last(z) + mapping[1][:, None], everything)
        candidates = [(held_out(z, y, mapping), "none", None, z), (held_out(z, y), "affine", None, z)]
        share = 0.0
        if method == "signs":
            conv = convs[unit.name]
            theirs = teacher_inputs[conv][:fitted] if conv in teacher_inputs else None
            new, share = _fit_signs(unit, teacher.get_submodule(conv).weight, x[:fitted], inside, theirs)
            z_new = _forward(unit.adder, x, new)
            candidates.append((held_out(z_new, y), "signs", new, z_new))
        _, kept, new, z = min(candidates, key=lambda c: c[0])
        if new is not None:
            unit.adder.weight.copy_(new)
        after = before
        if kept != "none":
            a, c, after = _affine(_channels_last(z), everything)
            _set_mapping(unit.norm, _channels_last(z), a, c)
        if layer.bases > 1:
            layer.set_base_weight(0, unit.adder.weight)
            unit = _Unit(unit.name, layer, unit.norm, unit.target)
            for base in range(1, layer.bases) if method == "signs" else ():
                error = _fit_extra_base(unit, x, y, base, fitted)
                after = after if error is None else error
            # The same mapping, with the statistics of the whole layer's output: training mode and a later
            # re-estimation of the norm then compute what eval mode does.
            _set_mapping(unit.norm, _channels_last(type(layer).forward(layer, x)), *_eval_mapping(unit.norm))
        result.layers.append(LayerFit(unit.name, before, after, kept, share if kept == "signs" else 0.0))

    hooks = [u.adder.register_forward_pre_hook(lambda m, inputs, u=u: fit(u, inputs[0])) for u in units]
    _teacher_statistics(teacher, student, {id(u.norm) for u in units})
    run_hooked(student, images, hooks)
    result.seconds = time.perf_counter() - started
    return result


@torch.no_grad()
def _teacher_statistics(teacher: nn.Module, student: nn.Module, fitted: set[int]) -> None:
    """Give every BatchNorm of ``student`` that no unit fits (after convs kept multiplicative) ``teacher``'s
    running statistics: once the adder layers before it reproduce the CNN's outputs, its inputs are the
    CNN's again, not those of the model before reconstruction that the statistics were re-estimated on."""
    theirs = dict(teacher.named_modules())
    for name, norm in student.named_modules():
        if not isinstance(norm, nn.modules.batchnorm._BatchNorm) or id(norm) in fitted or not norm.track_running_stats:
            continue
        source = theirs.get(name)
        if isinstance(source, nn.modules.batchnorm._BatchNorm) and source.running_mean.shape == norm.running_mean.shape:
            norm.running_mean.copy_(source.running_mean)
            norm.running_var.copy_(source.running_var)


@torch.no_grad()
def layer_errors(
    teacher: nn.Module, student: nn.Module, report: ConversionReport, images: torch.Tensor
) -> list[dict[str, float | str]]:
    """Per adder layer of ``student`` (execution order): the relative output error (MSE over variance) and
    the mean per-channel correlation with ``teacher``'s output of that layer, on the student's own inputs
    (``compound``: what the model carries) and on the teacher's inputs to the layer (``isolated``: what the
    layer alone loses), both in eval mode."""
    units = _units(student, report)
    convs = _conv_names(units, report)
    targets, conv_inputs = _targets(teacher, [u.target for u in units], images, list(convs.values()))
    student_out = {}
    hooks = []
    for unit in units:
        hooks.append(unit.norm.register_forward_hook(_keeper(student_out, unit.name, output=True)))
    run_hooked(student, images, hooks)
    rows = []
    for unit in units:
        y = _channels_last(targets[unit.target])
        isolated = _channels_last(unit.norm(unit.adder(conv_inputs[convs[unit.name]])))
        compound = _channels_last(student_out[unit.name])
        rows.append(
            {
                "name": unit.name,
                "groups": unit.adder.groups,
                "k": unit.adder.weight[0].numel(),
                "isolated_error": _relative_error(isolated, y),
                "isolated_corr": _correlation(isolated, y),
                "compound_error": _relative_error(compound, y),
                "compound_corr": _correlation(compound, y),
            }
        )
    return rows


def _correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean over channels (rows) whose target varies of the correlation of ``a`` with ``b``."""
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    va, vb = (a * a).sum(1), (b * b).sum(1)
    alive = vb > 1e-12 * vb.max().clamp_min(1e-30)
    r = (a * b).sum(1)[alive] / (va[alive] * vb[alive]).sqrt().clamp_min(1e-30)
    return float(r.mean()) if alive.any() else 0.0

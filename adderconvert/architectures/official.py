"""Checkpoints of the official AdderNet code (github.com/huawei-noah/AdderNet) as models of :class:`AdderConv2d`.

The official ResNet-20 (CIFAR-10) and ResNet-50 (ImageNet) are torchvision-like ResNets whose convolutions
(all but the stem) are ``adder2d`` layers holding their weights as ``.adder`` (and an optional bias as
``.b``), whose classifier is a 1x1 ``Conv2d`` followed by a BatchNorm over the logits, and whose state
dicts come from ``DataParallel`` (keys prefixed ``module.``). :func:`build` rebuilds that architecture,
:func:`load` fills it from an official file (``adderconvert.app.official_run`` turns one into a run folder).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from adderconvert.nn import AdderConv2d

__all__ = ["ARCHS", "OfficialResNet", "build", "from_official_state", "load"]

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


@dataclass(frozen=True)
class _Arch:
    block: str  # "basic" or "bottleneck"
    blocks: tuple[int, ...]  # blocks per stage
    num_classes: int
    dataset: str
    image_size: int
    mean: tuple[float, float, float]  # the input normalisation of the official test script
    std: tuple[float, float, float]
    classes: list[str] | None = None


ARCHS: dict[str, _Arch] = {
    "resnet20": _Arch(
        "basic", (3, 3, 3), 10, "cifar10", 32, (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010), CIFAR10_CLASSES
    ),
    "resnet50": _Arch("bottleneck", (3, 4, 6, 3), 1000, "imagenet", 224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}


class _BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int, downsample: nn.Module | None) -> None:
        super().__init__()
        self.conv1 = AdderConv2d(inplanes, planes, 3, stride=stride, padding=1)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = AdderConv2d(planes, planes, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU()
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class _Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int, downsample: nn.Module | None) -> None:
        super().__init__()
        self.conv1 = AdderConv2d(inplanes, planes, 1)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = AdderConv2d(planes, planes, 3, stride=stride, padding=1)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = AdderConv2d(planes, planes * self.expansion, 1)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU()
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class OfficialResNet(nn.Module):
    """The official AdderNet ResNet with the official module names (so state dicts map one to one)."""

    def __init__(self, arch: str = "resnet20", num_classes: int | None = None) -> None:
        super().__init__()
        if arch not in ARCHS:
            raise ValueError(f"unknown official AdderNet architecture {arch!r}; choose one of {', '.join(ARCHS)}")
        kind, blocks = ARCHS[arch].block, ARCHS[arch].blocks
        num_classes = ARCHS[arch].num_classes if num_classes is None else num_classes
        self.arch = arch
        block = _BasicBlock if kind == "basic" else _Bottleneck
        if kind == "basic":  # CIFAR stem: 3x3 conv, no pooling; stages of 16, 32, 64 channels
            self.inplanes, widths = 16, (16, 32, 64)
            self.conv1 = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        else:  # ImageNet stem: 7x7/2 conv and 3x3/2 max pooling; stages of 64..512 (x4) channels
            self.inplanes, widths = 64, (64, 128, 256, 512)
            self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(self.inplanes)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1) if kind == "bottleneck" else None
        for index, (width, count) in enumerate(zip(widths, blocks)):
            stage = self._make_stage(block, width, count, stride=1 if index == 0 else 2)
            setattr(self, f"layer{index + 1}", stage)
        self.stages = len(blocks)
        # ResNet-20 averages its 8x8 map with AvgPool2d(8) (32 px inputs only), ResNet-50 adaptively.
        self.avgpool = nn.AvgPool2d(8, stride=1) if kind == "basic" else nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Conv2d(self.inplanes, num_classes, 1, bias=kind == "bottleneck")
        self.bn2 = nn.BatchNorm2d(num_classes)

    def _make_stage(self, block: type[nn.Module], planes: int, count: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                AdderConv2d(self.inplanes, planes * block.expansion, 1, stride=stride),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes, 1, None) for _ in range(1, count)]
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        if self.maxpool is not None:
            x = self.maxpool(x)
        for index in range(self.stages):
            x = getattr(self, f"layer{index + 1}")(x)
        x = self.bn2(self.fc(self.avgpool(x)))
        return x.flatten(1)


def build(arch: str = "resnet20", num_classes: int | None = None) -> OfficialResNet:
    """The official architecture with fresh weights (``num_classes`` defaults to CIFAR-10's or ImageNet's)."""
    return OfficialResNet(arch, num_classes)


def from_official_state(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Map an official state dict to :class:`OfficialResNet`'s keys: drop ``module.``, ``.adder`` -> ``.weight``,
    ``.b`` (adder bias) -> ``.bias``."""
    mapped = {}
    for key, value in state.items():
        key = key.removeprefix("module.")
        stem, _, leaf = key.rpartition(".")
        leaf = {"adder": "weight", "b": "bias"}.get(leaf, leaf)
        mapped[f"{stem}.{leaf}" if stem else leaf] = value
    return mapped


def _read_state(path: Path) -> dict[str, Tensor]:
    if not path.is_file():
        raise FileNotFoundError(f"official AdderNet checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle errors, truncated files, non-tensor payloads
        raise ValueError(f"{path} is not a PyTorch state dict ({type(e).__name__}: {e})") from e
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):  # the official training script's file
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"{path} holds no state dict of tensors")
    return state


def load(path: str | os.PathLike, arch: str = "resnet20") -> OfficialResNet:
    """Load an official AdderNet checkpoint into :class:`OfficialResNet` (eval mode, float32, CPU).

    The number of classes is read from the classifier's weights. Raises ``ValueError`` naming the
    missing or unexpected keys (or mismatched shapes) when the file is not of ``arch``'s layout.
    """
    if arch not in ARCHS:
        raise ValueError(f"unknown official AdderNet architecture {arch!r}; choose one of {', '.join(ARCHS)}")
    path = Path(path)
    state = from_official_state(_read_state(path))
    if "fc.weight" not in state:
        raise ValueError(f"{path} is not an official AdderNet {arch} checkpoint: it has no classifier 'fc.weight'")
    model = build(arch, int(state["fc.weight"].shape[0]))
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        details = [
            f"{label}: {', '.join(keys[:4])}{' ...' if len(keys) > 4 else ''}"
            for label, keys in (("missing", missing), ("unexpected", unexpected), ("other shapes", wrong))
            if keys
        ]
        raise ValueError(f"{path} does not fit the official {arch} layout ({'; '.join(details)})")
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    return model.eval()

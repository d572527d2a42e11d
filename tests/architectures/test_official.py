"""Official AdderNet checkpoints: the published ResNet-20 and the ResNet-50 key layout, against a float64
evaluation of the official architecture written here from the paper's equation (no adderconvert kernels)."""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from adderconvert.architectures.official import build, from_official_state, load
from adderconvert.nn import AdderConv2d

PUBLISHED = Path(__file__).parents[1] / "data" / "ResNet20-AdderNet.pth"


def _adder(x, weight, stride, padding):
    """Y = -sum |X - W| over each receptive field (Chen et al., CVPR 2020, eq. 2), through unfold."""
    n, _, h, w = x.shape
    out, _, k, _ = weight.shape
    cols = F.unfold(x, k, padding=padding, stride=stride)  # (N, C*k*k, L)
    y = -(cols.unsqueeze(1) - weight.reshape(1, out, -1, 1)).abs().sum(2)
    return y.view(n, out, (h + 2 * padding - k) // stride + 1, (w + 2 * padding - k) // stride + 1)


def _bn(x, s, prefix):
    shape = (1, -1, 1, 1)
    scale = s[f"{prefix}.weight"] / torch.sqrt(s[f"{prefix}.running_var"] + 1e-5)
    return (x - s[f"{prefix}.running_mean"].view(shape)) * scale.view(shape) + s[f"{prefix}.bias"].view(shape)


def reference_forward(official: dict, x: torch.Tensor) -> torch.Tensor:
    """The official ResNet-20/ResNet-50 forward, read off an official state dict (``module.`` keys)."""
    s = {k.removeprefix("module."): v.to(x.dtype) for k, v in official.items() if v.is_floating_point()}
    bottleneck = "layer1.0.conv3.adder" in s
    if bottleneck:
        x = F.max_pool2d(F.relu(_bn(F.conv2d(x, s["conv1.weight"], stride=2, padding=3), s, "bn1")), 3, 2, 1)
    else:
        x = F.relu(_bn(F.conv2d(x, s["conv1.weight"], padding=1), s, "bn1"))
    stage = 1
    while f"layer{stage}.0.conv1.adder" in s:
        block = 0
        while f"layer{stage}.{block}.conv1.adder" in s:
            p = f"layer{stage}.{block}"
            stride = 2 if stage > 1 and block == 0 else 1
            if bottleneck:
                out = F.relu(_bn(_adder(x, s[f"{p}.conv1.adder"], 1, 0), s, f"{p}.bn1"))
                out = F.relu(_bn(_adder(out, s[f"{p}.conv2.adder"], stride, 1), s, f"{p}.bn2"))
                out = _bn(_adder(out, s[f"{p}.conv3.adder"], 1, 0), s, f"{p}.bn3")
            else:
                out = F.relu(_bn(_adder(x, s[f"{p}.conv1.adder"], stride, 1), s, f"{p}.bn1"))
                out = _bn(_adder(out, s[f"{p}.conv2.adder"], 1, 1), s, f"{p}.bn2")
            if f"{p}.downsample.0.adder" in s:
                x = _bn(_adder(x, s[f"{p}.downsample.0.adder"], stride, 0), s, f"{p}.downsample.1")
            x = F.relu(out + x)
            block += 1
        stage += 1
    pooled = x.mean((2, 3))
    logits = pooled @ s["fc.weight"].flatten(1).T + s.get("fc.bias", 0)
    return _bn(logits[:, :, None, None], s, "bn2").flatten(1)


def _tolerance(expected: torch.Tensor) -> float:
    """1e-3 of max|y| for float32 results.

    This model's BatchNorms subtract running means of up to -3221 from adder sums of that size and divide
    by a std of 1.7, which amplifies float32 rounding of the sums: measured on these inputs, the
    reference itself in float32 (torch's pairwise sums) is 4e-5 of max|y| off float64, the adderconvert
    kernels (PyTorch and ONNX Runtime) 4.2e-4.
    """
    return 1e-3 * expected.abs().max().item()


@pytest.fixture(scope="module")
def published():
    return torch.load(PUBLISHED, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def inputs():
    torch.manual_seed(0)
    return torch.randn(4, 3, 32, 32)


def test_published_resnet20_matches_the_paper_equation(published, inputs):
    model = load(PUBLISHED)
    assert not model.training
    assert sum(isinstance(m, AdderConv2d) for m in model.modules()) == 18 + 2  # 9 blocks x 2 + 2 downsamples
    expected = reference_forward(published, inputs.double())
    with torch.no_grad():
        got64 = model.double()(inputs.double())
        got32 = model.float()(inputs)
    scale = expected.abs().max().item()
    assert scale > 1  # trained logits, not a degenerate output
    assert (got64 - expected).abs().max().item() <= 1e-9 * scale
    assert (got32.double() - expected).abs().max().item() <= _tolerance(expected)
    assert torch.equal(got32.argmax(1), expected.argmax(1))


def _random_official_resnet50() -> dict:
    """A ResNet-50 state dict in the official layout (``module.`` prefix, adder weights as ``.adder``)."""
    torch.manual_seed(1)
    model = build("resnet50")
    adders = {name for name, m in model.named_modules() if isinstance(m, AdderConv2d)}
    state = {}
    for key, value in model.state_dict().items():
        if value.is_floating_point():
            value = torch.rand_like(value) + 0.5 if key.endswith("running_var") else torch.randn_like(value)
        stem, _, leaf = key.rpartition(".")
        state[f"module.{stem}.{'adder' if stem in adders and leaf == 'weight' else leaf}"] = value
    return state


def test_resnet50_official_layout_round_trips(tmp_path):
    official = _random_official_resnet50()
    assert "module.layer4.2.conv3.adder" in official and "module.fc.bias" in official
    path = tmp_path / "ResNet50-AdderNet.pth"
    torch.save(official, path)
    model = load(path, arch="resnet50")
    own = model.state_dict()
    for key, value in from_official_state(official).items():
        assert torch.equal(own[key], value), key
    x = torch.randn(1, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        got = model.double()(x)
    expected = reference_forward(official, x)
    assert got.shape == (1, 1000)
    assert (got - expected).abs().max().item() <= 1e-9 * expected.abs().max().item()


def test_load_errors(tmp_path, published):
    with pytest.raises(ValueError, match="unknown official AdderNet architecture 'vgg'"):
        load(PUBLISHED, arch="vgg")
    with pytest.raises(FileNotFoundError, match="not found"):
        load(tmp_path / "missing.pth")
    with pytest.raises(ValueError, match=r"does not fit the official resnet50 layout \(missing: .*layer1\.0\.bn3"):
        load(PUBLISHED, arch="resnet50")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a PyTorch state dict"):
        load(garbage)
    no_head = tmp_path / "no_head.pth"
    torch.save({k: v for k, v in published.items() if "fc." not in k}, no_head)
    with pytest.raises(ValueError, match="no classifier 'fc.weight'"):
        load(no_head)

"""quantize(): calibration by min/max, by percentile and by layer-output MSE, grids that hold 0, every adder layer
swapped for its integer twin, and the quantised model close to the float one."""

import pytest
import torch
from torch import nn

from adderconvert.nn import AdderConv2d
from adderconvert.nn.quantized import QuantizedAdderConv2d
from adderconvert.quantization import MSE_IMAGES, calibrate, grid, layer_output_mse, quantize


def small_model() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        AdderConv2d(8, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        AdderConv2d(16, 16, 3, stride=2, padding=1, groups=2),
        nn.BatchNorm2d(16),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 10),
    )
    with torch.no_grad():  # BatchNorm statistics of the adder outputs, so that the logits mean something
        model.train()
        for _ in range(5):
            model(torch.randn(16, 3, 12, 12))
    return model.eval()


def batches(n=4, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(8, 3, 12, 12, generator=g), torch.zeros(8)) for _ in range(n)]


def test_grid_holds_zero_and_the_range():
    scale, zp = grid(-1.0, 3.0)
    assert scale == pytest.approx(4 / 255) and zp == round(255 / 4)
    assert scale * (0 - zp) <= -1.0 + scale and scale * (255 - zp) >= 3.0 - scale
    assert grid(0.5, 2.0) == (2.0 / 255, 0)  # all positive: widened down to 0
    assert grid(-2.0, -0.5) == (2.0 / 255, 255)  # all negative: widened up to 0
    assert grid(0.0, 0.0) == (1.0, 0)
    with pytest.raises(ValueError, match="not finite"):
        grid(0.0, float("inf"))


def test_minmax_is_the_extremes_of_the_inputs():
    model = small_model()
    inputs = []
    handle = model[5].register_forward_hook(lambda m, i, o: inputs.append(i[0]))
    ranges = calibrate(model, batches(), "minmax")
    handle.remove()
    r = ranges["5"]
    assert list(ranges) == ["2", "5"]
    assert r.low == torch.cat(inputs).min().item() and r.high == torch.cat(inputs).max().item()
    assert ranges["2"].low == 0.0 and ranges["2"].x_zero_point == 0  # after a ReLU


def test_percentile_is_inside_minmax_and_plain_tensors_are_batches():
    model = small_model()
    minmax = calibrate(model, [b[0] for b in batches()], "minmax")
    pct = calibrate(model, batches(), "percentile", percentile=99.0)
    for name in minmax:
        assert minmax[name].low <= pct[name].low <= pct[name].high <= minmax[name].high
    assert pct["5"].high < minmax["5"].high


def test_quantize_swaps_every_adder_layer_and_keeps_the_original():
    model = small_model()
    reference = [p.clone() for p in model.parameters()]
    quantized = quantize(model, batches(), "minmax")
    assert isinstance(model[2], AdderConv2d) and all(torch.equal(a, b) for a, b in zip(reference, model.parameters()))
    assert isinstance(quantized[2], QuantizedAdderConv2d) and isinstance(quantized[5], QuantizedAdderConv2d)
    assert not any(isinstance(m, AdderConv2d) for m in quantized.modules())
    assert quantized.quantization["method"] == "minmax" and len(quantized.quantization["layers"]) == 2
    layer = quantized.quantization["layers"][1]
    assert (
        quantized[5].x_scale == pytest.approx(layer["x_scale"]) and quantized[5].x_zero_point == layer["x_zero_point"]
    )


def outlier_case():
    """One adder layer whose inputs are N(0, 1) with 0.02% outliers at +-1000 (2 of 9600 values: the 99.99
    percentile clips them, at a cost, and min/max spends the grid on them) and whose weights are half inside the
    inputs' bulk, half far beyond it (as the sign init leaves many)."""
    torch.manual_seed(3)
    layer = AdderConv2d(4, 8, 3, padding=1)
    with torch.no_grad():
        layer.weight.copy_(torch.randn_like(layer.weight) * torch.where(torch.rand_like(layer.weight) < 0.5, 1, 20))
    g = torch.Generator().manual_seed(4)
    batches = []
    for _ in range(3):
        x = torch.randn(8, 4, 10, 10, generator=g)
        outliers = torch.rand(x.shape, generator=g) < 2e-4
        batches.append(torch.where(outliers, 1000 * torch.sign(x), x))
    return nn.Sequential(layer).eval(), batches


def test_mse_range_is_no_worse_than_minmax_or_percentile_on_the_layer_output():
    model, batches_ = outlier_case()
    layer, x = model[0], torch.cat(batches_)
    assert len(x) <= MSE_IMAGES  # the mse method scores every image here: the same inputs as below
    errors = {}
    for method in ("minmax", "percentile", "mse"):
        r = calibrate(model, batches_, method)["0"]
        errors[method] = layer_output_mse(layer, x, r.low, r.high)
    # here strictly better than both: it found a range neither gives (~330 against ~540 and ~6900)
    assert errors["mse"] < errors["minmax"] < errors["percentile"], errors
    assert errors["mse"] < 0.8 * errors["minmax"], errors


def test_layer_output_mse_is_zero_only_for_an_exact_grid():
    # inputs and weights on the integers 0..255: the grid [0, 255] holds them exactly, a coarser one does not
    layer = AdderConv2d(2, 3, 1)
    with torch.no_grad():
        layer.weight.copy_(torch.randint(0, 256, layer.weight.shape).float())
    x = torch.randint(0, 256, (2, 2, 4, 4)).float()
    assert layer_output_mse(layer, x, 0.0, 255.0) == 0.0
    assert layer_output_mse(layer, x, 0.0, 100.0) > 0.0


@pytest.mark.parametrize("method", ["minmax", "percentile", "mse"])
def test_quantized_model_is_close_to_the_float_model(method):
    model = small_model()
    quantized = quantize(model, batches(), method)
    x = batches(2, seed=9)[0][0]
    with torch.no_grad():
        y, yq = model(x), quantized(x)
    error = (y - yq).norm() / y.norm()
    assert error < 0.05, error
    assert (y.argmax(1) == yq.argmax(1)).float().mean() >= 0.75


def test_bad_calibration_input_is_refused():
    model = small_model()
    with pytest.raises(ValueError, match="one of minmax, percentile, mse"):
        calibrate(model, batches(), "entropy")
    with pytest.raises(ValueError, match="at least one batch"):
        calibrate(model, [], "minmax")
    with pytest.raises(ValueError, match="percentile must be in"):
        calibrate(model, batches(), "percentile", percentile=30)
    with pytest.raises(ValueError, match="no AdderConv2d"):
        calibrate(nn.Sequential(nn.Conv2d(3, 3, 1)), batches(), "minmax")


def test_calibration_takes_what_convert_takes():
    """A tensor of images, an iterable of batches and a forward loop give the same ranges (issue 34: a tensor
    failed deep inside BatchNorm; a NumPy array raised an AttributeError)."""
    model = small_model()
    images = torch.cat([b[0] for b in batches()])
    by_batches = calibrate(model, [images[:16], images[16:]], "minmax")

    def forward_loop(m):
        m(images[:16])
        m(images[16:])

    for other in (calibrate(model, images, "minmax"), calibrate(model, forward_loop, "minmax")):
        assert {n: (r.low, r.high) for n, r in other.items()} == {n: (r.low, r.high) for n, r in by_batches.items()}
    assert isinstance(quantize(model, images)[2], QuantizedAdderConv2d)
    with pytest.raises(TypeError, match="a batch must be an image tensor"):
        quantize(model, [images.numpy()])
    with pytest.raises(TypeError, match="batches must be a tensor of images"):
        quantize(model, 3)
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        quantize("model.onnx", images)

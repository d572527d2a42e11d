"""adderconvert: turn torchvision CNNs into AdderNets, fine-tune them and deploy them with ONNX Runtime."""

__version__ = "0.1.0"

from adderconvert.nn import AdderConv2d, scale_adder_gradients_  # noqa: E402

__all__ = ["AdderConv2d", "__version__", "scale_adder_gradients_"]

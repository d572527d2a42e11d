"""``--weights``: a CNN's starting weights from files (state dicts, training checkpoints) or torchvision names."""

import pytest
import torch
import torchvision

from adderconvert.app.weights import WeightsError, load_weights
from adderconvert.architectures.cnn import build_model


def test_weights_from_a_file_skip_the_resized_head(tmp_path):
    source = torchvision.models.resnet18(num_classes=1000)
    path = tmp_path / "cnn.pt"
    torch.save({"model": {f"module.{k}": v for k, v in source.state_dict().items()}}, path)
    model = build_model("resnet18", 10)
    load_weights(model, "resnet18", str(path))
    torch.testing.assert_close(model.conv1.weight, source.conv1.weight)
    torch.testing.assert_close(model.layer4[1].bn2.running_var, source.layer4[1].bn2.running_var)
    assert model.fc.out_features == 10  # the 1000-class head is not loaded


def test_weights_of_another_model_are_refused(tmp_path):
    path = tmp_path / "vgg.pt"
    torch.save(torchvision.models.vgg11().state_dict(), path)
    with pytest.raises(WeightsError, match="are not resnet18 weights"):
        load_weights(torchvision.models.resnet18(), "resnet18", str(path))
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(WeightsError, match="holds no state dict"):
        load_weights(torchvision.models.resnet18(), "resnet18", str(tmp_path / "list.pt"))
    with pytest.raises(WeightsError, match="neither a file nor a torchvision weights name"):
        load_weights(torchvision.models.resnet18(), "resnet18", "NO_SUCH_WEIGHTS")

"""The CNN architectures: the model list, classifier resizing, input-size checks."""

import pytest
import torch
import torchvision
from torch import nn

from adderconvert.architectures.cnn import build_model, check_input_size, list_cnn_models, resize_classifier


def test_list_holds_the_cnns_only():
    names = list_cnn_models()
    assert {"resnet18", "vgg11", "mobilenet_v3_small", "squeezenet1_0", "googlenet"} <= set(names)
    assert not [n for n in names if n.startswith(("vit_", "swin_", "maxvit_"))]
    assert set(names) <= set(torchvision.models.list_models(module=torchvision.models))


def test_resize_linear_head():
    model = torchvision.models.resnet18()
    old = model.fc
    assert resize_classifier(model, 1000).fc is old  # already 1000 classes: unchanged
    resize_classifier(model, 7)
    assert model.fc is not old and (model.fc.in_features, model.fc.out_features) == (512, 7)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 7)


def test_resize_conv_head_and_auxiliary_heads():
    squeeze = resize_classifier(torchvision.models.squeezenet1_0(), 5)
    head = squeeze.classifier[1]
    assert isinstance(head, nn.Conv2d) and head.out_channels == 5 and head.kernel_size == (1, 1)
    assert squeeze.eval()(torch.randn(1, 3, 64, 64)).shape == (1, 5)
    googlenet = resize_classifier(torchvision.models.googlenet(init_weights=True), 3)
    assert googlenet.aux1 is None and googlenet.aux2 is None and googlenet.aux_logits is False
    assert googlenet.fc.out_features == 3


def test_build_model_refuses_unknown_names_and_transformers():
    with pytest.raises(ValueError, match="unknown model 'resnet19'"):
        build_model("resnet19", 10)
    with pytest.raises(ValueError, match="vision transformer, not a CNN"):
        build_model("vit_b_16", 10)


def test_input_size_check_suggests_a_size():
    check_input_size(torchvision.models.resnet18(num_classes=10), "resnet18", 28)
    model = torchvision.models.vgg11(num_classes=10).train()
    with pytest.raises(ValueError, match="vgg11 cannot take 16x16 inputs.*--image-size 32"):
        check_input_size(model, "vgg11", 16)
    assert model.training  # the check leaves the mode as it was

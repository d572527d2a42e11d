"""The option schema: the same checks for YAML files, flags and Python."""

import pytest

from adderconvert.app.config import ConfigError, RunConfig, validate_config


def test_defaults_and_conversions():
    config = validate_config({"lr": 1, "include": "layer4.*", "device": "cuda:1"})
    assert isinstance(config, RunConfig) and config.lr == 1.0 and isinstance(config.lr, float)
    assert config.include == ["layer4.*"] and config.device == "cuda:1" and config.device != RunConfig.device


@pytest.mark.parametrize(
    "values, key, message",
    [
        ({"epochs": "abc"}, "epochs", "must be an integer"),
        ({"epochs": True}, "epochs", "must be an integer"),
        ({"epochs": 0}, "epochs", ">= 1"),
        ({"lr": 0}, "lr", "> 0"),
        ({"kd": "no"}, "kd", "true or false"),
        ({"image_size": 3}, "image_size", ">= 16"),
        ({"image_size": 4096}, "image_size", "<= 1024"),
        ({"dataset": "mnist"}, "dataset", "must be one of"),
        ({"reconstruct": "weights"}, "reconstruct", "must be one of"),
        ({"device": "gpu"}, "device", "auto, cpu, cuda or cuda:N"),
        ({"exclude": [1]}, "exclude", "wildcard"),
        ({"model": None}, "model", "required"),
        ({"epochz": 1}, "epochz", "unknown option"),
    ],
)
def test_bad_values_name_their_key(values, key, message):
    with pytest.raises(ConfigError, match=message) as info:
        validate_config(values)
    assert info.value.key == key


def test_not_a_mapping():
    with pytest.raises(ConfigError, match="mapping"):
        validate_config(["epochs", 3])

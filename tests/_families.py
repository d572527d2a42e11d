"""One model per torchvision CNN family, for the fast tier: the tests that loop over all 68 models run in the full
tier (``make test-all``); the fast one (``make test``) takes one small member of each family."""

# Family (a name prefix) -> its representative: the smallest member, or a plain one where the smallest is not.
FAMILIES = {
    "alexnet": "alexnet",
    "convnext": "convnext_tiny",
    "densenet": "densenet121",
    "efficientnet_b": "efficientnet_b0",
    "efficientnet_v2": "efficientnet_v2_s",
    "googlenet": "googlenet",
    "inception": "inception_v3",
    "mnasnet": "mnasnet0_5",
    "mobilenet_v2": "mobilenet_v2",
    "mobilenet_v3": "mobilenet_v3_small",
    "regnet_x": "regnet_x_400mf",
    "regnet_y": "regnet_y_400mf",
    "resnet": "resnet18",
    "resnext": "resnext50_32x4d",
    "shufflenet": "shufflenet_v2_x0_5",
    "squeezenet": "squeezenet1_1",
    "vgg": "vgg11_bn",
    "wide_resnet": "wide_resnet50_2",
}


def family_of(name: str) -> str | None:
    """The family of a model name: the longest prefix in :data:`FAMILIES` it starts with."""
    matches = [prefix for prefix in FAMILIES if name.startswith(prefix)]
    return max(matches, key=len) if matches else None


def one_per_family(exclude: tuple[str, ...] = ()) -> list[str]:
    """The representatives, less the families in ``exclude`` (for tests whose cost is the model's size)."""
    return [model for family, model in FAMILIES.items() if family not in exclude]

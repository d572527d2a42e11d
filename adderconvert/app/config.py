"""The main job's options, :class:`RunConfig`, and the one schema that checks them, whether they come from
a YAML file (``-c``), from command-line flags or from Python."""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import yaml

from adderconvert.conversion import (
    DEFAULT_INIT,
    DEFAULT_KEEP,
    DEFAULT_RECONSTRUCT,
    INIT_CHOICES,
    KEEP_KINDS,
    RECONSTRUCT_METHODS,
)
from adderconvert.data import DATASETS
from adderconvert.data_formats import FORMATS
from adderconvert.quantization import DEFAULT_CALIBRATION_BATCHES, DEFAULT_METHOD, METHODS
from adderconvert.train import TrainConfig

__all__ = ["RESOLVED_BY_RUN", "ConfigError", "RunConfig", "validate_config"]


@dataclass
class RunConfig:
    model: str = "resnet18"
    dataset: str = "fashion-mnist"
    data: str | None = None
    image_size: int | None = None
    weights: str | None = "DEFAULT"
    pretrain_epochs: int | None = None  # None: 1 when the classifier had to be resized, else 0
    pretrain_lr: float = 0.05
    finetune: bool = True
    epochs: int = TrainConfig.epochs
    batch_size: int | None = None  # None: the model's task's (Task.batch_size), resolved by the run
    lr: float | None = None  # None: the bases' (pipeline.lr_of), resolved by the run; the recipe's are TrainConfig's
    eta: float = TrainConfig.eta
    warmup_steps: int = TrainConfig.warmup_steps
    kd: bool = TrainConfig.kd
    feature_kd: float = TrainConfig.feature_kd
    init: str = DEFAULT_INIT
    # Layer-wise reconstruction after the sign init (adderconvert.conversion.reconstruction); "none" skips it.
    reconstruct: str = DEFAULT_RECONSTRUCT
    include: list[str] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)
    keep_stem: bool = True
    keep_classifier: bool = True
    keep: list[str] = field(default_factory=lambda: list(DEFAULT_KEEP))  # kinds of conv kept multiplicative
    # Share of the conv MACs (at DEPLOYMENT_SIZE px) kept at most; None: the model's task's (pipeline.keep_ceiling_of),
    # resolved by the run.
    keep_ceiling: float | None = None
    keep_mac_budget: float = 0.0  # share of the conv MACs kept multiplicative where binary weights fit worst
    bases: int | None = None  # binary bases per adder layer; None: the model's (pipeline.bases_of), resolved by the run
    sync_bn: bool = TrainConfig.sync_bn
    amp: bool = TrainConfig.amp
    export: bool = True
    int8: bool = False  # also export, evaluate and report the INT8 adder model
    calibration_batches: int = DEFAULT_CALIBRATION_BATCHES  # INT8 calibration: batches of 64 training images
    calibration_method: str = DEFAULT_METHOD  # INT8 calibration: how each layer's input range is chosen
    output: str = "runs/adderconvert"
    resume: bool = False
    overwrite: bool = False
    device: str = "auto"
    seed: int = TrainConfig.seed
    workers: int = TrainConfig.workers
    max_steps: int | None = None
    eval_max_batches: int | None = None
    max_drop: float | None = None
    progress: bool = True

    def to_yaml(self) -> str:
        return yaml.safe_dump(asdict(self), sort_keys=False)


class ConfigError(ValueError):
    """An option has a wrong type or value; ``key`` names it."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key


@dataclass(frozen=True)
class _Rule:
    kind: type  # int, float, bool, str or list (of str)
    optional: bool = False
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    choices: tuple[str, ...] | None = None
    pattern: str | None = None
    hint: str = ""


# Options whose None the run resolves from the model (pipeline.batch_size_of, bases_of, lr_of, keep_ceiling_of) and
# writes to config.yaml as the value it used.
RESOLVED_BY_RUN = ("batch_size", "bases", "lr", "keep_ceiling")

_DEVICE = r"auto|cpu|cuda(:\d+)?"
_RULES: dict[str, _Rule] = {
    "model": _Rule(str),
    "dataset": _Rule(str, choices=(*DATASETS, *FORMATS)),  # FORMATS: segmentation and detection data
    "data": _Rule(str, optional=True),
    "image_size": _Rule(int, optional=True, low=16, high=1024),
    "weights": _Rule(str, optional=True),
    "pretrain_epochs": _Rule(int, optional=True, low=0),
    "pretrain_lr": _Rule(float, low=0, low_open=True),
    "finetune": _Rule(bool),
    "epochs": _Rule(int, low=1),
    "batch_size": _Rule(int, optional=True, low=1),
    "lr": _Rule(float, optional=True, low=0, low_open=True),
    "eta": _Rule(float, low=0, low_open=True),
    "warmup_steps": _Rule(int, low=0),
    "kd": _Rule(bool),
    "feature_kd": _Rule(float, low=0),
    "init": _Rule(str, choices=INIT_CHOICES),
    "reconstruct": _Rule(str, choices=("none", *RECONSTRUCT_METHODS)),
    "include": _Rule(list),
    "exclude": _Rule(list),
    "keep_stem": _Rule(bool),
    "keep_classifier": _Rule(bool),
    "keep": _Rule(list, choices=(*KEEP_KINDS, "none")),  # "none": every kind converts
    "keep_ceiling": _Rule(float, optional=True, low=0, high=1),
    "keep_mac_budget": _Rule(float, low=0, high=1),
    "bases": _Rule(int, optional=True, low=1, high=4),
    "sync_bn": _Rule(bool),
    "amp": _Rule(bool),
    "export": _Rule(bool),
    "int8": _Rule(bool),
    "calibration_batches": _Rule(int, low=1),
    "calibration_method": _Rule(str, choices=METHODS),
    "output": _Rule(str),
    "resume": _Rule(bool),
    "overwrite": _Rule(bool),
    "device": _Rule(str, pattern=_DEVICE, hint="auto, cpu, cuda or cuda:N"),
    "seed": _Rule(int, low=0, high=2**32 - 1),  # NumPy seeds take 0 to 2^32 - 1
    "workers": _Rule(int, low=0),
    "max_steps": _Rule(int, optional=True, low=1),
    "eval_max_batches": _Rule(int, optional=True, low=1),
    "max_drop": _Rule(float, optional=True, low=0),
    "progress": _Rule(bool),
}
assert set(_RULES) == {f.name for f in fields(RunConfig)}, "every RunConfig option needs a rule"


def _number(bound: float) -> str:
    return str(int(bound)) if float(bound).is_integer() else f"{bound:g}"


def _check(key: str, value: Any, rule: _Rule) -> Any:
    """``value`` converted to the rule's type (an int for a float, a string for a one-item list), or
    :class:`ConfigError`."""
    if value is None:
        if rule.optional:
            return None
        raise ConfigError(key, "a value is required")
    if rule.kind is bool:
        if not isinstance(value, bool):
            raise ConfigError(key, f"must be true or false, got {value!r}")
        return value
    if rule.kind is list:
        if isinstance(value, str):
            value = [value]  # one wildcard (or one choice), not a list of letters
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            what = "one or more of " + ", ".join(rule.choices) if rule.choices else "a wildcard or a list of wildcards"
            raise ConfigError(key, f"must be {what}, got {value!r}")
        wrong = [v for v in value if rule.choices is not None and v not in rule.choices]
        if wrong:
            raise ConfigError(key, f"must be one or more of {', '.join(rule.choices)}, got {wrong[0]!r}")
        return list(value)
    if rule.kind is str:
        if not isinstance(value, str):
            raise ConfigError(key, f"must be a string, got {value!r}")
        if rule.choices is not None and value not in rule.choices:
            raise ConfigError(key, f"must be one of {', '.join(rule.choices)}, got {value!r}")
        if rule.pattern is not None and not re.fullmatch(rule.pattern, value):
            raise ConfigError(key, f"must be {rule.hint}, got {value!r}")
        return value
    numeric = (int,) if rule.kind is int else (int, float)
    if isinstance(value, bool) or not isinstance(value, numeric):
        name = "an integer" if rule.kind is int else "a number"
        raise ConfigError(key, f"must be {name}, got {value!r}")
    if not math.isfinite(value):
        raise ConfigError(key, f"must be a finite number, got {value}")
    value = rule.kind(value)
    if rule.low is not None and (value <= rule.low if rule.low_open else value < rule.low):
        raise ConfigError(key, f"must be {'>' if rule.low_open else '>='} {_number(rule.low)}, got {value}")
    if rule.high is not None and value > rule.high:
        raise ConfigError(key, f"must be <= {_number(rule.high)}, got {value}")
    return value


def validate_config(values: dict[str, Any]) -> RunConfig:
    """A :class:`RunConfig` from ``values`` (unset keys take their defaults), every value checked;
    :class:`ConfigError` names the first bad key."""
    if not isinstance(values, dict):
        raise ConfigError("config", f"must be a mapping of option: value, got {type(values).__name__}")
    unknown = sorted(k for k in values if k not in _RULES)
    if unknown:
        raise ConfigError(unknown[0], f"unknown option (known: {', '.join(_RULES)})")
    config = RunConfig(**{key: _check(key, value, _RULES[key]) for key, value in values.items()})
    if "none" in config.keep:
        if len(config.keep) > 1:
            raise ConfigError("keep", f"none converts every kind: it goes alone, got {config.keep}")
        config.keep = []
    if config.init != "sign" and config.reconstruct != "none":
        if "reconstruct" in values and "init" in values:
            raise ConfigError("reconstruct", f"refits the sign init's layers; with init {config.init!r} pass none")
        config.reconstruct = "none"  # what a run with another init does: recorded as such
    if config.int8 and "export" in values and not config.export:
        raise ConfigError("int8", "exports the INT8 model to ONNX: it cannot go with export false (--no-export)")
    return config

"""``--resume``: a run is continued with the options it was started with, which its folder keeps in
``config.yaml``.

A bare ``--resume`` (``--output DIR``, or the default ``runs/MODEL``) takes every option from there; a flag
given with it must agree with the run's value, or the resume is refused naming both. Only the options
that change where and how the run computes, never what it trains (:data:`RUNTIME_OPTIONS`: the device,
the data folder, workers, progress bars, the final export, ``--max-drop``), may differ. ``--resume FILE``
names the run through its ``last.pt`` (or ``teacher/last.pt``), which must be a checkpoint of this model
and stage.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

from adderconvert.app.config import RESOLVED_BY_RUN, ConfigError, RunConfig, validate_config
from adderconvert.checkpoint import CheckpointError, CheckpointMeta, check_compatible, read_meta

__all__ = [
    "RUNTIME_OPTIONS",
    "ResumeError",
    "default_pretrain_epochs",
    "resume_command",
    "resume_folder",
    "resumed_options",
]

# Options a resumed run may change: they do not enter the weights, the schedule or the checkpoints.
RUNTIME_OPTIONS = frozenset(
    {"output", "resume", "overwrite", "device", "data", "workers", "progress", "export", "max_drop"}
)


# What a command does with the folder, not how the run trains: never taken from config.yaml.
_ACTIONS = ("output", "resume", "overwrite", "progress")


class ResumeError(ValueError):
    """``--resume`` cannot continue the run as asked; the message says why and what to do."""


def _flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def _stage_of(path: Path) -> str:
    return "teacher" if path.parent.name == "teacher" else "adder"


def resume_folder(value: str, output: str | None, model: str) -> Path:
    """The run folder that ``--resume VALUE`` names: a run folder, or the ``last.pt`` (``teacher/last.pt``)
    of one, which must hold a checkpoint of ``model`` of the stage its place says."""
    path = Path(value)
    if not path.exists():
        raise ResumeError(f"--resume {value}: no such file or folder")
    if path.is_dir():
        folder = path
    else:
        try:
            check_compatible(read_meta(path), path, stage=_stage_of(path), model_name=model)
        except CheckpointError as e:  # a corrupt or foreign file, another model's or stage's checkpoint
            raise ResumeError(f"--resume {value}: {e}") from None
        folder = path.parent.parent if _stage_of(path) == "teacher" else path.parent
        if path.name != "last.pt":
            raise ResumeError(
                f"--resume {value}: a run continues from its last.pt, where it stopped, not from {path.name}; "
                f"pass the run folder ({folder}) or its last.pt"
            )
    if output is not None and Path(output).resolve() != folder.resolve():
        raise ResumeError(f"--resume {value} belongs to the run in {folder}, but --output is {output}")
    return folder


def _saved_options(folder: Path) -> dict[str, Any] | None:
    """The options in ``folder/config.yaml`` (``None`` when there is none), checked by the schema."""
    path = folder / "config.yaml"
    if not path.is_file():
        return None
    try:
        saved = yaml.safe_load(path.read_text())
        validate_config(saved if saved is not None else {})
    except (OSError, yaml.YAMLError, ConfigError) as e:
        raise ResumeError(f"--resume: cannot read the run's options in {path}: {e}") from None
    return saved or {}


def _show(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, list):
        return "[" + ", ".join(value) + "]"
    return str(value).lower() if isinstance(value, bool) else str(value)


def _normal(key: str, value: Any) -> Any:
    return getattr(validate_config({key: value}), key)


def _checkpoint_meta(folder: Path) -> CheckpointMeta | None:
    for path in (folder / "last.pt", folder / "teacher" / "last.pt"):
        if path.is_file():
            return read_meta(path)
    return None


def default_pretrain_epochs(weights: str | None, num_classes: int, head_fits: bool | None = None) -> int:
    """The CNN's epochs when ``--pretrain-epochs`` is unset: none where the weights' classifier fits the data set
    (``head_fits``, as loading them found; unknown: torchvision's 1000-class head on 1000 classes), one where the
    classifier had to be resized (or the weights are random)."""
    fits = head_fits if head_fits is not None else num_classes == 1000
    return 0 if weights and fits else 1


def _summary_value(folder: Path, key: str) -> Any:
    try:
        summary = json.loads((folder / "summary.json").read_text())
    except (OSError, ValueError):
        return None
    return summary.get(key) if isinstance(summary, dict) else None


def _effective(folder: Path, saved: dict[str, Any], key: str, ran: Any) -> Any:
    """What an option the run left unset (``None``) came to once its default was applied, from what the run
    recorded; ``None`` where the run recorded nothing that says."""
    if ran is not None:
        return ran
    if key == "image_size":  # the data set's own size: the checkpoints record it
        meta = _checkpoint_meta(folder)
        return meta.image_size if meta is not None else None
    if key == "pretrain_epochs":
        teacher = folder / "teacher" / "last.pt"
        if teacher.is_file():  # the CNN was trained here: its checkpoint records for how long
            recipe = read_meta(teacher).recipe or {}
            if isinstance(recipe.get("epochs"), int):
                return recipe["epochs"]
        if (folder / "last.pt").is_file() and not teacher.is_file():  # the adder model trains after the CNN: none was
            return 0
        meta = _checkpoint_meta(folder)  # checkpoints without their recipe: the default's rule on their classes
        if meta is not None:
            return default_pretrain_epochs(_normal("weights", saved.get("weights")), meta.num_classes)
        return _summary_value(folder, "pretrain_epochs")
    if key == "bases":  # a config.yaml written by hand: the adder model's conversion records its layers' bases
        path = folder / "last.pt"
        layers = ((read_meta(path).conversion or {}).get("layers") or []) if path.is_file() else []
        found = {row.get("bases", 1) for row in layers if row.get("convert")}
        return found.pop() if len(found) == 1 else None
    if key in RESOLVED_BY_RUN:  # a config.yaml written by hand: what the checkpoints trained with
        paths = [folder / "last.pt", *([folder / "teacher" / "last.pt"] if key == "batch_size" else [])]
        for path in paths:
            value = (read_meta(path).recipe or {}).get(key) if path.is_file() else None
            if isinstance(value, int | float) and not isinstance(value, bool):  # lr: a float
                return value
    return None


def resumed_options(folder: Path, model: str, given: dict[str, Any]) -> dict[str, Any]:
    """The options of the run in ``folder``, with ``given`` (the flags and ``-c`` file of this command)
    checked against them: each must agree with the run's value unless it is a runtime option.

    Without a ``config.yaml`` (a run of adderconvert 0.1) ``given`` is returned as it is.
    """
    saved = _saved_options(folder)
    if saved is None:
        return dict(given)
    config_path = folder / "config.yaml"
    if saved.get("model", model) != model:
        raise ResumeError(
            f"--resume: {folder} holds a run of {saved['model']} ({config_path}), not of {model}; "
            f"resume it as `adderconvert {saved['model']} --resume --output {shlex.quote(str(folder))}`"
        )
    if "bases" not in saved and (folder / "last.pt").is_file():
        # A run from before --bases: its adder checkpoint holds the bases its conversion report records (one).
        saved = {**saved, "bases": _effective(folder, saved, "bases", None) or 1}
    changed = []
    for key, value in given.items():
        if key in RUNTIME_OPTIONS or key not in saved:  # an option a hand-written config.yaml leaves out: taken
            continue
        ran = _effective(folder, saved, key, _normal(key, saved[key]))  # a flag equal to the default is no change
        if _normal(key, value) != ran:
            changed.append(f"{_flag(key)} {_show(ran)} -> {_show(_normal(key, value))}")
    if changed:
        raise ResumeError(
            f"--resume continues the run in {folder} with the options it started with ({config_path}); these "
            f"flags change them: {', '.join(changed)}. Drop them to continue the run, or start a new run "
            "(another --output) to train with them"
        )
    options = {k: v for k, v in saved.items() if k not in _ACTIONS}
    options.update(given)
    return options


def resume_command(config: RunConfig) -> str | None:
    """The command that continues the run ``config`` wrote, or ``None`` when its folder kept nothing of it
    (no folder, or the run it replaced with ``--overwrite`` put back: another run's config.yaml)."""
    folder = Path(config.output)
    try:
        text = (folder / "config.yaml").read_text()
        saved = yaml.safe_load(text)
    except (OSError, yaml.YAMLError):
        return None
    # What config left to the run (None) the run wrote as the value it used.
    resolved = (
        {k: saved.get(k) for k in RESOLVED_BY_RUN if getattr(config, k) is None} if isinstance(saved, dict) else {}
    )
    if text != replace(config, resume=False, overwrite=False, **resolved).to_yaml():
        return None
    quiet = "" if config.progress else " --quiet"  # a flag of the command line, not an option config.yaml keeps
    return f"adderconvert {config.model} --resume{quiet} --output {shlex.quote(str(folder))}"

"""The checkpoint format: what a ``.pt`` file of a run holds, how it is written and how it is read back.

A checkpoint is a dict saved by ``torch.save`` and read with ``weights_only=True``::

    {"format": 2, "meta": CheckpointMeta.to_dict(), "model": state_dict, ...training state...}

``meta`` says what the weights are: the torchvision architecture, its number of classes, the stage
(``"teacher"``: the CNN; ``"adder"``: the converted model, whose ``conversion`` plan rebuilds the adder
layers), the data it was trained on and the recipe. Format 1 files (no stage; written before 0.2) are
read as well: their stage is ``"adder"`` when they carry a conversion plan, else ``"teacher"``.

Every file is written through :func:`write_atomic`: a temporary file in the same folder, flushed and
fsynced, renamed into place, with the user's umask applied.
"""

from __future__ import annotations

import os
import pickle
import tempfile
import zipfile
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import IO, Any

import torch
from torch import nn

from adderconvert.architectures import official
from adderconvert.architectures.dense import DEFAULT_IMAGE_SIZE
from adderconvert.architectures.registry import build
from adderconvert.conversion import restore

__all__ = [
    "FORMAT_VERSION",
    "STAGES",
    "CheckpointError",
    "CheckpointMeta",
    "check_compatible",
    "checkpoint_of",
    "load",
    "load_checkpoint",
    "load_state_dict",
    "read_meta",
    "read_torch_file",
    "remove_stale_temporaries",
    "save_checkpoint",
    "write_atomic",
]

FORMAT_VERSION = 2
READABLE_FORMATS = (1, 2)
STAGES = ("teacher", "adder")
_TEMP_SUFFIX = ".tmp"


class CheckpointError(ValueError):
    """A file is not a readable checkpoint, or not the one that was asked for; the message names it."""


@dataclass
class CheckpointMeta:
    """What the weights in a checkpoint are."""

    model_name: str
    num_classes: int
    stage: str = "adder"
    dataset: str | None = None
    image_size: int | None = None
    classes: list[str] | None = None
    mean: list[float] | None = None  # input normalisation, per channel
    std: list[float] | None = None
    conversion: dict | None = None  # ConversionReport.to_dict() of an adder model
    recipe: dict | None = None  # the TrainConfig of the run that wrote it
    official_arch: str | None = None  # set for models imported from the official AdderNet code

    def __post_init__(self) -> None:
        if self.stage not in STAGES:
            raise CheckpointError(f"checkpoint stage must be one of {STAGES}, got {self.stage!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], format_version: int = FORMAT_VERSION) -> CheckpointMeta:
        """Read ``meta`` as written by any readable format (unknown keys are ignored)."""
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        if format_version == 1:
            values["stage"] = "adder" if data.get("conversion") else "teacher"
        missing = [k for k in ("model_name", "num_classes") if k not in values]
        if missing:
            raise CheckpointError(f"checkpoint metadata lacks {', '.join(missing)}")
        return cls(**values)

    def describe(self) -> str:
        """e.g. ``resnet18 adder model (10 classes, fashion-mnist 28px)``."""
        data = f", {self.dataset} {self.image_size}px" if self.dataset else ""
        kind = "CNN" if self.stage == "teacher" else "adder model"
        return f"{self.official_arch or self.model_name} {kind} ({self.num_classes} classes{data})"


def _file_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def write_atomic(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> Path:
    """Write a file with ``write(f)`` so that ``path`` holds either its old or its complete new content.

    The data goes to a temporary file beside ``path`` (flushed and fsynced), which is renamed over
    ``path``; the folder is fsynced so the rename survives a power cut. Files get the user's umask.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=_TEMP_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _file_mode())
        os.replace(tmp, path)
        _fsync_folder(path.parent)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _fsync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporaries a killed :func:`write_atomic` left in ``folder``; return them."""
    folder = Path(folder)
    stale = sorted(folder.glob(f".*{_TEMP_SUFFIX}")) if folder.is_dir() else []
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> Path:
    """Write ``payload`` (which holds ``meta`` and ``model``) atomically in the current format."""
    meta = payload.get("meta")
    if isinstance(meta, CheckpointMeta):
        payload = {**payload, "meta": meta.to_dict()}
    elif not isinstance(meta, dict):
        raise TypeError("a checkpoint payload needs 'meta' (CheckpointMeta or its dict)")
    return write_atomic(path, lambda f: torch.save({"format": FORMAT_VERSION, **payload}, f))


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint of any readable format; its ``meta`` comes back as a :class:`CheckpointMeta`.

    Raises :class:`CheckpointError` for a missing, corrupt or foreign file.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    return checkpoint_of(read_torch_file(path, CheckpointError), path)


def checkpoint_of(payload: Any, path: str | os.PathLike) -> dict[str, Any]:
    """:func:`load_checkpoint` of a file already read (``read_torch_file(path)``), without reading it again."""
    version = payload.get("format") if isinstance(payload, dict) else None
    if version not in READABLE_FORMATS or not isinstance(payload.get("meta"), dict):
        if isinstance(payload, dict) and any(
            str(k).startswith("module.") and str(k).endswith(".adder") for k in payload
        ):
            # The official AdderNet training scripts save a DataParallel state dict: "module.*.adder" weights.
            raise CheckpointError(
                f"{path} looks like an official AdderNet checkpoint: `adderconvert import-official {path} --output "
                "RUN` turns it into a run folder"
            )
        raise CheckpointError(
            f"{path} is not an adderconvert checkpoint (a plain state dict goes to --weights, not here)"
        )
    try:
        meta = CheckpointMeta.from_dict(payload["meta"], version)
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from None
    return {**payload, "meta": meta}


def read_torch_file(path: str | os.PathLike, error: type[Exception] = CheckpointError) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU, with ``error`` saying what is wrong with a file
    that is corrupt or holds more than tensors (never suggesting unsafe loading)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "Unsupported global" in str(e):  # a class or function: a pickle of more than tensors
            raise error(f"{path} holds Python objects other than tensors; it was not written by adderconvert") from None
        raise error(f"{path} is not a readable PyTorch file (truncated or corrupt?)") from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as e:
        detail = f": {e}" if str(e).strip() else " (empty?)"
        raise error(f"{path} is not a readable PyTorch file (truncated or corrupt?){detail}") from None
    except (IndexError, KeyError, TypeError, AttributeError, UnicodeDecodeError, MemoryError):
        # The legacy (non-zip) reader unpickles whatever bytes it is given: a text file that starts with a
        # pickle opcode ('a', 'e', ...) fails deep inside it.
        raise error(f"{path} is not a PyTorch file (a text or other file?)") from None


def read_meta(path: str | os.PathLike) -> CheckpointMeta:
    """The :class:`CheckpointMeta` of a checkpoint."""
    return load_checkpoint(path)["meta"]


def check_compatible(
    meta: CheckpointMeta,
    path: str | os.PathLike,
    *,
    stage: str | None = None,
    model_name: str | None = None,
    num_classes: int | None = None,
    image_size: int | None = None,
) -> None:
    """Raise :class:`CheckpointError` naming both sides when ``meta`` is not the expected stage, model,
    number of classes or input size (a checkpoint that records none is not checked for it)."""
    wanted = []
    if stage is not None and meta.stage != stage:
        wanted.append(f"stage {stage!r}")
    if model_name is not None and meta.model_name != model_name:
        wanted.append(f"model {model_name!r}")
    if num_classes is not None and meta.num_classes != num_classes:
        wanted.append(f"{num_classes} classes")
    if image_size is not None and meta.image_size is not None and meta.image_size != image_size:
        wanted.append(f"{image_size}px inputs")
    if wanted:
        raise CheckpointError(
            f"{path} holds a {meta.describe()} (stage {meta.stage!r}), but this run needs {', '.join(wanted)}"
        )


def load_state_dict(model: nn.Module, state: dict[str, Any], *, strict: bool = True):
    """``model.load_state_dict(state)``, with the module versions that some architectures check as they load
    (torchvision's MNASNet refuses weights whose version is not 1 or 2). ``torch.save`` keeps them in the
    state dict's ``_metadata``; a dict that lost them (filtered, or rebuilt key by key) gets the model's own,
    which describe the layout of the tensors it takes."""
    if getattr(state, "_metadata", None) is None:
        versions = model.state_dict()._metadata
        state = OrderedDict(state)
        state._metadata = versions
    return model.load_state_dict(state, strict=strict)


def load(path: str | os.PathLike) -> nn.Module:
    """Rebuild the model a checkpoint holds (CNN or adder model: architecture, conversion and weights),
    in eval mode."""
    payload = load_checkpoint(path)
    meta: CheckpointMeta = payload["meta"]
    if not isinstance(payload.get("model"), dict):
        raise CheckpointError(f"{path} holds no model weights (its 'model' state dict is missing)")
    if meta.official_arch is not None:
        model = official.build(meta.official_arch, meta.num_classes)
    else:  # a detector's transform takes its trained size
        model = build(meta.model_name, meta.num_classes, meta.image_size or DEFAULT_IMAGE_SIZE)
    if meta.official_arch is None and meta.conversion is not None:
        restore(model, meta.conversion)
    try:
        load_state_dict(model, payload["model"])
    except RuntimeError as e:
        raise CheckpointError(f"the weights in {path} do not fit {meta.describe()}: {e}") from e
    return model.eval()

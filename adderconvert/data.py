"""Data sets: Fashion-MNIST from Debian's ``dataset-fashion-mnist`` (the embedded default), ImageFolder
directories (ImageNet layout) and CIFAR-10 from a local torchvision root. Images are adapted to the
model: grayscale becomes 3 channels, sizes are resized, and ImageNet normalisation is applied so that
pretrained torchvision weights see what they expect. Also what every data set shares: the splits container, the
tasks, the check of a data set's task against a model's, the detection batches. The segmentation and detection data
sets are ``data_scenes.py`` (built in) and ``data_formats.py`` (COCO and VOC folders)."""

from __future__ import annotations

import gzip
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

__all__ = [
    "DATASETS",
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_DIR",
    "IGNORE_INDEX",
    "TASKS",
    "DataError",
    "DatasetSplits",
    "check_task",
    "collate_detection",
    "fashion_mnist_arrays",
    "load_dataset",
    "read_idx",
]

DATASETS = ("fashion-mnist", "cifar10", "imagefolder")
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Grayscale standing for three channels: the mean of ImageNet's statistics normalises it.
GRAY_MEAN, GRAY_STD = float(np.mean(IMAGENET_MEAN)), float(np.mean(IMAGENET_STD))
# What a data set's samples are for: (image, class index), (image, per-pixel class mask) or (image, target dict
# with ``boxes``, ``labels`` and maybe ``masks``, torchvision's detection format).
TASKS = ("classification", "segmentation", "detection")
IGNORE_INDEX = 255  # a segmentation mask's value for pixels that count in no loss and no metric
_DATA_FOR = {
    "classification": "Fashion-MNIST, CIFAR-10 or an ImageFolder",
    "segmentation": "the built-in scenes (data_scenes.load_scenes) or a VOC-layout folder (data_formats.load_voc)",
    "detection": "the built-in scenes (data_scenes.load_scenes) or a COCO-format folder (data_formats.load_coco)",
}


class DataError(RuntimeError):
    """A data set is missing or malformed; the message says how to get it."""


@dataclass
class DatasetSplits:
    """A data set's train and test splits with what a model built for them needs. For segmentation and detection,
    ``classes[0]`` is ``"background"``, so ``num_classes`` is the count torchvision's builders take."""

    train: Dataset
    test: Dataset
    classes: list[str]
    image_size: int
    mean: tuple[float, float, float] = IMAGENET_MEAN  # the normalisation the model's inputs get, per channel
    std: tuple[float, float, float] = IMAGENET_STD
    task: str = "classification"  # one of TASKS

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (the MNIST format), gzip-compressed or not."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:
        raise DataError(f"{path} is not a readable gzip file ({e}): download or copy it again") from None
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or e}") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DataError(f"{path} is not an unsigned-byte IDX file")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    payload = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if payload.size != int(np.prod(dims)):
        raise DataError(f"{path} is truncated: expected {int(np.prod(dims))} values, found {payload.size}")
    return payload.reshape(dims)


class TensorImages(Dataset):
    """Single- or three-channel images held in memory, made model inputs one at a time.

    ``images`` is ``(N, C, H, W)``: float images are used as they are; ``uint8`` images are scaled to
    [0, 1], resized to ``size`` and normalised per item, so memory stays that of the raw bytes whatever
    the model's input size. Grayscale is expanded to 3 channels.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        flip: bool = False,
        size: int | None = None,
        mean: float = 0.0,
        std: float = 1.0,
    ) -> None:
        self.images, self.labels, self.flip = images, labels, flip
        self.size, self.mean, self.std = size, mean, std

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        image = self.images[index]
        if image.dtype == torch.uint8:
            image = image.float().div_(255)
            if self.size is not None and image.shape[-1] != self.size:
                image = F.interpolate(image[None], size=(self.size, self.size), mode="bilinear", align_corners=False)[0]
            image = image.sub_(self.mean).div_(self.std)
        if self.flip and torch.rand(()) < 0.5:
            image = image.flip(-1)
        return image.expand(3, -1, -1), int(self.labels[index])


def check_task(data: DatasetSplits, model: str, model_task: str) -> None:
    """Refuse data of another task than the model's (``model_task``: ``architectures.registry.task_of(model)``)
    with a :class:`DataError` saying which data the model takes."""
    if model_task not in TASKS:
        raise ValueError(f"unknown task {model_task!r}; one of {', '.join(TASKS)}")
    if data.task != model_task:
        raise DataError(
            f"{model} is a {model_task} model, but the data set holds {data.task} data: give it {_DATA_FOR[model_task]}"
        )


def collate_detection(batch: list[tuple[torch.Tensor, dict[str, torch.Tensor]]]):
    """A ``DataLoader``'s ``collate_fn`` for detection samples: (list of images, list of target dicts), the
    input torchvision's detectors take (their targets hold different numbers of boxes, so they are not stacked)."""
    return [image for image, _ in batch], [target for _, target in batch]


def fashion_mnist_arrays(root: Path = FASHION_MNIST_DIR) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Fashion-MNIST's ``train`` and ``test`` splits from the four idx files in ``root``: ``(N, 28, 28)`` uint8
    images and ``(N,)`` labels; a :class:`DataError` saying how to get them when they are missing."""
    files = {
        split: (root / f"{prefix}-images-idx3-ubyte.gz", root / f"{prefix}-labels-idx1-ubyte.gz")
        for split, prefix in (("train", "train"), ("test", "t10k"))
    }
    missing = [str(p) for pair in files.values() for p in pair if not p.is_file()]
    if missing:
        raise DataError(
            "Fashion-MNIST not found (missing: " + ", ".join(missing) + "). "
            "Install Debian's package: `sudo apt-get install dataset-fashion-mnist` "
            f"(it provides {FASHION_MNIST_DIR}), or pass --data DIR holding the four idx .gz files."
        )
    arrays = {}
    for split, (images, labels) in files.items():
        x, y = read_idx(images), read_idx(labels)
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise DataError(f"Fashion-MNIST files in {root} do not match: {x.shape} images, {y.shape} labels")
        arrays[split] = x, y
    return arrays


def _fashion_mnist(root: Path, image_size: int) -> DatasetSplits:
    splits = {}
    for split, (x, y) in fashion_mnist_arrays(root).items():
        splits[split] = TensorImages(
            torch.from_numpy(x.copy()).unsqueeze(1),
            torch.from_numpy(y.astype(np.int64)),
            flip=split == "train",
            size=image_size,
            mean=GRAY_MEAN,
            std=GRAY_STD,
        )
    return DatasetSplits(
        splits["train"], splits["test"], list(FASHION_MNIST_CLASSES), image_size, (GRAY_MEAN,) * 3, (GRAY_STD,) * 3
    )


def _open_rgb(path: str):
    """ImageFolder's loader, with a message naming a file that is not a readable image."""
    from PIL import Image, UnidentifiedImageError  # only the data sets that need it load it (CLI start-up)

    try:
        with open(path, "rb") as f:
            return Image.open(f).convert("RGB")
    except (UnidentifiedImageError, OSError) as e:
        raise DataError(f"{path} is not a readable image ({e}); remove it or fix it") from e


def _torchvision_transforms(image_size: int, train: bool):
    from torchvision import transforms as T  # only the data sets that need it load it (CLI start-up)

    if train:
        steps = [T.RandomResizedCrop(image_size, scale=(0.35, 1.0)), T.RandomHorizontalFlip()]
    else:
        steps = [T.Resize(int(round(image_size * 256 / 224))), T.CenterCrop(image_size)]
    steps += [T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    return T.Compose(steps)


def _cifar10(root: Path, image_size: int) -> DatasetSplits:
    from torchvision.datasets import CIFAR10  # only the data sets that need it load it (CLI start-up)

    try:
        train = CIFAR10(str(root), train=True, download=False, transform=_torchvision_transforms(image_size, True))
        test = CIFAR10(str(root), train=False, download=False, transform=_torchvision_transforms(image_size, False))
    except RuntimeError as e:
        raise DataError(
            f"CIFAR-10 not found under {root} ({e}). Put the extracted 'cifar-10-batches-py' folder there "
            "(from https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz) and pass --data with its parent."
        ) from e
    return DatasetSplits(train, test, list(train.classes), image_size)


def _image_folder(root: Path, image_size: int) -> DatasetSplits:
    from torchvision.datasets import ImageFolder  # only the data sets that need it load it (CLI start-up)

    split_dirs = {}
    for split, names in (("train", ("train",)), ("test", ("val", "test"))):
        found = next((root / n for n in names if (root / n).is_dir()), None)
        if found is None:
            raise DataError(
                f"ImageFolder data needs {root}/train and {root}/val (or {root}/test), one sub-folder per class "
                "(the ImageNet layout)"
            )
        split_dirs[split] = found
    try:
        train, test = (
            ImageFolder(
                str(split_dirs[split]),
                transform=_torchvision_transforms(image_size, split == "train"),
                loader=_open_rgb,
            )
            for split in ("train", "test")
        )
    except FileNotFoundError as e:  # a split without class folders or without image files
        raise DataError(f"no images found in {root}: {e}") from e
    if train.classes != test.classes:
        raise DataError(f"class folders differ between {split_dirs['train']} and {split_dirs['test']}")
    if len(train.classes) < 2:
        raise DataError(
            f"{split_dirs['train']} holds one class folder ({train.classes[0]}): a classifier needs two at least"
        )
    return DatasetSplits(train, test, list(train.classes), image_size)


def load_dataset(name: str, root: str | Path | None = None, image_size: int | None = None) -> DatasetSplits:
    """Load a data set by name (``fashion-mnist``, ``cifar10``, ``imagefolder``).

    ``root`` defaults to Debian's Fashion-MNIST folder for ``fashion-mnist`` and is required for the
    others. ``image_size`` defaults to each set's native size (28, 32) and to 224 for ImageFolder.
    """
    if name not in DATASETS:
        raise DataError(f"unknown data set {name!r}; choose one of {', '.join(DATASETS)}")
    if root is not None and not Path(root).is_dir():
        what = "is a file, not a folder" if Path(root).exists() else "does not exist"
        raise DataError(f"data folder {root} {what}")
    if name == "fashion-mnist":
        return _fashion_mnist(Path(root) if root else FASHION_MNIST_DIR, image_size or 28)
    if root is None:
        raise DataError(f"data set {name!r} needs --data DIR")
    if name == "cifar10":
        return _cifar10(Path(root), image_size or 32)
    return _image_folder(Path(root), image_size or 224)

"""Users' segmentation and detection data: COCO-format detection and VOC-layout segmentation folders, read into the
sample format of the built-in scenes (``data_scenes.py``).

Every image is fitted into an ``image_size`` square keeping its aspect: scaled until its longer side is
``image_size``, then padded at the right and bottom (the image with 0 after normalisation, the mean colour, as
torchvision's detectors pad their batches; a segmentation mask with the ignore index 255). Images are RGB,
normalised with ImageNet's statistics as the ImageFolder classifier data.

**COCO** (``load_coco``)::

    DIR/annotations/instances_train*.json   DIR/train*/   (the folder named as the JSON: instances_train2017.json
    DIR/annotations/instances_val*.json     DIR/val*/      -> DIR/train2017/)

The JSON's ``images`` (``id``, ``file_name``, ``width``, ``height``), ``annotations`` (``image_id``,
``category_id``, ``bbox`` ``[x, y, w, h]`` in pixels) and ``categories`` (``id``, ``name``) are read with the json
module. Category ids become labels 1..K in id order (0 is the background) and their names the classes. Crowd
annotations (``iscrowd`` 1) are left out, as torchvision's detection references do. An image without annotations is
kept as an image without objects (detection data has them, and torchvision's detectors train on empty targets),
with one warning giving their count. A :class:`data.DataError` naming the file refuses: a JSON that is not one, a
missing key, an annotation naming an image or a category the file does not list, a listed image missing from the
folder, a box of non-positive size or more than 1 px outside its image (within 1 px it is clipped), a file with no
annotation at all, categories that differ between the train and val files, and at reading an image whose size is not
the JSON's.

**VOC** (``load_voc``)::

    DIR/JPEGImages/NAME.jpg (or .jpeg, .png)
    DIR/SegmentationClass/NAME.png             class indices (a palette or grayscale PNG), 255 = ignore
    DIR/ImageSets/Segmentation/train.txt, val.txt   the NAMEs of each split (optional)
    DIR/classes.txt                            the class names, one a line, the background first (optional)

Without ``ImageSets/Segmentation`` every image is used: every tenth (in name order) for the test split, the others
for training. Without ``classes.txt`` the classes are Pascal VOC's 21. A :class:`data.DataError` naming the file
refuses: a folder missing, a list naming no image, an image without its mask, and at reading a mask that is not a
palette or grayscale PNG, whose size is not its image's or that holds values outside the classes (other than 255).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from adderconvert.data import IGNORE_INDEX, IMAGENET_MEAN, IMAGENET_STD, DataError, DatasetSplits

__all__ = ["FORMATS", "VOC_CLASSES", "CocoDetection", "VocSegmentation", "load_coco", "load_voc"]

# The formats of users' segmentation and detection data (``--dataset``), with the task of each.
FORMATS = {"coco": "detection", "voc": "segmentation"}

VOC_CLASSES = [
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
]  # fmt: skip
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def _images_by_name(folder: Path) -> dict[str, Path]:
    """The images in ``folder`` by name (file stem), suffixes in any case; where one name has several, the first
    suffix of :data:`_IMAGE_SUFFIXES`."""
    files = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in _IMAGE_SUFFIXES]
    files.sort(key=lambda p: _IMAGE_SUFFIXES.index(p.suffix.lower()), reverse=True)
    return {p.stem: p for p in files}  # the preferred suffix comes last and wins


_BOX_TOLERANCE = 1.0  # pixels a box may reach outside its image (rounding in annotation tools); it is clipped


def _open(path: Path):
    """The image at ``path`` (PIL), loaded, or a DataError naming it."""
    from PIL import Image, UnidentifiedImageError  # only the data sets that need it load it (CLI start-up)

    try:
        with Image.open(path) as image:
            image.load()
            return image
    except (UnidentifiedImageError, OSError) as e:
        raise DataError(f"{path} is not a readable image ({e}); remove it or fix it") from e


def _fit(path: Path, size: int) -> tuple[torch.Tensor, tuple[int, int], float]:
    """The image at ``path`` as a normalised ``(3, size, size)`` tensor (module docstring), its ``(width, height)``
    and the scale applied."""
    image = _open(path).convert("RGB")
    width, height = image.size
    scale = size / max(width, height)
    pixels = torch.from_numpy(np.asarray(image, np.float32) / 255).permute(2, 0, 1)
    fitted = (max(1, round(height * scale)), max(1, round(width * scale)))
    pixels = F.interpolate(pixels[None], size=fitted, mode="bilinear", antialias=True, align_corners=False)[0]
    mean, std = torch.tensor(IMAGENET_MEAN)[:, None, None], torch.tensor(IMAGENET_STD)[:, None, None]
    padded = torch.zeros(3, size, size)
    padded[:, : fitted[0], : fitted[1]] = (pixels - mean) / std
    return padded, (width, height), scale


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{path} is not a readable JSON file ({e})") from None
    if not isinstance(data, dict):
        raise DataError(f"{path} holds a JSON {type(data).__name__}, not COCO's object")
    missing = [key for key in ("images", "annotations", "categories") if not isinstance(data.get(key), list)]
    if missing:
        raise DataError(f"{path} is not a COCO instances file: no list {', '.join(map(repr, missing))}")
    return data


def _categories(path: Path, data: dict) -> dict[int, str]:
    """COCO category id -> name, in id order."""
    try:
        names = {int(c["id"]): str(c["name"]) for c in sorted(data["categories"], key=lambda c: int(c["id"]))}
    except (KeyError, TypeError, ValueError) as e:
        raise DataError(f"{path}: a category without an integer 'id' and a 'name' ({e!r})") from None
    if len(names) != len(data["categories"]):
        raise DataError(f"{path} lists a category id twice")
    return names


class CocoDetection(Dataset):
    """The images of ``images`` with the boxes of the COCO instances file ``annotations`` as detection samples
    (``data_scenes.py``'s format) fitted into ``image_size`` (the module's docstring says what is refused)."""

    def __init__(self, images: str | Path, annotations: str | Path, image_size: int = 128) -> None:
        self.folder, self.file, self.image_size = Path(images), Path(annotations), image_size
        data = _read_json(self.file)
        self.categories = _categories(self.file, data)
        labels = {category: label for label, category in enumerate(self.categories, 1)}
        self.entries: list[tuple[str, int, int]] = []  # file name, width, height
        index_of = {}
        for entry in data["images"]:
            try:
                name, width, height = str(entry["file_name"]), int(entry["width"]), int(entry["height"])
                if entry["id"] in index_of:
                    raise DataError(f"{self.file} lists image id {entry['id']!r} twice")
                index_of[entry["id"]] = len(self.entries)
            except (KeyError, TypeError, ValueError) as e:
                raise DataError(
                    f"{self.file}: an image without 'id', 'file_name', 'width' and 'height' ({e!r})"
                ) from None
            if not (self.folder / name).is_file():
                raise DataError(f"{self.file} lists image {name}, which is not in {self.folder}")
            self.entries.append((name, width, height))
        boxes: list[list[list[float]]] = [[] for _ in self.entries]
        classes: list[list[int]] = [[] for _ in self.entries]
        for annotation in data["annotations"]:
            if annotation.get("iscrowd", 0):
                continue
            box, label, index = self._check(annotation, labels, index_of)
            boxes[index].append(box)
            classes[index].append(label)
        if not any(classes):
            raise DataError(f"{self.file} has no annotation (crowd ones left out): nothing to detect")
        self.boxes = [torch.tensor(b, dtype=torch.float32).reshape(-1, 4) for b in boxes]
        self.labels = [torch.tensor(c, dtype=torch.int64) for c in classes]
        empty = sum(not c for c in classes)
        if empty:
            warnings.warn(
                f"{empty} of {len(self.entries)} images in {self.file} have no annotations: "
                "they are kept as images without objects",
                stacklevel=2,
            )

    def _check(self, annotation: dict, labels: dict[int, int], index_of: dict) -> tuple[list[float], int, int]:
        """An annotation's box (``x1, y1, x2, y2``, clipped), label and image index, or a DataError."""
        where = f"{self.file}: annotation {annotation.get('id', '?')}"
        if annotation.get("image_id") not in index_of:
            raise DataError(f"{where} names image {annotation.get('image_id')!r}, which the file does not list")
        if annotation.get("category_id") not in labels:
            raise DataError(f"{where} names category {annotation.get('category_id')!r}, which the file does not list")
        index = index_of[annotation["image_id"]]
        name, width, height = self.entries[index]
        try:
            x, y, w, h = (float(v) for v in annotation["bbox"])
        except (KeyError, TypeError, ValueError):
            raise DataError(f"{where} has no 'bbox' of four numbers [x, y, w, h]") from None
        if not (w > 0 and h > 0):
            raise DataError(f"{where} (image {name}): box {[x, y, w, h]} has a non-positive size")
        t = _BOX_TOLERANCE
        if x < -t or y < -t or x + w > width + t or y + h > height + t:
            raise DataError(f"{where}: box {[x, y, w, h]} is outside image {name} ({width}x{height})")
        box = [min(max(x, 0.0), width), min(max(y, 0.0), height), min(x + w, float(width)), min(y + h, float(height))]
        if not (box[2] > box[0] and box[3] > box[1]):  # within the tolerance but nothing left inside the image
            raise DataError(f"{where}: box {[x, y, w, h]} has no area inside image {name} ({width}x{height})")
        return box, labels[annotation["category_id"]], index

    @property
    def classes(self) -> list[str]:
        """``background`` and the category names, in label order."""
        return ["background", *self.categories.values()]

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int):
        name, width, height = self.entries[index]
        image, size, scale = _fit(self.folder / name, self.image_size)
        if size != (width, height):
            raise DataError(f"{self.folder / name} is {size[0]}x{size[1]}, but {self.file} says {width}x{height}")
        return image, {"boxes": self.boxes[index] * scale, "labels": self.labels[index]}


def _coco_split(root: Path, split: str) -> tuple[Path, Path]:
    """The images folder and instances file of ``split`` (``train``, ``val``) under ``root``."""
    files = sorted((root / "annotations").glob(f"instances_{split}*.json"))
    layout = (
        f"COCO data needs {root}/annotations/instances_train*.json and instances_val*.json, each with its images "
        f"in the folder of its name (instances_train2017.json -> {root}/train2017/)"
    )
    if len(files) != 1:
        found = f"found {', '.join(f.name for f in files)}" if files else "found none"
        raise DataError(f"{layout}; {found} for {split}")
    folder = root / files[0].stem.removeprefix("instances_")
    if not folder.is_dir():
        raise DataError(f"{layout}; {folder} is missing")
    return folder, files[0]


def load_coco(root: str | Path, image_size: int = 128) -> DatasetSplits:
    """The COCO-format detection data under ``root`` (the module's docstring): its train and val splits."""
    root = Path(root)
    train, test = (CocoDetection(*_coco_split(root, split), image_size) for split in ("train", "val"))
    if train.categories != test.categories:
        raise DataError(f"the categories of {train.file} and {test.file} differ: one list of classes is needed")
    return DatasetSplits(train, test, train.classes, image_size, task="detection")


class VocSegmentation(Dataset):
    """The images ``names`` of a VOC-layout folder ``root`` with their class masks, fitted into ``image_size``: samples
    ``(image, mask)``, the mask ``(image_size, image_size)`` int64 with 255 where ignored or padded."""

    def __init__(self, root: str | Path, names: list[str], num_classes: int, image_size: int = 128) -> None:
        self.root, self.names, self.num_classes, self.image_size = Path(root), names, num_classes, image_size
        self.images = []
        found = _images_by_name(self.root / "JPEGImages")
        for name in names:
            image = found.get(name)
            if image is None:
                raise DataError(f"{self.root / 'JPEGImages'} has no image {name} (.jpg, .jpeg or .png)")
            if not self._mask_path(name).is_file():
                raise DataError(f"image {image} has no mask: {self._mask_path(name)} is missing")
            self.images.append(image)

    def _mask_path(self, name: str) -> Path:
        return self.root / "SegmentationClass" / f"{name}.png"

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int):
        path = self._mask_path(self.names[index])
        image, size, scale = _fit(self.images[index], self.image_size)
        mask = _open(path)
        if mask.mode not in ("P", "L"):
            raise DataError(f"{path} is a {mask.mode} image: a mask is a palette or grayscale PNG of class indices")
        if mask.size != size:
            raise DataError(f"{path} is {mask.size[0]}x{mask.size[1]}, but its image is {size[0]}x{size[1]}")
        values = torch.from_numpy(np.asarray(mask, np.int64).copy())
        wrong = sorted(set(values.unique().tolist()) - set(range(self.num_classes)) - {IGNORE_INDEX})
        if wrong:
            raise DataError(
                f"{path} holds values {wrong}, outside the {self.num_classes} classes (0-{self.num_classes - 1}) "
                f"and the ignore index {IGNORE_INDEX}"
            )
        fitted = (max(1, round(size[1] * scale)), max(1, round(size[0] * scale)))
        values = F.interpolate(values[None, None].float(), size=fitted, mode="nearest")[0, 0].long()
        padded = torch.full((self.image_size, self.image_size), IGNORE_INDEX, dtype=torch.int64)
        padded[: fitted[0], : fitted[1]] = values
        return image, padded


def _read_lines(path: Path) -> list[str]:
    try:
        return [line.strip() for line in path.read_text().splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read {path}: {e}") from None


def load_voc(root: str | Path, image_size: int = 128) -> DatasetSplits:
    """The VOC-layout segmentation data under ``root`` (the module's docstring): its train and val splits."""
    root = Path(root)
    missing = [root / d for d in ("JPEGImages", "SegmentationClass") if not (root / d).is_dir()]
    if missing:
        raise DataError(
            f"VOC-layout data needs {root}/JPEGImages (the images) and {root}/SegmentationClass (PNG masks of class "
            f"indices); {', '.join(map(str, missing))} is missing"
        )
    classes = _read_lines(root / "classes.txt") if (root / "classes.txt").is_file() else list(VOC_CLASSES)
    if len(classes) < 2:
        raise DataError(f"{root / 'classes.txt'} names {len(classes)} class: the background and one more at least")
    lists = root / "ImageSets" / "Segmentation"
    if lists.is_dir():
        splits = {}
        for split in ("train", "val"):
            if not (lists / f"{split}.txt").is_file():
                raise DataError(f"{lists} has no {split}.txt (the names of the {split} images, one a line)")
            splits[split] = _read_lines(lists / f"{split}.txt")
            if not splits[split]:
                raise DataError(f"{lists / f'{split}.txt'} names no image")
    else:
        names = sorted(_images_by_name(root / "JPEGImages"))
        if len(names) < 2:
            raise DataError(f"{root / 'JPEGImages'} holds {len(names)} image: a train and a test split need two")
        test = set(names[9::10] or names[-1:])  # fewer than ten images: the last one is the test split
        splits = {"train": [n for n in names if n not in test], "val": [n for n in names if n in test]}
    train, test = (VocSegmentation(root, splits[s], len(classes), image_size) for s in ("train", "val"))
    return DatasetSplits(train, test, classes, image_size, task="segmentation")

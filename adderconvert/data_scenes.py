"""The built-in segmentation and detection data: scenes of Fashion-MNIST items on a larger canvas, the default data
of these tasks as Fashion-MNIST is of classifiers.

A scene is a black square canvas (``image_size``, 128 px by default) holding 1 to 4 Fashion-MNIST items, each
resized to a side drawn between 7/32 and 7/16 of the canvas (28 to 56 px at 128 px) and cropped to its ink: the
pixels above ``threshold`` (0.1 of full intensity). Items never overlap: an item is placed at a random position
where its ink box meets no other item's; a failed try draws a new item and position, up to 20 tries, and the
item is left out if none fits (the first item always fits; crowded scenes thus lean to small items). So each
item's pixels are its own, and its box is exactly the box of its mask.

- **Segmentation** samples are ``(image, mask)``: ``mask`` is ``(H, W)`` int64, 0 for background and
  ``class + 1`` where an item's intensity is above the threshold.
- **Detection** samples are ``(image, target)`` in torchvision's format: ``boxes`` ``(n, 4)`` float32
  ``x1, y1, x2, y2`` in pixel edges (an item whose ink covers columns 3 to 9 has ``x1 = 3, x2 = 10``),
  ``labels`` ``(n,)`` int64 ``class + 1`` (0 is the background), and with ``masks=True`` (Mask R-CNN) ``masks``
  ``(n, H, W)`` uint8, each item's ink.

Images are ``(3, H, W)`` float32, the grayscale canvas normalised as the Fashion-MNIST classifier data is
(``data.GRAY_MEAN``, ``data.GRAY_STD``) and expanded to 3 channels. Train scenes take their items from Fashion-MNIST's
60,000 train images, test scenes from its 10,000 test images; there are 10,000 train and 1,000 test scenes by
default. Scene ``i`` of a split is made when it is read, from its own random stream seeded by ``(seed, split, i)``:
the same seed gives the same scenes bit for bit, in any order and with any number of workers, and nothing is written.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from adderconvert.data import (
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_DIR,
    GRAY_MEAN,
    GRAY_STD,
    DatasetSplits,
    fashion_mnist_arrays,
)

__all__ = ["DEFAULT_COUNTS", "FashionScenes", "load_scenes"]

DEFAULT_COUNTS = {"train": 10_000, "test": 1_000}
_SPLIT_STREAM = {"train": 0, "test": 1}  # keeps the two splits' random streams apart for one seed
_PLACEMENT_TRIES = 20


class FashionScenes(Dataset):
    """``count`` scenes of the items ``images`` (``(N, 28, 28)`` uint8) with classes ``labels``, made on the fly
    (the module's docstring says how). ``task`` is ``"segmentation"`` or ``"detection"``."""

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        task: str,
        count: int,
        image_size: int = 128,
        seed: int = 0,
        stream: int = 0,
        items: tuple[int, int] = (1, 4),
        item_size: tuple[int, int] | None = None,
        threshold: float = 0.1,
        masks: bool = False,
    ) -> None:
        if task not in ("segmentation", "detection"):
            raise ValueError(f"scenes are for segmentation or detection, not {task!r}")
        if item_size is None:
            item_size = (max(1, image_size * 7 // 32), max(1, image_size * 7 // 16))
        if not 1 <= item_size[0] <= item_size[1] <= image_size:
            raise ValueError(f"item sizes {item_size} must be at least 1 and fit the {image_size} px canvas")
        if not 1 <= items[0] <= items[1]:
            raise ValueError(f"items per scene {items} must be a range of at least 1")
        if count < 0 or len(images) == 0 or len(images) != len(labels):
            raise ValueError(f"{count} scenes of {len(images)} items with {len(labels)} labels")
        self.images, self.labels = torch.from_numpy(np.array(images, np.uint8)), np.array(labels, np.int64)
        self.task, self.count, self.image_size = task, count, image_size
        self.seed, self.stream, self.items, self.item_size = seed, stream, items, item_size
        self.threshold, self.masks = threshold, masks

    def __len__(self) -> int:
        return self.count

    def _item(self, rng: np.random.Generator) -> tuple[torch.Tensor, int]:
        """One item resized to a drawn side and cropped to its ink (intensities in [0, 1]), and its class; an item
        without ink is an empty tensor."""
        index = int(rng.integers(len(self.images)))
        side = int(rng.integers(self.item_size[0], self.item_size[1] + 1))
        item = self.images[index].float().div_(255)
        if side != item.shape[-1]:
            item = F.interpolate(item[None, None], size=(side, side), mode="bilinear", antialias=True)[0, 0]
        ink = item > self.threshold
        rows, cols = ink.any(1).nonzero().flatten().tolist(), ink.any(0).nonzero().flatten().tolist()
        if not rows:
            return item[:0, :0], int(self.labels[index])
        return item[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1], int(self.labels[index])

    def scene(self, index: int) -> tuple[torch.Tensor, list[tuple[int, int, int, int]], list[int]]:
        """Scene ``index`` before normalisation: the ``(H, W)`` canvas in [0, 1], the items' ink boxes
        ``(x1, y1, x2, y2)`` (pixel edges) and their Fashion-MNIST classes."""
        if not 0 <= index < self.count:
            raise IndexError(f"scene {index} of {self.count}")
        rng = np.random.default_rng((self.seed, self.stream, index))
        size = self.image_size
        canvas = torch.zeros(size, size)
        boxes: list[tuple[int, int, int, int]] = []
        classes: list[int] = []
        for _ in range(int(rng.integers(self.items[0], self.items[1] + 1))):
            for _ in range(_PLACEMENT_TRIES):
                item, label = self._item(rng)
                if item.numel() == 0:
                    continue
                h, w = item.shape
                x, y = int(rng.integers(size - w + 1)), int(rng.integers(size - h + 1))
                box = (x, y, x + w, y + h)
                if all(box[2] <= b[0] or b[2] <= box[0] or box[3] <= b[1] or b[3] <= box[1] for b in boxes):
                    canvas[y : y + h, x : x + w] = item
                    boxes.append(box)
                    classes.append(label)
                    break
        return canvas, boxes, classes

    def __getitem__(self, index: int):
        canvas, boxes, classes = self.scene(index)
        image = ((canvas - GRAY_MEAN) / GRAY_STD).expand(3, -1, -1).contiguous()
        ink = canvas > self.threshold
        if self.task == "segmentation":
            mask = torch.zeros(canvas.shape, dtype=torch.int64)
            for (x1, y1, x2, y2), label in zip(boxes, classes):
                region = mask[y1:y2, x1:x2]
                region[ink[y1:y2, x1:x2]] = label + 1
            return image, mask
        target = {
            "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor(classes, dtype=torch.int64) + 1,
        }
        if self.masks:
            masks = torch.zeros((len(boxes), *canvas.shape), dtype=torch.uint8)
            for mask, (x1, y1, x2, y2) in zip(masks, boxes):
                mask[y1:y2, x1:x2] = ink[y1:y2, x1:x2]
            target["masks"] = masks
        return image, target


def load_scenes(
    task: str,
    root: str | Path | None = None,
    image_size: int = 128,
    seed: int = 0,
    counts: dict[str, int] | None = None,
    masks: bool = False,
) -> DatasetSplits:
    """The built-in scenes for ``task`` (``"segmentation"`` or ``"detection"``) at ``image_size``: train scenes of
    Fashion-MNIST's train items, test scenes of its test items (from ``root``, Debian's folder by default), as many
    as ``counts`` says (:data:`DEFAULT_COUNTS` for a split it leaves out). ``masks`` adds instance masks to the
    detection targets (Mask R-CNN). The classes are ``background`` and Fashion-MNIST's ten."""
    counts = {**DEFAULT_COUNTS, **(counts or {})}
    arrays = fashion_mnist_arrays(Path(root) if root else FASHION_MNIST_DIR)
    train, test = (
        FashionScenes(*arrays[split], task, counts[split], image_size, seed, _SPLIT_STREAM[split], masks=masks)
        for split in ("train", "test")
    )
    return DatasetSplits(
        train, test, ["background", *FASHION_MNIST_CLASSES], image_size, (GRAY_MEAN,) * 3, (GRAY_STD,) * 3, task
    )

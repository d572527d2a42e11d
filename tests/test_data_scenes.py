"""The built-in scenes: deterministic from the seed whatever the order and workers, images normalised as the
Fashion-MNIST classifier data, boxes the exact boxes of their items' ink, masks consistent with the boxes."""

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from adderconvert.data import FASHION_MNIST_DIR, GRAY_MEAN, GRAY_STD, collate_detection
from adderconvert.data_scenes import DEFAULT_COUNTS, FashionScenes, load_scenes
from tests.test_data import _write_fashion_mnist


def _items(n=40, seed=0):
    """Fashion-MNIST-like items: a bright rectangle of random size and place on black, classes 0-9."""
    rng = np.random.default_rng(seed)
    images = np.zeros((n, 28, 28), np.uint8)
    for image in images:
        y, x = rng.integers(0, 14, 2)
        h, w = rng.integers(4, 14, 2)
        image[y : y + h, x : x + w] = rng.integers(60, 256)
    return images, rng.integers(0, 10, n)


def _scenes(task="detection", count=60, **options):
    return FashionScenes(*_items(), task, count, **options)


def _samples(dataset):
    return [dataset[i] for i in range(len(dataset))]


def _equal(a, b):
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    return torch.equal(a, b)


def test_the_same_seed_gives_the_same_scenes_in_any_order():
    forward = _samples(_scenes(count=20, masks=True))
    backward = [_scenes(count=20, masks=True)[i] for i in reversed(range(20))][::-1]
    assert all(_equal(a[0], b[0]) and _equal(a[1], b[1]) for a, b in zip(forward, backward))
    other_seed = _samples(_scenes(count=20, seed=1))
    assert not all(torch.equal(a[0], b[0]) for a, b in zip(forward, other_seed))
    other_stream = _samples(_scenes(count=20, stream=1))  # the test split's scenes differ from the train split's
    assert not all(torch.equal(a[0], b[0]) for a, b in zip(forward, other_stream))


def test_scenes_do_not_depend_on_the_workers():
    dataset = _scenes(count=8)
    batches = [
        list(DataLoader(dataset, batch_size=3, num_workers=workers, collate_fn=collate_detection)) for workers in (0, 2)
    ]
    for (images_a, targets_a), (images_b, targets_b) in zip(*batches):
        assert all(torch.equal(a, b) for a, b in zip(images_a, images_b))
        assert all(_equal(a, b) for a, b in zip(targets_a, targets_b))


def test_images_are_normalised_grayscale_in_three_channels():
    image, _ = _scenes(image_size=64)[0]
    assert image.shape == (3, 64, 64) and image.dtype == torch.float32
    assert torch.equal(image[0], image[1]) and torch.equal(image[0], image[2])
    canvas, _, _ = _scenes(image_size=64).scene(0)
    torch.testing.assert_close(image[0], (canvas - GRAY_MEAN) / GRAY_STD)
    assert image.min() == pytest.approx(-GRAY_MEAN / GRAY_STD)  # the black canvas


@pytest.mark.parametrize("size", [128, 64, 40])
def test_boxes_are_the_boxes_of_their_items_ink(size):
    dataset = _scenes(image_size=size)
    counts = set()
    for i in range(len(dataset)):
        canvas, boxes, classes = dataset.scene(i)
        _, target = dataset[i]
        assert target["boxes"].dtype == torch.float32 and target["labels"].dtype == torch.int64
        assert target["boxes"].tolist() == [list(map(float, b)) for b in boxes]
        assert target["labels"].tolist() == [c + 1 for c in classes]
        assert "masks" not in target
        counts.add(len(boxes))
        ink = canvas > dataset.threshold
        covered = torch.zeros_like(ink)
        for x1, y1, x2, y2 in boxes:
            assert 0 <= x1 < x2 <= size and 0 <= y1 < y2 <= size
            lo, hi = dataset.item_size
            assert x2 - x1 <= hi and y2 - y1 <= hi
            box = ink[y1:y2, x1:x2]
            # tight: the item's ink reaches all four edges of its box
            assert box[0].any() and box[-1].any() and box[:, 0].any() and box[:, -1].any()
            assert not covered[y1:y2, x1:x2].any(), "items overlap"
            covered[y1:y2, x1:x2] = True
        assert not (ink & ~covered).any(), "ink outside every box"
    assert counts == {1, 2, 3, 4}


def test_masks_agree_with_boxes_and_labels():
    detection = _scenes(count=30, masks=True)
    segmentation = _scenes("segmentation", count=30)
    for i in range(len(detection)):
        _, target = detection[i]
        image, mask = segmentation[i]
        assert torch.equal(image, detection[i][0])
        assert mask.shape == (128, 128) and mask.dtype == torch.int64
        masks = target["masks"]
        assert masks.shape == (len(target["boxes"]), 128, 128) and masks.dtype == torch.uint8
        for item, box, label in zip(masks.bool(), target["boxes"].long(), target["labels"]):
            rows, cols = item.any(1).nonzero().flatten(), item.any(0).nonzero().flatten()
            assert [cols[0], rows[0], cols[-1] + 1, rows[-1] + 1] == box.tolist()
            assert (mask[item] == label).all()
        assert torch.equal(mask != 0, masks.any(0)) if len(masks) else (mask == 0).all()
        expected = torch.zeros_like(mask)
        for item, label in zip(masks.bool(), target["labels"]):
            expected[item] = label
        assert torch.equal(mask, expected)


def test_item_sizes_and_counts_follow_the_options():
    dataset = _scenes(count=30, image_size=64, items=(2, 2), item_size=(10, 12))
    for i in range(len(dataset)):
        _, boxes, _ = dataset.scene(i)
        assert len(boxes) == 2
        assert all(x2 - x1 <= 12 and y2 - y1 <= 12 for x1, y1, x2, y2 in boxes)
    with pytest.raises(IndexError):
        dataset.scene(30)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"task": "classification"}, "segmentation or detection"),
        ({"image_size": 32, "item_size": (28, 40)}, "fit the 32 px canvas"),
        ({"items": (0, 3)}, "at least 1"),
    ],
)
def test_bad_options_are_refused(options, message):
    options = {"task": "detection", "count": 4, **options}
    with pytest.raises(ValueError, match=message):
        FashionScenes(*_items(), **options)


def test_load_scenes_from_a_fashion_mnist_folder(tmp_path):
    _write_fashion_mnist(tmp_path)
    data = load_scenes("segmentation", tmp_path, image_size=48, seed=3, counts={"test": 5})
    assert data.task == "segmentation" and data.image_size == 48
    assert data.classes[0] == "background" and data.num_classes == 11
    assert (len(data.train), len(data.test)) == (DEFAULT_COUNTS["train"], 5)
    assert data.mean == (GRAY_MEAN,) * 3 and data.std == (GRAY_STD,) * 3
    image, mask = data.test[4]
    assert image.shape == (3, 48, 48) and mask.shape == (48, 48)
    assert not torch.equal(data.train[0][0], data.test[0][0])


@pytest.mark.skipif(not FASHION_MNIST_DIR.is_dir(), reason="dataset-fashion-mnist not installed")
def test_debian_fashion_mnist_scenes():
    data = load_scenes("detection", masks=True)
    assert (len(data.train), len(data.test)) == (10_000, 1_000)
    image, target = data.train[0]
    assert image.shape == (3, 128, 128)
    assert 1 <= len(target["labels"]) <= 4 and target["masks"].shape[0] == len(target["labels"])
    assert ((target["labels"] >= 1) & (target["labels"] <= 10)).all()

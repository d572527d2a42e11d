"""Users' data: tiny COCO and VOC folders written here, read into the scenes' sample format, and each malformed
case refused with a DataError naming the file."""

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from adderconvert.data import IGNORE_INDEX, IMAGENET_MEAN, IMAGENET_STD, DataError, check_task
from adderconvert.data_formats import VOC_CLASSES, load_coco, load_voc

_EMPTY_IMAGE = "ignore:1 of 2 images in .* have no annotations"  # b.png has only a crowd annotation

# COCO: two 40x30 images per split, categories with ids 3 and 7 (labels 1 and 2)


def _coco_json(images=("a.png", "b.png")):
    return {
        "images": [{"id": 10 + i, "file_name": name, "width": 40, "height": 30} for i, name in enumerate(images)],
        "annotations": [
            {"id": 1, "image_id": 10, "category_id": 7, "bbox": [4, 6, 10, 8], "iscrowd": 0},
            {"id": 2, "image_id": 10, "category_id": 3, "bbox": [20, 0, 20, 30]},
            {"id": 3, "image_id": 11, "category_id": 3, "bbox": [0, 0, 5, 5], "iscrowd": 1},  # crowd: left out
        ],
        "categories": [{"id": 7, "name": "dog"}, {"id": 3, "name": "cat"}],
    }


def _write_coco(root, edit=None):
    (root / "annotations").mkdir(parents=True)
    for split in ("train2017", "val2017"):
        (root / split).mkdir()
        for name in ("a.png", "b.png"):
            pixels = np.zeros((30, 40, 3), np.uint8)
            pixels[6:14, 4:14] = 255  # annotation 1's box
            Image.fromarray(pixels).save(root / split / name)
        data = _coco_json()
        if edit and split == "train2017":
            edit(data)
        (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(data))
    return root


def test_coco_detection(tmp_path):
    with pytest.warns(UserWarning) as caught:
        data = load_coco(_write_coco(tmp_path), image_size=64)
    assert [str(w.message).split(" in ")[0] for w in caught] == ["1 of 2 images"] * 2
    assert "instances_train2017.json have no annotations: they are kept as images without objects" in str(caught[0])
    assert data.task == "detection" and data.classes == ["background", "cat", "dog"] and data.num_classes == 3
    assert (len(data.train), len(data.test)) == (2, 2)
    image, target = data.train[0]
    assert image.shape == (3, 64, 64) and image.dtype == torch.float32
    scale = 64 / 40
    torch.testing.assert_close(target["boxes"], torch.tensor([[4, 6, 14, 14], [20, 0, 40, 30]]) * scale)
    assert target["labels"].tolist() == [2, 1] and target["labels"].dtype == torch.int64
    white = (1 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    torch.testing.assert_close(image[:, 15, 12], white)  # inside the white box (rows 9.6-22.4, cols 6.4-22.4)
    assert (image[:, 48:] == 0).all()  # padded below the 48 rows of the fitted image
    _, empty = data.train[1]  # only a crowd annotation: an image without objects
    assert empty["boxes"].shape == (0, 4) and empty["labels"].shape == (0,)
    with pytest.raises(DataError, match="fcn_resnet50 is a segmentation model, but the data set holds detection"):
        check_task(data, "fcn_resnet50", "segmentation")


def _set(path, value):
    def edit(data):
        *keys, last = path
        node = data
        for key in keys:
            node = node[key]
        node[last] = value

    return edit


@pytest.mark.filterwarnings(_EMPTY_IMAGE)
@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda d: d.pop("annotations"), "not a COCO instances file: no list 'annotations'"),
        (_set(("annotations", 0, "image_id"), 99), "annotation 1 names image 99, which the file does not list"),
        (_set(("annotations", 1, "category_id"), 5), "annotation 2 names category 5, which the file does not list"),
        (_set(("images", 1, "file_name"), "c.png"), "lists image c.png, which is not in .*train2017"),
        (_set(("images", 0, "width"), None), "an image without 'id', 'file_name', 'width' and 'height'"),
        (_set(("annotations", 0, "bbox"), [4, 6, 0, 8]), r"annotation 1 \(image a.png\).*non-positive size"),
        (_set(("annotations", 0, "bbox"), [4, 6, 10]), "annotation 1 has no 'bbox' of four numbers"),
        (_set(("annotations", 1, "bbox"), [20, 0, 21.5, 30]), r"annotation 2: box .* is outside image a.png \(40x30"),
        (_set(("annotations", 0, "bbox"), [-2, 6, 10, 8]), "annotation 1: box .* is outside image a.png"),
        (lambda d: d["annotations"].clear(), "instances_train2017.json has no annotation"),
        (_set(("annotations", 1, "bbox"), [40.5, 0, 0.4, 10]), r"annotation 2: box .* has no area inside image a.png"),
        (lambda d: d["images"][1].update(id=d["images"][0]["id"]), "lists image id .* twice"),
        (_set(("categories", 0, "name"), "wolf"), "the categories of .*instances_train2017.json and .* differ"),
        (_set(("categories", 0), {"name": "dog"}), "a category without an integer 'id' and a 'name'"),
        (_set(("categories", 0, "id"), 3), "lists a category id twice"),
    ],
)
def test_malformed_coco_is_refused(tmp_path, edit, message):
    _write_coco(tmp_path, edit)
    with pytest.raises(DataError, match=message):
        load_coco(tmp_path)


@pytest.mark.filterwarnings(_EMPTY_IMAGE)
def test_boxes_within_a_pixel_of_the_image_are_clipped(tmp_path):
    data = load_coco(_write_coco(tmp_path, _set(("annotations", 1, "bbox"), [20, -0.5, 20.5, 30.5])), 40)
    assert data.train[0][1]["boxes"][1].tolist() == [20, 0, 40, 30]


@pytest.mark.filterwarnings(_EMPTY_IMAGE)
@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda root: shutil.rmtree(root / "annotations"), "COCO data needs .*found none for train"),
        (lambda root: shutil.rmtree(root / "val2017"), "val2017 is missing"),
        (
            lambda root: shutil.copy(
                root / "annotations/instances_train2017.json", root / "annotations/instances_train.json"
            ),
            "found instances_train.json, instances_train2017.json for train",
        ),
        (lambda root: (root / "annotations/instances_train2017.json").write_text("{"), "not a readable JSON file"),
        (lambda root: (root / "annotations/instances_train2017.json").write_text("[]"), "holds a JSON list"),
    ],
)
def test_a_coco_folder_in_the_wrong_layout_is_refused(tmp_path, damage, message):
    damage(_write_coco(tmp_path))
    with pytest.raises(DataError, match=message):
        load_coco(tmp_path)


@pytest.mark.filterwarnings(_EMPTY_IMAGE)
def test_coco_images_are_checked_when_read(tmp_path):
    data = load_coco(_write_coco(tmp_path))
    Image.new("RGB", (30, 30)).save(tmp_path / "train2017" / "a.png")
    with pytest.raises(DataError, match="a.png is 30x30, but .*instances_train2017.json says 40x30"):
        data.train[0]
    (tmp_path / "train2017" / "b.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="b.png is not a readable image"):
        data.train[1]


# VOC: 20x10 images, masks of the classes 0-2 with 255 borders


def _mask(value=1):
    mask = np.zeros((10, 20), np.uint8)
    mask[2:6, 3:9] = value
    mask[7:, 10:] = 2
    mask[0, :] = IGNORE_INDEX
    return mask


def _write_voc(root, names=("x", "y", "z"), lists=True, classes=("background", "cat", "dog")):
    for folder in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / folder).mkdir(parents=True)
    for name in names:
        Image.fromarray(np.full((10, 20, 3), 128, np.uint8)).save(root / "JPEGImages" / f"{name}.jpg")
        mask = Image.fromarray(_mask(), mode="L").convert("P")
        mask.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0] + [224] * (253 * 3))
        mask.save(root / "SegmentationClass" / f"{name}.png")
    if lists:
        (root / "ImageSets/Segmentation/train.txt").write_text("\n".join(names[:-1]) + "\n")
        (root / "ImageSets/Segmentation/val.txt").write_text(names[-1] + "\n")
    else:
        (root / "ImageSets/Segmentation").rmdir()
    if classes:
        (root / "classes.txt").write_text("\n".join(classes) + "\n")
    return root


def test_voc_segmentation(tmp_path):
    data = load_voc(_write_voc(tmp_path), image_size=40)
    assert data.task == "segmentation" and data.classes == ["background", "cat", "dog"]
    assert (len(data.train), len(data.test)) == (2, 1)
    image, mask = data.test[0]
    assert image.shape == (3, 40, 40) and mask.shape == (40, 40) and mask.dtype == torch.int64
    assert torch.equal(mask[:20:2, ::2], torch.from_numpy(_mask()).long())  # scaled 2x, nearest
    assert (mask[20:] == IGNORE_INDEX).all()  # padding
    assert (image[:, 20:] == 0).all() and (image[:, :20] != 0).all()


def test_voc_without_lists_or_class_names(tmp_path):
    names = tuple(f"{i:02d}" for i in range(12))
    data = load_voc(_write_voc(tmp_path, names, lists=False, classes=None), 16)
    assert data.classes == VOC_CLASSES
    assert data.test.names == ["09"] and data.train.names == [n for n in names if n != "09"]
    small = load_voc(_write_voc(tmp_path / "small", ("a", "b", "c"), lists=False), 16)
    assert (small.train.names, small.test.names) == (["a", "b"], ["c"])


def test_voc_image_suffixes_in_any_case_and_one_name_once(tmp_path):
    root = _write_voc(tmp_path, lists=False)
    (root / "JPEGImages" / "y.jpg").rename(root / "JPEGImages" / "y.JPG")
    shutil.copy(root / "JPEGImages" / "z.jpg", root / "JPEGImages" / "z.png")  # z in two formats: the .jpg
    data = load_voc(root, 16)
    assert (data.train.names, data.test.names) == (["x", "y"], ["z"])
    assert [p.name for p in data.train.images + data.test.images] == ["x.jpg", "y.JPG", "z.jpg"]


@pytest.mark.parametrize(
    "damage, message",
    [
        (
            lambda root: shutil.rmtree(root / "SegmentationClass"),
            "VOC-layout data needs .*SegmentationClass is missing",
        ),
        (lambda root: (root / "SegmentationClass/y.png").unlink(), "image .*y.jpg has no mask: .*y.png is missing"),
        (lambda root: (root / "JPEGImages/y.jpg").unlink(), "JPEGImages has no image y"),
        (lambda root: (root / "ImageSets/Segmentation/val.txt").unlink(), "has no val.txt"),
        (lambda root: (root / "ImageSets/Segmentation/val.txt").write_text("\n"), "val.txt names no image"),
        (lambda root: (root / "classes.txt").write_text("background\n"), "classes.txt names 1 class"),
    ],
)
def test_a_voc_folder_in_the_wrong_layout_is_refused(tmp_path, damage, message):
    damage(_write_voc(tmp_path))
    with pytest.raises(DataError, match=message):
        load_voc(tmp_path)


def test_voc_masks_are_checked_when_read(tmp_path):
    data = load_voc(_write_voc(tmp_path), 20)
    masks = tmp_path / "SegmentationClass"
    Image.fromarray(_mask(5), mode="L").save(masks / "x.png")
    with pytest.raises(DataError, match=r"x.png holds values \[5\], outside the 3 classes \(0-2\)"):
        data.train[0]
    Image.fromarray(np.zeros((10, 20, 3), np.uint8)).save(masks / "x.png")
    with pytest.raises(DataError, match="x.png is a RGB image: a mask is a palette or grayscale PNG"):
        data.train[0]
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(masks / "x.png")
    with pytest.raises(DataError, match="x.png is 10x10, but its image is 20x10"):
        data.train[0]
    assert data.train[1][1].shape == (20, 20)  # the others still read

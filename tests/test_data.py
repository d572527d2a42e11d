"""Data loading: Debian's Fashion-MNIST files, IDX parsing, ImageFolder and CIFAR-10 from local files."""

import gzip
import pickle
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from adderconvert.data import (
    FASHION_MNIST_DIR,
    DataError,
    DatasetSplits,
    check_task,
    collate_detection,
    load_dataset,
    read_idx,
)


def _write_idx(path, array):
    header = struct.pack(">BBBB", 0, 0, 8, array.ndim) + b"".join(struct.pack(">I", d) for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def _write_fashion_mnist(root):
    """Random images and labels in Fashion-MNIST's four files: 6 training and 4 test images."""
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 6), ("t10k", 4)):
        _write_idx(root / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        _write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", rng.integers(0, 10, (n,)))


def test_read_idx_round_trip(tmp_path):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    _write_idx(tmp_path / "a.gz", array)
    np.testing.assert_array_equal(read_idx(tmp_path / "a.gz"), array)


def test_read_idx_rejects_truncated(tmp_path):
    path = tmp_path / "bad.gz"
    with gzip.open(path, "wb") as f:
        f.write(struct.pack(">BBBBI", 0, 0, 8, 1, 10) + b"\x00" * 3)
    with pytest.raises(DataError, match="truncated"):
        read_idx(path)


def test_read_idx_refuses_a_file_that_is_not_gzip(tmp_path):
    """Issue 34, 4: a .gz that is not gzip (or cut short) is a DataError naming the file, not gzip's traceback."""
    (tmp_path / "plain.gz").write_bytes(b"\x00\x00\x08\x01not gzip")
    with pytest.raises(DataError, match="plain.gz is not a readable gzip file"):
        read_idx(tmp_path / "plain.gz")
    with gzip.open(tmp_path / "full.gz", "wb") as f:
        f.write(bytes(4000))
    (tmp_path / "cut.gz").write_bytes((tmp_path / "full.gz").read_bytes()[:20])
    with pytest.raises(DataError, match="cut.gz is not a readable gzip file"):
        read_idx(tmp_path / "cut.gz")


@pytest.mark.skipif(not FASHION_MNIST_DIR.is_dir(), reason="dataset-fashion-mnist not installed")
def test_debian_fashion_mnist():
    splits = load_dataset("fashion-mnist")
    assert len(splits.train) == 60000 and len(splits.test) == 10000
    assert splits.num_classes == 10 and splits.classes[9] == "Ankle boot"
    image, label = splits.test[0]
    assert image.shape == (3, 28, 28) and label == 9  # the first test image is an ankle boot
    labels = torch.as_tensor(splits.train.labels)
    assert torch.equal(torch.bincount(labels), torch.full((10,), 6000))


def test_fashion_mnist_from_a_folder_and_resized(tmp_path):
    _write_fashion_mnist(tmp_path)
    splits = load_dataset("fashion-mnist", tmp_path, image_size=32)
    assert len(splits.train) == 6 and splits.test[0][0].shape == (3, 32, 32)


def test_images_are_resized_per_item_not_held_at_the_model_size(tmp_path):
    _write_fashion_mnist(tmp_path)
    splits = load_dataset("fashion-mnist", tmp_path, image_size=512)
    assert splits.test.images.dtype == torch.uint8 and splits.test.images.shape[-1] == 28  # raw bytes only
    image, _ = splits.test[0]
    raw = torch.from_numpy(read_idx(tmp_path / "t10k-images-idx3-ubyte.gz")[:1].astype(np.float32) / 255)
    expected = torch.nn.functional.interpolate(raw[None], size=(512, 512), mode="bilinear", align_corners=False)
    mean, std = splits.mean[0], splits.std[0]
    torch.testing.assert_close(image[0], (expected[0, 0] - mean) / std)


def test_missing_fashion_mnist_says_how_to_get_it(tmp_path):
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        load_dataset("fashion-mnist", tmp_path)


def test_image_folder(tmp_path):
    for split in ("train", "val"):
        for cls in ("cat", "dog"):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(2):
                Image.fromarray(np.full((40, 30), 100 + i, np.uint8)).save(tmp_path / split / cls / f"{i}.png")
    splits = load_dataset("imagefolder", tmp_path, image_size=32)
    assert splits.classes == ["cat", "dog"] and len(splits.train) == 4
    image, label = splits.test[3]
    assert image.shape == (3, 32, 32) and label == 1  # grayscale PNG becomes 3 channels


def test_image_folder_of_one_class_is_refused(tmp_path):
    for split in ("train", "val"):
        (tmp_path / split / "cat").mkdir(parents=True)
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / split / "cat" / "0.png")
    with pytest.raises(DataError, match="one class folder"):
        load_dataset("imagefolder", tmp_path)


def test_a_missing_data_folder_is_named_as_missing(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_dataset("imagefolder", tmp_path / "nope")
    (tmp_path / "file").write_text("")
    with pytest.raises(DataError, match="is a file, not a folder"):
        load_dataset("fashion-mnist", tmp_path / "file")


def test_image_folder_layout_error(tmp_path):
    with pytest.raises(DataError, match="ImageNet layout"):
        load_dataset("imagefolder", tmp_path)


def test_cifar10_from_local_files(tmp_path, monkeypatch):
    base = tmp_path / "cifar-10-batches-py"
    base.mkdir()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {"data": rng.integers(0, 256, (2, 3072), dtype=np.uint8), "labels": [1, 2]}
        with open(base / name, "wb") as f:
            pickle.dump(batch, f)
    with open(base / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, f)
    import torchvision.datasets.cifar

    # Checksums of the real archive would fail for synthetic files; the loading code is what is tested.
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *args: True)
    splits = load_dataset("cifar10", tmp_path)
    assert len(splits.train) == 10 and splits.num_classes == 10
    assert splits.test[0][0].shape == (3, 32, 32)


def test_cifar10_missing(tmp_path):
    with pytest.raises(DataError, match="cifar-10-batches-py"):
        load_dataset("cifar10", tmp_path)


def test_unknown_dataset():
    with pytest.raises(DataError, match="unknown data set"):
        load_dataset("mnist3d", "/tmp")


def test_a_model_refuses_data_of_another_task():
    """Issue 35, 3: a detection model given classification data is a DataError saying which data it takes."""
    classification = DatasetSplits([], [], ["a", "b"], 28)
    with pytest.raises(DataError, match="fcos_resnet50_fpn is a detection model, but the data set holds classif"):
        check_task(classification, "fcos_resnet50_fpn", "detection")
    with pytest.raises(DataError, match="VOC-layout folder"):
        check_task(classification, "fcn_resnet50", "segmentation")
    detection = DatasetSplits([], [], ["background", "a"], 128, task="detection")
    with pytest.raises(DataError, match="resnet18 is a classification model"):
        check_task(detection, "resnet18", "classification")
    check_task(detection, "fcos_resnet50_fpn", "detection")
    check_task(classification, "resnet18", "classification")
    with pytest.raises(ValueError, match="unknown task"):
        check_task(detection, "x", "keypoints")


def test_detection_batches_are_lists():
    batch = [(torch.zeros(3, 4, 4), {"boxes": torch.zeros(n, 4)}) for n in (0, 2)]
    images, targets = collate_detection(batch)
    assert [i.shape for i in images] == [(3, 4, 4)] * 2 and [len(t["boxes"]) for t in targets] == [0, 2]

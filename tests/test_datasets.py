import io
import os
import pickle
import socket
import tarfile
import time

import numpy as np
import pytest
from PIL import Image

from sanp_keras import datasets

SHARED_CIFAR10 = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "cifar10")


def test_embedded_sample_is_balanced_cifar10():
    data = datasets.load("embedded")
    assert data.train.images.shape == (5000, 32, 32, 3) and data.train.images.dtype == np.uint8
    assert data.test.images.shape == (1000, 32, 32, 3)
    assert data.class_names[:3] == ["airplane", "automobile", "bird"]
    assert np.bincount(data.train.labels).tolist() == [500] * 10
    assert np.bincount(data.test.labels).tolist() == [100] * 10
    sub = data.subset(300, 50, seed=1)
    assert len(sub.train) == 300 and len(set(sub.train.labels)) == 10  # a random draw
    assert sub.description.endswith("subset of 300 train / 50 test images")
    assert data.subset().description == data.description


def _write_folder(root, corrupt=False):
    rng = np.random.RandomState(0)
    colors = {"cat": (200, 30, 30), "dog": (30, 30, 200)}
    for split in ("train", "test"):
        for name, color in colors.items():
            os.makedirs(root / split / name)
            for i in range(3):
                pixels = np.clip(np.array(color) + rng.randint(-20, 20, (8, 8, 3)), 0, 255)
                fmt = "png" if i == 0 else "jpg"
                Image.fromarray(pixels.astype(np.uint8)).save(root / split / name / f"{i}.{fmt}")
    if corrupt:
        (root / "train" / "dog" / "9.jpg").write_bytes(b"not a jpeg")


def test_folder_loader_reads_classes_in_order(tmp_path):
    _write_folder(tmp_path)
    data = datasets.load(str(tmp_path))
    assert data.class_names == ["cat", "dog"]
    assert data.train.images.shape == (6, 8, 8, 3)
    np.testing.assert_array_equal(data.train.labels, [0, 0, 0, 1, 1, 1])
    # the labels follow the pictures: cats red, dogs blue
    red = data.train.images[..., 0].mean(axis=(1, 2)) > data.train.images[..., 2].mean(axis=(1, 2))
    np.testing.assert_array_equal(red, data.train.labels == 0)


def test_corrupt_images_are_skipped_with_a_count_or_raise(tmp_path):
    _write_folder(tmp_path, corrupt=True)
    with pytest.warns(UserWarning, match=r"Skipped 1 .*9\.jpg"):
        data = datasets.load(str(tmp_path))
    assert len(data.train) == 6
    with pytest.raises(ValueError, match=r"9\.jpg"):
        datasets.load(str(tmp_path), on_corrupt="raise")


def _cifar10_archive(path, n=4):
    rng = np.random.RandomState(0)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batches[name] = {b"data": rng.randint(0, 255, (n, 3072), dtype=np.uint8),
                         b"labels": list(rng.randint(0, 10, n))}
    batches["batches.meta"] = {b"label_names": [f"c{i}".encode() for i in range(10)]}
    _tar(path, "cifar-10-batches-py", batches)
    return batches


def _tar(path, folder, members):
    with tarfile.open(path, "w:gz") as tar:
        for name, obj in members.items():
            data = pickle.dumps(obj)
            info = tarfile.TarInfo(f"{folder}/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_official_cifar10_archive(tmp_path):
    batches = _cifar10_archive(tmp_path / "cifar-10-python.tar.gz")
    data = datasets.load("cifar10", data_dir=str(tmp_path))
    assert data.train.images.shape == (20, 32, 32, 3) and len(data.test) == 4
    assert data.class_names[0] == "c0"
    # rows are channel-major (R plane, G plane, B plane)
    first = batches["data_batch_1"][b"data"][0]
    np.testing.assert_array_equal(data.train.images[0, :, :, 1], first[1024:2048].reshape(32, 32))
    np.testing.assert_array_equal(data.train.labels[:4], batches["data_batch_1"][b"labels"])


def test_official_cifar100_archive_uses_fine_labels(tmp_path):
    rng = np.random.RandomState(1)
    members = {
        split: {b"data": rng.randint(0, 255, (3, 3072), dtype=np.uint8),
                b"fine_labels": [5, 99, 0], b"coarse_labels": [1, 2, 3]}
        for split in ("train", "test")
    }
    members["meta"] = {b"fine_label_names": [f"f{i}".encode() for i in range(100)]}
    path = tmp_path / "cifar-100-python.tar.gz"
    _tar(path, "cifar-100-python", members)
    data = datasets.load(str(path))
    assert data.num_classes == 100
    np.testing.assert_array_equal(data.train.labels, [5, 99, 0])


def test_offline_tfds_fails_fast_with_directions_and_no_network(tmp_path, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    start = time.time()
    with pytest.raises(datasets.DataNotFoundError, match="cifar-10-python.tar.gz") as error:
        datasets.load("cifar10", data_dir=str(tmp_path))
    assert time.time() - start < 10
    assert "train/<class>" in str(error.value)


def test_unknown_source_names_the_value():
    with pytest.raises(ValueError, match="source='imagenet'"):
        datasets.load("imagenet")


def test_pipeline_normalizes_and_augments():
    data = datasets.load("embedded").subset(64, 64)
    test = next(iter(datasets.pipeline(data.test, 64, training=False)))
    images = test[0].numpy()
    assert images.shape == (64, 32, 32, 3)
    assert abs(images.mean()) < 0.5 and 0.5 < images.std() < 1.5
    np.testing.assert_array_equal(test[1].numpy(), data.test.labels)
    train = next(iter(datasets.pipeline(data.train, 64, training=True)))
    assert train[0].shape == (64, 32, 32, 3)
    assert sorted(train[1].numpy().tolist()) == sorted(data.train.labels.tolist())


@pytest.mark.skipif(not os.path.isdir(SHARED_CIFAR10), reason="no shared CIFAR-10 folder")
def test_shared_cifar10_folder():
    data = datasets.load_folder(SHARED_CIFAR10)
    assert data.train.images.shape == (50000, 32, 32, 3)
    assert data.test.images.shape == (10000, 32, 32, 3)
    assert np.bincount(data.test.labels).tolist() == [1000] * 10
    embedded = datasets.load("embedded")
    np.testing.assert_array_equal(data.train.images[0], embedded.train.images[0])


def test_hold_out_removes_a_random_disjoint_draw_from_training():
    data = datasets.load("embedded")
    kept, held = data.hold_out(300, seed=3)
    assert len(held) == 300 and len(kept.train) == len(data.train) - 300
    assert kept.test is data.test and "300 training images held out" in kept.description
    flat = lambda images: {bytes(i) for i in images.reshape(len(images), -1)}  # noqa: E731
    assert not flat(held.images) & flat(kept.train.images)
    assert len(set(held.labels.tolist())) == 10  # drawn at random, not class by class
    with pytest.raises(ValueError, match="count=5000"):
        data.hold_out(5000)

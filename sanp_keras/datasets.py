"""Image classification data: CIFAR from several sources, and the tf.data pipeline.

Sources (`load(source, data_dir)`):

- `"embedded"`: 5,000 training and 1,000 test CIFAR-10 (JPEG) images shipped inside the
  package (`resources/cifar10_sample.npz`), so that the main job runs with no download;
- `"cifar10"` / `"cifar100"`: the official python archive (`cifar-10-python.tar.gz`,
  `cifar-100-python.tar.gz`, or their extracted folders) if `data_dir` holds one, else
  TensorFlow Datasets. tfds is asked first whether the data is already prepared
  (`download=False`), so that an offline machine fails within seconds with a message,
  instead of retrying downloads for minutes; `download=True` lets it download;
- a folder path: `train/<class>/*.jpg|png` and `test/<class>/*.jpg|png`, classes in
  alphabetical order (the layout of `keras.utils.image_dataset_from_directory`);
- a path to an official archive file.

Everything is loaded into memory as uint8 arrays (CIFAR: 180 MB); `pipeline` then
normalizes, augments, caches and prefetches. An image that cannot be decoded is skipped
and counted in a warning that names it (`on_corrupt="raise"` makes it an error), never
given another image's label.
"""

import dataclasses
import io
import os
import pickle
import tarfile
import warnings

import numpy as np
import tensorflow as tf
from PIL import Image

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
EMBEDDED_SAMPLE = os.path.join(os.path.dirname(__file__), "resources", "cifar10_sample.npz")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")
_ARCHIVES = {
    "cifar10": ("cifar-10-python.tar.gz", "cifar-10-batches-py"),
    "cifar100": ("cifar-100-python.tar.gz", "cifar-100-python"),
}


@dataclasses.dataclass
class Split:
    images: np.ndarray  # (N, H, W, 3) uint8
    labels: np.ndarray  # (N,) int64

    def __len__(self):
        return len(self.labels)


@dataclasses.dataclass
class ImageData:
    train: Split
    test: Split
    class_names: list
    description: str

    @property
    def num_classes(self):
        return len(self.class_names)

    def subset(self, train=None, test=None, seed=0):
        """`train` / `test` images of each split drawn at random (all when None).

        A random draw, not the first images: the sources list images class by class.
        """
        rng = np.random.RandomState(seed)

        def pick(split, n):
            if n is None or n >= len(split):
                return split
            index = np.sort(rng.permutation(len(split))[:n])
            return Split(split.images[index], split.labels[index])

        train_split, test_split = pick(self.train, train), pick(self.test, test)
        description = self.description
        if (len(train_split), len(test_split)) != (len(self.train), len(self.test)):
            description += (f", subset of {len(train_split):,} train / "
                            f"{len(test_split):,} test images")
        return ImageData(train_split, test_split, self.class_names, description)

    def hold_out(self, count, seed=0):
        """`(data without them, held-out Split)`: `count` training images drawn at random
        and removed from the training split (for measuring on images training never
        sees, such as the cost a budget is landed on)."""
        if not 0 <= count < len(self.train):
            raise ValueError(
                f"Invalid value for argument `count`: expected 0 <= count < "
                f"{len(self.train)} (the training images). Received: count={count!r}")
        held = np.zeros(len(self.train), bool)
        held[np.random.RandomState(seed).permutation(len(self.train))[:count]] = True
        train, rest = self.train, Split(self.train.images[held], self.train.labels[held])
        kept = Split(train.images[~held], train.labels[~held])
        return ImageData(kept, self.test, self.class_names,
                         f"{self.description}; {count:,} training images held out"), rest


class DataNotFoundError(ValueError):
    """The requested data is not available on this machine."""


def load(source="embedded", data_dir=None, download=False, on_corrupt="skip"):
    """Loads a dataset into memory.

    Args:
        source: `"embedded"`, `"cifar10"`, `"cifar100"`, a folder or an archive path.
        data_dir: where to look for official archives and tfds data.
        download: let tfds download when the data is not prepared.
        on_corrupt: `"skip"` (warn with a count and the file names) or `"raise"`.

    Returns:
        An `ImageData`.

    Raises:
        DataNotFoundError: when the data is not on this machine, saying how to get it.
        ValueError: for an unknown source or a corrupt file with `on_corrupt="raise"`.
    """
    if on_corrupt not in ("skip", "raise"):
        raise ValueError(
            "Invalid value for argument `on_corrupt`. Expected 'skip' or 'raise'. "
            f"Received: on_corrupt={on_corrupt!r}"
        )
    if source == "embedded":
        return load_embedded()
    if source in _ARCHIVES:
        archive = _find_archive(source, data_dir)
        if archive is not None:
            return load_archive(archive)
        return load_tfds(source, data_dir, download)
    if os.path.isdir(source):
        return load_folder(source, on_corrupt)
    if os.path.isfile(source) and source.endswith((".tar.gz", ".tgz")):
        return load_archive(source)
    raise ValueError(
        "Invalid value for argument `source`. Expected 'embedded', 'cifar10', "
        "'cifar100', a folder with train/<class>/ and test/<class>/, or an official "
        f"CIFAR archive. Received: source={source!r}"
    )


def load_embedded():
    """The CIFAR-10 (JPEG) sample shipped with the package: 5,000 train, 1,000 test."""
    with np.load(EMBEDDED_SAMPLE) as npz:
        names = [str(n) for n in npz["class_names"]]
        splits = []
        for split in ("train", "test"):
            blob, offsets = npz[f"{split}_jpeg"], npz[f"{split}_offsets"]
            images = np.stack(
                [_decode(blob[offsets[i] : offsets[i + 1]].tobytes(), f"{split}[{i}]")
                 for i in range(len(offsets) - 1)]
            )
            splits.append(Split(images, npz[f"{split}_labels"].astype(np.int64)))
    return ImageData(splits[0], splits[1], names,
                     "embedded CIFAR-10 (JPEG) sample, 5,000 train / 1,000 test images")


def _decode(data, name):
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"), dtype=np.uint8)


def load_folder(root, on_corrupt="skip"):
    """`root/train/<class>/*` and `root/test/<class>/*`, classes sorted by name."""
    train_dir = os.path.join(root, "train")
    if not os.path.isdir(train_dir):
        raise DataNotFoundError(f"No 'train' folder in {root!r}: expected train/<class>/*.")
    class_names = sorted(
        d for d in os.listdir(train_dir) if os.path.isdir(os.path.join(train_dir, d))
    )
    if not class_names:
        raise DataNotFoundError(f"No class folders in {train_dir!r}.")
    splits, corrupt, shape = [], [], None
    for split in ("train", "test"):
        images, labels = [], []
        for label, name in enumerate(class_names):
            folder = os.path.join(root, split, name)
            if not os.path.isdir(folder):
                raise DataNotFoundError(f"Missing class folder {folder!r}.")
            for file in sorted(os.listdir(folder)):
                if not file.lower().endswith(IMAGE_EXTENSIONS):
                    continue
                path = os.path.join(folder, file)
                try:
                    with Image.open(path) as image:
                        array = np.asarray(image.convert("RGB"), dtype=np.uint8)
                except Exception as e:  # PIL raises several types for bad files
                    if on_corrupt == "raise":
                        raise ValueError(f"Cannot decode image {path!r}: {e}") from e
                    corrupt.append(path)
                    continue
                if shape is None:
                    shape = array.shape
                if array.shape != shape:
                    message = f"Image {path!r} has shape {array.shape}, others {shape}."
                    if on_corrupt == "raise":
                        raise ValueError(message)
                    corrupt.append(path)
                    continue
                images.append(array)
                labels.append(label)
        if not images:
            raise DataNotFoundError(f"No images in {os.path.join(root, split)!r}.")
        splits.append(Split(np.stack(images), np.asarray(labels, dtype=np.int64)))
    if corrupt:
        warnings.warn(
            f"Skipped {len(corrupt)} unreadable or mis-sized image(s) in {root!r}: "
            + ", ".join(corrupt[:5]) + (" ..." if len(corrupt) > 5 else ""),
            stacklevel=2,
        )
    return ImageData(splits[0], splits[1], class_names,
                     f"folder {root} ({len(splits[0])} train / {len(splits[1])} test)")


def _find_archive(name, data_dir):
    if data_dir is None:
        return None
    for candidate in _ARCHIVES[name]:
        path = os.path.join(data_dir, candidate)
        if os.path.exists(path):
            return path
    return None


def load_archive(path):
    """The official CIFAR-10 / CIFAR-100 python archive (.tar.gz or extracted folder)."""
    members = _archive_members(path)
    if "batches.meta" in members:  # CIFAR-10
        names = [n.decode() if isinstance(n, bytes) else n
                 for n in members["batches.meta"][b"label_names"]]
        train = [members[f"data_batch_{i}"] for i in range(1, 6)]
        test = [members["test_batch"]]
        key = b"labels"
    elif "meta" in members:  # CIFAR-100, fine labels
        names = [n.decode() if isinstance(n, bytes) else n
                 for n in members["meta"][b"fine_label_names"]]
        train, test, key = [members["train"]], [members["test"]], b"fine_labels"
    else:
        raise DataNotFoundError(f"{path!r} is not an official CIFAR python archive.")

    def split(batches):
        data = np.concatenate([b[b"data"] for b in batches])  # (N, 3072), CHW rows
        images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).astype(np.uint8)
        labels = np.concatenate([np.asarray(b[key]) for b in batches]).astype(np.int64)
        return Split(images, labels)

    return ImageData(split(train), split(test), names, f"official archive {path}")


def _archive_members(path):
    """Unpickled members of an archive or folder, by base name."""
    members = {}
    if os.path.isdir(path):
        for file in os.listdir(path):
            full = os.path.join(path, file)
            if os.path.isfile(full) and not file.endswith((".html", ".txt")):
                with open(full, "rb") as f:
                    members[file] = pickle.load(f, encoding="bytes")
        return members
    with tarfile.open(path, "r:gz") as tar:
        for member in tar.getmembers():
            base = os.path.basename(member.name)
            if member.isfile() and not base.endswith((".html", ".txt")):
                members[base] = pickle.load(tar.extractfile(member), encoding="bytes")
    return members


def load_tfds(name, data_dir=None, download=False):
    """CIFAR through TensorFlow Datasets, failing fast when it is not prepared."""
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:  # e.g. importlib_resources missing
        raise DataNotFoundError(f"tensorflow-datasets cannot be imported: {e}") from e
    builder = tfds.builder(name, data_dir=data_dir)
    if not builder.is_prepared():
        if not download:
            archive = _ARCHIVES[name][0]
            raise DataNotFoundError(
                f"{name} is not prepared in tfds' data_dir ({builder.data_dir_root}) and "
                "downloading is off. Either download it once (with network: "
                f"--download, or tfds.load({name!r}, download=True)); or give "
                f"--data_dir a folder that holds the official archive {archive}; or "
                "give --dataset a folder laid out as train/<class>/*.jpg and "
                "test/<class>/*.jpg."
            )
        builder.download_and_prepare()
    splits = []
    for split in ("train", "test"):
        data = tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1))
        splits.append(Split(data["image"].astype(np.uint8), data["label"].astype(np.int64)))
    names = builder.info.features["label"].names
    return ImageData(splits[0], splits[1], list(names), f"tfds {name}")


def normalized(split, limit=None):
    """The first `limit` images of a split (all: None), normalized as `pipeline` does,
    as one float32 array (N, H, W, C): for calibration, checks and benchmarks."""
    batches = pipeline(split, 256, training=False)
    if limit is not None:
        batches = batches.take(-(-limit // 256))
    return np.concatenate([x.numpy() for x, _ in batches])[:limit]


def pipeline(split, batch_size, training, seed=0, mean=CIFAR_MEAN, std=CIFAR_STD):
    """A tf.data pipeline of `(image, label)` batches, images normalized per channel.

    Training adds the standard CIFAR augmentation: zero-pad 4 pixels, random crop back
    to size, random horizontal flip; and reshuffles every epoch. The decoded uint8 data
    is cached; augmentation runs after the cache so it differs every epoch.
    """
    images, labels = split.images, split.labels
    height, width = images.shape[1:3]
    mean = tf.constant(mean, tf.float32) * 255.0
    std = tf.constant(std, tf.float32) * 255.0
    ds = tf.data.Dataset.from_tensor_slices((images, labels)).cache()
    if training:
        ds = ds.shuffle(min(len(split), 50_000), seed=seed, reshuffle_each_iteration=True)

        def augment(image, label):
            image = tf.image.pad_to_bounding_box(image, 4, 4, height + 8, width + 8)
            image = tf.image.random_crop(image, (height, width, 3))
            image = tf.image.random_flip_left_right(image)
            return image, label

        ds = ds.map(augment, num_parallel_calls=tf.data.AUTOTUNE)

    def normalize(image, label):
        return (tf.cast(image, tf.float32) - mean) / std, label

    ds = ds.map(normalize, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)

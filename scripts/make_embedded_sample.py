"""Builds sanp_keras/resources/cifar10_sample.npz from a CIFAR-10 (JPEG) folder.

    python scripts/make_embedded_sample.py --source ../shared/data/cifar10

Takes the first 500 training and 100 test images of each class (file names sorted) and
stores their JPEG bytes unchanged, concatenated, with offsets and labels.
"""

import argparse
import os

import numpy as np

PER_CLASS = {"train": 500, "test": 100}


def collect(root, split, class_names, count):
    blobs, labels = [], []
    for label, name in enumerate(class_names):
        folder = os.path.join(root, split, name)
        for file in sorted(os.listdir(folder))[:count]:
            with open(os.path.join(folder, file), "rb") as f:
                blobs.append(f.read())
            labels.append(label)
    offsets = np.cumsum([0] + [len(b) for b in blobs]).astype(np.int64)
    blob = np.frombuffer(b"".join(blobs), dtype=np.uint8)
    return blob, offsets, np.asarray(labels, dtype=np.uint8)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--source", required=True)
    parser.add_argument("--output", default="sanp_keras/resources/cifar10_sample.npz")
    args = parser.parse_args()
    class_names = sorted(os.listdir(os.path.join(args.source, "train")))
    arrays = {"class_names": np.asarray(class_names)}
    for split, count in PER_CLASS.items():
        blob, offsets, labels = collect(args.source, split, class_names, count)
        arrays.update({f"{split}_jpeg": blob, f"{split}_offsets": offsets,
                       f"{split}_labels": labels})
    np.savez(args.output, **arrays)
    print(f"wrote {args.output}: {os.path.getsize(args.output) / 1e6:.1f} MB")


if __name__ == "__main__":
    main()

"""Tiny CIFAR-10 and MNIST folders in their real on-disk formats, for tests of data.py and expt_llc_curve.py."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np

CIFAR_BATCHES = ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5"]
MNIST_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
               "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def write_cifar10(root: Path, per_batch: int = 8, num_test: int = 10, seed: int = 0) -> dict[str, np.ndarray]:
    """``root/cifar-10-batches-py`` as the python version of CIFAR-10 lays it out (rows R, G, B planes).

    Returns:
        ``{"train_images": (N, 32, 32, 3) uint8, "train_labels", "test_images", "test_labels"}``.
    """
    rng = np.random.default_rng(seed)
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, names, k in (("train", CIFAR_BATCHES, per_batch), ("test", ["test_batch"], num_test)):
        images, labels = [], []
        for name in names:
            rows = rng.integers(0, 256, size=(k, 3072), dtype=np.uint8)
            lab = [int(v) for v in rng.integers(0, 10, size=k)]
            with open(folder / name, "wb") as f:
                pickle.dump({"batch_label": name, "labels": lab, "data": rows,
                             "filenames": [f"{name}_{i}.png" for i in range(k)]}, f, protocol=2)
            images.append(rows.reshape(k, 3, 32, 32).transpose(0, 2, 3, 1))
            labels += lab
        out[f"{split}_images"], out[f"{split}_labels"] = np.concatenate(images), np.array(labels)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": names, "num_cases_per_batch": per_batch, "num_vis": 3072}, f, protocol=2)
    return out


def _idx(array: np.ndarray) -> bytes:
    # idx format: magic 0x00000800 + (type 0x08 = ubyte) << 8... i.e. bytes 0, 0, 0x08, ndim; then big-endian dims.
    return bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def write_mnist(root: Path, num_train: int = 40, num_test: int = 20, gz: bool = False,
                seed: int = 0) -> dict[str, np.ndarray]:
    """``root/MNIST/raw`` with MNIST's four idx files (``.gz`` when ``gz``).

    Returns:
        ``{"train_images": (N, 28, 28) uint8, "train_labels", "test_images", "test_labels"}``.
    """
    rng = np.random.default_rng(seed)
    folder = Path(root) / "MNIST" / "raw"
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, k in (("train", num_train), ("test", num_test)):
        images = rng.integers(0, 256, size=(k, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=k).astype(np.uint8)
        for name, arr in zip(MNIST_FILES[split], (images, labels), strict=True):
            payload = _idx(arr)
            if gz:
                (folder / (name + ".gz")).write_bytes(gzip.compress(payload))
            else:
                (folder / name).write_bytes(payload)
        out[f"{split}_images"], out[f"{split}_labels"] = images, labels.astype(np.int64)
    return out

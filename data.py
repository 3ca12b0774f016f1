r"""Real data sets for λ̂ over training: CIFAR-10, MNIST, their binary variants, digits and MNIST-1D.

``load(name, ...)`` returns a :class:`Data` with training and test tensors, subsampled to ``ptr``
training and ``pte`` test samples with a seed, training labels corrupted at a rate
``label_noise`` (the clean labels kept beside them), and targets encoded as the loss needs.

=================  ==============================  =========================  ==========================
name               samples (train / test)          inputs                     labels
=================  ==============================  =========================  ==========================
``cifar10``        50 000 / 10 000                 (3, 32, 32)                10 classes
``cifar_animal``   50 000 / 10 000                 (3, 32, 32)                1 animal, 0 vehicle
``mnist``          60 000 / 10 000                 (1, 28, 28)                10 digits
``mnist_parity``   60 000 / 10 000                 (1, 28, 28)                1 odd, 0 even
``digits``         1 297 / 500 (fixed split)       (64,)                      10 digits
``digits_parity``  1 297 / 500                     (64,)                      1 odd, 0 even
``digits_images``  1 297 / 500                     (1, 8, 8)                  10 digits
``mnist1d``        4 000 / 1 000 (more on demand)  (40,)                      10 digits
``mnist1d_parity`` 4 000 / 1 000                   (40,)                      1 odd, 0 even
=================  ==============================  =========================  ==========================

Where the data come from:

* ``cifar10`` and ``mnist`` are read from ``data_dir`` in their standard on-disk formats by
  torchvision's own classes: CIFAR-10's python batches in ``<data_dir>/cifar-10-batches-py/``
  (``data_batch_1`` … ``data_batch_5``, ``test_batch``), MNIST's idx files in
  ``<data_dir>/MNIST/raw/`` (``train-images-idx3-ubyte`` …, gzipped ``.gz`` or not). They are
  downloaded only with ``download=True``. ``data_dir`` defaults to the environment variable
  ``LLC_DATA_DIR``, else ``./data``. torchvision's MD5 check is relaxed to "the file exists": a
  copy that is not the official one (a subset, a re-pickled batch) loads, and a damaged file fails
  when it is parsed, with an error naming it.
* ``digits`` is scikit-learn's bundled 8×8 digits (1 797 images; Alpaydin & Kaynak 1998), split
  once by a fixed permutation (seed 0) into 1 297 training and 500 test images; ``digits_images``
  is the same set as 1×8×8 images (a real image set for a CPU-sized CNN, no download).
* ``mnist1d`` is generated procedurally by the ``mnist1d`` package (Greydanus & Kobak 2024) with
  its default arguments (seed 42, 4 000 / 1 000); never downloaded. Asking for more than that
  generates ``ptr + pte`` samples with the same arguments otherwise.
* The parity variants (``mnist_parity``, and ``digits_parity``, ``mnist1d_parity`` which need no
  download) and ``cifar_animal`` are the binary tasks of the SGD-noise study (Sclocchi, Geiger &
  Wyart 2023): even vs odd digit, and animals (bird, cat, deer, dog, frog, horse) vs vehicles
  (airplane, automobile, ship, truck).

Normalisation (documented per set in ``NORMALISATION``): images are scaled to [0, 1] and then
standardised per channel with the training set's published mean and standard deviation (CIFAR-10:
mean (0.4914, 0.4822, 0.4465), std (0.2470, 0.2435, 0.2616); MNIST: 0.1307, 0.3081). digits'
pixel values 0…16 are standardised with the mean and standard deviation over all pixels of the
1 297 training images. MNIST-1D is used as generated: the package centres it and scales it to
unit standard deviation. No augmentation.

Targets (``targets=``): ``"index"`` class indices (long; 0/1 for the binary tasks) for
cross-entropy; ``"signed"`` ±1 floats (binary tasks only: +1 for label 1) for the hinge and square
losses of a single-output network; ``"onehot"`` one-hot floats for the square loss of a
multi-output network.

Label noise at rate p: each training sample is corrupted with probability p, independently, and a
corrupted label is replaced by one of the *other* classes, uniformly (a flip for the binary tasks),
so p is the expected fraction of wrong labels. Test labels are never corrupted.

    >>> d = load("digits_parity", ptr=200, pte=100, label_noise=0.1, targets="signed", seed=0)
    >>> d.x_train.shape, d.y_train.shape, d.output_dim
    (torch.Size([200, 64]), torch.Size([200]), 1)
    >>> bool((d.y_train != d.y_train_clean).float().mean() < 0.2)
    True
"""

from __future__ import annotations

import functools
import gzip
import os
import pickle
import random
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

__all__ = ["DATASETS", "DATA_DIR_ENV", "NORMALISATION", "TARGETS", "Data", "default_data_dir", "load"]

DATA_DIR_ENV = "LLC_DATA_DIR"
TARGETS = ("index", "signed", "onehot")

# name -> (base set, how its 10 labels map to the task's labels, or None for the 10 classes)
_ANIMALS = (2, 3, 4, 5, 6, 7)  # CIFAR-10: bird, cat, deer, dog, frog, horse; 0, 1, 8, 9 are vehicles
DATASETS: dict[str, tuple[str, str | None]] = {
    "cifar10": ("cifar10", None),
    "cifar_animal": ("cifar10", "animal"),
    "mnist": ("mnist", None),
    "mnist_parity": ("mnist", "parity"),
    "digits": ("digits", None),
    "digits_parity": ("digits", "parity"),
    "digits_images": ("digits_images", None),
    "mnist1d": ("mnist1d", None),
    "mnist1d_parity": ("mnist1d", "parity"),
}

CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
DIGITS_NUM_TRAIN = 1297  # of 1797; the other 500 are the test set

NORMALISATION: dict[str, str] = {
    "cifar10": f"x/255, then per channel (x - {CIFAR10_MEAN}) / {CIFAR10_STD}",
    "mnist": f"x/255, then (x - {MNIST_MEAN}) / {MNIST_STD}",
    "digits": "(x - mean) / std over all pixels of the 1297 training images (x in 0..16)",
    "digits_images": "as digits, as 1x8x8 images",
    "mnist1d": "as generated by mnist1d (centred, unit standard deviation over the data set)",
}

_CIFAR_FILES = ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch"]
_MNIST_FILES = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                "t10k-labels-idx1-ubyte"]
_HOW_TO_GET = {
    "cifar10": "the python version of CIFAR-10 (https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz) "
               "extracted into data_dir, or load(..., download=True) (expt_llc_curve.py: "
               "model_data_config.download=True)",
    "mnist": "MNIST's four idx files (gzipped or not) from https://ossci-datasets.s3.amazonaws.com/mnist/ "
             "in data_dir/MNIST/raw/, or load(..., download=True) (expt_llc_curve.py: "
             "model_data_config.download=True)",
}


@dataclass(frozen=True)
class Data:
    """Training and test tensors of one data set, ready for a model and a loss.

    Attributes:
        name: The data set's name (a key of ``DATASETS``).
        x_train: (ptr, ...) float32 inputs, normalised (see the module docstring).
        y_train: (ptr, ...) training targets in the requested encoding, with label noise.
        y_train_clean: The same targets without label noise.
        x_test: (pte, ...) float32 inputs.
        y_test: (pte, ...) test targets (never noisy).
        num_classes: Number of classes (2 for the binary tasks).
        targets: The encoding: "index", "signed" or "onehot".
        noisy: (ptr,) bool, True where the training label was corrupted.
        normalisation: How the inputs were normalised.
    """

    name: str
    x_train: Tensor
    y_train: Tensor
    y_train_clean: Tensor
    x_test: Tensor
    y_test: Tensor
    num_classes: int
    targets: str
    noisy: Tensor
    normalisation: str

    @property
    def output_dim(self) -> int:
        """Outputs the network needs: 1 for ±1 targets, else one per class."""
        return 1 if self.targets == "signed" else self.num_classes

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one input, e.g. (3, 32, 32) or (64,)."""
        return tuple(self.x_train.shape[1:])


def default_data_dir() -> Path:
    """``$LLC_DATA_DIR`` if set, else ``./data``.

    Returns:
        The data folder (relative paths are relative to the working directory).
    """
    return Path(os.environ.get(DATA_DIR_ENV) or "data")


def load(
    name: str,
    *,
    data_dir: str | os.PathLike | None = None,
    ptr: int | None = None,
    pte: int | None = None,
    label_noise: float = 0.0,
    targets: str = "index",
    seed: int = 0,
    download: bool = False,
) -> Data:
    """Load a data set, subsample it, corrupt training labels and encode the targets.

    Args:
        name: A key of ``DATASETS``.
        data_dir: Folder holding CIFAR-10 / MNIST (see the module docstring); default
            ``default_data_dir()``. Unused by digits and MNIST-1D.
        ptr: Training samples, drawn without replacement with ``seed``; None keeps them all.
        pte: Test samples, likewise.
        label_noise: Probability p ∈ [0, 1] that a training label is replaced by another class.
        targets: "index", "signed" (binary tasks only) or "onehot".
        seed: Seed of the subsampling and the label noise.
        download: Download CIFAR-10 / MNIST into ``data_dir`` if they are missing.

    Returns:
        The :class:`Data`.

    Raises:
        ValueError: For an unknown name or targets, an out-of-range size or rate, or a data file
            that cannot be parsed (named in the message).
        FileNotFoundError: If ``data_dir`` or a file in it is missing; the message names the file
            expected and how to get it.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; choose from {sorted(DATASETS)}")
    if targets not in TARGETS:
        raise ValueError(f"unknown targets {targets!r}; choose from {list(TARGETS)}")
    if isinstance(label_noise, bool) or not isinstance(label_noise, (int, float)) or not 0 <= label_noise <= 1:
        raise ValueError(f"label_noise must be a rate in [0, 1], got {label_noise!r}")
    base, task = DATASETS[name]
    num_classes = 10 if task is None else 2
    if targets == "signed" and num_classes != 2:
        raise ValueError(f"targets='signed' needs a binary task (e.g. {name}_parity), not {name!r} with "
                         f"{num_classes} classes; use 'index' or 'onehot'")
    # MNIST-1D keeps the package's 4:1 split; generate enough samples for ptr and pte.
    total = max(5000, -(-5 * (ptr or 0) // 4), 5 * (pte or 0))
    x_tr, l_tr, x_te, l_te = _read(base, Path(data_dir) if data_dir is not None else default_data_dir(),
                                   download, total)
    g = torch.Generator().manual_seed(int(seed))
    i_tr, i_te = _subsample(len(l_tr), ptr, "ptr", g), _subsample(len(l_te), pte, "pte", g)
    x_tr, l_tr, x_te, l_te = _normalise(base, x_tr[i_tr]), _task(l_tr[i_tr], task), _normalise(base, x_te[i_te]), \
        _task(l_te[i_te], task)
    noisy = torch.rand(len(l_tr), generator=g) < label_noise
    shift = torch.randint(1, num_classes, (len(l_tr),), generator=g)  # another class, uniformly
    l_noisy = torch.where(noisy, (l_tr + shift) % num_classes, l_tr)
    return Data(name=name, x_train=x_tr, y_train=_encode(l_noisy, targets, num_classes),
                y_train_clean=_encode(l_tr, targets, num_classes), x_test=x_te,
                y_test=_encode(l_te, targets, num_classes), num_classes=num_classes, targets=targets, noisy=noisy,
                normalisation=NORMALISATION[base])


# --------------------------------------------------------------------------- internals


def _subsample(n: int, k: int | None, key: str, g: torch.Generator) -> Tensor:
    if k is None:
        return torch.arange(n)
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= n:
        raise ValueError(f"{key} must be an int in [1, {n}] (the samples available), got {k!r}")
    return torch.randperm(n, generator=g)[:k].sort().values


def _task(labels: Tensor, task: str | None) -> Tensor:
    if task == "parity":
        return labels % 2
    if task == "animal":
        return torch.isin(labels, torch.tensor(_ANIMALS)).long()
    return labels


def _encode(labels: Tensor, targets: str, num_classes: int) -> Tensor:
    if targets == "signed":
        return labels.float() * 2 - 1
    if targets == "onehot":
        return torch.nn.functional.one_hot(labels, num_classes).float()
    return labels


def _normalise(base: str, x: Tensor) -> Tensor:
    if base == "cifar10":
        x = x.permute(0, 3, 1, 2).float() / 255  # stored (N, H, W, C) uint8
        return (x - torch.tensor(CIFAR10_MEAN).view(3, 1, 1)) / torch.tensor(CIFAR10_STD).view(3, 1, 1)
    if base == "mnist":
        return ((x.float() / 255 - MNIST_MEAN) / MNIST_STD).unsqueeze(1)
    return x  # digits and mnist1d: normalised when read


def _read(base: str, data_dir: Path, download: bool, total: int | None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Raw (x_train, labels_train, x_test, labels_test) of a base set, labels as long tensors.

    Returns:
        ``(x_train, labels_train, x_test, labels_test)``: inputs as stored (not yet normalised for CIFAR-10
        and MNIST), labels as long tensors.
    """
    if base == "digits":
        return _digits()
    if base == "digits_images":  # the same pixels as images, for convolutional networks
        return tuple(t.view(-1, 1, 8, 8) if t.is_floating_point() else t for t in _digits())
    if base == "mnist1d":
        return _mnist1d(total)
    if not download:
        _check_files(base, data_dir)
    if base == "cifar10":
        train, test = (_CIFAR10(data_dir, train=t, download=download) for t in (True, False))
        return (torch.from_numpy(train.data), torch.tensor(train.targets), torch.from_numpy(test.data),
                torch.tensor(test.targets))
    train, test = (_MNIST(data_dir, train=t, download=download) for t in (True, False))
    return train.data, train.targets.long(), test.data, test.targets.long()


def _check_files(base: str, data_dir: Path) -> None:
    """One clear error naming the first file that is missing and how to get the data.

    Raises:
        FileNotFoundError: If ``data_dir`` does not exist or a file of the base set is missing.
    """
    if base == "cifar10":
        folder, files, ok = data_dir / "cifar-10-batches-py", _CIFAR_FILES, Path.is_file
    else:
        folder, files = data_dir / "MNIST" / "raw", _MNIST_FILES
        ok = lambda p: p.is_file() or p.with_name(p.name + ".gz").is_file()  # noqa: E731
    if not data_dir.is_dir():
        raise FileNotFoundError(
            f"data_dir {str(data_dir)!r} does not exist (set it, or ${DATA_DIR_ENV}); {base} expects "
            f"{folder / files[0]} and the rest of {files}: {_HOW_TO_GET[base]}")
    for name in files:
        if not ok(folder / name):
            raise FileNotFoundError(
                f"{base}: no file {folder / name}{'' if base == 'cifar10' else '[.gz]'} (expected {files} in "
                f"{folder}): {_HOW_TO_GET[base]}")


def _malformed(path: str, err: Exception) -> ValueError:
    return ValueError(f"cannot read {path}: {type(err).__name__}: {err}. It is not a valid file of the standard "
                      "format; replace it with the original (or delete it and pass download=True)")


def _cifar10_class():
    from torchvision.datasets import CIFAR10

    class CIFAR10Files(CIFAR10):
        """torchvision's CIFAR10 with the MD5 check reduced to "every batch exists" (see module docstring)."""

        def _check_integrity(self) -> bool:
            folder = Path(self.root) / self.base_folder
            return all((folder / f).is_file() for f, _ in self.train_list + self.test_list)

        def _load_meta(self) -> None:  # class names are optional for us; parse them only if present
            path = Path(self.root) / self.base_folder / self.meta["filename"]
            if path.is_file():
                with open(path, "rb") as f:
                    self.classes = pickle.load(f, encoding="latin1")[self.meta["key"]]
                self.class_to_idx = {c: i for i, c in enumerate(self.classes)}

    return CIFAR10Files


def _CIFAR10(root: Path, train: bool, download: bool):  # noqa: N802 - stands for the class
    try:
        return _cifar10_class()(str(root), train=train, download=download)
    except (pickle.UnpicklingError, EOFError, KeyError, ValueError, TypeError, AttributeError) as err:
        raise _malformed(f"{root / 'cifar-10-batches-py'} ({'training' if train else 'test'} batches)", err) from err


def _mnist_class():
    from torchvision.datasets import MNIST
    from torchvision.datasets.mnist import read_image_file, read_label_file

    class MNISTFiles(MNIST):
        """torchvision's MNIST reading ``MNIST/raw/<file>`` or ``<file>.gz``."""

        @property
        def raw_folder(self) -> str:
            return os.path.join(self.root, "MNIST", "raw")

        @property
        def processed_folder(self) -> str:
            return os.path.join(self.root, "MNIST", "processed")

        def _check_exists(self) -> bool:
            raw = Path(self.raw_folder)
            return all((raw / f).is_file() or (raw / (f + ".gz")).is_file() for f in _MNIST_FILES)

        def _load_data(self):
            split = "train" if self.train else "t10k"
            return (_read_idx(Path(self.raw_folder) / f"{split}-images-idx3-ubyte", read_image_file),
                    _read_idx(Path(self.raw_folder) / f"{split}-labels-idx1-ubyte", read_label_file))

    return MNISTFiles


def _read_idx(path: Path, reader) -> Tensor:
    """Torchvision's idx reader on ``path``, or on ``path.gz`` decompressed to a private temporary file.

    Returns:
        The tensor that ``reader`` returns.

    Raises:
        ValueError: If the file cannot be read (see ``_malformed``), chained to the reader's error.
    """  # noqa: DOC501 - ruff reads the factory _malformed as the exception; it builds the ValueError above
    source = path if path.is_file() else path.with_name(path.name + ".gz")
    try:
        if source is path:
            return reader(str(path))
        with tempfile.TemporaryDirectory() as tmp, gzip.open(source, "rb") as fin:
            plain = Path(tmp) / path.name
            with open(plain, "wb") as fout:
                shutil.copyfileobj(fin, fout)
            return reader(str(plain))
    except (AssertionError, TypeError, ValueError, RuntimeError, OSError, KeyError, IndexError) as err:
        raise _malformed(str(source), err) from err


def _MNIST(root: Path, train: bool, download: bool):  # noqa: N802 - stands for the class
    return _mnist_class()(str(root), train=train, download=download)


@functools.lru_cache(maxsize=1)
def _digits() -> tuple[Tensor, Tensor, Tensor, Tensor]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    order = np.random.default_rng(0).permutation(len(bunch.target))
    x = torch.tensor(bunch.data[order], dtype=torch.float32)
    y = torch.tensor(bunch.target[order], dtype=torch.long)
    x_tr, x_te = x[:DIGITS_NUM_TRAIN], x[DIGITS_NUM_TRAIN:]
    mean, std = x_tr.mean(), x_tr.std()
    return (x_tr - mean) / std, y[:DIGITS_NUM_TRAIN], (x_te - mean) / std, y[DIGITS_NUM_TRAIN:]


@functools.lru_cache(maxsize=2)
def _mnist1d(num_samples: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """MNIST-1D with the package's default arguments; 4/5 train as in the package, or more samples.

    Returns:
        ``(x_train, labels_train, x_test, labels_test)``: inputs float32, labels long.
    """
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    num_samples = -(-num_samples // 10) * 10  # the package makes num_samples // 10 per class
    if num_samples > args.num_samples:
        args.num_samples = num_samples
    # make_dataset reseeds numpy's and Python's global generators: keep the caller's streams intact.
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        d = make_dataset(args)
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
    as_x = lambda a: torch.tensor(a, dtype=torch.float32)  # noqa: E731
    as_y = lambda a: torch.tensor(a, dtype=torch.long)  # noqa: E731
    return as_x(d["x"]), as_y(d["y"]), as_x(d["x_test"]), as_y(d["y_test"])

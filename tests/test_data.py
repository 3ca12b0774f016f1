"""data.py on tiny CIFAR-10 and MNIST folders in their real formats, the real digits and MNIST-1D."""

import random

import numpy as np
import pytest
import torch

import data
from tests.data_files import write_cifar10, write_mnist


@pytest.fixture(scope="module")
def cifar_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar")
    return root, write_cifar10(root)


def test_cifar10_reads_the_python_batches_and_normalises_per_channel(cifar_dir):
    root, raw = cifar_dir
    d = data.load("cifar10", data_dir=root)
    assert d.x_train.shape == (40, 3, 32, 32) and d.x_test.shape == (10, 3, 32, 32)
    assert d.x_train.dtype == torch.float32 and d.output_dim == 10 and d.input_shape == (3, 32, 32)
    assert d.y_train.tolist() == raw["train_labels"].tolist()  # batches 1..5 in order
    assert d.y_test.tolist() == raw["test_labels"].tolist()
    # pixel (row 5, column 7) of image 13, green channel: (v/255 − mean_G)/std_G
    v = raw["train_images"][13, 5, 7, 1] / 255
    assert float(d.x_train[13, 1, 5, 7]) == pytest.approx((v - 0.4822) / 0.2435, abs=1e-5)
    assert not d.noisy.any() and torch.equal(d.y_train, d.y_train_clean)


def test_cifar_animal_is_animals_against_vehicles(cifar_dir):
    root, raw = cifar_dir
    d = data.load("cifar_animal", data_dir=root, targets="signed")
    animal = np.isin(raw["train_labels"], [2, 3, 4, 5, 6, 7])
    assert d.y_train.tolist() == np.where(animal, 1.0, -1.0).tolist() and d.output_dim == 1
    assert data.load("cifar_animal", data_dir=root).y_test.tolist() == \
        np.isin(raw["test_labels"], [2, 3, 4, 5, 6, 7]).astype(int).tolist()


@pytest.mark.parametrize("gz", [False, True], ids=["idx", "idx.gz"])
def test_mnist_reads_idx_files_gzipped_or_not(tmp_path, gz):
    raw = write_mnist(tmp_path, gz=gz)
    d = data.load("mnist", data_dir=tmp_path)
    assert d.x_train.shape == (40, 1, 28, 28) and d.x_test.shape == (20, 1, 28, 28)
    assert d.y_train.tolist() == raw["train_labels"].tolist() and d.y_test.tolist() == raw["test_labels"].tolist()
    assert float(d.x_test[3, 0, 10, 20]) == pytest.approx((raw["test_images"][3, 10, 20] / 255 - 0.1307) / 0.3081,
                                                          abs=1e-5)
    parity = data.load("mnist_parity", data_dir=tmp_path)
    assert parity.y_train.tolist() == (raw["train_labels"] % 2).tolist() and parity.num_classes == 2
    if gz:  # read through a private temporary file: nothing is written into data_dir
        assert sorted(p.name for p in (tmp_path / "MNIST" / "raw").iterdir()) == sorted(
            [f + ".gz" for f in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                                 "t10k-labels-idx1-ubyte")])


def test_data_dir_defaults_to_the_environment_variable(tmp_path, monkeypatch):
    write_mnist(tmp_path)
    monkeypatch.setenv("LLC_DATA_DIR", str(tmp_path))
    assert data.default_data_dir() == tmp_path
    assert len(data.load("mnist", pte=5).x_test) == 5
    monkeypatch.delenv("LLC_DATA_DIR")
    assert str(data.default_data_dir()) == "data"


def test_digits_split_and_normalisation():
    d = data.load("digits")
    assert d.x_train.shape == (1297, 64) and d.x_test.shape == (500, 64)
    assert float(d.x_train.mean()) == pytest.approx(0, abs=1e-5)
    assert float(d.x_train.std()) == pytest.approx(1, abs=1e-4)
    assert sorted(set(d.y_train.tolist())) == list(range(10))
    parity = data.load("digits_parity")
    assert torch.equal(parity.x_train, d.x_train) and torch.equal(parity.y_train, d.y_train % 2)
    assert data.load("digits", targets="onehot").y_train.argmax(1).tolist() == d.y_train.tolist()
    images = data.load("digits_images", ptr=100, pte=50, seed=3)
    flat = data.load("digits", ptr=100, pte=50, seed=3)
    assert images.input_shape == (1, 8, 8) and torch.equal(images.x_train.flatten(1), flat.x_train)
    assert torch.equal(images.y_train, flat.y_train)


@pytest.mark.slow
def test_mnist1d_is_generated_and_keeps_global_random_state():
    np.random.seed(123)
    random.seed(123)
    expected_np, expected_py = np.random.rand(), random.random()
    np.random.seed(123)
    random.seed(123)
    d = data.load("mnist1d", ptr=500, pte=200, seed=3)
    assert (np.random.rand(), random.random()) == (expected_np, expected_py)
    assert d.x_train.shape == (500, 40) and d.x_test.shape == (200, 40)
    full = data.load("mnist1d")
    assert full.x_train.shape == (4000, 40) and full.x_test.shape == (1000, 40)
    assert float(full.x_train.std()) == pytest.approx(1, abs=0.05)  # centred and scaled by the package
    # a labelled template is recognisable: every class occurs, in roughly equal numbers
    counts = torch.bincount(full.y_train, minlength=10)
    assert counts.min() > 300 and counts.max() < 500
    parity = data.load("mnist1d_parity", ptr=500, pte=200, seed=3)
    assert torch.equal(parity.y_train, d.y_train % 2)


def test_subsampling_is_seeded():
    a, b = (data.load("digits", ptr=300, pte=100, seed=s) for s in (0, 0))
    c = data.load("digits", ptr=300, pte=100, seed=1)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.x_test, b.x_test)
    assert not torch.equal(a.x_train, c.x_train)
    with pytest.raises(ValueError, match=r"ptr must be an int in \[1, 1297\]"):
        data.load("digits", ptr=5000)


@pytest.mark.parametrize("name", ["digits", "digits_parity"])
def test_label_noise_corrupts_the_given_fraction_and_keeps_clean_labels(name):
    clean = data.load(name, seed=4)
    d = data.load(name, label_noise=0.3, seed=4)
    assert torch.equal(d.y_train_clean, clean.y_train) and torch.equal(d.y_test, clean.y_test)
    wrong = d.y_train != d.y_train_clean
    assert torch.equal(wrong, d.noisy)  # every corrupted label is another class
    # 1297 labels at p = 0.3: 389 ± 16.5 expected; 4 standard deviations
    assert abs(int(wrong.sum()) - 0.3 * 1297) < 4 * (1297 * 0.3 * 0.7) ** 0.5
    if name == "digits":  # the wrong class is uniform over the other nine
        shift = (d.y_train - d.y_train_clean)[wrong] % 10
        assert torch.bincount(shift, minlength=10)[1:].min() > 20
    signed = data.load(name + ("" if name.endswith("parity") else "_parity"), label_noise=1.0, targets="signed")
    assert torch.equal(signed.y_train, -signed.y_train_clean)  # p = 1 flips every binary label


def test_missing_data_dir_and_files_name_the_file_and_how_to_get_it(tmp_path, cifar_dir):
    with pytest.raises(FileNotFoundError, match=r"does not exist.*cifar-10-batches-py/data_batch_1.*cifar-10-python"):
        data.load("cifar10", data_dir=tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match=r"MNIST/raw/train-images-idx3-ubyte\[\.gz\].*download=True"):
        data.load("mnist_parity", data_dir=tmp_path)
    root = tmp_path / "partial"
    write_cifar10(root, per_batch=2, num_test=2)
    (root / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(FileNotFoundError, match=r"no file .*data_batch_3"):
        data.load("cifar10", data_dir=root)


def test_malformed_files_are_named(tmp_path):
    write_cifar10(tmp_path / "c", per_batch=2, num_test=2)
    (tmp_path / "c" / "cifar-10-batches-py" / "test_batch").write_bytes(b"not a pickle")
    with pytest.raises(ValueError, match=r"cannot read .*cifar-10-batches-py \(test batches\)"):
        data.load("cifar10", data_dir=tmp_path / "c")
    write_mnist(tmp_path / "m", gz=True)
    (tmp_path / "m" / "MNIST" / "raw" / "t10k-labels-idx1-ubyte.gz").write_bytes(b"\x1f\x8b truncated")
    with pytest.raises(ValueError, match=r"cannot read .*t10k-labels-idx1-ubyte\.gz"):
        data.load("mnist", data_dir=tmp_path / "m")


def test_bad_names_and_settings():
    with pytest.raises(ValueError, match=r"unknown data set 'cifar100'; choose from \['cifar10'"):
        data.load("cifar100")
    with pytest.raises(ValueError, match="targets='signed' needs a binary task"):
        data.load("digits", targets="signed")
    with pytest.raises(ValueError, match="unknown targets 'pm1'"):
        data.load("digits", targets="pm1")
    with pytest.raises(ValueError, match=r"label_noise must be a rate in \[0, 1\], got 1.5"):
        data.load("digits", label_noise=1.5)

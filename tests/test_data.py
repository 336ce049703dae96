"""Data module: IDX parsing against the real Debian files, errors, the tfds path."""

import gzip
import struct

import numpy as np
import pytest

from tf_gamma_prune.data import (
    DEBIAN_FASHION_MNIST, CorruptDatasetError, DatasetNotFoundError, load_fashion_mnist,
    load_tfds_arrays, make_dataset, read_idx,
)

needs_fashion_mnist = pytest.mark.skipif(
    not DEBIAN_FASHION_MNIST.exists(),
    reason="Debian package dataset-fashion-mnist not installed (the README's setup installs it)",
)


def write_idx(path, array):
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_read_idx_round_trip_and_corruption(tmp_path):
    array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "a.gz", array)
    np.testing.assert_array_equal(read_idx(tmp_path / "a.gz"), array)
    raw = gzip.open(tmp_path / "a.gz").read()
    with gzip.open(tmp_path / "truncated.gz", "wb") as f:
        f.write(raw[:-5])
    with pytest.raises(CorruptDatasetError, match="truncated"):
        read_idx(tmp_path / "truncated.gz")
    (tmp_path / "junk").write_bytes(b"\x12\x34\x56\x78rest")
    with pytest.raises(CorruptDatasetError, match="magic"):
        read_idx(tmp_path / "junk")


@needs_fashion_mnist
def test_real_fashion_mnist_shapes_and_known_labels():
    (x, y), (xt, yt) = load_fashion_mnist()
    assert x.shape == (60000, 28, 28, 1) and xt.shape == (10000, 28, 28, 1)
    assert x.dtype == np.float32 and 0.0 <= x.min() and x.max() <= 1.0
    # First labels of the official files (ankle boot, T-shirt, T-shirt, dress, ...).
    assert y[:6].tolist() == [9, 0, 0, 3, 0, 2]
    assert yt[:6].tolist() == [9, 2, 1, 1, 6, 1]
    assert np.bincount(y).tolist() == [6000] * 10


@needs_fashion_mnist
def test_train_and_test_examples_keep_the_first_images():
    (x, y), (xt, yt) = load_fashion_mnist(use_tfds=False)
    (xs, ys), (xts, yts) = load_fashion_mnist(use_tfds=False, train_examples=1000,
                                              test_examples=300)
    np.testing.assert_array_equal(xs, x[:1000])
    np.testing.assert_array_equal(ys, y[:1000])
    np.testing.assert_array_equal(xts, xt[:300])
    np.testing.assert_array_equal(yts, yt[:300])
    assert xs.dtype == np.float32 and ys.dtype == np.uint8
    (xa, _), (xta, _) = load_fashion_mnist(use_tfds=False, train_examples=0, test_examples=0)
    assert len(xa) == 60000 and len(xta) == 10000  # 0: all of them


def test_missing_dataset_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setattr("tf_gamma_prune.data.DEBIAN_FASHION_MNIST", tmp_path / "absent")
    monkeypatch.delenv("FASHION_MNIST_DIR", raising=False)
    with pytest.raises(DatasetNotFoundError, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist(directory=tmp_path, use_tfds=False)


def test_directory_argument_is_used(tmp_path):
    images = np.random.default_rng(0).integers(0, 255, (5, 28, 28)).astype(np.uint8)
    labels = np.array([1, 2, 3, 4, 5], np.uint8)
    for split, n in (("train", 5), ("t10k", 5)):
        write_idx(tmp_path / f"{split}-images-idx3-ubyte.gz", images[:n])
        write_idx(tmp_path / f"{split}-labels-idx1-ubyte.gz", labels[:n])
    (x, y), _ = load_fashion_mnist(directory=tmp_path, use_tfds=False)
    np.testing.assert_allclose(x[..., 0], images / 255.0, rtol=1e-6)
    assert y.tolist() == labels.tolist()


def test_tfds_path_with_mock_data():
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=6):
        (train, test) = load_tfds_arrays("cifar10", splits=("train", "test"))
    assert train[0].shape == (6, 32, 32, 3) and train[1].shape == (6,)
    assert test[0].shape[1:] == (32, 32, 3)


def test_pipeline_batches_and_augmentation_keeps_shapes():
    x = np.random.default_rng(0).random((10, 28, 28, 1)).astype("float32")
    y = np.arange(10)
    batches = list(make_dataset(x, y, batch_size=4, shuffle=True, augment="pad_crop_flip", seed=1))
    assert [b[0].shape[0] for b in batches] == [4, 4, 2]
    assert batches[0][0].shape[1:] == (28, 28, 1)
    assert sorted(np.concatenate([b[1].numpy() for b in batches]).tolist()) == list(range(10))
    with pytest.raises(ValueError, match="augment"):
        make_dataset(x, y, augment="rotate")


def _shifted_views(image: np.ndarray, pad: int) -> list[np.ndarray]:
    """Every crop of the zero-padded image and its mirror (numpy reference)."""
    h, w = image.shape[:2]
    padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)))
    views = [padded[dy:dy + h, dx:dx + w] for dy in range(2 * pad + 1) for dx in range(2 * pad + 1)]
    return views + [v[:, ::-1] for v in views]


def test_array_batches_cover_each_example_once_per_epoch_and_reshuffle():
    from tf_gamma_prune.data import ArrayBatches

    x = np.arange(10, dtype=np.float32).reshape(10, 1, 1, 1) * np.ones((10, 3, 3, 1), np.float32)
    y = np.arange(10)
    batches = ArrayBatches(x, y, batch_size=4, shuffle=True, seed=0)
    assert len(batches) == 3
    first = np.concatenate([batches[i][1] for i in range(3)])
    assert sorted(first.tolist()) == list(range(10))
    for i in range(3):  # without augmentation x and y stay paired
        xb, yb = batches[i]
        np.testing.assert_array_equal(xb[:, 0, 0, 0], yb.astype(np.float32))
    batches.on_epoch_end()
    second = np.concatenate([batches[i][1] for i in range(3)])
    assert sorted(second.tolist()) == list(range(10)) and second.tolist() != first.tolist()
    with pytest.raises(IndexError):
        batches[3]


def test_array_batches_pad_crop_flip_gives_shifted_or_mirrored_crops():
    from tf_gamma_prune.data import ArrayBatches

    rng = np.random.default_rng(0)
    x = rng.random((64, 28, 28, 1)).astype(np.float32)
    y = np.arange(64)
    original = x.copy()
    batches = ArrayBatches(x, y, batch_size=64, augment="pad_crop_flip", seed=1)
    xb, yb = batches[0]
    assert xb.shape == x.shape and xb.dtype == x.dtype
    changed = 0
    for image, label in zip(xb, yb):
        views = _shifted_views(x[label], pad=2)
        assert any(np.array_equal(image, v) for v in views)
        changed += not np.array_equal(image, x[label])
    assert changed > 48  # 49 of 50 (25 shifts x 2 mirrors) draws change the image
    np.testing.assert_array_equal(x, original)  # the source array is not modified in place


def test_array_batches_bad_arguments_say_what_to_do():
    from tf_gamma_prune.data import ArrayBatches

    x, y = np.zeros((4, 2, 2, 1)), np.zeros(4)
    with pytest.raises(ValueError, match="augment must be"):
        ArrayBatches(x, y, augment="rotate")
    with pytest.raises(ValueError, match="must match"):
        ArrayBatches(x, y[:3])
    with pytest.raises(ValueError, match="batch_size"):
        ArrayBatches(x, y, batch_size=0)

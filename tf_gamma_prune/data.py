"""Datasets as numpy arrays and tf.data pipelines.

Fashion-MNIST is read offline from the IDX files of Debian's
``dataset-fashion-mnist`` package (``/usr/share/datasets/fashion-mnist``), from a
directory you name, or else through tensorflow-datasets. Other datasets
(``cifar10``, ``cifar100``, ``imagenet2012``, any tfds name) go through
tensorflow-datasets.

Example (needs the Debian package or ``FASHION_MNIST_DIR``):

>>> from tf_gamma_prune.data import load_fashion_mnist
>>> (x_train, y_train), (x_test, y_test) = load_fashion_mnist()  # doctest: +SKIP
>>> x_train.shape, x_train.dtype, y_test[:3]                    # doctest: +SKIP
((60000, 28, 28, 1), dtype('float32'), array([9, 2, 1], dtype=uint8))
"""

from __future__ import annotations

import gzip
import os
import pathlib
import struct
from typing import Iterable

import numpy as np

from tf_gamma_prune.errors import (  # noqa: F401
    ArgumentError,
    CorruptDatasetError,
    DatasetNotFoundError,
)

DEBIAN_FASHION_MNIST = pathlib.Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"),
               0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}



def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Parse one IDX file (optionally gzip-compressed) into a numpy array.

    Raises:
        CorruptDatasetError: bad magic number or a size that does not match the header.
    """
    path = pathlib.Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise CorruptDatasetError(f"Cannot read IDX file {path}: {e}") from e
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise CorruptDatasetError(f"{path} is not an IDX file (bad magic number).")
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    rank = data[3]
    header = 4 + 4 * rank
    if len(data) < header:
        raise CorruptDatasetError(f"{path}: truncated header.")
    shape = struct.unpack(f">{rank}I", data[4:header])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(data) - header != expected:
        raise CorruptDatasetError(
            f"{path}: header promises {shape} ({expected} bytes) but the file holds "
            f"{len(data) - header}; the file is truncated or corrupt — reinstall it."
        )
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def _fashion_mnist_dir(directory: str | os.PathLike | None) -> pathlib.Path | None:
    candidates = [directory, os.environ.get("FASHION_MNIST_DIR"), DEBIAN_FASHION_MNIST]
    for candidate in candidates:
        if candidate and (pathlib.Path(candidate) / "train-images-idx3-ubyte.gz").exists():
            return pathlib.Path(candidate)
        if candidate and (pathlib.Path(candidate) / "train-images-idx3-ubyte").exists():
            return pathlib.Path(candidate)
    return None


def _idx_file(directory: pathlib.Path, stem: str) -> pathlib.Path:
    for name in (f"{stem}.gz", stem):
        if (directory / name).exists():
            return directory / name
    raise DatasetNotFoundError(f"{directory} has no {stem}[.gz].")


def load_fashion_mnist(
    directory: str | os.PathLike | None = None,
    normalize: bool = True,
    use_tfds: bool = True,
    *,
    train_examples: int = 0,
    test_examples: int = 0,
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Fashion-MNIST as ``((x_train, y_train), (x_test, y_test))``.

    Images come as ``(N, 28, 28, 1)``, float32 in [0, 1] when ``normalize`` (else
    uint8); labels as uint8 class indices (see ``FASHION_MNIST_CLASSES``).
    ``train_examples`` / ``test_examples`` keep only the first that many images of
    each split (0: all of them), as the examples' and benchmarks' flags of those
    names do.

    Looks in ``directory``, then ``$FASHION_MNIST_DIR``, then Debian's package
    location, and finally (``use_tfds``) tensorflow-datasets, which may download.

    Example (needs the dataset, like the module's example):

    >>> (x, y), (x_test, y_test) = load_fashion_mnist(train_examples=1000)  # doctest: +SKIP
    >>> len(x), len(y), len(x_test)                                          # doctest: +SKIP
    (1000, 1000, 10000)

    Raises:
        DatasetNotFoundError: nowhere to be found; the message says how to get it.
    """
    found = _fashion_mnist_dir(directory)
    if found is not None:
        arrays = [read_idx(_idx_file(found, stem)) for stem in (
            "train-images-idx3-ubyte", "train-labels-idx1-ubyte",
            "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")]
        x_train, y_train, x_test, y_test = arrays
        x_train, x_test = x_train[..., None], x_test[..., None]
    elif use_tfds:
        x_train, y_train, x_test, y_test = _fashion_mnist_from_tfds()
    else:
        raise DatasetNotFoundError(_FASHION_MNIST_HELP)
    if train_examples:
        x_train, y_train = x_train[:train_examples], y_train[:train_examples]
    if test_examples:
        x_test, y_test = x_test[:test_examples], y_test[:test_examples]
    if normalize:
        x_train = x_train.astype(np.float32) / 255.0
        x_test = x_test.astype(np.float32) / 255.0
    return (x_train, y_train.astype(np.uint8)), (x_test, y_test.astype(np.uint8))


def stratified_indices(y: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """Sorted indices of ``n`` examples with the classes as balanced as possible.

    >>> stratified_indices(np.array([0, 0, 0, 1, 1, 1]), 2, seed=0).size
    2
    """
    y = np.asarray(y)
    if not 0 < n <= len(y):
        raise ArgumentError(f"n must be in 1..{len(y)} (the number of labels), got {n}.")
    rng = np.random.default_rng(seed)
    classes = np.unique(y)
    per_class = [n // len(classes) + (1 if i < n % len(classes) else 0)
                 for i in range(len(classes))]
    picks = [rng.choice(np.flatnonzero(y == c), size=k, replace=False)
             for c, k in zip(classes, per_class)]
    return np.sort(np.concatenate(picks))


def validation_split(
    x: np.ndarray, y: np.ndarray, n_validation: int = 5000, seed: int = 0
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """``((x_train, y_train), (x_val, y_val))``: a stratified hold-out of ``n_validation``.

    The benchmark and the committed reference hold out the same 5,000 training
    images (seed 0) for every tuning choice; the test set is only reported.

    >>> x, y = np.zeros((100, 2)), np.repeat(np.arange(10), 10)
    >>> (xt, yt), (xv, yv) = validation_split(x, y, n_validation=20)
    >>> len(xt), len(xv), np.bincount(yv).tolist()
    (80, 20, [2, 2, 2, 2, 2, 2, 2, 2, 2, 2])
    """
    held = stratified_indices(y, n_validation, seed)
    keep = np.ones(len(y), dtype=bool)
    keep[held] = False
    return (x[keep], y[keep]), (x[held], y[held])


_FASHION_MNIST_HELP = (
    "Fashion-MNIST not found. On Debian/Ubuntu: `sudo apt-get install "
    "dataset-fashion-mnist` (files land in /usr/share/datasets/fashion-mnist); or "
    "put the four *-ubyte.gz files in a directory and pass directory=... or set "
    "FASHION_MNIST_DIR; or allow tensorflow-datasets to download it (use_tfds=True)."
)


def _fashion_mnist_from_tfds():
    try:
        train, test = load_tfds_arrays("fashion_mnist", splits=("train", "test"))
    except Exception as e:  # noqa: BLE001 - any tfds failure means "not available here"
        raise DatasetNotFoundError(f"{_FASHION_MNIST_HELP} (tensorflow-datasets said: {e})") from e
    return train[0], train[1], test[0], test[1]


def load_tfds_arrays(
    name: str, splits: Iterable[str] = ("train", "test"), data_dir: str | None = None,
    download: bool = True,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Load whole tfds splits as ``(images, labels)`` numpy arrays (small datasets)."""
    import tensorflow_datasets as tfds

    out = []
    for split in splits:
        ds = tfds.load(name, split=split, as_supervised=True, data_dir=data_dir,
                       download=download)
        # Batches of 1024 rather than batch_size=-1: the latter aborts the process
        # under tfds' mock data (TF 2.21).
        images, labels = [], []
        for x, y in tfds.as_numpy(ds.batch(1024)):
            images.append(x)
            labels.append(y)
        out.append((np.concatenate(images), np.concatenate(labels)))
    return out


def make_dataset(
    x: np.ndarray,
    y: np.ndarray,
    batch_size: int = 128,
    shuffle: bool = False,
    augment: str | None = None,
    seed: int | None = None,
    drop_remainder: bool = False,
):
    """A batched, prefetched ``tf.data.Dataset`` of ``(x, y)``.

    Args:
        augment: ``None``; ``"flip"`` (random horizontal flip); or
            ``"pad_crop_flip"`` (the paper's CIFAR augmentation: pad 4 pixels,
            random crop back, random horizontal flip; 2 pixels for 28×28 inputs).
    """
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices((x, y))
    if shuffle:
        ds = ds.shuffle(min(len(x), 60000), seed=seed, reshuffle_each_iteration=True)
    if augment is not None:
        ds = ds.map(_augmenter(augment, x.shape[1:], seed), num_parallel_calls=tf.data.AUTOTUNE)
    return ds.batch(batch_size, drop_remainder=drop_remainder).prefetch(tf.data.AUTOTUNE)


def _augmenter(kind: str, shape: tuple, seed: int | None):
    import tensorflow as tf

    if kind not in ("flip", "pad_crop_flip"):
        raise ArgumentError(f"augment must be None, 'flip' or 'pad_crop_flip', got {kind!r}.")
    height, width = shape[0], shape[1]
    pad = 4 if height >= 32 else 2

    def augment(image, label):
        if kind == "pad_crop_flip":
            image = tf.image.pad_to_bounding_box(image, pad, pad, height + 2 * pad, width + 2 * pad)
            image = tf.image.random_crop(image, shape, seed=seed)
        image = tf.image.random_flip_left_right(image, seed=seed)
        return image, label

    return augment


class ArrayBatches:
    """Shuffled, augmented ``(x, y)`` batches from numpy alone (no TensorFlow).

    The same augmentations as :func:`make_dataset` (``None``, ``"flip"``,
    ``"pad_crop_flip"``), drawn with numpy, for machines where TensorFlow is
    not installed (Keras on the JAX or PyTorch backend). Use
    :func:`array_batches` to get it as a ``keras.utils.PyDataset`` that
    ``model.fit`` takes; a new epoch reshuffles and redraws the augmentation.

    >>> import numpy as np
    >>> x, y = np.zeros((10, 4, 4, 1), "float32"), np.arange(10)
    >>> batches = ArrayBatches(x, y, batch_size=4, shuffle=True, augment="pad_crop_flip", seed=0)
    >>> len(batches), batches[2][0].shape
    (3, (2, 4, 4, 1))
    """

    def __init__(self, x: np.ndarray, y: np.ndarray, batch_size: int = 128, shuffle: bool = False,
                 augment: str | None = None, seed: int | None = None):
        if augment not in (None, "flip", "pad_crop_flip"):
            raise ArgumentError(f"augment must be None, 'flip' or 'pad_crop_flip', got {augment!r}.")
        if len(x) != len(y):
            raise ArgumentError(f"x and y hold {len(x)} and {len(y)} examples; they must match.")
        if batch_size < 1:
            raise ArgumentError(f"batch_size must be >= 1, got {batch_size}.")
        self.x, self.y = x, y
        self.batch_size, self.shuffle, self.augment = int(batch_size), shuffle, augment
        self.pad = 4 if x.shape[1] >= 32 else 2
        self._rng = np.random.default_rng(seed)
        self._order = np.arange(len(x))
        self.on_epoch_end()

    def __len__(self) -> int:
        return -(-len(self.x) // self.batch_size)

    def on_epoch_end(self) -> None:
        """Reshuffle (when ``shuffle``) for the next epoch."""
        if self.shuffle:
            self._order = self._rng.permutation(len(self.x))

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        if not 0 <= index < len(self):
            raise IndexError(f"batch {index} of {len(self)}")
        idx = self._order[index * self.batch_size:(index + 1) * self.batch_size]
        x, y = self.x[idx], self.y[idx]
        if self.augment is None:
            return x, y
        x = x.copy()
        n, height, width = x.shape[0], x.shape[1], x.shape[2]
        if self.augment == "pad_crop_flip":
            p = self.pad
            padded = np.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
            dy = self._rng.integers(0, 2 * p + 1, n)
            dx = self._rng.integers(0, 2 * p + 1, n)
            for i in range(n):
                x[i] = padded[i, dy[i]:dy[i] + height, dx[i]:dx[i] + width]
        flip = self._rng.random(n) < 0.5
        x[flip] = x[flip, :, ::-1]
        return x, y


def array_batches(x: np.ndarray, y: np.ndarray, batch_size: int = 128, shuffle: bool = False,
                  augment: str | None = None, seed: int | None = None):
    """:class:`ArrayBatches` as a ``keras.utils.PyDataset`` for ``model.fit`` (any backend).

    >>> import keras, numpy as np
    >>> model = keras.Sequential([keras.Input((4, 4, 1)), keras.layers.Flatten(),
    ...                           keras.layers.Dense(2)])
    >>> model.compile("sgd", "sparse_categorical_crossentropy")
    >>> data = array_batches(np.zeros((8, 4, 4, 1), "float32"), np.zeros(8, "int64"), 4,
    ...                      shuffle=True, augment="flip", seed=0)
    >>> _ = model.fit(data, epochs=1, verbose=0)
    """
    import keras

    class _Batches(keras.utils.PyDataset):
        def __init__(self, source: ArrayBatches):
            super().__init__()
            self.source = source

        def __len__(self) -> int:
            return len(self.source)

        def __getitem__(self, index: int):
            return self.source[index]

        def on_epoch_end(self) -> None:
            self.source.on_epoch_end()

    return _Batches(ArrayBatches(x, y, batch_size, shuffle, augment, seed))

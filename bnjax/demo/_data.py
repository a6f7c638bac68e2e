"""Data for the demo and notebooks: scikit-learn's digits (ships offline) and MNIST IDX files.

Both loaders return a :class:`Dataset` of float32 features in [0, 1], one
example per row, and int32 labels.
"""

import gzip
import os
import struct
from typing import NamedTuple

import numpy as np

# IDX type codes (third byte of the magic number) and their big-endian NumPy dtypes.
IDX_DTYPES = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

MNIST_FILES = {
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte",
    "test_y": "t10k-labels-idx1-ubyte",
}


class Dataset(NamedTuple):
    """A train/test split: features (examples, features) in [0, 1], int32 labels."""

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    name: str

    @property
    def num_classes(self) -> int:
        """Number of classes (labels are 0 … num_classes − 1)."""
        return int(max(self.train_y.max(), self.test_y.max())) + 1


def load_digits(test_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """scikit-learn's handwritten digits (1797 8×8 images), split stratified by class.

    Args:
      test_fraction: fraction of the examples held out for testing.
      seed: seed of the split.

    Returns:
      A :class:`Dataset` with 64 features per example, scaled from 0…16 to [0, 1].

    Examples:
      >>> data = load_digits()
      >>> data.train_x.shape, data.test_x.shape, data.num_classes
      ((1437, 64), (360, 64), 10)
    """
    from sklearn.datasets import load_digits as sklearn_digits
    from sklearn.model_selection import train_test_split

    pixels, labels = sklearn_digits(return_X_y=True)
    x = (np.asarray(pixels) / 16.0).astype(np.float32)
    y = np.asarray(labels).astype(np.int32)
    train_x, test_x, train_y, test_y = (
        np.asarray(a)
        for a in train_test_split(x, y, test_size=test_fraction, random_state=seed, stratify=y)
    )
    return Dataset(train_x, train_y, test_x, test_y, "digits")


def read_idx(path: str) -> np.ndarray:
    """Reads one IDX file (the MNIST format), optionally gzip-compressed.

    The format: two zero bytes, a type code, the number of dimensions, the
    dimensions as big-endian uint32, then the values in row-major order.

    Args:
      path: the file; a name ending in ``.gz`` is decompressed.

    Returns:
      The array, in native byte order.

    Raises:
      ValueError: the file is not IDX (bad magic number, unknown type code,
        a header or data size other than the header announces, or a ``.gz``
        that is not gzip).

    Examples:
      >>> import os, tempfile
      >>> path = os.path.join(tempfile.mkdtemp(), "labels-idx1-ubyte")
      >>> with open(path, "wb") as f:  # uint8 (0x08), 1 dimension of size 3, then the values
      ...     _ = f.write(bytes([0, 0, 0x08, 1, 0, 0, 0, 3, 7, 2, 1]))
      >>> read_idx(path)
      array([7, 2, 1], dtype=uint8)
    """
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            content = f.read()
    except gzip.BadGzipFile as error:
        raise ValueError(f"{path} ends in .gz but is not gzip-compressed: {error}") from error
    if len(content) < 4 or content[0] != 0 or content[1] != 0:
        raise ValueError(
            f"{path} is not an IDX file: it must start with two zero bytes, got {content[:4]!r}."
        )
    code, ndim = content[2], content[3]
    if code not in IDX_DTYPES:
        raise ValueError(
            f"{path}: unknown IDX type code {code:#04x}; expected one of "
            f"{', '.join(f'{c:#04x}' for c in IDX_DTYPES)}."
        )
    header = 4 + 4 * ndim
    if len(content) < header:
        raise ValueError(
            f"{path}: the header announces {ndim} dimensions ({header} bytes of header), "
            f"but the file has {len(content)} bytes."
        )
    shape = struct.unpack(f">{ndim}I", content[4:header])
    dtype = IDX_DTYPES[code]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(content) - header != expected:
        raise ValueError(
            f"{path}: the header announces shape {shape} ({expected} bytes of {dtype}), "
            f"but {len(content) - header} bytes follow it."
        )
    return (
        np.frombuffer(content, dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))
    )


def _find(directory: str, stem: str) -> str:
    """The path of one MNIST file: the usual name or the ``.idx`` variant, plain or ``.gz``."""
    for name in (stem, stem.replace("-idx", ".idx")):
        for suffix in ("", ".gz"):
            path = os.path.join(directory, name + suffix)
            if os.path.exists(path):
                return path
    raise FileNotFoundError(
        f"MNIST folder {directory}: no {stem} there (nor {stem}.gz, nor the .idx3/.idx1 name "
        f"variant); expected the four MNIST IDX files {', '.join(MNIST_FILES.values())}."
    )


def load_mnist(directory: str) -> Dataset:
    """MNIST from the four IDX files a user has (``train-images-idx3-ubyte`` etc.).

    Args:
      directory: folder holding the training and test images and labels,
        plain or ``.gz``.

    Returns:
      A :class:`Dataset` with rows*cols features per example, pixels scaled to [0, 1].

    Raises:
      FileNotFoundError: a file is missing.
      ValueError: a file is not IDX, or images and labels disagree.
    """
    arrays = {key: read_idx(_find(directory, stem)) for key, stem in MNIST_FILES.items()}
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_x"], arrays[f"{split}_y"]
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise ValueError(
                f"MNIST folder {directory}: {split} images must be (examples, rows, cols) and "
                f"labels (examples,) with the same number of examples; got {images.shape} and "
                f"{labels.shape}."
            )
        if images.dtype != np.uint8 or labels.dtype != np.uint8:
            raise ValueError(
                f"MNIST folder {directory}: {split} images and labels must be uint8 (IDX type "
                f"0x08); got {images.dtype} and {labels.dtype}."
            )

    def pixels(images):
        return (images.reshape(len(images), -1) / 255.0).astype(np.float32)

    return Dataset(
        pixels(arrays["train_x"]),
        arrays["train_y"].astype(np.int32),
        pixels(arrays["test_x"]),
        arrays["test_y"].astype(np.int32),
        "mnist",
    )

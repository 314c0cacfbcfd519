"""Handmade IDX files for the dataset tests: the bytes are written here, by hand."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

TYPE_CODES = {np.dtype(np.uint8): 0x08, np.dtype(np.int32): 0x0C, np.dtype(np.float32): 0x0D}


def idx_bytes(array: np.ndarray) -> bytes:
    """Two zero bytes, the type code, the number of dimensions, big-endian sizes, big-endian data."""
    array = np.asarray(array)
    header = bytes([0, 0, TYPE_CODES[array.dtype], array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write_idx(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = idx_bytes(array)
    if path.name.endswith(".gz"):
        with gzip.open(path, "wb", compresslevel=1) as handle:
            handle.write(data)
    else:
        path.write_bytes(data)
    return path


def coded_images(n: int, start: int, classes: np.ndarray, fill: int = 0) -> np.ndarray:
    """28x28 uint8 images that carry their class and index in pixels a 2x or 4x downsampling keeps.

    Pixel (0, 0) = 10 + 20 * class (never zero, so the colour channel is visible); pixels
    (0, 4) and (0, 8) = the index ``start + i`` in base 256; everything else ``fill``
    (0 gives MNIST-like dark images, 100 Fashion-MNIST-like bright ones).
    """
    images = np.full((n, 28, 28), fill, dtype=np.uint8)
    index = np.arange(start, start + n)
    images[:, 0, 0] = 10 + 20 * classes
    images[:, 0, 4] = index // 256
    images[:, 0, 8] = index % 256
    return images


def decode(x) -> tuple[np.ndarray, np.ndarray]:
    """Class and index of coloured images (n, 2, s, s) built from ``coded_images``."""
    grey = np.asarray(x.sum(dim=1))  # one channel is zero
    step = 28 // grey.shape[-1]
    value = lambda col: np.rint(grey[:, 0, col // step] * 255).astype(np.int64)
    return (value(0) - 10) // 20, value(4) * 256 + value(8)


def write_dataset(root: Path, n_train: int, n_test: int, layout: str = "MNIST/raw", gz: bool = True,
                  fill: int = 0, seed: int = 0) -> Path:
    """The four IDX files in ``root/layout`` ("" for flat), classes uniform on 0..9."""
    rng = np.random.RandomState(seed)
    folder = root / layout if layout else root
    suffix = ".gz" if gz else ""
    start = 0
    for part, n in (("train", n_train), ("t10k", n_test)):
        classes = rng.randint(0, 10, size=n).astype(np.uint8)
        write_idx(folder / f"{part}-images-idx3-ubyte{suffix}", coded_images(n, start, classes, fill))
        write_idx(folder / f"{part}-labels-idx1-ubyte{suffix}", classes)
        start += n
    return folder

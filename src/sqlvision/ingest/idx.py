"""IDX archives (MNIST, Fashion-MNIST): many images in one file, stored as one PNG per row."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from sqlvision.errors import SqlvisionError

FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
# MD5s of the official Fashion-MNIST label files (zalandoresearch/fashion-mnist README).
_FASHION_LABEL_MD5 = {"25c81989df183df01b3e8a0aad5dffbe", "bb300cfdad3c16e7a12a480ee83cd310"}
_PAIRS = (("train", "train"), ("t10k", "test"), ("test", "test"))
_DTYPES: dict[int, Any] = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


@dataclass
class IdxSplit:
    """One images/labels file pair of an IDX dataset."""

    images_path: str
    labels_path: str
    split: str


def _find(folder: str, stem: str) -> str | None:
    for name in (stem, stem + ".gz", stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz"):
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            return path
    return None


def find_idx_splits(folder: str) -> list[IdxSplit]:
    """The IDX image/label pairs in ``folder`` (``train-*`` and ``t10k-*``), empty if none."""
    found = []
    for prefix, split in _PAIRS:
        images = _find(folder, f"{prefix}-images-idx3-ubyte")
        if images is None:
            continue
        labels = _find(folder, f"{prefix}-labels-idx1-ubyte")
        if labels is None:
            raise SqlvisionError(f"{images} has no matching {prefix}-labels-idx1-ubyte file",
                                 "put the labels file beside the images file")
        found.append(IdxSplit(images, labels, split))
    return found


def read_idx(path: str) -> np.ndarray:
    """Read an IDX file (optionally gzipped) into an array of its stated shape."""
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
        zero, dtype_code, ndim = struct.unpack_from(">HBB", raw, 0)
        if zero != 0 or dtype_code not in _DTYPES:
            raise ValueError("bad magic number")
        shape = struct.unpack_from(f">{ndim}I", raw, 4)
        data = np.frombuffer(raw, dtype=_DTYPES[dtype_code], offset=4 + 4 * ndim)
        return data.reshape(shape)
    except (OSError, ValueError, struct.error, EOFError) as exc:
        raise SqlvisionError(f"cannot read IDX file {path}: {exc}",
                             "re-download the dataset file") from exc


def class_names(folder: str, splits: list[IdxSplit]) -> list[str] | None:
    """Label names: ``classes.txt`` in the folder, Fashion-MNIST's, or ``None`` (use the numbers)."""
    classes_file = os.path.join(folder, "classes.txt")
    if os.path.isfile(classes_file):
        with open(classes_file, encoding="utf-8") as f:
            return [line.strip() for line in f if line.strip()]
    for split in splits:
        with open(split.labels_path, "rb") as f:
            if hashlib.md5(f.read(), usedforsecurity=False).hexdigest() in _FASHION_LABEL_MD5:
                return list(FASHION_MNIST_CLASSES)
    if "fashion" in os.path.basename(os.path.abspath(folder)).lower():
        return list(FASHION_MNIST_CLASSES)
    return None


class IdxReader:
    """Serves one IDX image as PNG bytes (lossless, small) by its index."""

    reference_ok = False

    def __init__(self, images: np.ndarray) -> None:
        if images.ndim not in (3, 4):
            raise SqlvisionError(f"IDX images have shape {images.shape}",
                                 "expected N x H x W (or N x H x W x C)")
        self.images = images.astype(np.uint8, copy=False)

    def read(self, key: object) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(self.images[int(key)]).save(buf, format="PNG")  # type: ignore[call-overload]
        return buf.getvalue()

"""Which rows a run trains and validates on, a fingerprint of them, and a look at the images."""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

from sqlvision.db.base import Backend
from sqlvision.errors import SqlvisionError
from sqlvision.preprocess import PreprocessSpec
from sqlvision.tables import ImageTable, image_bytes
from sqlvision.train.config import TrainConfig
from sqlvision.train.data import ImageStream, Selection
from sqlvision.train.recipes import ImageSample

VALIDATION_SPLITS = ("validation", "val", "valid")


def _by_label(selection: Selection, positions: list[int]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for i in positions:
        out.setdefault(selection.labels[i], []).append(i)
    return out


def split_rows(selection: Selection, config: TrainConfig) -> tuple[list[int], list[int]]:
    """Positions of training and validation rows: the ``split`` column when it names validation
    rows, else a seeded, stratified hold-out of ``val_fraction``. Test rows are never used."""
    splits = selection.splits
    train = [i for i, s in enumerate(splits) if s in (None, "train")]
    val = [i for i, s in enumerate(splits) if s in VALIDATION_SPLITS]
    if not val and config.val_fraction > 0:
        rng = np.random.default_rng([config.seed, 1])
        held: set[int] = set()
        for positions in _by_label(selection, train).values():
            n = round(len(positions) * config.val_fraction)
            if len(positions) > 1 and n:
                held.update(rng.choice(positions, size=n, replace=False).tolist())
        val = sorted(held)
        train = [i for i in train if i not in held]
    if config.downsample is not None and config.downsample < 1:
        rng = np.random.default_rng([config.seed, 2])
        kept = []
        for positions in _by_label(selection, train).values():
            n = max(1, round(len(positions) * config.downsample))
            kept += rng.choice(positions, size=n, replace=False).tolist()
        train = sorted(kept)
    return train, val


def data_fingerprint(selection: Selection, train: list[int], val: list[int]) -> str:
    """A hash of which rows, labels and splits a run uses (stored as lineage, checked on resume)."""
    h = hashlib.sha256()
    for part, positions in (("train", train), ("val", val)):
        for i in positions:
            h.update(f"{part}\x1f{selection.ids[i]}\x1f{selection.labels[i]}\x1e".encode())
    return h.hexdigest()[:16]


def sniff_images(backend: Backend, table: ImageTable, keys: list[Any]) -> ImageSample:
    """Median height and width and the color mode (``L`` only if all are grayscale) of a sample."""
    from sqlvision.imaging import decode

    stream = ImageStream(backend, table, PreprocessSpec(8, 8, "RGB"), cache_bytes=0)
    sample = keys[:: max(1, len(keys) // 24)][:24]
    sizes, modes = [], set()
    for data, uri in stream.fetch(sample).values():
        try:
            img = decode(image_bytes(data, uri))
        except SqlvisionError:
            continue
        sizes.append(img.size)
        modes.add("L" if img.mode in ("L", "1", "I;16", "LA") else "RGB")
    if not sizes:
        raise SqlvisionError(f"none of the {len(sample)} sampled images of {table.name} decodes",
                             "check the image column (--image-col) and the data")
    width = int(np.median([s[0] for s in sizes]))
    height = int(np.median([s[1] for s in sizes]))
    return ImageSample(height, width, "L" if modes == {"L"} else "RGB")

"""The bundled sample data, written out for a first session: ``sqlvision sample DIR``.

It gives every ingest form something to read: class folders, a labels file, files whose
names carry the label (``clothing-flat/``), and IDX archives.
"""

from __future__ import annotations

import csv
import os
import shutil
from pathlib import Path

SAMPLE = Path(__file__).parent
DATASETS = ("clothing", "fashion-mnist")
FLAT = "clothing-flat"


def write_sample(dest: str | os.PathLike[str]) -> list[Path]:
    """Copy the sample datasets into ``dest`` (``clothing/`` photos in split/class folders plus
    ``clothing/labels.csv`` listing them, ``clothing-flat/`` with the validation photos in one
    folder named ``LABEL_pic_N.jpg``, ``fashion-mnist/`` IDX files); returns their folders.
    Files already there are left as they are, so a rerun changes nothing."""
    root = Path(dest)
    written = []
    for name in DATASETS:
        target = root / name
        shutil.copytree(SAMPLE / name, target, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("__pycache__", "*.py"))
        written.append(target)
    _labels_file(root / "clothing")
    written.append(_flat_copy(root / "clothing", root / FLAT))
    return written


def _flat_copy(folder: Path, target: Path) -> Path:
    """The validation photos in one folder, the label in each file name."""
    target.mkdir(parents=True, exist_ok=True)
    for label_dir in sorted((folder / "validation").iterdir()):
        for i, photo in enumerate(sorted(label_dir.glob("*.jpg"))):
            out = target / f"{label_dir.name}_pic_{i:03d}.jpg"
            if not out.exists():
                shutil.copyfile(photo, out)
    return target


def _labels_file(folder: Path) -> None:
    """``labels.csv`` (path,label,split; paths relative to the file) for the clothing photos,
    the form a labels file takes when images and labels are kept apart."""
    rows = sorted(p.relative_to(folder).as_posix() for p in folder.glob("*/*/*.jpg"))
    with open(folder / "labels.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label", "split"])
        for rel in rows:
            split, label, _ = rel.split("/")
            writer.writerow([rel, label, split])

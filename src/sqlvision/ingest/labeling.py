"""Where labels and splits come from: class folders, a labels file, a filename pattern, or a seed.

Rules are parsed and validated before any file is read, so a bad pattern fails in a second.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

from sqlvision.errors import SqlvisionError
from sqlvision.storage import is_url

SPLIT_NAMES = {
    "train": "train",
    "training": "train",
    "validation": "validation",
    "valid": "validation",
    "val": "validation",
    "test": "test",
    "testing": "test",
}
SPLITS = ("train", "validation", "test")
_PATH_COLUMNS = ("path", "file", "filename", "file_name", "uri", "image", "image_path")
_LABEL_COLUMNS = ("label", "class", "category", "target")


def split_from_name(name: str) -> str | None:
    """The canonical split a folder name stands for (``val`` -> ``validation``), or ``None``."""
    return SPLIT_NAMES.get(name.lower())


@dataclass
class LabelsFile:
    """A CSV or Parquet file of ``path,label[,split]`` rows; paths relative to the file's folder."""

    location: str
    entries: dict[str, tuple[str | None, str | None]] = field(default_factory=dict)
    by_name: dict[str, str | None] = field(default_factory=dict)

    @classmethod
    def read(cls, location: str) -> LabelsFile:
        """Read and index a labels file; fails naming the columns it expected."""
        table = _read_table(location)
        names = {n.lower(): n for n in table.column_names}
        path_col = next((names[c] for c in _PATH_COLUMNS if c in names), None)
        label_col = next((names[c] for c in _LABEL_COLUMNS if c in names), None)
        if path_col is None or label_col is None:
            raise SqlvisionError(
                f"labels file {location} has columns {table.column_names}",
                f"it needs a path column ({', '.join(_PATH_COLUMNS)}) and a label column "
                f"({', '.join(_LABEL_COLUMNS)}), optionally split",
            )
        paths = table.column(path_col).to_pylist()
        labels = [None if v is None else str(v) for v in table.column(label_col).to_pylist()]
        splits: list[str | None] = [None] * len(paths)
        if "split" in names:
            splits = [_canonical_split(v, location) for v in table.column(names["split"]).to_pylist()]
        base = os.path.dirname(location)
        result = cls(location)
        names_seen: dict[str, int] = {}
        for path, label, split in zip(paths, labels, splits, strict=True):
            if path is None:
                continue
            resolved = resolve_listed_path(str(path), base)
            result.entries[resolved] = (label or None, split)
            name = PurePosixPath(str(path)).name
            names_seen[name] = names_seen.get(name, 0) + 1
            result.by_name[name] = label or None
        for name, count in names_seen.items():  # ambiguous file names cannot be matched by name
            if count > 1:
                del result.by_name[name]
        return result

    def lookup(self, uri: str) -> tuple[bool, str | None, str | None]:
        """``(found, label, split)`` for an image's uri: by full path, then by unique file name."""
        if uri in self.entries:
            label, split = self.entries[uri]
            return True, label, split
        name = PurePosixPath(uri.split("://", 1)[-1]).name
        if name in self.by_name:
            return True, self.by_name[name], None
        return False, None, None


def resolve_listed_path(path: str, base: str) -> str:
    """An absolute path or URI for a path listed in a labels file located in ``base``."""
    if is_url(path) or os.path.isabs(path):
        return path
    if is_url(base):
        return base.rstrip("/") + "/" + path
    return os.path.abspath(os.path.join(base, path))


def _canonical_split(value: object, location: str) -> str | None:
    if value is None or value == "":
        return None
    split = split_from_name(str(value))
    if split is None:
        raise SqlvisionError(f"labels file {location} has split {value!r}",
                             "use train, validation or test")
    return split


def _read_table(location: str):  # -> pyarrow.Table
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    from sqlvision.storage import local_path

    if local_path(location) is not None and not os.path.exists(local_path(location) or ""):
        raise SqlvisionError(f"labels file not found: {location}", "check the path")
    try:
        if location.lower().endswith((".parquet", ".pq")):
            return pq.read_table(location)
        delimiter = "\t" if location.lower().endswith(".tsv") else ","
        convert = pacsv.ConvertOptions(strings_can_be_null=True, auto_dict_encode=False)
        return pacsv.read_csv(location, parse_options=pacsv.ParseOptions(delimiter=delimiter),
                              convert_options=convert)
    except (OSError, ValueError) as exc:
        raise SqlvisionError(f"cannot read labels file {location}: {exc}",
                             "use a CSV or Parquet file with a header row") from exc


@dataclass
class LabelRule:
    """How each image gets its label: ``folder``, ``file`` (a LabelsFile), ``regex`` or ``none``."""

    kind: str
    pattern: re.Pattern[str] | None = None
    labels_file: LabelsFile | None = None

    @classmethod
    def parse(cls, spec: str | None) -> LabelRule:
        """Parse ``folder``, ``none``, ``csv:PATH``, ``parquet:PATH``, ``file:PATH`` or ``regex:RE``."""
        spec = spec or "folder"
        if spec in ("folder", "none"):
            return cls(spec)
        kind, sep, arg = spec.partition(":")
        if sep and kind in ("csv", "parquet", "file", "tsv"):
            return cls("file", labels_file=LabelsFile.read(arg))
        if sep and kind == "regex":
            try:
                pattern = re.compile(arg)
            except re.error as exc:
                raise SqlvisionError(f"bad label pattern {arg!r}: {exc}",
                                     "fix the regular expression") from exc
            if "label" not in pattern.groupindex:
                raise SqlvisionError(
                    f"label pattern {arg!r} has no group named 'label'",
                    r"use e.g. regex:^(?P<label>.+)_pic_\d+",
                )
            return cls("regex", pattern=pattern)
        raise SqlvisionError(f"unknown --labels value {spec!r}",
                             "use folder, none, csv:PATH, parquet:PATH or regex:PATTERN")

    def label_for(self, uri: str, rel_dirs: list[str], name: str) -> tuple[bool, str | None]:
        """``(matched, label)`` for one image; ``matched`` is False when the rule found nothing."""
        if self.kind == "folder":
            classes = [d for d in rel_dirs if split_from_name(d) is None]
            return (True, classes[0]) if classes else (False, None)
        if self.kind == "regex":
            assert self.pattern is not None
            match = self.pattern.search(name)
            return (True, match.group("label")) if match else (False, None)
        if self.kind == "file":
            assert self.labels_file is not None
            found, label, _ = self.labels_file.lookup(uri)
            return found and label is not None, label
        return True, None


RANDOM_PENDING = "\0random"  # a random split not yet assigned (see SplitRule.assign)


@dataclass
class SplitRule:
    """How each image gets its split: ``folder`` names, ``random`` (seeded), or ``none``."""

    kind: str
    fractions: tuple[float, float, float] = (0.0, 0.0, 0.0)
    seed: int = 0

    @classmethod
    def parse(cls, spec: str | None, seed: int = 0) -> SplitRule:
        """Parse ``folder``, ``none`` or ``random:TRAIN,VAL,TEST`` (fractions or percentages)."""
        spec = spec or "folder"
        if spec in ("folder", "none"):
            return cls(spec, seed=seed)
        kind, _, arg = spec.partition(":")
        if kind == "random":
            try:
                parts = [float(x) for x in arg.split(",")]
            except ValueError:
                parts = []
            total = sum(parts)
            if len(parts) not in (2, 3) or any(p < 0 for p in parts) or not (
                    abs(total - 1) < 1e-6 or abs(total - 100) < 1e-4):
                raise SqlvisionError(f"bad split {spec!r}: give two or three fractions that add "
                                     "up to 1 (or percentages that add up to 100)",
                                     "use random:TRAIN,VAL,TEST such as random:0.8,0.1,0.1")
            parts += [0.0] * (3 - len(parts))
            return cls("random", (parts[0] / total, parts[1] / total, parts[2] / total), seed)
        raise SqlvisionError(f"unknown --split value {spec!r}",
                             "use folder, none or random:TRAIN,VAL,TEST")

    def split_for(self, rel: str, dirs: list[str]) -> str | None:
        """The split of an image at ``rel`` (path under its source) inside folders ``dirs``."""
        if self.kind == "folder":
            for name in reversed(dirs):
                if (split := split_from_name(name)) is not None:
                    return split
            return None
        if self.kind == "random":
            return RANDOM_PENDING  # settled by assign(), once every image and label is known
        return None

    def rank(self, rel: str) -> float:
        """A hash of the seed and the relative path in [0, 1): stable across reruns and
        machines."""
        digest = hashlib.blake2b(f"{self.seed}:{rel}".encode(), digest_size=8).digest()
        return int.from_bytes(digest, "big") / 2**64

    def assign(self, items: Sequence[Any]) -> None:
        """Stratified random split of the items (with ``rel``, ``label``, ``split``) whose split
        is pending: within each label, images ordered by their seeded hash take the splits in
        proportion, so every class gets its share (at least one validation and one test image
        once it has enough images for each nonzero fraction)."""
        pending: dict[Any, list[Any]] = {}
        for item in items:
            if item.split == RANDOM_PENDING:
                pending.setdefault(item.label, []).append(item)
        for group in pending.values():
            group.sort(key=lambda item: (self.rank(item.rel), item.rel))
            n_train, n_val, _ = _split_counts(len(group), self.fractions)
            for i, item in enumerate(group):
                item.split = ("train" if i < n_train else "validation" if i < n_train + n_val
                              else "test")


def _split_counts(n: int, fractions: tuple[float, float, float]) -> tuple[int, int, int]:
    """Images per split for a class of ``n``: rounded shares, each nonzero share at least one
    image while the class has images to spare (train keeps the remainder)."""
    train, val, test = fractions
    n_val, n_test = round(n * val), round(n * test)
    nonzero = sum(1 for f in fractions if f > 0)
    if n >= nonzero:
        n_val, n_test = (max(n_val, 1) if val > 0 else 0), (max(n_test, 1) if test > 0 else 0)
    if train > 0:
        n_val, n_test = min(n_val, max(0, n - 1)), min(n_test, max(0, n - 1 - n_val))
    return n - n_val - n_test, n_val, n_test

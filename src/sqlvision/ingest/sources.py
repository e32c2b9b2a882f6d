"""Expanding ingest sources into candidate images: folders, files, globs, URIs, labels files, IDX.

Scanning reads only directory entries and file stats; bytes are read later, in parallel.
"""

from __future__ import annotations

import datetime as dt
import errno
import glob
import os
import stat
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any, Protocol

from sqlvision.errors import SqlvisionError
from sqlvision.ingest import idx
from sqlvision.ingest.labeling import LabelRule, LabelsFile, SplitRule
from sqlvision.storage import local_path


def _image_extensions() -> frozenset[str]:
    """The file extensions ingest reads: the formats Pillow decodes on every install, plus
    AVIF and JPEG 2000 where this Pillow was built with them. HEIC, RAW and SVG are not
    images to sqlvision (Pillow cannot decode them): convert them first."""
    from PIL import features

    found = {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".dib", ".gif", ".webp",
             ".tif", ".tiff", ".ppm", ".pgm", ".pbm", ".pnm", ".tga", ".ico"}
    if features.check("avif"):
        found |= {".avif", ".avifs"}
    if features.check("jpg_2000"):
        found |= {".jp2", ".j2k", ".jpx"}
    return frozenset(found)


IMAGE_EXTENSIONS = _image_extensions()
LABEL_FILE_EXTENSIONS = (".csv", ".tsv", ".parquet", ".pq")


class Reader(Protocol):
    """Gives the bytes of a candidate from its key; ``reference_ok`` if a uri can refetch them."""

    reference_ok: bool

    def read(self, key: Any) -> bytes: ...


class LocalReader:
    """Files on the local filesystem; the key is the path."""

    reference_ok = True

    def read(self, key: Any) -> bytes:
        # Unbuffered os.read of the whole file: a third cheaper than open().read() for the
        # small files images usually are.
        fd = os.open(key, os.O_RDONLY)
        try:
            chunks = []
            while chunk := os.read(fd, 1 << 20):
                chunks.append(chunk)
            return b"".join(chunks) if len(chunks) != 1 else chunks[0]
        finally:
            os.close(fd)


class FsspecReader:
    """Files on an fsspec filesystem; the key is the filesystem's own path."""

    reference_ok = True

    def __init__(self, fs: Any) -> None:
        self.fs = fs

    def read(self, key: Any) -> bytes:
        return bytes(self.fs.cat_file(key))


LOCAL = LocalReader()


@dataclass(slots=True)
class Candidate:
    """An image to ingest: where it is, how to read it, and what it is labeled."""

    uri: str
    rel: str  # path below the source root: drives folder labels and seeded random splits
    size: int | None
    mtime: float | None
    reader: Reader
    key: Any
    label: str | None = None
    split: str | None = None
    labeled: bool = True


@dataclass
class Scan:
    """Everything found in the sources, plus what could not even be listed."""

    candidates: list[Candidate] = field(default_factory=list)
    errors: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    roots: list[str] = field(default_factory=list)  # prefixes where --refresh flags missing rows
    ignored: int = 0  # files skipped for not having an image extension


def scan_sources(sources: list[str], labels: LabelRule, split: SplitRule) -> Scan:
    """Expand every source; a source that does not exist at all raises before anything is read."""
    scan = Scan()
    for source in sources:
        _scan_one(str(source), labels, split, scan)
    seen: set[str] = set()
    unique = []
    for c in scan.candidates:  # overlapping sources (a folder and a file inside it) count once
        if c.uri not in seen:
            seen.add(c.uri)
            unique.append(c)
    scan.candidates = unique
    split.assign(unique)
    return scan


def _scan_one(source: str, labels: LabelRule, split: SplitRule, scan: Scan) -> None:
    path = local_path(source)
    if path is None:
        _scan_fsspec(source, labels, split, scan)
        return
    if os.path.isdir(path):
        idx_splits = idx.find_idx_splits(path)
        if idx_splits:
            _scan_idx(path, idx_splits, scan)
        else:
            root = os.path.abspath(path)
            scan.roots.append(root + os.sep)
            _walk(root, labels, split, scan)
        return
    if os.path.isfile(path):
        if path.lower().endswith(LABEL_FILE_EXTENSIONS):
            _scan_labels_file(path, split, scan)
        else:
            _add_local(os.path.abspath(path), os.path.dirname(os.path.abspath(path)),
                       labels, split, scan, explicit=True)
        return
    if glob.has_magic(path):
        matches = sorted(glob.glob(path, recursive=True))
        if not matches:
            raise SqlvisionError(f"no files match {source!r}", "check the pattern")
        root = _static_prefix(path)
        for match in matches:
            if os.path.isdir(match):
                _walk(os.path.abspath(match), labels, split, scan, root=root)
            else:
                _add_local(os.path.abspath(match), root, labels, split, scan, explicit=False)
        return
    if os.path.lexists(path):
        scan.errors.append((os.path.abspath(path), _unreadable_reason(path)))
        return
    raise SqlvisionError(f"source not found: {source}",
                         "check the path (quote glob patterns so the shell does not expand them)")


def _unreadable_reason(path: str) -> str:
    """Why ``path``, which exists as a name, is not a file ingest can read."""
    try:
        st = os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "symlink loop (the link leads back to itself)"
        if exc.errno == errno.ENOENT and os.path.islink(path):
            return "broken symlink (its target does not exist)"
        return f"cannot read: {exc.strerror or exc}"
    kinds = ((stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISSOCK, "a socket"),
             (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))
    kind = next((name for test, name in kinds if test(st.st_mode)), "not a regular file")
    return f"not a regular file: {kind}"


def _static_prefix(pattern: str) -> str:
    parts = []
    for part in os.path.abspath(pattern).split(os.sep):
        if glob.has_magic(part):
            break
        parts.append(part)
    return os.sep.join(parts) or os.sep


def _apply_rules(c: Candidate, root_name: str, labels: LabelRule, split: SplitRule) -> Candidate:
    *dirs, name = c.rel.split("/")
    c.labeled, c.label = labels.label_for(c.uri, dirs, name)
    c.split = split.split_for(c.rel, [root_name, *dirs])
    if labels.kind == "file" and labels.labels_file is not None and c.split is None:
        c.split = labels.labels_file.lookup(c.uri)[2]
    return c


def _add_local(path: str, root: str, labels: LabelRule, split: SplitRule, scan: Scan,
               explicit: bool, file_stat: os.stat_result | None = None,
               rel: str | None = None) -> None:
    if not explicit and os.path.splitext(path)[1].lower() not in IMAGE_EXTENSIONS:
        scan.ignored += 1
        return
    try:
        st = file_stat or os.stat(path)
    except OSError:
        scan.errors.append((path, _unreadable_reason(path)))
        return
    if not stat.S_ISREG(st.st_mode):  # a FIFO would block the read forever
        scan.errors.append((path, _unreadable_reason(path)))
        return
    if rel is None:
        rel = os.path.relpath(path, root).replace(os.sep, "/")
    c = Candidate(path, rel, st.st_size, st.st_mtime, LOCAL, path)
    scan.candidates.append(_apply_rules(c, os.path.basename(root), labels, split))


def _walk(folder: str, labels: LabelRule, split: SplitRule, scan: Scan,
          root: str | None = None) -> None:
    """Recursively add the images under ``folder``, following symlinks but never in a loop."""
    root = root or folder
    try:
        st = os.stat(folder)
    except OSError as exc:
        scan.errors.append((folder, f"cannot open folder: {exc.strerror or exc}"))
        return
    visited = {(st.st_dev, st.st_ino)}

    base = "" if root == folder else os.path.relpath(folder, root).replace(os.sep, "/") + "/"

    def visit(path: str, prefix: str, ancestors: frozenset[tuple[int, int]]) -> None:
        try:
            with os.scandir(path) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            scan.errors.append((path, f"cannot list folder: {exc.strerror or exc}"))
            return
        for entry in entries:
            if entry.name.startswith("."):
                continue
            try:
                is_dir = entry.is_dir()
                entry_stat = entry.stat() if not is_dir else os.stat(entry.path)
            except OSError:
                scan.errors.append((entry.path, _unreadable_reason(entry.path)))
                continue
            if is_dir:
                ident = (entry_stat.st_dev, entry_stat.st_ino)
                if ident in ancestors:
                    scan.errors.append((entry.path, "symlink loop: the link points back to a "
                                        "folder above it (skipped)"))
                elif ident in visited:
                    scan.errors.append((entry.path, "folder reached twice through a symlink "
                                        "(skipped to avoid duplicates)"))
                else:
                    visited.add(ident)
                    visit(entry.path, prefix + entry.name + "/", ancestors | {ident})
            elif entry.is_file():
                _add_local(entry.path, root, labels, split, scan, explicit=False, file_stat=entry_stat,
                           rel=prefix + entry.name)
            elif os.path.splitext(entry.name)[1].lower() in IMAGE_EXTENSIONS:
                scan.errors.append((entry.path, _unreadable_reason(entry.path)))

    visit(folder, base, frozenset(visited))


def _scan_labels_file(path: str, split: SplitRule, scan: Scan) -> None:
    """A labels file as a source: it lists the images to ingest (the folder + labels dataset)."""
    labels_file = LabelsFile.read(path)
    base = os.path.dirname(os.path.abspath(path))
    for location, (label, listed_split) in labels_file.entries.items():
        local = local_path(location)
        if local is None:
            _scan_fsspec(location, LabelRule("none"), split, scan, listed=(label, listed_split))
            continue
        try:
            st = os.stat(local)
        except OSError as exc:
            reason = f"listed in {os.path.basename(path)} but cannot be read: {exc.strerror or exc}"
            scan.errors.append((location, reason))
            continue
        rel = os.path.relpath(local, base).replace(os.sep, "/")
        c = Candidate(local, rel, st.st_size, st.st_mtime, LOCAL, local, label, listed_split,
                      labeled=label is not None)
        if c.split is None:
            c.split = split.split_for(rel, [os.path.basename(base), *PurePosixPath(rel).parts[:-1]])
        scan.candidates.append(c)


def _mtime(info: dict[str, Any]) -> float | None:
    for key in ("mtime", "LastModified", "last_modified", "updated", "created"):
        value = info.get(key)
        if isinstance(value, int | float):
            return float(value)
        if isinstance(value, dt.datetime):
            return value.timestamp()
        if isinstance(value, str):
            try:
                return dt.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
            except ValueError:
                continue
    return None


def _scan_fsspec(uri: str, labels: LabelRule, split: SplitRule, scan: Scan,
                 listed: tuple[str | None, str | None] | None = None) -> None:
    """A URI through fsspec: a folder is listed recursively, a glob expanded, a file taken as is."""
    import fsspec

    try:
        fs, path = fsspec.core.url_to_fs(uri)
    except (ImportError, ValueError) as exc:
        raise SqlvisionError(f"cannot open {uri}: {exc}",
                             "install the fsspec driver for this scheme (e.g. s3fs, gcsfs)") from exc
    reader = FsspecReader(fs)
    try:
        if glob.has_magic(path):
            infos = fs.glob(path, detail=True)
            root = _static_prefix_posix(path)
        elif fs.isdir(path):
            infos = fs.find(path, detail=True)
            root = path
            scan.roots.append(fs.unstrip_protocol(path).rstrip("/") + "/")
        elif fs.isfile(path):
            infos = {path: fs.info(path)}
            root = path.rsplit("/", 1)[0]
        elif listed is not None:
            scan.errors.append((uri, "listed in the labels file but not found"))
            return
        else:
            raise SqlvisionError(f"source not found: {uri}", "check the URI")
    except OSError as exc:
        raise SqlvisionError(f"cannot list {uri}: {exc}", "check the URI and credentials") from exc
    root_name = PurePosixPath(root).name
    for name, info in sorted(infos.items()):
        if info.get("type") == "directory":
            continue
        if listed is None and PurePosixPath(name).suffix.lower() not in IMAGE_EXTENSIONS:
            scan.ignored += 1
            continue
        rel = name[len(root):].lstrip("/") if name.startswith(root) else PurePosixPath(name).name
        c = Candidate(fs.unstrip_protocol(name), rel, info.get("size"), _mtime(info), reader, name)
        if listed is not None:
            c.label, c.split = listed
            c.labeled = c.label is not None
            if c.split is None:
                c.split = split.split_for(rel, [root_name])
            scan.candidates.append(c)
        else:
            scan.candidates.append(_apply_rules(c, root_name, labels, split))


def _static_prefix_posix(pattern: str) -> str:
    parts = []
    for part in pattern.split("/"):
        if glob.has_magic(part):
            break
        parts.append(part)
    return "/".join(parts)


def _scan_idx(folder: str, splits: list[idx.IdxSplit], scan: Scan) -> None:
    """An IDX dataset folder: every image of every split, labeled from the labels file."""
    names = idx.class_names(folder, splits)
    for part in splits:
        images = idx.read_idx(part.images_path)
        label_ids = idx.read_idx(part.labels_path)
        if len(images) != len(label_ids):
            raise SqlvisionError(
                f"{part.images_path} has {len(images)} images but {part.labels_path} has "
                f"{len(label_ids)} labels", "use matching files")
        reader = idx.IdxReader(images)
        uri_base = os.path.abspath(part.images_path)
        mtime = os.stat(part.images_path).st_mtime
        for i, label_id in enumerate(label_ids.tolist()):
            label = names[label_id] if names and 0 <= label_id < len(names) else str(label_id)
            scan.candidates.append(Candidate(f"{uri_base}#{i}", f"{part.split}/{i}", None, mtime,
                                             reader, i, label, part.split))

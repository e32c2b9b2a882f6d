"""Reading image bytes from a local path or any fsspec URI (``s3://``, ``gs://``, ``memory://``)."""

from __future__ import annotations

import os
import re

from sqlvision.errors import SqlvisionError

_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.\-]*://")


def is_url(location: str) -> bool:
    """Whether ``location`` carries a URL scheme (``file://`` included)."""
    return bool(_SCHEME.match(location))


def local_path(location: str) -> str | None:
    """The local filesystem path of ``location``, or ``None`` when it is a remote URI."""
    if location.startswith("file://"):
        return location[len("file://"):] or "/"
    return None if is_url(location) else location


def read_bytes(location: str) -> bytes:
    """All bytes at ``location``; raises with the location and the fix when it cannot be read."""
    path = local_path(location)
    try:
        if path is not None:
            with open(path, "rb") as f:
                return f.read()
        import fsspec

        fs, fs_path = fsspec.core.url_to_fs(location)
        return bytes(fs.cat_file(fs_path))
    except FileNotFoundError as exc:
        raise SqlvisionError(f"image not found: {location}",
                             "the file moved or was deleted; rerun ingest with --refresh") from exc
    except PermissionError as exc:
        raise SqlvisionError(f"permission denied reading {location}",
                             "grant read access to the file") from exc
    except IsADirectoryError as exc:
        raise SqlvisionError(f"{location} is a folder, not an image", "check the path") from exc
    except OSError as exc:
        raise SqlvisionError(f"cannot read {location}: {exc}", "check the path or URI") from exc


def display_path(location: str) -> str:
    """A short form of a location for messages: relative to the working directory when local."""
    path = local_path(location)
    if path is None:
        return location
    try:
        rel = os.path.relpath(path)
    except ValueError:
        return path
    return path if rel.startswith("../..") else rel

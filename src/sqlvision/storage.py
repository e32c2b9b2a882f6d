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


STORED_MISSING_HINT = "the file moved or was deleted; rerun ingest with --refresh"


def read_bytes(location: str, missing_hint: str = STORED_MISSING_HINT) -> bytes:
    """All bytes at ``location``; raises with the location and the fix when it cannot be read
    (``missing_hint``: the fix for a location that does not exist, by default that of a stored
    row's uri)."""
    path = local_path(location)
    try:
        if path is not None:
            with open(path, "rb") as f:
                return f.read()
        import fsspec

        fs, fs_path = fsspec.core.url_to_fs(location)
        return bytes(fs.cat_file(fs_path))
    except FileNotFoundError as exc:
        raise SqlvisionError(f"image not found: {location}", missing_hint) from exc
    except PermissionError as exc:
        raise SqlvisionError(f"permission denied reading {location}",
                             "grant read access to the file") from exc
    except IsADirectoryError as exc:
        raise SqlvisionError(f"{location} is a folder, not an image", "check the path") from exc
    except OSError as exc:
        raise SqlvisionError(f"cannot read {location}: {exc}", "check the path or URI") from exc


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def printable(text: str) -> str:
    """``text`` with control characters (newlines, terminal escapes, bidi overrides) written as
    escapes, so a hostile file name cannot rewrite the terminal or fake a line of output."""
    return _CONTROL.sub(lambda m: m[0].encode("unicode_escape").decode("ascii"), text)


def display_path(location: str) -> str:
    """A short, printable form of a location for messages: relative to the working directory
    when local."""
    path = local_path(location)
    if path is None:
        return printable(location)
    try:
        rel = os.path.relpath(path)
    except ValueError:
        return printable(path)
    return printable(path if rel.startswith("../..") else rel)

"""Image tables: the one ``ingest`` makes, or a user's own with ``--id-col/--image-col/--label-col``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlvision.db.base import Backend
from sqlvision.errors import SqlvisionError
from sqlvision.storage import read_bytes


@dataclass(frozen=True)
class ImageTable:
    """Which columns of ``name`` hold the id, the image bytes, the label, the uri and the split.

    ``uri`` and ``split`` are ``None`` when the table has no such column.
    """

    name: str
    id: str = "id"
    image: str = "data"
    label: str | None = "label"
    uri: str | None = "uri"
    split: str | None = "split"
    label_names: dict[str, str] | None = None

    def label_of(self, value: Any) -> str | None:
        """A stored label as a class name: through ``label_names`` when the table keeps codes
        (``img_label = 3`` -> ``Dress``), else its text."""
        if value is None:
            return None
        text = str(value)
        return self.label_names.get(text, text) if self.label_names else text

    @classmethod
    def resolve(cls, backend: Backend, name: str, *, id_col: str | None = None,
                image_col: str | None = None, label_col: str | None = None,
                split_col: str | None = None,
                label_names: str | dict[Any, str] | None = None) -> ImageTable:
        """Check ``name`` exists and has the named columns; defaults fit tables from ``ingest``.

        ``label_names`` maps stored label codes to class names: a dict, or a query returning
        (code, name) rows such as ``SELECT class_idx, class_name FROM categories``.
        """
        if not backend.table_exists(name):
            tables = backend.list_tables()
            known = ", ".join(t for t in tables if not t.startswith("sv_")) or "none yet"
            raise SqlvisionError(f"table {name!r} not found (tables: {known})",
                                 "ingest images first: sqlvision ingest TABLE FOLDER")
        have = backend.table_columns(name)
        lower = {c.lower(): c for c in have}

        def pick(wanted: str | None, default: str | None, flag: str, required: bool) -> str | None:
            if wanted is not None:
                if wanted.lower() not in lower:
                    raise SqlvisionError(f"table {name!r} has no column {wanted!r} "
                                         f"(columns: {', '.join(have)})", f"fix {flag}")
                return lower[wanted.lower()]
            if default is not None and default in lower:
                return lower[default]
            if required:
                raise SqlvisionError(f"table {name!r} has no {default!r} column "
                                     f"(columns: {', '.join(have)})", f"name it with {flag}")
            return None

        return cls(
            name=name,
            id=pick(id_col, "id", "--id-col", True) or "id",
            image=pick(image_col, "data", "--image-col", True) or "data",
            label=pick(label_col, "label", "--label-col", False),
            uri=pick(None, "uri", "", False),
            split=pick(split_col, "split", "--split-col", False),
            label_names=load_label_names(backend, label_names),
        )


def load_label_names(backend: Backend, names: str | dict[Any, str] | None) -> dict[str, str] | None:
    """``names`` as a code -> class name dict (a query's first two columns, or a dict)."""
    if names is None:
        return None
    if isinstance(names, dict):
        return {str(k): str(v) for k, v in names.items()}
    try:
        rows = backend.query(names)
    except SqlvisionError:
        raise
    except Exception as exc:
        raise SqlvisionError(f"--label-names query failed: {' '.join(str(exc).split())}",
                             "give a query returning (code, name) rows, e.g. "
                             "SELECT class_idx, class_name FROM categories") from exc
    if rows.num_columns < 2 or not rows.num_rows:
        raise SqlvisionError(f"--label-names query returned {rows.num_rows} rows of "
                             f"{rows.num_columns} columns",
                             "it must return (code, name) rows, e.g. "
                             "SELECT class_idx, class_name FROM categories")
    return {str(k): str(v) for k, v in zip(rows.column(0).to_pylist(), rows.column(1).to_pylist(),
                                            strict=True) if k is not None and v is not None}


def image_bytes(data: bytes | None, uri: str | None) -> bytes:
    """A row's image: the stored bytes, or, in reference mode, the bytes read from its uri; an
    image column of text holds locations (a table of file URLs, as object stores list them)."""
    if isinstance(data, str):
        return read_bytes(data)
    if data is not None:
        return bytes(data)
    if uri:
        return read_bytes(uri)
    raise SqlvisionError("the row has neither image data nor a uri", "re-ingest the image")

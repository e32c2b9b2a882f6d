"""Query results: Arrow underneath, with pandas, rows and text forms on demand."""

from __future__ import annotations

import base64
import csv
import datetime as dt
import io
import json
from collections.abc import Iterator
from typing import Any

import pyarrow as pa

from sqlvision.deps import require


class Result:
    """The rows a query returned. ``arrow()`` and ``df()`` convert; iteration yields tuples."""

    def __init__(self, table: pa.Table) -> None:
        self._table = table

    @property
    def columns(self) -> list[str]:
        """Column names, in order."""
        return list(self._table.column_names)

    def __len__(self) -> int:
        return self._table.num_rows

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        return iter(self.fetchall())

    def arrow(self) -> pa.Table:
        """The rows as a ``pyarrow.Table`` (no copy)."""
        return self._table

    def df(self) -> Any:
        """The rows as a ``pandas.DataFrame`` (needs the ``pandas`` extra)."""
        require("pandas", "pandas")
        return self._table.to_pandas()

    def fetchall(self) -> list[tuple[Any, ...]]:
        """All rows as tuples."""
        cols = [c.to_pylist() for c in self._table.columns]
        return list(zip(*cols, strict=True)) if cols else []

    def to_pylist(self) -> list[dict[str, Any]]:
        """All rows as dicts."""
        return self._table.to_pylist()

    def scalar(self) -> Any:
        """The first value of the first row, or ``None`` when there are no rows."""
        return self._table.column(0)[0].as_py() if self._table.num_rows else None

    def text(self, max_rows: int | None = 50) -> str:
        """The rows as an aligned text table, as ``sqlvision sql`` prints them."""
        return format_table(self._table, max_rows=max_rows)

    def __repr__(self) -> str:
        return self.text(max_rows=20)


def _cell(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, bytes | bytearray | memoryview):
        return f"<{len(value):,} bytes>"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def format_table(table: pa.Table, max_rows: int | None = None, max_width: int = 60) -> str:
    """A plain-text grid of ``table``; BLOBs show their size, long text is cut."""
    names = list(table.column_names)
    rows = Result(table.slice(0, max_rows) if max_rows else table).fetchall()
    cells = [[_cell(v) for v in row] for row in rows]
    cells = [[c if len(c) <= max_width else c[: max_width - 1] + "…" for c in row] for row in cells]
    widths = [max([len(n), *(len(r[i]) for r in cells)]) for i, n in enumerate(names)]
    out = [" | ".join(n.ljust(w) for n, w in zip(names, widths, strict=True)),
           "-+-".join("-" * w for w in widths)]
    out += [" | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    if max_rows and table.num_rows > max_rows:
        out.append(f"... {table.num_rows - max_rows:,} more rows")
    out.append(f"({table.num_rows:,} row{'s' if table.num_rows != 1 else ''})")
    return "\n".join(out)


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and value != value:  # NaN is not JSON
        return None
    return value


def to_json(table: pa.Table) -> str:
    """A JSON array of row objects; BLOBs are base64, timestamps ISO 8601."""
    return json.dumps([_jsonable(r) for r in table.to_pylist()], ensure_ascii=False, default=str)


def to_csv(table: pa.Table) -> str:
    """CSV with a header row; BLOBs are base64."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(table.column_names)
    for row in Result(table).fetchall():
        writer.writerow(["" if v is None else _jsonable(v) for v in row])
    return buf.getvalue()

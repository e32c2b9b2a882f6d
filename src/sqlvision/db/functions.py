"""Python functions callable from SQL, described once and installed by each engine that can.

A :class:`SqlFunction` is engine-neutral: a name, typed parameters (trailing ones may have
defaults), an Arrow return type and a *batch* callable (columns of argument values in, one value
per row out). DuckDB installs it as a vectorized Arrow UDF, SQLite as a row function returning
JSON for nested values; servers cannot run Python inside SQL (see
:attr:`sqlvision.db.base.Backend.sql_functions`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

PARAM_TYPES = ("text", "blob", "int", "double")


@dataclass(frozen=True)
class SqlFunction:
    """One SQL function: ``name(param, ...)`` computed by ``batch`` over whole columns."""

    name: str
    params: tuple[tuple[str, str], ...]
    returns: pa.DataType
    batch: Callable[[list[list[Any]]], list[Any]]
    #: values of the trailing parameters a call may leave out
    defaults: tuple[Any, ...] = ()

    def __post_init__(self) -> None:
        if any(kind not in PARAM_TYPES for _, kind in self.params):
            raise ValueError(f"parameter types must be among {PARAM_TYPES}")
        if len(self.defaults) > len(self.params):
            raise ValueError("more defaults than parameters")

    @property
    def arities(self) -> range:
        """The argument counts a call may have."""
        return range(len(self.params) - len(self.defaults), len(self.params) + 1)

    def full_arguments(self, args: list[Any]) -> list[Any]:
        """``args`` with the defaults of the parameters left out appended."""
        missing = len(self.params) - len(args)
        return [*args, *self.defaults[len(self.defaults) - missing:]] if missing else list(args)

    def call_row(self, *args: Any) -> Any:
        """The value for one row (row-at-a-time engines); nested values as JSON text."""
        value = self.batch([[a] for a in self.full_arguments(list(args))])[0]
        nested = pa.types.is_nested(self.returns)
        return json.dumps(value) if nested and value is not None else value

    def call_arrow(self, *arrays: Any) -> pa.Array:
        """The values for Arrow argument arrays (vectorized engines)."""
        return pa.array(self.batch([a.to_pylist() for a in arrays]), self.returns)


def sql_literal(value: Any) -> str:
    """A default value as SQL text (numbers and NULL only: defaults are never user input)."""
    if value is None:
        return "NULL"
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"unsupported default {value!r}")
    return repr(value)

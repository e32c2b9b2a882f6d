"""``CREATE MODEL``, ``DROP MODEL`` and ``CREATE EXTERNAL TABLE``: ``train``, ``models import``,
``models delete`` and ``ingest --reference`` in SQL.

OPTIONS are the command line's options (``epochs=5`` is ``--epochs 5``, ``from='m'`` is
``--from m``, ``pretrained=false`` is ``--no-pretrained``), read by the very parser of the verb,
so they are checked with the same code and messages. Models are versioned: ``CREATE OR REPLACE``
registers the next version and keeps the old ones.
"""

from __future__ import annotations

import argparse
import re
import sys
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from sqlvision.errors import SqlvisionError
from sqlvision.mlsql.parse import CreateExternalTable, CreateModel, DropModel, tokenize
from sqlvision.models import registry

if TYPE_CHECKING:
    from sqlvision.connection import Database
    from sqlvision.db.base import Backend

IMPORT_TYPES = ("onnx", "svmodel")
# options that name the training query's parts: they come from AS SELECT, not OPTIONS
FROM_QUERY = ("table", "where", "image_col", "label_col", "split_col", "name")


def option_arguments(parser: argparse.ArgumentParser, options: dict[str, Any]) -> list[str]:
    """OPTIONS as command-line arguments of ``parser``'s verb."""
    flags = {s: a for a in parser._actions for s in a.option_strings}
    argv: list[str] = []
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        action = flags.get(flag)
        if action is None:
            known = sorted(f[2:].replace("-", "_") for f in flags if f.startswith("--")
                           and not f.startswith("--no-") and f[2:].replace("-", "_")
                           not in (*FROM_QUERY, "db", "help", "debug"))
            raise SqlvisionError(f"unknown option {key!r}", f"options: {', '.join(known)}")
        if isinstance(action, argparse.BooleanOptionalAction):
            argv.append(flag if value else "--no-" + flag[2:])
        elif action.nargs == 0:  # a switch (store_true / store_false)
            if not isinstance(value, bool):
                raise SqlvisionError(f"option {key} is TRUE or FALSE, not {value!r}",
                                     f"{key}=true")
            if value:
                argv.append(flag)
        elif value is not None:
            argv += [flag, ",".join(map(str, value)) if isinstance(value, list) else str(value)]
    return argv


def parse_options(path: tuple[str, ...], argv: list[str],
                  options: dict[str, Any]) -> argparse.Namespace:
    """``argv`` plus the OPTIONS, read by the parser of verb ``path``; its errors raised, in
    option names. Options naming what the statement itself says are refused."""
    from sqlvision.cli import verb_parser

    taken = sorted(set(options) & set(FROM_QUERY))
    if taken:
        raise SqlvisionError(f"option {taken[0]!r} comes from the statement, not OPTIONS",
                             "AS SELECT image, label [, split] FROM table WHERE ...")
    parser = verb_parser(*path)

    def error(message: str) -> Any:
        readable = re.sub(r"--(?:no-)?([a-z0-9-]+)", lambda m: m.group(1).replace("-", "_"),
                          message)
        raise SqlvisionError(f"OPTIONS: {readable}", "see sqlvision " + " ".join(path) + " --help")

    parser.error = error  # type: ignore[method-assign]
    return parser.parse_args([*argv, *option_arguments(parser, options)])


def training_query(backend: Backend, query: str) -> dict[str, str | None]:
    """The table, columns and condition of ``SELECT image, label [, split] FROM t [WHERE ...]``."""
    import sqlglot
    from sqlglot import exp

    hint = "CREATE MODEL m AS SELECT image_col, label_col [, split_col] FROM t [WHERE ...]"
    try:
        tree = sqlglot.parse_one(query, read=backend.sqlglot_dialect)
    except sqlglot.errors.ParseError as exc:
        raise SqlvisionError(f"cannot read the training query: {exc}", hint) from exc
    source = tree.args.get("from_") or tree.args.get("from")
    extra = [k for k in ("joins", "group", "order", "limit", "having", "distinct", "with_")
             if tree.args.get(k)]
    if not isinstance(tree, exp.Select) or source is None or not isinstance(source.this, exp.Table) \
            or extra:
        raise SqlvisionError("the training query must select columns of one table, rows "
                             "chosen by WHERE only" + (f" (not {', '.join(extra)})" if extra else ""),
                             hint + "; for anything else, make a view and select from it")
    columns = []
    for projection in tree.expressions:
        node = projection.this if isinstance(projection, exp.Alias) else projection
        if not isinstance(node, exp.Column) or isinstance(node.this, exp.Star):
            raise SqlvisionError(f"the training query selects {projection.sql()!r}: only columns "
                                 "are allowed, image first, then label [and split]", hint)
        columns.append(node.name)
    if len(columns) not in (2, 3):
        raise SqlvisionError(f"the training query selects {len(columns)} columns", hint)
    table = source.this
    return {"table": ".".join(p for p in (table.catalog, table.db, table.name) if p),
            "image_col": columns[0], "label_col": columns[1],
            "split_col": columns[2] if len(columns) == 3 else None,
            "where": _where_text(backend, query)}


def _where_text(backend: Backend, query: str) -> str | None:
    """The condition after the query's top-level WHERE, as written."""
    depth = 0
    tokens = tokenize(query, backend.sqlglot_dialect)
    for token in tokens:
        kind = token.token_type.name
        depth += kind == "L_PAREN"
        depth -= kind == "R_PAREN"
        if depth == 0 and kind == "WHERE":
            return query[token.end + 1:].strip().rstrip(";").strip() or None
    return None


def create_model(db: Database, statement: CreateModel) -> pa.Table:
    """Train on the query's rows, or import a file; a one-row table of what was registered."""
    registry.check_model_name(statement.name)
    exists = statement.name in registry.list_models(db.backend).column("name").to_pylist()
    if exists and statement.if_not_exists:
        return _registered(None, statement.name, "exists")
    if exists and not statement.replace:
        raise SqlvisionError(f"model {statement.name!r} exists",
                             "CREATE OR REPLACE MODEL registers its next version (old ones stay)")
    options = dict(statement.options)
    model_type = str(options.pop("model_type", "")).lower() or None
    if model_type is not None and model_type not in IMPORT_TYPES:
        raise SqlvisionError(f"model_type {model_type!r} is not one sqlvision imports",
                             f"model_type is one of {', '.join(IMPORT_TYPES)}, or leave it out to "
                             "train on AS SELECT")
    if model_type is not None:
        if statement.query is not None:
            raise SqlvisionError("an imported model takes no AS SELECT",
                                 "drop AS SELECT, or model_type to train")
        path = options.pop("model_path", None)
        if not path:
            raise SqlvisionError(f"model_type={model_type!r} needs model_path",
                                 "OPTIONS(model_type='onnx', model_path='m.onnx', labels='labels.txt')")
        args = parse_options(("models", "import"), [statement.name, str(path)], options)
        from sqlvision.cli import import_from_args

        return _registered(import_from_args(db, args), statement.name, "imported")
    if statement.query is None:
        raise SqlvisionError("CREATE MODEL trains on the rows of AS SELECT ...",
                             "CREATE MODEL m OPTIONS(...) AS SELECT data, label FROM t, or import "
                             "with OPTIONS(model_type='onnx', model_path=...)")
    parts = training_query(db.backend, statement.query)
    argv = [statement.name, "--table", str(parts["table"])]
    for key in ("image_col", "label_col", "split_col", "where"):
        if parts[key] is not None:
            argv += ["--" + key.replace("_", "-"), str(parts[key])]
    args = parse_options(("train",), [*argv, "--no-progress"], options)
    from sqlvision.cli import train_from_args

    result = train_from_args(db, args, log=lambda line: print(line, file=sys.stderr, flush=True))
    return _registered(result.bundle, statement.name, "trained")


def _registered(bundle: Any, name: str, action: str) -> pa.Table:
    metrics = dict(bundle.metrics) if bundle is not None else {}
    accuracy = metrics.get("val_accuracy", metrics.get("train_accuracy"))
    return pa.table({"model": [name], "version": [bundle.version if bundle else None],
                     "action": [action], "classes": [len(bundle.classes) if bundle else None],
                     "accuracy": pa.array([accuracy], pa.float64())})


def drop_model(db: Database, statement: DropModel) -> pa.Table:
    """Delete one version (``name:3``) or every version of a model."""
    name, version = registry.parse_ref(statement.name)
    try:
        dropped = registry.delete(db.backend, name, version)
    except SqlvisionError:
        if not statement.if_exists:
            raise
        dropped = 0
    return pa.table({"model": [name], "versions_dropped": [dropped]})


def create_external_table(db: Database, statement: CreateExternalTable) -> pa.Table:
    """Ingest the ``uris`` (files, folders, globs, object-store URIs) as references: uri and
    metadata stored, bytes read when needed. ``OR REPLACE`` re-reads changed files and flags
    missing ones; ``object_metadata='SIMPLE'`` (BigQuery's) is what is stored."""
    options = dict(statement.options)
    uris = options.pop("uris", None)
    if isinstance(uris, str):
        uris = [uris]
    if not uris or not all(isinstance(u, str) for u in uris):
        raise SqlvisionError("CREATE EXTERNAL TABLE needs uris", "OPTIONS(uris=['photos/*.jpg'])")
    metadata = str(options.pop("object_metadata", "SIMPLE")).upper()
    if metadata != "SIMPLE":
        raise SqlvisionError(f"object_metadata {metadata!r} is not supported", "object_metadata='SIMPLE'")
    if "reference" in options or "refresh" in options:
        raise SqlvisionError("an external table always holds references; OR REPLACE refreshes it",
                             "leave reference and refresh out")
    if db.backend.table_exists(statement.name) and not statement.replace:
        raise SqlvisionError(f"table {statement.name!r} exists",
                             "CREATE OR REPLACE EXTERNAL TABLE re-reads its files")
    from sqlvision.cli import ingest_from_args

    argv = [statement.name, *uris, "--reference", "--no-progress"]
    if statement.replace:
        argv.append("--refresh")
    report = ingest_from_args(db, parse_options(("ingest",), argv, options))
    return pa.table({"table": [statement.name], "added": [report.added],
                     "updated": [report.updated], "missing": [report.missing],
                     "skipped": [report.skipped]})

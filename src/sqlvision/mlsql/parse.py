"""Finding the machine-learning statements and table functions in SQL text, by sqlglot's tokens.

The user's SQL around them (and inside their subqueries) is kept byte for byte: it goes to the
engine as written, so each engine's own syntax works there. Recognized, case-insensitively:

- ``CREATE [OR REPLACE] MODEL [IF NOT EXISTS] name OPTIONS(key=value, ...) [AS SELECT ...]``
- ``DROP MODEL [IF EXISTS] name[:version]``
- ``CREATE [OR REPLACE] EXTERNAL TABLE name [WITH CONNECTION c] OPTIONS(uris=[...], ...)``
- ``ML.PREDICT | ML.EVALUATE | ML.CONFUSION_MATRIX | ML.EMBED (MODEL name[:version],
  (SELECT ...) | TABLE t [, STRUCT(value AS name, ...)])`` and ``ML.MODELS`` as table references.

Errors name the line and column where the statement stops making sense.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlvision.errors import SqlvisionError

# string literals as the tokenizers name them (PostgreSQL's E'...' is a BYTE_STRING)
STRINGS = ("STRING", "BYTE_STRING", "NATIONAL_STRING", "RAW_STRING", "HEREDOC_STRING")
FUNCTIONS = ("PREDICT", "EVALUATE", "CONFUSION_MATRIX", "EMBED", "MODELS")


@dataclass
class Call:
    """One ``ML.NAME(...)`` table reference: its text span, model, input query and options."""

    kind: str
    start: int
    end: int  # one past the last character
    model: str = ""
    query: str = ""
    options: dict[str, Any] = field(default_factory=dict)
    aliased: bool = False  # the user named it (``... ) AS p``)


@dataclass
class CreateModel:
    """``CREATE MODEL``: train on ``query``'s rows, or import (``model_type='onnx'``)."""

    name: str
    options: dict[str, Any]
    query: str | None
    replace: bool = False
    if_not_exists: bool = False


@dataclass
class CreateExternalTable:
    """``CREATE EXTERNAL TABLE name OPTIONS(uris=[...])``: a table of references to files."""

    name: str
    options: dict[str, Any]
    replace: bool = False


@dataclass
class DropModel:
    """``DROP MODEL name[:version]``."""

    name: str
    if_exists: bool = False


def tokenize(sql: str, dialect: str) -> list[Any]:
    """sqlglot's tokens of ``sql`` in ``dialect`` (a clear error for unclosed quotes)."""
    import sqlglot
    from sqlglot.errors import TokenError

    try:
        return list(sqlglot.Dialect.get_or_raise(dialect).tokenize(sql))
    except TokenError as exc:
        raise SqlvisionError(f"cannot read the SQL: {exc}", "check quotes and brackets") from exc


def position(sql: str, offset: int) -> str:
    """``line L, column C`` of a character offset."""
    line = sql.count("\n", 0, offset) + 1
    column = offset - (sql.rfind("\n", 0, offset) + 1) + 1
    return f"line {line}, column {column}"


class _Reader:
    """A cursor over the tokens of one statement, with errors that point at the position."""

    def __init__(self, sql: str, tokens: list[Any], i: int = 0) -> None:
        self.sql, self.tokens, self.i = sql, tokens, i

    def peek(self, ahead: int = 0) -> Any:
        j = self.i + ahead
        return self.tokens[j] if j < len(self.tokens) else None

    def word(self, ahead: int = 0) -> str:
        token = self.peek(ahead)
        return token.text.upper() if token is not None and token.token_type.name not in (
            *STRINGS, "IDENTIFIER") else ""

    def kind(self, ahead: int = 0) -> str:
        token = self.peek(ahead)
        return token.token_type.name if token is not None else "END"

    def take(self) -> Any:
        token = self.peek()
        if token is None:
            self.fail("the statement ends too early")
        self.i += 1
        return token

    def accept(self, *words: str) -> bool:
        """Consume ``words`` if they come next."""
        if all(self.word(n) == w for n, w in enumerate(words)):
            self.i += len(words)
            return True
        return False

    def expect(self, kind: str, what: str) -> Any:
        if self.kind() != kind:
            self.fail(f"expected {what}")
        return self.take()

    def offset(self) -> int:
        token = self.peek()
        return token.start if token is not None else len(self.sql)

    def fail(self, message: str, hint: str = "see docs/sql.md for the ML statements") -> None:
        found = self.peek()
        near = f" near {found.text!r}" if found is not None else ""
        raise SqlvisionError(f"{position(self.sql, self.offset())}: {message}{near}", hint)

    def closing(self) -> int:
        """The index of the bracket closing the one at the cursor."""
        depth = 0
        for j in range(self.i, len(self.tokens)):
            kind = self.tokens[j].token_type.name
            if kind in ("L_PAREN", "L_BRACKET"):
                depth += 1
            elif kind in ("R_PAREN", "R_BRACKET"):
                depth -= 1
                if depth == 0:
                    return j
        self.fail("this bracket is never closed")
        raise AssertionError  # unreachable

    def text_until(self, *stops: str) -> str:
        """The raw text from the cursor to the first top-level token in ``stops`` or closing
        bracket (consumed up to, not including, it)."""
        first = self.i
        ends = (*stops, "R_PAREN", "R_BRACKET")  # an unmatched closing bracket ends it too
        while self.peek() is not None and self.kind() not in ends and self.word() not in stops:
            if self.kind() in ("L_PAREN", "L_BRACKET"):
                self.i = self.closing()
            self.i += 1
        if self.i == first:
            return ""
        return self.sql[self.tokens[first].start:self.tokens[self.i - 1].end + 1].strip()

    def name(self, what: str, *stops: str) -> str:
        """A model name: a string, a quoted identifier, or bare text such as ``fashion-cnn:2``."""
        if self.kind() in (*STRINGS, "IDENTIFIER") and (self.kind(1) in stops
                                                        or self.word(1) in stops
                                                        or self.peek(1) is None):
            return str(self.take().text)
        text = self.text_until(*stops)
        if not text:
            self.fail(f"expected {what}")
        return text.strip("`\"'")

    def value(self) -> Any:
        """A literal: number, string, TRUE/FALSE/NULL, or a bracketed list of them."""
        kind = self.kind()
        if kind == "DASH" and self.kind(1) == "NUMBER":
            self.take()
            return -self.value()
        if kind == "INTRODUCER":
            self.take()  # a character set (MySQL's _utf8mb4 'text')
            kind = self.kind()
        token = self.take()
        if kind == "HEX_STRING":
            return bytes.fromhex(token.text).decode("utf-8")
        if kind == "NUMBER":
            text = token.text
            return float(text) if any(c in text for c in ".eE") else int(text)
        if kind in STRINGS:
            return token.text
        if kind in ("TRUE", "FALSE"):
            return kind == "TRUE"
        if kind == "NULL":
            return None
        if kind == "L_BRACKET":
            items = []
            while self.kind() != "R_BRACKET":
                items.append(self.value())
                if self.kind() == "COMMA":
                    self.take()
            self.take()
            return items
        self.i -= 1
        self.fail("expected a number, a string, TRUE, FALSE or a [list]")
        raise AssertionError  # unreachable


def _options(reader: _Reader) -> dict[str, Any]:
    """``OPTIONS(key = value, ...)``, keys lower-cased (the cursor is on the ``(``)."""
    reader.expect("L_PAREN", "( after OPTIONS")
    options: dict[str, Any] = {}
    while reader.kind() != "R_PAREN":
        token = reader.take()
        key = str(token.text).lower()
        if not key.replace("_", "").isalnum():
            reader.i -= 1
            reader.fail("expected an option name")
        reader.expect("EQ", f"= after {key}")
        if key in options:
            reader.i -= 2
            reader.fail(f"option {key} is given twice")
        options[key] = reader.value()
        if reader.kind() == "COMMA":
            reader.take()
        elif reader.kind() != "R_PAREN":
            reader.fail("expected , or ) in OPTIONS")
    reader.take()
    return options


def _struct(reader: _Reader) -> dict[str, Any]:
    """``STRUCT(value AS name, ...)`` (the cursor is on ``STRUCT``)."""
    reader.take()
    reader.expect("L_PAREN", "( after STRUCT")
    options: dict[str, Any] = {}
    while reader.kind() != "R_PAREN":
        value = reader.value()
        if not reader.accept("AS"):
            reader.fail("expected AS name after the value")
        options[str(reader.take().text).lower()] = value
        if reader.kind() == "COMMA":
            reader.take()
    reader.take()
    return options


def parse_statement(sql: str, dialect: str) -> CreateModel | CreateExternalTable | DropModel | None:
    """The ``CREATE MODEL``, ``CREATE EXTERNAL TABLE`` or ``DROP MODEL`` statement ``sql`` is,
    else ``None``."""
    tokens = tokenize(sql, dialect)
    reader = _Reader(sql, tokens)
    if reader.accept("CREATE"):
        replace = reader.accept("OR", "REPLACE")
        if reader.accept("EXTERNAL", "TABLE"):
            name = reader.name("a table name", "WITH", "OPTIONS")
            if reader.accept("WITH", "CONNECTION"):  # BigQuery's; files are read from here
                reader.text_until("OPTIONS")
            if not reader.accept("OPTIONS"):
                reader.fail("expected OPTIONS(uris=[...])")
            options = _options(reader)
            _end(reader)
            return CreateExternalTable(name, options, replace)
        if not reader.accept("MODEL"):
            return None
        if_not_exists = reader.accept("IF", "NOT", "EXISTS")
        name = reader.name("a model name", "OPTIONS", "AS", "SEMICOLON")
        options = _options(reader) if reader.accept("OPTIONS") else {}
        query = None
        if reader.accept("AS"):
            query = reader.text_until("SEMICOLON")
            if not query:
                reader.fail("expected a SELECT after AS")
        _end(reader)
        return CreateModel(name, options, query, replace=replace, if_not_exists=if_not_exists)
    if reader.accept("DROP", "MODEL"):
        if_exists = reader.accept("IF", "EXISTS")
        name = reader.name("a model name", "SEMICOLON")
        _end(reader)
        return DropModel(name, if_exists)
    return None


def _end(reader: _Reader) -> None:
    while reader.kind() == "SEMICOLON":
        reader.take()
    if reader.peek() is not None:
        reader.fail("unexpected text after the statement (one statement at a time)")


def find_calls(sql: str, dialect: str) -> list[Call]:
    """Every ``ML.NAME(...)`` table reference in ``sql``, outermost first, in text order."""
    tokens = tokenize(sql, dialect)
    calls: list[Call] = []
    reader = _Reader(sql, tokens)
    while reader.peek() is not None:
        if not (reader.word() == "ML" and reader.kind(1) == "DOT" and reader.word(2) in FUNCTIONS):
            reader.take()
            continue
        start = reader.peek().start
        kind = reader.word(2)
        reader.i += 3
        call = Call(kind, start, 0)
        if kind == "MODELS":
            if reader.kind() == "L_PAREN" and reader.kind(1) == "R_PAREN":
                reader.i += 2
        else:
            _arguments(reader, call)
        call.end = reader.tokens[reader.i - 1].end + 1
        call.aliased = reader.kind() in ("ALIAS", "VAR", "IDENTIFIER")
        calls.append(call)
    return calls


def _arguments(reader: _Reader, call: Call) -> None:
    """``(MODEL name, (SELECT ...) | TABLE t [, STRUCT(...)])`` of ``ML.PREDICT`` and kin."""
    reader.expect("L_PAREN", f"( after ML.{call.kind}")
    if not reader.accept("MODEL"):
        reader.fail(f"ML.{call.kind} takes MODEL name first")
    call.model = reader.name("a model name after MODEL", "COMMA")
    reader.expect("COMMA", "a comma, then the input: (SELECT ...) or TABLE name")
    if reader.accept("TABLE"):
        call.query = f"SELECT * FROM {reader.text_until('COMMA', 'R_PAREN')}"
    elif reader.kind() == "L_PAREN":
        close = reader.closing()
        first, last = reader.tokens[reader.i + 1], reader.tokens[close - 1]
        if close == reader.i + 1:
            reader.fail("the input query is empty")
        call.query = reader.sql[first.start:last.end + 1].strip()
        reader.i = close + 1
    else:
        reader.fail("expected the input: (SELECT ...) or TABLE name")
    if reader.kind() == "COMMA":
        reader.take()
        if reader.word() != "STRUCT":
            reader.fail("expected STRUCT(value AS name, ...) for the options")
        call.options = _struct(reader)
    reader.expect("R_PAREN", f") closing ML.{call.kind}")


def split_statements(sql: str, dialect: str) -> list[tuple[int, str]]:
    """The statements of a script, split at top-level semicolons, with their first line."""
    statements: list[tuple[int, str]] = []
    start = 0
    depth = 0
    for token in [*tokenize(sql, dialect), None]:
        kind = token.token_type.name if token is not None else "SEMICOLON"
        depth += kind == "L_PAREN"
        depth -= kind == "R_PAREN" and depth > 0
        if kind != "SEMICOLON" or depth:
            continue
        end = token.start if token is not None else len(sql)
        tokens = tokenize(sql[start:end], dialect)
        if tokens:  # not only comments: from the first token on
            offset = start + tokens[0].start
            statements.append((sql.count("\n", 0, offset) + 1, sql[offset:end].strip()))
        start = end + 1
    return statements

"""Read-only SQL: which statements users may run over the archive, and the database they run on.

Users' SQL (``client.sql``, ``duraflow sql``, ``.sql()`` of a ``client.duckdb()`` session) may
come from whoever reaches a console, so two locks keep it to reading the archive:

- The database (:func:`locked_database`) has DuckDB's external access off: it reads files only
  in the archive tables' data folders (``allowed_directories``; none for an S3 warehouse,
  whose files come through pyarrow), installs and loads no extension, spills to a private
  temporary folder (DuckDB's default, ``./.tmp``, would let queries read the current
  directory's), and its configuration is locked: no statement or table function changes a
  setting for later queries.
- Each statement is checked before anything runs (:func:`check_read_only`): DuckDB's parser
  tells its type, and only ``SELECT`` (which covers ``WITH``, ``DESCRIBE``, ``SHOW``,
  ``SUMMARIZE``, ``FROM ...``, ``VALUES`` and ``UNPIVOT``), ``PIVOT`` and ``EXPLAIN`` of
  those run. External access off is not enough alone: ``COPY ... TO`` could still write
  inside the data folders, and ``CREATE`` would outlive the query in a shared database.

DuckDB's own errors become :class:`~duraflow.errors.QueryError` with DuckDB's message.
"""

from __future__ import annotations

import tempfile
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from duraflow.errors import QueryError, StatementNotAllowed
from duraflow.storage.catalog import Archive

READ_ONLY = "SELECT, WITH, EXPLAIN, DESCRIBE, SUMMARIZE and PIVOT"
"""The statements users' SQL may hold, as error messages name them."""
_PIVOTS = frozenset({"PIVOT", "UNPIVOT", "PIVOT_WIDER", "PIVOT_LONGER"})
"""First words of the statements DuckDB runs as several (``MULTI``) that only read: a
``PIVOT`` first makes a temporary ENUM type of the pivoted values, in the query's own
connection. (``CREATE TABLE t AS PIVOT ...`` is ``MULTI`` too, and refused.)"""
_CTE_WORDS = frozenset({"WITH", "RECURSIVE", "AS", "NOT", "MATERIALIZED", "USING", "KEY"})
"""Keywords of a ``WITH`` clause outside its parentheses."""
_SHOWN_CHARS = 80
"""A refused statement is quoted in the error up to this many characters."""


def locked_database(readable: Sequence[str] = ()) -> duckdb.DuckDBPyConnection:
    """A new in-memory DuckDB database for users' SQL: it reads files only under the folders
    ``readable``, reaches no network, loads no extension, and its settings cannot change.

    Note:
        Tables, views and macros made on it (by our code, or through a raw connection) are
        seen by every connection of it; temporary ones only by their own connection.
    """
    db = duckdb.connect()
    # Not DuckDB's default, ./.tmp: the spill folder is readable by queries. DuckDB creates
    # it only when a query spills and removes it when the database closes.
    spill = Path(tempfile.gettempdir()) / f"duraflow-sql-{uuid.uuid4().hex}"
    db.execute("SET temp_directory = ?", [str(spill)])
    db.execute("SET allowed_directories = ?", [list(readable)])
    db.execute("SET autoinstall_known_extensions = false")
    db.execute("SET autoload_known_extensions = false")
    # External access off for good: DuckDB refuses to turn it back on while the database runs.
    db.execute("SET enable_external_access = false")
    db.execute("SET lock_configuration = true")
    return db


def readable_folders(archive: Archive) -> list[str]:
    """The folders holding ``archive``'s data files (Iceberg's ``<table location>/data``);
    none for an S3 warehouse, whose files DuckDB reads through pyarrow datasets."""
    if archive.s3 is not None:
        return []
    return [
        table.location().removeprefix("file://").rstrip("/") + "/data"
        for table in archive.tables.values()
    ]


def check_read_only(query: object) -> str:
    """``query``, refused unless it is SQL text whose every statement only reads.

    Raises:
        StatementNotAllowed: a statement other than those of :data:`READ_ONLY` (the message
            names its type and quotes it; nothing of the query has run).
        QueryError: ``query`` is not text, holds no statement, or does not parse (DuckDB's
            message).
    """
    if not isinstance(query, str):
        raise QueryError(f"an SQL query must be text (str), not {type(query).__name__}")
    try:
        statements = duckdb.extract_statements(query)
    except duckdb.Error as exc:
        raise QueryError(str(exc)) from exc
    if not statements:
        raise QueryError("the query holds no SQL statement")
    for number, statement in enumerate(statements, start=1):
        refused = _refused(statement)
        if refused is not None:
            where = f"statement {number} of {len(statements)}: " if len(statements) > 1 else ""
            raise StatementNotAllowed(
                f"{where}{refused} is not allowed: SQL over the archive runs {READ_ONLY} "
                f"statements only: {_shown(statement.query)}",
                refused.removeprefix("EXPLAIN "),
            )
    return query


def run(
    con: duckdb.DuckDBPyConnection, query: object, params: Any = None
) -> duckdb.DuckDBPyRelation | None:
    """``query`` on ``con`` once :func:`check_read_only` let it through (``?`` parameters bind
    ``params``): DuckDB's relation, run lazily. Errors of DuckDB's up to here (parsing,
    binding, a file outside the archive) are :class:`QueryError`."""
    text = check_read_only(query)
    try:
        return con.sql(text, params=params)
    except duckdb.Error as exc:
        raise QueryError(str(exc)) from exc


def fetch_arrow(con: duckdb.DuckDBPyConnection, query: object, params: Any = None) -> pa.Table:
    """The result of read-only ``query`` (see :func:`run`) as a pyarrow Table; every DuckDB
    error, also one met while running it (a failed cast, say), is :class:`QueryError`."""
    relation = run(con, query, params)
    try:
        return pa.table({}) if relation is None else relation.to_arrow_table()
    except duckdb.Error as exc:
        raise QueryError(str(exc)) from exc


def _refused(statement: Any) -> str | None:
    """The type of ``statement`` (from ``duckdb.extract_statements``) if it does more than
    read, else None. ``EXPLAIN ANALYZE`` runs the statement it explains: that one is checked."""
    try:
        kind = statement.type.name
    except ValueError:  # a type this duckdb module has no name for ("UPDATE EXTENSIONS")
        kind = "UNKNOWN"
    if kind == "SELECT":
        return None
    if kind not in ("EXPLAIN", "MULTI"):
        return str(kind)
    words = _words(statement.query)
    if words and words[0][2] == "EXPLAIN":
        return _explain_refused(statement.query, words)
    if kind == "MULTI":
        main = _main_word(words)
        return None if main in _PIVOTS else main or "MULTI"
    return str(kind)


def _main_word(words: list[tuple[int, Any, str]]) -> str:
    """The first keyword of a statement after its ``WITH`` clause, if it has one."""
    depth = 0
    for _, kind, text in words:
        if kind == duckdb.token_type.operator:
            depth += text.count("(") - text.count(")")
        elif depth == 0 and kind == duckdb.token_type.keyword and text not in _CTE_WORDS:
            return text
    return ""


def _words(text: str) -> list[tuple[int, Any, str]]:
    """(byte offset, token type, upper-cased text) of each token of ``text`` but comments."""
    data = text.encode()
    tokens = duckdb.tokenize(text)
    ends = [start for start, _ in tokens[1:]] + [len(data)]
    return [
        (start, kind, data[start:end].decode().strip().upper())
        for (start, kind), end in zip(tokens, ends, strict=True)
        if kind != duckdb.token_type.comment
    ]


def _explain_refused(text: str, words: list[tuple[int, Any, str]]) -> str | None:
    """``"EXPLAIN <type>"`` if the statement that ``EXPLAIN [ANALYZE] [(options)] <statement>``
    explains does more than read, else None. A statement may start with a parenthesis too
    (``EXPLAIN (SELECT 1) UNION (SELECT 2)``): each reading that parses is checked, and a
    statement no reading parses is refused."""
    verdicts = []
    for candidate in _explained(text, words):
        try:
            inner = duckdb.extract_statements(candidate)
        except duckdb.Error:
            continue
        if len(inner) == 1:
            verdicts.append(_refused(inner[0]))
    if not verdicts:
        return "EXPLAIN"
    refused = next((verdict for verdict in verdicts if verdict is not None), None)
    return None if refused is None else f"EXPLAIN {refused}"


def _explained(text: str, words: list[tuple[int, Any, str]]) -> list[str]:
    """The texts ``EXPLAIN [ANALYZE] [(options)] <statement>`` may explain: all after
    ``EXPLAIN [ANALYZE]``, and, when that starts with a parenthesis, what follows it."""
    data = text.encode()
    i = 1
    if i < len(words) and words[i][2] in ("ANALYZE", "ANALYSE"):
        i += 1
    if i >= len(words):
        return []
    found = [data[words[i][0] :].decode()]
    if words[i][2].startswith("("):
        depth = 0
        while i < len(words):
            if words[i][1] == duckdb.token_type.operator:
                depth += words[i][2].count("(") - words[i][2].count(")")
            i += 1
            if depth <= 0:
                break
        if i < len(words):
            found.append(data[words[i][0] :].decode())
    return found


def _shown(text: str) -> str:
    """``text`` on one line, cut to :data:`_SHOWN_CHARS`, for an error message."""
    line = " ".join(text.split()).rstrip(";")
    return line if len(line) <= _SHOWN_CHARS else line[: _SHOWN_CHARS - 3] + "..."

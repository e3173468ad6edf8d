"""Where a batch run keeps what it finished: an append-only journal, and the results table built from it.

A kill at any moment must lose nothing that finished, so the two have different jobs:

* the **journal** (``RESULTS.journal.jsonl`` beside the results) is the record of truth: one JSON
  line per finished task, written with a single ``write`` and ``fsync``'ed before the run moves on.
  A kill can only cut the line being written; reading drops such a torn last line (and cuts it off
  before the next append). A re-run skips the tasks whose key is in it. Only one run may write a
  journal at a time (an advisory lock says so).
* the **table** (``.csv``, or ``.parquet`` with pyarrow) is rewritten from the records, every few
  seconds during a run and once at the end, to a temporary file that replaces the old one in one
  step: it is never half-written, and at worst a few seconds behind the journal, which the next run
  (or the end of this one) catches up.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import json
import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import IO, Any, Literal

from common.errors import DependencyError, InputError, LipSyncError

ColumnType = Literal["str", "int", "float"]
TABLE_SUFFIXES = (".csv", ".parquet")
PARQUET_HINT = "pip install '.[batch]' (or pip install pyarrow)"


def beside(results: Path, suffix: str) -> Path:
    """A file that goes with the results table: ``RESULTS.<suffix>`` (``out.csv`` -> ``out.summary.json``)."""
    return results.with_name(f"{results.stem}.{suffix}")


def journal_path(results: Path) -> Path:
    return beside(results, "journal.jsonl")


def check_table_path(path: Path) -> None:
    """Raise before any work when the table cannot be written: wrong extension, no pyarrow, no folder."""
    suffix = path.suffix.lower()
    if suffix not in TABLE_SUFFIXES:
        raise InputError(f"{path.name}: the results file must end in .parquet or .csv")
    if suffix == ".parquet":
        _pyarrow()
    if not path.parent.is_dir():
        raise InputError(f"the folder of {path} does not exist: create it first")


class Journal:
    """Append-only JSON lines, each one finished task; ``open`` locks it for this run."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fh: IO[bytes] | None = None

    def __enter__(self) -> Journal:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def open(self) -> None:
        try:
            fh = open(self.path, "a+b")  # noqa: SIM115 - closed by close()
        except OSError as exc:
            raise InputError(f"cannot write {self.path}: {exc.strerror}; choose a folder you can write to") from exc
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.close()
            raise LipSyncError(f"another batch run is writing {self.path}: wait for it to finish, or give "
                               "another --out") from None
        self._fh = fh

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()  # also releases the lock
            self._fh = None

    def read(self) -> list[dict[str, Any]]:
        """Every complete record, oldest first; a torn last line is dropped and cut off the file."""
        fh = self._require()
        fh.seek(0)
        data = fh.read()
        records, good = [], 0
        for line in data.splitlines(keepends=True):
            if not line.endswith(b"\n"):
                break  # the run that wrote it was killed mid-line
            try:
                record = json.loads(line)
            except ValueError:
                break
            if not isinstance(record, dict) or "key" not in record:
                break
            records.append(record)
            good += len(line)
        if good < len(data):
            fh.truncate(good)
            os.fsync(fh.fileno())
        return records

    def append(self, record: Mapping[str, Any]) -> None:
        """One record as one line, on disk before this returns."""
        fh = self._require()
        fh.seek(0, os.SEEK_END)
        fh.write(json.dumps(record, sort_keys=True, allow_nan=False, default=str).encode() + b"\n")
        fh.flush()
        os.fsync(fh.fileno())

    def _require(self) -> IO[bytes]:
        if self._fh is None:
            raise RuntimeError("the journal is not open")
        return self._fh


def latest(records: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """The last record of each key (a task re-run with --retry-failed replaces its earlier record)."""
    out: dict[str, dict[str, Any]] = {}
    for record in records:
        out[str(record["key"])] = dict(record)
    return out


def write_table(rows: list[dict[str, Any]], columns: Mapping[str, ColumnType], path: Path) -> None:
    """All rows, in ``columns``' order and types, to ``path`` (.csv or .parquet), replaced in one step."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        if path.suffix.lower() == ".parquet":
            _write_parquet(rows, columns, tmp)
        else:
            _write_csv(rows, columns, tmp)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def read_table(path: Path) -> list[dict[str, Any]]:
    """A table written by :func:`write_table`, as dicts (CSV cells come back as text, empty as None)."""
    if path.suffix.lower() == ".parquet":
        return _pyarrow()[1].read_table(path).to_pylist()
    with open(path, newline="", encoding="utf-8") as fh:
        return [{k: (v if v != "" else None) for k, v in row.items()} for row in csv.DictReader(fh)]


def _write_csv(rows: list[dict[str, Any]], columns: Mapping[str, ColumnType], path: Path) -> None:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(columns)
        for row in rows:
            # repr of a float is the shortest text that reads back to the same number
            writer.writerow(["" if row.get(c) is None else _cell(row[c], t) for c, t in columns.items()])
        fh.flush()
        os.fsync(fh.fileno())


def _cell(value: Any, kind: ColumnType) -> str:
    if kind == "float":
        number = float(value)
        return "" if math.isnan(number) else repr(number)
    if kind == "int":
        return str(int(value))
    return str(value)


def _write_parquet(rows: list[dict[str, Any]], columns: Mapping[str, ColumnType], path: Path) -> None:
    pa, pq = _pyarrow()
    types = {"str": pa.string(), "int": pa.int64(), "float": pa.float64()}
    schema = pa.schema([(name, types[kind]) for name, kind in columns.items()])
    table = pa.Table.from_pylist([{c: row.get(c) for c in columns} for row in rows], schema=schema)
    with open(path, "wb") as fh:
        pq.write_table(table, fh)
        fh.flush()
        os.fsync(fh.fileno())


def _pyarrow():
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise DependencyError(f"writing .parquet results needs pyarrow: {PARQUET_HINT}; or give a .csv") from None
    return pa, pq

"""What a batch run works through: a folder, a glob, or a CSV/TXT list of files.

* a folder: every video file in it and its subfolders (by extension), sorted;
* a glob (``"clips/**/*.mp4"``): the files it matches, sorted;
* a ``.csv`` list: a header row naming the columns, or no header and the columns in order;
* a ``.txt`` (or ``.lst``) list: one entry per line, columns separated by a tab; blank lines and
  lines starting with ``#`` are skipped.

Relative paths in a list are relative to the list's folder, so a list travels with its data. Every
path comes back absolute (the workers of a cluster do not share the driver's working folder). A
listed file that does not exist is kept: it fails on its own, with its message, and the rest go on.
"""

from __future__ import annotations

import csv
import glob
import os
from dataclasses import dataclass
from pathlib import Path

from common.errors import InputError

VIDEO_SUFFIXES = frozenset({".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v", ".mpg", ".mpeg", ".flv", ".ts"})
LIST_SUFFIXES = frozenset({".csv", ".txt", ".lst"})
GLOB_CHARS = frozenset("*?[")


@dataclass(frozen=True)
class Entry:
    """One line of the input: its position (1-based, as a person counts lines) and its columns."""

    number: int
    values: dict[str, str]  # column -> text as given (missing optional columns are absent)

    def path(self, column: str, base: Path) -> Path | None:
        """The column as an absolute path (relative ones from ``base``), or None when it is empty."""
        text = self.values.get(column, "").strip()
        if not text:
            return None
        path = Path(text).expanduser()
        return Path(os.path.abspath(path if path.is_absolute() else base / path))


def read_entries(spec: str | os.PathLike, columns: tuple[str, ...], *, required: int = 1,
                 header: bool = False) -> tuple[list[Entry], Path]:
    """The entries of ``spec`` and the folder relative paths start from.

    ``columns`` are the column names in order; the first ``required`` must be given on every line.
    ``header=True`` insists on a CSV with a header row (the lip-sync pairs, whose columns are named).
    """
    text = str(spec)
    path = Path(text).expanduser()
    if path.is_dir():
        if header:
            raise InputError(f"{path} is a folder: give a CSV file with the columns {', '.join(columns)}")
        found = sorted(p for p in path.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES and p.is_file())
        if not found:
            raise InputError(f"no video files ({', '.join(sorted(VIDEO_SUFFIXES))}) in {path} or its subfolders")
        return _single(found, columns[0]), Path.cwd()
    if path.is_file() and path.suffix.lower() in LIST_SUFFIXES:
        entries = _read_list(path, columns, required, header)
        if not entries:
            raise InputError(f"{path} lists no files: one per line (or a CSV with the columns {', '.join(columns)})")
        return entries, path.parent
    if header:
        raise InputError(f"{text} is not a CSV file: give a CSV with the columns {', '.join(columns)}")
    if path.is_file():
        return _single([path], columns[0]), Path.cwd()
    if GLOB_CHARS & set(text):
        found = sorted(Path(p) for p in glob.glob(os.path.expanduser(text), recursive=True) if Path(p).is_file())
        if not found:
            raise InputError(f"no files match {text!r}")
        return _single(found, columns[0]), Path.cwd()
    raise InputError(f"{text} does not exist: give a folder, a glob in quotes (\"clips/*.mp4\") or a .csv/.txt list")


def _single(paths: list[Path], column: str) -> list[Entry]:
    return [Entry(i, {column: str(p)}) for i, p in enumerate(paths, 1)]


def _read_list(path: Path, columns: tuple[str, ...], required: int, header: bool) -> list[Entry]:
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read the list {path}: {exc}") from exc
    if path.suffix.lower() == ".csv":
        rows = [(n, row) for n, row in enumerate(csv.reader(lines), 1) if any(c.strip() for c in row)]
    else:
        rows = [(n, line.split("\t")) for n, line in enumerate(lines, 1)
                if line.strip() and not line.lstrip().startswith("#")]
    if not rows:
        return []
    names = [c.strip().lower() for c in rows[0][1]]
    if header or names[0] in columns:
        unknown = [c for c in names if c not in columns]
        missing = [c for c in columns[:required] if c not in names]
        if unknown or missing:
            problem = f"unknown columns {unknown}" if unknown else f"no column {missing[0]!r}"
            raise InputError(f"{path}: {problem}; the header names the columns {', '.join(columns)} "
                             f"({', '.join(columns[:required])} required)")
        rows = rows[1:]
    else:
        names = list(columns)
    entries = []
    for n, row in rows:
        if len(row) > len(names):
            raise InputError(f"{path}, line {n}: {len(row)} columns, expected at most {len(names)} "
                             f"({', '.join(names)}); quote paths that contain commas")
        values = {name: cell.strip() for name, cell in zip(names, row, strict=False) if cell.strip()}
        absent = [c for c in columns[:required] if c not in values]
        if absent:
            raise InputError(f"{path}, line {n}: the {absent[0]} column is empty")
        entries.append(Entry(n, values))
    return entries

"""Reading the text tables of completion: ``row_id,col_id,value`` entries and
``row_id,col_id`` pairs, CSV or TSV, with or without a header line.

Every field is read as text, so IDs stay exactly as written: ``007`` and ``7`` are two IDs, and
``NA``, ``null`` or ``None`` are IDs like any other (only an empty field is missing). Whether
the first line is a header is decided by what it holds, the same way with or without one:

- entries: a header when its value field is not a number;
- pairs: a header when neither its row nor its column field is an ID of the table.

Every problem is reported as one line that names the file, the line and the value.
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from .._io import first_non_utf8_line
from ..errors import MissingFileError, UserError


class TableError(UserError):
    """A text table that cannot be read; the message names the file and the line."""


def _separator(path: Path, sep: str | None) -> str:
    if sep is not None:
        return sep
    return "\t" if path.suffix.lower() in (".tsv", ".tab") else ","


def read_fields(path: str | os.PathLike[str], columns: int, what: str,
                sep: str | None = None) -> pd.DataFrame:
    """The non-blank lines of ``path`` as ``columns`` text fields, indexed by line number
    (1-based). ``what`` describes a line for messages (e.g. ``"row_id,col_id,value"``)."""
    path = Path(path)
    if not path.exists():
        raise MissingFileError(f"{path} does not exist")
    if not path.is_file():
        raise TableError(f"{path} is not a file (expected lines of {what})")
    separator = _separator(path, sep)
    try:
        df = pd.read_csv(path, sep=separator, header=None, dtype=str, keep_default_na=False,
                         na_filter=False, skip_blank_lines=True, encoding="utf-8-sig")
    except pd.errors.EmptyDataError:
        raise TableError(f"{path} is empty: expected lines of {what}") from None
    except UnicodeDecodeError:
        raise TableError(f"{path} line {first_non_utf8_line(path)}: not UTF-8 text; save the file "
                         "as UTF-8") from None
    except pd.errors.ParserError as e:  # a line with more fields than the first
        raise TableError(f"{path}: {e.args[0].split('. ', 1)[-1]} (expected {columns} fields, "
                         f"{what}, separated by {separator!r})") from None
    if df.shape[1] != columns:
        raise TableError(
            f"{path} line {_line_numbers(path, 1)[0]}: expected {columns} fields ({what}) "
            f"separated by {separator!r}, found {df.shape[1]}"
        )
    df.index = pd.Index(_line_numbers(path, len(df)))
    return df.apply(lambda col: col.str.strip())


def _line_numbers(path: Path, count: int) -> np.ndarray:
    """The numbers (1-based) of the first ``count`` non-empty lines of ``path``."""
    with open(path, "rb") as f:
        data = f.read()
    lines = data.count(b"\n") + (0 if data.endswith(b"\n") else 1)
    if lines == count:  # no empty lines: line k is data row k
        return np.arange(1, count + 1)
    numbers = [number for number, line in enumerate(data.split(b"\n"), start=1)
               if line.rstrip(b"\r")]
    return np.asarray(numbers[:count])


def _check_ids(df: pd.DataFrame, path: Path, names: Sequence[str]) -> None:
    for k, name in enumerate(names):
        empty = df[k] == ""
        if empty.any():
            raise TableError(f"{path} line {df.index[empty.to_numpy()][0]}: the {name} is "
                             "empty; every line needs one")


def read_entries(path: str | os.PathLike[str],
                 sep: str | None = None) -> tuple[pd.DataFrame, str | None]:
    """``row_id, col_id, value`` lines: a DataFrame with text IDs and float values (indexed
    by line number), and the header line if there was one."""
    path = Path(path)
    df = read_fields(path, 3, "row_id,col_id,value", sep)
    header = None
    if len(df) and not _is_number(df.iloc[0, 2]) and not _ids_recur(df):
        header = ",".join(df.iloc[0])
        df = df.iloc[1:]
        if df.empty:
            raise TableError(f"{path} has a header line ({header}) but no data lines")
    _check_ids(df, path, ["row ID", "column ID"])
    values = pd.to_numeric(df[2], errors="coerce")
    bad = ~np.isfinite(values.to_numpy(dtype=np.float64))
    if bad.any():
        line = df.index[bad][0]
        text = df.loc[line, 2]
        fields = _fields_on_line(path, line, _separator(path, sep))
        if fields < 3:
            raise TableError(f"{path} line {line}: expected 3 fields (row_id,col_id,value), "
                             f"found {fields}")
        what = "not a finite number" if _is_float(text) else "not a number"
        raise TableError(f"{path} line {line}: the value {text!r} is {what}")
    repeated = df.duplicated([0, 1], keep="first").to_numpy()
    if repeated.any():
        line = df.index[repeated][0]
        first = df.index[((df[0] == df.loc[line, 0]) & (df[1] == df.loc[line, 1])).to_numpy()][0]
        raise TableError(f"{path} line {line}: duplicate entry ({df.loc[line, 0]!r}, "
                         f"{df.loc[line, 1]!r}), first on line {first} ({int(repeated.sum())} "
                         "repeat(s)); keep one value per pair (average or drop repeats)")
    return pd.DataFrame({"row_id": df[0], "col_id": df[1], "value": values.astype(float)}), header


def read_pairs(path: str | os.PathLike[str], row_ids: Sequence[Hashable],
               col_ids: Sequence[Hashable],
               sep: str | None = None) -> tuple[pd.DataFrame, str | None]:
    """``row_id, col_id`` lines whose IDs must be among ``row_ids`` / ``col_ids`` (compared
    as text): a DataFrame of the text IDs (indexed by line number) and the header line if
    there was one."""
    path = Path(path)
    df = read_fields(path, 2, "row_id,col_id", sep)
    known_rows = pd.Index([str(x) for x in row_ids])
    known_cols = pd.Index([str(x) for x in col_ids])
    header = None
    first = df.iloc[0]
    if first[0] not in known_rows and first[1] not in known_cols:
        header = ",".join(first)
        df = df.iloc[1:]
        if df.empty:
            raise TableError(f"{path} has a header line ({header}) but no pairs")
    _check_ids(df, path, ["row ID", "column ID"])
    for k, name, known in ((0, "row", known_rows), (1, "column", known_cols)):
        unknown = ~df[k].isin(known).to_numpy()
        if unknown.any():
            line = df.index[unknown][0]
            raise TableError(
                f"{path} line {line}: unknown {name} ID {df.loc[line, k]!r} "
                f"({int(unknown.sum())} such line(s)); the table's {name}s are e.g. "
                f"{', '.join(repr(x) for x in known[:3])}"
            )
    return pd.DataFrame({"row_id": df[0], "col_id": df[1]}), header


def _ids_recur(df: pd.DataFrame) -> bool:
    """Whether the first line's row or column ID is also an ID on a later line: then the line
    is data (with a bad value), not a header."""
    rest = df.iloc[1:]
    return bool((rest[0] == df.iloc[0, 0]).any() or (rest[1] == df.iloc[0, 1]).any())


def _fields_on_line(path: Path, line: int, separator: str) -> int:
    with open(path, encoding="utf-8-sig") as f:
        for number, text in enumerate(f, start=1):
            if number == line:
                return len(text.rstrip("\r\n").split(separator))
    return 0


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _is_number(text: str) -> bool:
    try:
        return bool(np.isfinite(float(text)))
    except ValueError:
        return False

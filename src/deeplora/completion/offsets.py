"""Row and column offsets: the part of a table that a low-rank model should not spend its rank
on (docs/METHOD.md, "Offsets").

    offset(i, j) = mu + b_i + c_j,

fitted to a target ``t`` on the observed entries by ridge-regularised least squares,

    min  sum_Omega (t_ij - mu - b_i - c_j)^2 + reg (|b|^2 + |c|^2),

one exact block update at a time (a Gauss-Seidel sweep: ``mu``, then every ``b_i``, then every
``c_j``, each in closed form). ``reg`` counts as ``reg`` extra observations of offset 0, so it
is free of the values' units. A row or column with no entries keeps offset 0.

:class:`~deeplora.completion.baselines.MeanBaseline` fits them to the values by repeated
sweeps. The deep factorization learns them jointly (``center="joint"``): before every step one
sweep refits them to the values minus the factorization's current predictions, so they keep
what the row and column means explain while the factorization learns the rest; an exactly
low-rank table is then fitted by a factorization of its own rank, not of rank + 2 as after
subtracting offsets fitted beforehand.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..errors import UserError

#: Ridge penalty of the offsets, in observations: like ``reg`` extra entries of offset 0.
DEFAULT_OFFSET_REG = 3.0

Reduce = Callable[[torch.Tensor], torch.Tensor]


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def _sums(size: int, index: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """``out[k] = sum of values[index == k]`` (float64)."""
    return torch.zeros(size, dtype=torch.float64).index_add_(0, index, values)


class Offsets:
    """``mu + b[rows] + c[cols]`` on a fixed set of entries, refit by exact sweeps.

    ``rows`` and ``cols`` index the entries (any order, kept); ``reduce`` sums a tensor over
    every process that holds a share of the entries (identity on one process).
    """

    def __init__(self, rows: torch.Tensor, cols: torch.Tensor, shape: tuple[int, int],
                 reg: float = DEFAULT_OFFSET_REG, reduce: Reduce = _identity) -> None:
        if not reg >= 0:
            raise UserError(f"the offsets' reg must be >= 0, got {reg}")
        self.rows, self.cols = rows.long(), cols.long()
        self.shape = shape
        self.reg = float(reg)
        self._reduce = reduce
        m, n = shape
        ones = torch.ones(len(self.rows), dtype=torch.float64)
        counts = reduce(torch.cat([_sums(m, self.rows, ones), _sums(n, self.cols, ones)]))
        self.count = float(counts[:m].sum())
        den = counts + self.reg
        den[den == 0] = 1.0  # no entries and no penalty: the numerator is 0 too
        self._row_den, self._col_den = den[:m], den[m:]
        self.mu = torch.zeros((), dtype=torch.float64)
        self.row = torch.zeros(m, dtype=torch.float64)
        self.col = torch.zeros(n, dtype=torch.float64)

    def values(self) -> torch.Tensor:
        """The offsets on the entries (float64)."""
        return self.mu + self.row[self.rows] + self.col[self.cols]

    def at(self, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """The offsets at other index pairs."""
        return self.mu + self.row[rows.long()] + self.col[cols.long()]

    def sweep(self, target: torch.Tensor) -> float:
        """One exact update of ``mu``, the rows and the columns towards ``target`` (on the
        entries); returns the largest change of an offset."""
        t = target.double()
        m, n = self.shape
        old = (self.mu.clone(), self.row.clone(), self.col.clone())
        total = self._reduce((t - self.row[self.rows] - self.col[self.cols]).sum().reshape(1))
        self.mu.copy_(total[0] / max(self.count, 1.0))
        t = t - self.mu
        self.row.copy_(self._reduce(_sums(m, self.rows, t - self.col[self.cols])) / self._row_den)
        self.col.copy_(self._reduce(_sums(n, self.cols, t - self.row[self.rows])) / self._col_den)
        return max(float((self.mu - old[0]).abs()), float((self.row - old[1]).abs().max()),
                   float((self.col - old[2]).abs().max()))

    def fit(self, target: torch.Tensor, sweeps: int = 50, tol: float = 1e-9) -> Offsets:
        """Sweeps until no offset moves by more than ``tol`` times the target's RMS; the
        result is also what :meth:`reset` returns to."""
        rms = float(self._reduce((target.double() ** 2).sum().reshape(1))[0])
        scale = max((rms / max(self.count, 1.0)) ** 0.5, 1e-300)
        for _ in range(sweeps):
            if self.sweep(target) <= tol * scale:
                break
        self._fitted = {k: v.clone() for k, v in self.state().items()}
        return self

    def reset(self) -> None:
        """Back to the state of the last :meth:`fit` (zero if never fitted), so that every
        solver on the same objective starts alike."""
        fitted = getattr(self, "_fitted", None)
        if fitted is None:
            for v in self.state().values():
                v.zero_()
        else:
            self.load_state(fitted)

    def transpose(self) -> Offsets:
        """The same offsets for the transposed table (rows and columns swapped)."""
        out = Offsets.__new__(Offsets)
        out.rows, out.cols, out.shape, out.reg = self.cols, self.rows, self.shape[::-1], self.reg
        out._reduce, out.count = self._reduce, self.count
        out._row_den, out._col_den = self._col_den, self._row_den
        out.mu, out.row, out.col = self.mu, self.col, self.row
        return out

    def state(self) -> dict[str, torch.Tensor]:
        """The fitted values by name, as the tensors themselves (for checkpoints)."""
        return {"mu": self.mu, "row": self.row, "col": self.col}

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        self.mu.copy_(state["mu"].reshape(()))
        self.row.copy_(state["row"])
        self.col.copy_(state["col"])

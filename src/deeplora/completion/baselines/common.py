"""What the baselines share: defaults, argument checks, centering, the fitted models
(:class:`MeanBaseline`, :class:`LowRankModel`) and the observed pattern in CSR order."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np
import torch

from ...errors import UserError
from ..data import Observations
from ..offsets import DEFAULT_OFFSET_REG, Offsets

Center = Literal["none", "mean", "biases"]
CENTERS = ("none", "mean", "biases")

# The defaults below were chosen on MovieLens (a validation split carved from the training
# part of the 90/10 split) and suit noisy ratings-like data; noiseless low-rank data wants
# far less regularisation (reg near 0, a small shrinkage).

#: Ridge penalty of :class:`MeanBaseline`: like ``reg`` extra observations of offset 0.
DEFAULT_BIAS_REG = DEFAULT_OFFSET_REG
#: Ridge penalty of :func:`als`, multiplied by each row's/column's observation count; it
#: shrinks in the units of the values.
DEFAULT_ALS_REG = 0.2
#: Soft-impute shrinkage as a fraction of the top singular value of the (centred) observed
#: matrix ``P_Omega(X)``.
DEFAULT_SHRINKAGE_FRACTION = 0.3


class Predictor(Protocol):
    """Anything fitted that predicts entries at index pairs."""

    def predict(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray: ...


def rmse(model: Predictor, obs: Observations) -> float:
    """Root mean squared error of ``model`` on the entries of ``obs``."""
    err = model.predict(obs.rows, obs.cols) - obs.values
    return float(np.sqrt(np.mean(err * err)))


# ---------------------------------------------------------------------------- checks
def _check_clip(clip: tuple[float, float] | None) -> tuple[float, float] | None:
    if clip is None:
        return None
    try:
        lo, hi = (float(x) for x in clip)
    except (TypeError, ValueError):
        raise UserError(f"clip must be a pair (lo, hi) of numbers or None, got {clip!r}") from None
    if not lo < hi:
        raise UserError(f"clip=(lo, hi) needs lo < hi, got {clip!r}; e.g. clip=(0.5, 5.0)")
    return (lo, hi)


def _check_center(center: str) -> None:
    if center not in CENTERS:
        raise UserError(f"center must be one of {CENTERS}, got {center!r}")


def _check_rank(rank: int, shape: tuple[int, int]) -> None:
    top = min(shape) - 1
    if isinstance(rank, bool) or not isinstance(rank, int | np.integer):
        raise UserError(f"rank must be an integer, got {rank!r}")
    if not 1 <= rank <= top:
        raise UserError(
            f"rank must be in [1, min(m, n) - 1] = [1, {top}] for a {shape[0]} x {shape[1]} "
            f"matrix, got {rank}; pick a rank below the smaller dimension"
        )


def _check_count(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise UserError(f"{name} must be a positive integer, got {value!r}")


def _check_nonneg(name: str, value: float, hint: str) -> None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise UserError(f"{name} must be a number >= 0, got {value!r}; {hint}") from None
    if not np.isfinite(number) or number < 0:
        raise UserError(f"{name} must be a finite number >= 0, got {value!r}; {hint}")


def _as_index(idx: np.ndarray, size: int, what: str) -> np.ndarray:
    arr = np.asarray(idx)
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise UserError(
            f"{what} must be integer indices, got dtype {arr.dtype}; map IDs to indices "
            "with Observations.index_of"
        )
    arr = arr.astype(np.int64, copy=False)
    if arr.size and (arr.min() < 0 or arr.max() >= size):
        bad = arr[(arr < 0) | (arr >= size)][0]
        raise UserError(f"{what} index {bad} is out of range [0, {size}) of the fitted matrix")
    return arr


def _check_pair(rows: np.ndarray, cols: np.ndarray, shape: tuple[int, int]) -> tuple[
    np.ndarray, np.ndarray
]:
    r = _as_index(rows, shape[0], "row")
    c = _as_index(cols, shape[1], "column")
    if r.shape != c.shape:
        raise UserError(f"rows and cols must have the same shape, got {r.shape} and {c.shape}")
    return r, c


def _sampled_dot(
    left: np.ndarray, right: np.ndarray, rows: np.ndarray, cols: np.ndarray, step: int = 4096,
) -> np.ndarray:
    """``<left[rows[k]], right[cols[k]]>`` for every k, in cache-sized chunks of entries."""
    out = np.empty(len(rows))
    for lo in range(0, len(rows), step):
        out[lo:lo + step] = np.einsum(
            "ik,ik->i", left[rows[lo:lo + step]], right[cols[lo:lo + step]]
        )
    return out


def _clip(pred: np.ndarray, clip: tuple[float, float] | None) -> np.ndarray:
    return pred if clip is None else np.clip(pred, clip[0], clip[1])


# ---------------------------------------------------------------------------- mean / biases
class MeanBaseline:
    """Predict the global mean ``mu``, or with ``biases=True`` ``mu + b_row[i] + b_col[j]``.

    The offsets minimise ``sum_Omega (x - mu - b_row[i] - b_col[j])^2 + reg (|b_row|^2 +
    |b_col|^2)`` by exact sweeps (:class:`~deeplora.completion.offsets.Offsets`), at most
    ``sweeps`` of them, stopping early once no offset moves by more than ``tol`` times the
    values' RMS. A row or column with no observations gets offset 0. ``clip=(lo, hi)`` clips
    predictions.

    >>> model = MeanBaseline(biases=True).fit(train)   # doctest: +SKIP
    >>> model.predict(test.rows, test.cols)            # doctest: +SKIP
    """

    def __init__(
        self,
        biases: bool = False,
        reg: float = DEFAULT_BIAS_REG,
        sweeps: int = 20,
        tol: float = 1e-8,
        clip: tuple[float, float] | None = None,
    ) -> None:
        _check_nonneg("reg", reg, f"use 0 for none, e.g. the default {DEFAULT_BIAS_REG}")
        _check_count("sweeps", sweeps)
        _check_nonneg("tol", tol, "e.g. tol=1e-8")
        self.biases = bool(biases)
        self.reg = float(reg)
        self.sweeps = int(sweeps)
        self.tol = float(tol)
        self.clip = _check_clip(clip)
        self.mean = 0.0
        self.row_bias = np.zeros(0)
        self.col_bias = np.zeros(0)
        self.shape: tuple[int, int] | None = None

    def fit(self, obs: Observations) -> MeanBaseline:
        """Fit on the observed entries; returns ``self``."""
        m, n = obs.shape
        self.shape = (m, n)
        self.mean = float(np.mean(obs.values))
        self.row_bias, self.col_bias = np.zeros(m), np.zeros(n)
        if not self.biases:
            return self
        offsets = Offsets(torch.from_numpy(obs.rows), torch.from_numpy(obs.cols), obs.shape,
                          self.reg).fit(torch.from_numpy(obs.values), self.sweeps, self.tol)
        self.mean = float(offsets.mu)
        self.row_bias, self.col_bias = offsets.row.numpy(), offsets.col.numpy()
        return self

    def _offsets(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        return self.mean + self.row_bias[rows] + self.col_bias[cols]

    def predict(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """Predictions at index pairs ``(rows[k], cols[k])``, clipped if ``clip`` was set."""
        if self.shape is None:
            raise RuntimeError("MeanBaseline is not fitted: call .fit(observations) first")
        r, c = _check_pair(rows, cols, self.shape)
        return _clip(self._offsets(r, c), self.clip)

    def __repr__(self) -> str:
        return (f"MeanBaseline(biases={self.biases}, reg={self.reg}, sweeps={self.sweeps}, "
                f"clip={self.clip})")


# ---------------------------------------------------------------------------- low-rank model
@dataclass(frozen=True, eq=False)
class LowRankModel:
    """A fitted low-rank completion:
    ``offset + row_bias[i] + col_bias[j] + <left[i], right[j]>``, optionally clipped.

    ``left`` is m x k and ``right`` n x k (k may be 0 when everything was shrunk away);
    ``iterations`` and ``converged`` report how the fit ended; ``shrinkage`` is the lambda
    soft-impute used (``None`` for ALS).
    """

    left: np.ndarray
    right: np.ndarray
    offset: float = 0.0
    row_bias: np.ndarray | None = None
    col_bias: np.ndarray | None = None
    clip: tuple[float, float] | None = None
    iterations: int = 0
    converged: bool = True
    shrinkage: float | None = None

    @property
    def shape(self) -> tuple[int, int]:
        return (self.left.shape[0], self.right.shape[0])

    @property
    def rank(self) -> int:
        return int(self.left.shape[1])

    def predict(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """Predictions at index pairs ``(rows[k], cols[k])``, clipped if ``clip`` was set."""
        r, c = _check_pair(rows, cols, self.shape)
        pred = _sampled_dot(self.left, self.right, r.ravel(), c.ravel()).reshape(r.shape)
        pred += self.offset
        if self.row_bias is not None:
            pred = pred + self.row_bias[r]
        if self.col_bias is not None:
            pred = pred + self.col_bias[c]
        return _clip(pred, self.clip)


@dataclass(frozen=True, eq=False)
class Centering:
    """What ``center`` takes out before a low-rank model: ``offset + row_bias[i] +
    col_bias[j]`` (``"none"``: nothing; ``"mean"``: the mean; ``"biases"``: the mean and the
    offsets of ``MeanBaseline(biases=True)``). The one home of centering for the baselines and
    for :func:`deeplora.completion.complete`."""

    offset: float = 0.0
    row_bias: np.ndarray | None = None
    col_bias: np.ndarray | None = None

    @classmethod
    def fit(cls, obs: Observations, center: str) -> Centering:
        _check_center(center)
        if center == "none":
            return cls()
        if center == "mean":
            return cls(float(np.mean(obs.values)))
        base = MeanBaseline(biases=True).fit(obs)
        return cls(base.mean, base.row_bias, base.col_bias)

    def residual(self, obs: Observations) -> Observations:
        """``obs`` with the centering taken out of its values."""
        values = obs.values - self.offset
        if self.row_bias is not None:
            values = values - self.row_bias[obs.rows]
        if self.col_bias is not None:
            values = values - self.col_bias[obs.cols]
        return obs.with_values(values)

    def model(self, left: np.ndarray, right: np.ndarray, **fields: Any) -> LowRankModel:
        return LowRankModel(left, right, self.offset, self.row_bias, self.col_bias, **fields)

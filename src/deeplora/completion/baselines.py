"""Baselines for matrix completion: what a user would otherwise pick.

- :class:`MeanBaseline`: the global mean, optionally plus regularised row and column offsets
  ("user and item biases", Koren, Bell & Volinsky 2009, "Matrix factorization techniques for
  recommender systems", IEEE Computer), fitted by alternating closed-form updates.
- :func:`soft_impute`: nuclear-norm regularised completion by iterated singular-value
  soft-thresholding (Mazumder, Hastie & Tibshirani 2010, "Spectral regularization algorithms
  for learning large incomplete matrices", JMLR 11). Each step takes the top singular triplets
  of ``P_Omega(X - Z) + Z`` for the current low-rank ``Z``: a sparse matrix plus a low-rank one,
  applied as a ``LinearOperator``, so no ``m x n`` array is ever formed. The triplets come
  from warm-started randomized subspace iteration (Halko, Martinsson & Tropp 2011, "Finding
  structure with randomness", SIAM Review) or from ``scipy.sparse.linalg.svds``.
- :func:`als`: alternating least squares on ``X ~ left @ right.T`` with ridge penalties scaled
  by the number of observations of each row and column ("weighted-lambda regularisation",
  Zhou, Wilkinson, Schreiber & Pan 2008, "Large-scale parallel collaborative filtering for the
  Netflix prize", AAIM; Koren et al. 2009). All rows' ``r x r`` systems are built and solved
  in stacked form.

Every fitted model has ``predict(rows, cols)`` on index arrays (not IDs); the low-rank ones
also expose ``left`` (m x k) and ``right`` (n x k) with
``prediction = offset + row_bias[rows] + col_bias[cols] + <left[rows], right[cols]>``.

``center`` (for :func:`soft_impute` and :func:`als`) chooses what the low-rank part models:

- ``"none"``: the values themselves (offset 0, no biases);
- ``"mean"``: values minus their global mean (the mean becomes ``offset``);
- ``"biases"``: the residuals of ``MeanBaseline(biases=True)`` (its mean and offsets are kept
  in the model). Best on ratings data, where most of the signal is in the offsets.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np
import scipy.linalg as sla
import scipy.sparse as sp
import torch
from scipy.sparse.linalg import LinearOperator, svds

from deeplora.completion.data import Observations
from deeplora.completion.offsets import DEFAULT_OFFSET_REG, Offsets

from ..errors import UserError

__all__ = [
    "DEFAULT_ALS_REG",
    "DEFAULT_BIAS_REG",
    "DEFAULT_SHRINKAGE_FRACTION",
    "LowRankModel",
    "MeanBaseline",
    "Predictor",
    "als",
    "rmse",
    "soft_impute",
    "soft_impute_validated",
]

Center = Literal["none", "mean", "biases"]
_CENTERS = ("none", "mean", "biases")

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
    if center not in _CENTERS:
        raise UserError(f"center must be one of {_CENTERS}, got {center!r}")


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


@dataclass(frozen=True)
class _Centering:
    """What ``center`` removed: the low-rank part models ``values``."""

    values: np.ndarray
    offset: float = 0.0
    row_bias: np.ndarray | None = None
    col_bias: np.ndarray | None = None

    def model(self, left: np.ndarray, right: np.ndarray, **fields: Any) -> LowRankModel:
        return LowRankModel(left, right, self.offset, self.row_bias, self.col_bias, **fields)


def _centered(obs: Observations, center: str) -> _Centering:
    _check_center(center)
    if center == "none":
        return _Centering(obs.values)
    if center == "mean":
        mu = float(np.mean(obs.values))
        return _Centering(obs.values - mu, mu)
    base = MeanBaseline(biases=True).fit(obs)
    return _Centering(obs.values - base._offsets(obs.rows, obs.cols), base.mean,
                      base.row_bias, base.col_bias)


class _Pattern:
    """The observed positions in CSR order, to rebuild sparse matrices with new values."""

    def __init__(self, obs: Observations) -> None:
        m, n = obs.shape
        self.shape = (m, n)
        self.order = np.lexsort((obs.cols, obs.rows))
        self.rows = obs.rows[self.order]
        self.cols = obs.cols[self.order]
        self.indptr = np.concatenate([[0], np.cumsum(np.bincount(self.rows, minlength=m))])

    def csr(self, sorted_values: np.ndarray) -> sp.csr_matrix:
        return sp.csr_matrix((sorted_values, self.cols, self.indptr), shape=self.shape)


# ---------------------------------------------------------------------------- soft-impute
def _frob_change(
    u1: np.ndarray, s1: np.ndarray, v1: np.ndarray, u2: np.ndarray, s2: np.ndarray,
    v2: np.ndarray,
) -> tuple[float, float]:
    """``||Z1 - Z2||_F^2`` and ``||Z1||_F^2`` for ``Z = U diag(s) V^T`` (orthonormal U, V)."""
    old = float(s1 @ s1)
    inner = float(np.sum((u1.T @ u2) * np.outer(s1, s2) * (v1.T @ v2)))
    return max(old + float(s2 @ s2) - 2.0 * inner, 0.0), old


@dataclass
class _SoftImputeState:
    """``Z = u diag(s) v^T``, and the last SVD's full right basis to warm-start the next."""

    u: np.ndarray
    s: np.ndarray
    v: np.ndarray
    basis: np.ndarray


def soft_impute(
    obs: Observations,
    shrinkage: float | None = None,
    rank: int | None = None,
    max_iters: int = 100,
    tol: float = 1e-4,
    center: Center = "none",
    clip: tuple[float, float] | None = None,
    seed: int = 0,
    solver: Literal["randomized", "arpack"] = "randomized",
    path: int = 5,
) -> LowRankModel:
    """Soft-impute (Mazumder, Hastie & Tibshirani 2010).

    Iterates ``Z <- S_lambda(P_Omega(X) + P_Omega^perp(Z))``, where ``S_lambda`` soft-thresholds
    the singular values by ``lambda = shrinkage``: the fixed point minimises
    ``1/2 ||P_Omega(X - Z)||_F^2 + lambda ||Z||_*``. The filled-in matrix is the sparse
    ``P_Omega(X - Z)`` plus the low-rank ``Z = U S V^T``, applied as a ``LinearOperator`` at
    cost ``O(|Omega| + (m + n) k)`` per product: nothing ``m x n`` is ever formed.

    Parameters
    ----------
    shrinkage:
        ``lambda >= 0`` in the units of the values. Default: ``DEFAULT_SHRINKAGE_FRACTION``
        (0.3) times the top singular value of the centred ``P_Omega(X)``, chosen on a
        validation split of MovieLens with ``center="biases"``; exactly low-rank data wants a
        much smaller value. ``0`` with a ``rank`` is "hard impute" (iterated rank-``rank``
        SVD), which recovers an exactly low-rank matrix from enough entries.
    rank:
        Cap on the rank of ``Z`` (only the top ``rank`` triplets are computed). ``None``: no
        cap; the number of triplets grows until one falls below ``lambda`` (at most
        ``min(m, n) - 1``), which is slow for a small ``lambda``.
    max_iters, tol:
        Stop after ``max_iters`` steps (per value of lambda on the path) or once
        ``||Z_new - Z_old||_F <= tol ||Z_old||_F``. Convergence can be slow, so this change
        understates the distance to the solution: ``1e-3`` gives the same MovieLens figures
        in half the time but stops far too early at a small ``shrinkage``; to recover an
        exactly low-rank matrix to high accuracy pass e.g. ``1e-6``.
    center:
        ``"none"``, ``"mean"`` or ``"biases"``: see the module docstring.
    clip:
        ``(lo, hi)`` to clip predictions, e.g. ``(0.5, 5)`` for star ratings.
    seed:
        Seeds the random start vectors of the SVDs; equal seeds give equal results.
    solver:
        How each step's top singular triplets are found. ``"randomized"`` (default): one
        step of randomized subspace iteration (Halko, Martinsson & Tropp 2011) warm-started
        from the previous step's singular vectors; cheap, and exact at convergence.
        ``"arpack"``: ``scipy.sparse.linalg.svds`` (Lanczos) to full accuracy at every step;
        slower, useful as a check.
    path:
        Solve for ``path`` values of lambda, geometrically spaced from the top singular value
        of ``P_Omega(X)`` down to ``shrinkage``, each warm-started from the last and solved
        to ``10 * tol`` but the final one (the "warm starts" of Mazumder et al.). This keeps
        the rank low on the way, so a small ``shrinkage`` converges in far fewer steps;
        ``path=1`` starts at ``Z = 0``. ``iterations`` in the result counts all steps.
    """
    m, n = obs.shape
    if min(m, n) < 2:
        raise UserError(f"soft_impute needs at least a 2 x 2 matrix, got shape {obs.shape}")
    if rank is not None:
        _check_rank(rank, obs.shape)
    if shrinkage is not None:
        _check_nonneg("shrinkage", shrinkage, "leave it None for the default "
                      f"({DEFAULT_SHRINKAGE_FRACTION} x the top singular value)")
    _check_count("max_iters", max_iters)
    _check_count("path", path)
    _check_nonneg("tol", tol, "e.g. tol=1e-4")
    if solver not in ("randomized", "arpack"):
        raise UserError(f"solver must be 'randomized' or 'arpack', got {solver!r}")
    clip = _check_clip(clip)
    centering = _centered(obs, center)
    values = centering.values

    rng = np.random.default_rng((seed, 0xA15))  # not the stream of random_low_rank(seed)
    pat = _Pattern(obs)
    x_sorted = values[pat.order]
    sigma1 = 0.0
    if shrinkage is None or path > 1:
        top = np.asarray(svds(pat.csr(x_sorted), k=1, return_singular_vectors=False, rng=rng))
        sigma1 = float(np.max(top))
    lam = DEFAULT_SHRINKAGE_FRACTION * sigma1 if shrinkage is None else float(shrinkage)
    lams = np.geomspace(sigma1, lam, path + 1)[1:] if 0 < lam < sigma1 and path > 1 else [lam]

    state = _SoftImputeState(np.zeros((m, 0)), np.zeros(0), np.zeros((n, 0)), np.zeros((n, 0)))
    total, converged = 0, False
    for i, lam_k in enumerate(lams):  # warm starts along the path, loosely solved but the last
        stage_tol = tol if i == len(lams) - 1 else 10 * tol
        its, converged = _soft_impute_steps(
            pat, x_sorted, state, float(lam_k), rank, max_iters, stage_tol, rng, solver
        )
        total += its
    u, s, v = state.u, state.s, state.v
    root = np.sqrt(s)
    return centering.model(u * root, v * root, clip=clip, iterations=total,
                           converged=converged, shrinkage=lam)


def soft_impute_validated(
    train: Observations,
    validation: Observations,
    *,
    points: int = 12,
    lowest: float = 1e-3,
    rank: int | None = None,
    max_iters: int = 100,
    tol: float = 1e-4,
    center: Center = "none",
    clip: tuple[float, float] | None = None,
    seed: int = 0,
) -> LowRankModel:
    """Soft-impute with its shrinkage chosen on ``validation``: ``points`` values of lambda,
    geometrically spaced from the top singular value of the centred ``P_Omega(X)`` down to
    ``lowest`` times it, each warm-started from the previous one; the model with the lowest
    validation RMSE is returned (its ``shrinkage`` says which). The path stops early once the
    validation RMSE has risen for three values in a row."""
    if validation.shape != train.shape:
        raise UserError(f"validation entries are for shape {validation.shape}, the training "
                         f"entries {train.shape}; split both from the same Observations")
    _check_count("points", points)
    if not 0 < lowest < 1:
        raise UserError(f"lowest must be in (0, 1), got {lowest}")
    if rank is not None:
        _check_rank(rank, train.shape)
    clip = _check_clip(clip)
    m, n = train.shape
    centering = _centered(train, center)
    rng = np.random.default_rng((seed, 0xA15))
    pat = _Pattern(train)
    x_sorted = centering.values[pat.order]
    top = np.asarray(svds(pat.csr(x_sorted), k=1, return_singular_vectors=False, rng=rng))
    sigma1 = float(np.max(top))
    state = _SoftImputeState(np.zeros((m, 0)), np.zeros(0), np.zeros((n, 0)), np.zeros((n, 0)))
    best: tuple[float, LowRankModel] | None = None
    worse, total = 0, 0
    for lam in np.geomspace(sigma1, lowest * sigma1, points + 1)[1:]:
        its, converged = _soft_impute_steps(pat, x_sorted, state, float(lam), rank, max_iters,
                                            tol, rng, "randomized")
        total += its
        root = np.sqrt(state.s)
        model = centering.model(state.u * root, state.v * root, clip=clip, iterations=total,
                                converged=converged, shrinkage=float(lam))
        score = rmse(model, validation)
        if best is None or score < best[0]:
            best, worse = (score, model), 0
        else:
            worse += 1
            if worse == 3:
                break
    assert best is not None
    return best[1]


def _soft_impute_steps(
    pat: _Pattern, x_sorted: np.ndarray, st: _SoftImputeState, lam: float, rank: int | None,
    max_iters: int, tol: float, rng: np.random.Generator, solver: str,
) -> tuple[int, bool]:
    """Soft-impute steps at one ``lambda``, updating ``st`` in place, until converged.
    Returns the number of steps and whether they converged."""
    k_max = min(pat.shape) - 1
    for it in range(1, max_iters + 1):
        z_on = _sampled_dot(st.u * st.s, st.v, pat.rows, pat.cols)
        resid = pat.csr(x_sorted - z_on)
        op = _sparse_plus_low_rank(resid, resid.T.tocsr(), st.u, st.s, st.v)
        # enough triplets to see the first one below lambda (or the cap)
        k = rank if rank is not None else min(k_max, max(len(st.s) + 5, 10))
        while True:
            un, sn, vn, st.basis = _top_svd(op, k, st.basis, rng, solver)
            if rank is not None or sn.min() <= lam or k == k_max:
                break
            k = min(2 * k, k_max)
        keep = sn > lam
        un, sn, vn = un[:, keep], sn[keep] - lam, vn[:, keep]
        change, old = _frob_change(st.u, st.s, st.v, un, sn, vn)
        st.u, st.s, st.v = un, sn, vn
        if change <= tol * tol * old:
            return it, True
    return max_iters, False


def _top_svd(
    op: LinearOperator, k: int, warm: np.ndarray, rng: np.random.Generator, solver: str,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Top-k singular triplets ``(U, s, V)`` of ``op`` (in any order), and a right basis
    (``V`` or wider) to warm-start the next call."""
    if solver == "arpack":
        u, sig, vt = svds(op, k=k, rng=rng)
        v = np.asarray(vt).T
        return np.asarray(u), np.asarray(sig), v, v
    return _randomized_svd(op, k, warm, rng)


def _randomized_svd(
    op: LinearOperator, k: int, warm: np.ndarray, rng: np.random.Generator,
    oversample: int = 10,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Top-k singular triplets by randomized subspace iteration (Halko, Martinsson & Tropp
    2011) on ``k + oversample`` vectors, started from the previous call's basis ``warm``
    (padded with random columns); returns the new basis of that width too.

    Across soft-impute steps this is a warm-started block power method, so one pass suffices
    while ``warm`` is wide enough; otherwise one extra power iteration sharpens the new
    directions.
    """
    m, n = op.shape
    width = min(k + oversample, m, n)
    start = np.empty((n, width))
    c = min(warm.shape[1], width)
    start[:, :c] = warm[:, :c]
    start[:, c:] = rng.standard_normal((n, width - c))
    q = sla.qr(op.matmat(start), mode="economic")[0]
    if c < width:
        q = sla.qr(op.matmat(op.rmatmat(q)), mode="economic")[0]
    qb, rb = sla.qr(op.rmatmat(q), mode="economic")  # A^T Q = Qb Rb, so A ~ Q Rb^T Qb^T
    x, sig, yt = np.linalg.svd(rb.T)
    basis = qb @ yt.T
    return (q @ x)[:, :k], sig[:k], basis[:, :k], basis


def _sparse_plus_low_rank(
    resid: sp.csr_matrix, resid_t: sp.csr_matrix, u: np.ndarray, s: np.ndarray, v: np.ndarray,
) -> LinearOperator:
    """``resid + u diag(s) v^T`` as a LinearOperator (products with vectors and blocks)."""

    def mat(x: np.ndarray) -> np.ndarray:
        low = u @ (s[:, None] * (v.T @ x.reshape(v.shape[0], -1)))
        return np.asarray(resid @ x) + low.reshape((u.shape[0], *x.shape[1:]))

    def rmat(y: np.ndarray) -> np.ndarray:
        low = v @ (s[:, None] * (u.T @ y.reshape(u.shape[0], -1)))
        return np.asarray(resid_t @ y) + low.reshape((v.shape[0], *y.shape[1:]))

    return LinearOperator(resid.shape, matvec=mat, rmatvec=rmat, matmat=mat, rmatmat=rmat,
                          dtype=np.float64)


# ---------------------------------------------------------------------------- ALS
_CHUNK_FLOATS = 1 << 23  # bounds the temporary arrays of one chunk to ~64 MB


def _solve_spd(gram: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    """Solve ``gram[i] x[i] = rhs[i]`` for a stack of symmetric positive definite matrices.

    A batched Cholesky factorisation, then forward and back substitution vectorised over the
    stack (a loop over the r columns only); about 3x faster than ``np.linalg.solve`` on many
    small systems. Singular stacks (possible with ``reg = 0``) fall back to pseudo-inverses.
    """
    try:
        chol = np.linalg.cholesky(gram)
    except np.linalg.LinAlgError:
        return (np.linalg.pinv(gram, hermitian=True) @ rhs[..., None])[..., 0]
    low = np.ascontiguousarray(chol.transpose(1, 2, 0))  # (r, r, c): low[k, j] over the stack
    sol = np.ascontiguousarray(rhs.T)
    r = sol.shape[0]
    for k in range(r):
        if k:
            sol[k] -= np.einsum("jc,jc->c", low[k, :k], sol[:k])
        sol[k] /= low[k, k]
    for k in range(r - 1, -1, -1):
        if k < r - 1:
            sol[k] -= np.einsum("jc,jc->c", low[k + 1:, k], sol[k + 1:])
        sol[k] /= low[k, k]
    return sol.T


def _ridge_side(
    x: sp.csr_matrix, pattern: sp.csr_matrix, counts: np.ndarray, other: np.ndarray, reg: float,
) -> np.ndarray:
    """Solve every row's ridge problem ``min_u sum_j (x_ij - u.other_j)^2 + reg n_i |u|^2``.

    Row i's Gram matrix ``sum_{j in Omega_i} other_j other_j^T`` is row i of
    ``pattern @ W`` reshaped to r x r, where ``pattern`` is the 0/1 CSR matrix of Omega and
    ``W[j] = outer(other_j, other_j)`` flattened: one sparse-dense product builds all rows'
    Gram matrices, then one stacked solve. Rows go in chunks, and ``W`` in column groups when
    it is large, so that temporaries stay near ``_CHUNK_FLOATS`` floats.
    """
    (m, n), r = x.shape, other.shape[1]
    rhs = np.asarray(x @ other)
    group = max(1, min(r, _CHUNK_FLOATS // max(n * r, 1)))  # rows a of outer(.)[a, :] per group
    outer = (other[:, :, None] * other[:, None, :]).reshape(n, r * r) if group == r else None
    ridge = reg * counts
    # a tiny jitter keeps rows with fewer than r entries solvable when reg = 0
    jitter = 1e-12 * max(float(np.mean(np.sum(other * other, axis=1))), 1e-300)
    eye = np.eye(r)
    out = np.empty((m, r))
    row_step = max(1, _CHUNK_FLOATS // (r * r))
    for lo in range(0, m, row_step):
        hi = min(m, lo + row_step)
        block = pattern[lo:hi]
        if outer is not None:
            gram = np.asarray(block @ outer).reshape(hi - lo, r, r)
        else:
            gram = np.empty((hi - lo, r, r))
            for a in range(0, r, group):
                w = other[:, a:a + group, None] * other[:, None, :]
                gram[:, a:a + group] = np.asarray(block @ w.reshape(n, -1)).reshape(hi - lo, -1, r)
        gram += (ridge[lo:hi, None, None] + jitter) * eye
        out[lo:hi] = _solve_spd(gram, rhs[lo:hi])
    return out


def als(
    obs: Observations,
    rank: int,
    reg: float = DEFAULT_ALS_REG,
    iters: int = 50,
    tol: float = 1e-4,
    center: Center = "none",
    clip: tuple[float, float] | None = None,
    seed: int = 0,
) -> LowRankModel:
    """Alternating least squares with weighted ridge regularisation (Zhou et al. 2008).

    Minimises ``sum_Omega (x_ij - <left_i, right_j>)^2 + reg (sum_i n_i |left_i|^2 +
    sum_j n_j |right_j|^2)``, ``n_i`` / ``n_j`` the observation counts of row i / column j.
    Starts from Gaussian ``left`` (seeded), then alternates exact solves for ``right`` and
    ``left``; each half-step solves all rows' ``rank x rank`` systems at once. Stops after
    ``iters`` sweeps or when the training objective falls by less than ``tol`` (relative) in
    a sweep. Rows or columns with no observations get zero factors. ``center`` and ``clip``:
    see :func:`soft_impute`; ``reg = 0`` is allowed (use it for exactly low-rank data).
    """
    m, n = obs.shape
    if min(m, n) < 2:
        raise UserError(f"als needs at least a 2 x 2 matrix, got shape {obs.shape}")
    _check_rank(rank, obs.shape)
    _check_nonneg("reg", reg, f"use 0 for none, e.g. the default {DEFAULT_ALS_REG}")
    _check_count("iters", iters)
    _check_nonneg("tol", tol, "e.g. tol=1e-4")
    clip = _check_clip(clip)
    centering = _centered(obs, center)
    values = centering.values

    pat = _Pattern(obs)
    x_sorted = values[pat.order]
    x = pat.csr(x_sorted)
    ones = pat.csr(np.ones(len(obs)))
    x_t, ones_t = x.T.tocsr(), ones.T.tocsr()
    row_counts = np.diff(ones.indptr).astype(np.float64)
    col_counts = np.diff(ones_t.indptr).astype(np.float64)

    rng = np.random.default_rng((seed, 0xA15))  # not the stream of random_low_rank(seed)
    scale = np.sqrt(max(float(np.sqrt(np.mean(values * values))), 1e-12) / np.sqrt(rank))
    left = rng.standard_normal((m, rank)) * scale
    right = np.zeros((n, rank))
    prev = np.inf
    converged = False
    it = 0
    for it in range(1, iters + 1):  # noqa: B007 (reported after the loop)
        right = _ridge_side(x_t, ones_t, col_counts, left, reg)
        left = _ridge_side(x, ones, row_counts, right, reg)
        fit = _sampled_dot(left, right, pat.rows, pat.cols) - x_sorted
        loss = float(fit @ fit) + reg * float(
            row_counts @ np.sum(left * left, axis=1) + col_counts @ np.sum(right * right, axis=1)
        )
        if np.isfinite(prev) and prev - loss <= tol * prev:
            converged = True
            break
        prev = loss
    return centering.model(left, right, clip=clip, iterations=it, converged=converged)

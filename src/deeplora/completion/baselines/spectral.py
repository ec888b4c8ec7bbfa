"""Soft-impute: nuclear-norm regularised completion by iterated singular-value
soft-thresholding, with a shrinkage path chosen on validation (see the package docstring)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import scipy.sparse as sp
import torch
from scipy.sparse.linalg import LinearOperator, svds

from ...errors import UserError
from ...subspace import randomized_svd
from ..data import CsrPattern, Observations
from .common import (
    DEFAULT_SHRINKAGE_FRACTION,
    Center,
    Centering,
    LowRankModel,
    _check_clip,
    _check_count,
    _check_nonneg,
    _check_rank,
    _sampled_dot,
    rmse,
)


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
    centering = Centering.fit(obs, center)
    values = centering.residual(obs).values

    rng = np.random.default_rng((seed, 0xA15))  # not the stream of random_low_rank(seed)
    pat = CsrPattern.of(obs.rows, obs.cols, obs.shape)
    x_sorted = values[pat.order]
    sigma1 = 0.0
    if shrinkage is None or path > 1:
        top = np.asarray(svds(pat.scipy(x_sorted), k=1, return_singular_vectors=False, rng=rng))
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
    centering = Centering.fit(train, center)
    rng = np.random.default_rng((seed, 0xA15))
    pat = CsrPattern.of(train.rows, train.cols, train.shape)
    x_sorted = centering.residual(train).values[pat.order]
    top = np.asarray(svds(pat.scipy(x_sorted), k=1, return_singular_vectors=False, rng=rng))
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
    pat: CsrPattern, x_sorted: np.ndarray, st: _SoftImputeState, lam: float, rank: int | None,
    max_iters: int, tol: float, rng: np.random.Generator, solver: str,
) -> tuple[int, bool]:
    """Soft-impute steps at one ``lambda``, updating ``st`` in place, until converged.
    Returns the number of steps and whether they converged."""
    k_max = min(pat.shape) - 1
    for it in range(1, max_iters + 1):
        z_on = _sampled_dot(st.u * st.s, st.v, pat.rows, pat.cols)
        resid = pat.scipy(x_sorted - z_on)
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
    """Top-k singular triplets by :func:`deeplora.subspace.randomized_svd` on ``k +
    oversample`` vectors, started from the previous call's basis ``warm`` (padded with random
    columns); returns the new basis of that width too.

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

    def matmat(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(np.asarray(op.matmat(x.numpy()), dtype=np.float64))

    def rmatmat(y: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(np.asarray(op.rmatmat(y.numpy()), dtype=np.float64))

    u, sig, v, basis = randomized_svd(matmat, rmatmat, torch.from_numpy(start), k,
                                      iters=0 if c == width else 1)
    return u.numpy(), sig.numpy(), v.numpy(), basis.numpy()


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

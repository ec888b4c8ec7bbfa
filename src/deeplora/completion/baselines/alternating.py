"""Alternating least squares with ridge penalties scaled by each row's and column's number
of observations (see the package docstring)."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from ...errors import UserError
from ..data import CsrPattern, Observations
from .common import (
    DEFAULT_ALS_REG,
    Center,
    Centering,
    LowRankModel,
    _check_clip,
    _check_count,
    _check_nonneg,
    _check_rank,
    _sampled_dot,
)

# ---------------------------------------------------------------------------- ALS
_CHUNK_FLOATS = 1 << 23  # bounds the temporary arrays of one chunk to ~64 MB


def _solve_spd(gram: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    """Solve ``gram[i] x[i] = rhs[i]`` for a stack of symmetric positive definite matrices.

    A batched Cholesky factorisation, then forward and back substitution vectorised over the
    stack (a loop over the r columns only), cheaper than ``np.linalg.solve`` on many small
    systems. Singular stacks (possible with ``reg = 0``) fall back to pseudo-inverses.
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
    centering = Centering.fit(obs, center)
    values = centering.residual(obs).values

    pat = CsrPattern.of(obs.rows, obs.cols, obs.shape)
    x_sorted = values[pat.order]
    x = pat.scipy(x_sorted)
    ones = pat.scipy(np.ones(len(obs)))
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

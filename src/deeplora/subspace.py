"""The shared math of the paper: eps-orthogonal init, chains of factors, the 2r_hat basis
read off the init gradient, principal angles and effective rank.

Reference: Yaras, Wang, Balzano, Qu, "Compressible Dynamics in Deep Overparameterized
Low-Rank Learning & Adaptation", ICML 2024 (arXiv 2406.04112), sections 2-3.

Factors are kept in the order they act: ``factors = [W_1, ..., W_L]`` and the end-to-end
map is ``chain(factors) = W_L ... W_2 W_1``.

Theorem (section 2): with ``W_l(0) = eps * orthogonal`` and gradient descent on a rank-r
problem, ``W_l(t) = U_l diag(Wt_l(t), eps I) V_l^T`` for fixed orthonormal ``U_l, V_l``: only a
2r-dimensional slice of each layer moves. :func:`compress_dense` (section 3.1) and
:func:`compress_identity` (our sparse form, docs/METHOD.md 3.2) build the outer bases of that slice;
:func:`normalized_top_singular` (ours) reads its directions off a very sparse init gradient.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal, overload

import numpy as np
import scipy.sparse as sp
import torch
from scipy.sparse.linalg import LinearOperator, aslinearoperator, svds

from .errors import UserError

Init = Literal["orthogonal", "identity"]


def eps_orthogonal(
    rows: int,
    cols: int,
    eps: float,
    *,
    init: Init = "orthogonal",
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """``eps`` times a (semi-)orthogonal ``rows x cols`` matrix.

    ``init="orthogonal"``: Haar-random, from the QR of a Gaussian matrix (sign-corrected).
    ``init="identity"``: the partial identity, cut or padded to the shape.
    """
    if init == "identity":
        return eps * torch.eye(rows, cols, dtype=dtype)
    if init != "orthogonal":
        raise UserError(f"init must be 'orthogonal' or 'identity', got {init!r}")
    big, small = max(rows, cols), min(rows, cols)
    g = torch.randn(big, small, generator=generator, dtype=torch.float64)
    q, r = torch.linalg.qr(g)
    q = q * torch.sign(torch.diagonal(r)).where(torch.diagonal(r) != 0, torch.ones(()))
    q = q if rows >= cols else q.T
    return (eps * q).to(dtype)


def chain(factors: Sequence[torch.Tensor]) -> torch.Tensor:
    """End-to-end product ``W_L ... W_1`` of ``factors = [W_1, ..., W_L]``."""
    out = factors[0]
    for w in factors[1:]:
        out = w @ out
    return out


def chain_grads(factors: Sequence[torch.Tensor], grad_out: torch.Tensor) -> list[torch.Tensor]:
    """Gradients of ``<grad_out, W_L ... W_1>`` with respect to each ``W_l``.

    ``dW_l = (W_L ... W_{l+1})^T grad_out (W_{l-1} ... W_1)^T``, from prefix and suffix
    products, so the cost is O(L) matrix products.
    """
    n = len(factors)
    # prefix[l] = W_l ... W_1 (prefix[0] is None: the identity)
    prefix: list[torch.Tensor | None] = [None] * (n + 1)
    for i, w in enumerate(factors):
        prev = prefix[i]
        prefix[i + 1] = w if prev is None else w @ prev
    grads: list[torch.Tensor] = [grad_out] * n
    left = grad_out  # (W_L ... W_{l+1})^T grad_out
    for i in range(n - 1, -1, -1):
        before = prefix[i]
        grads[i] = left if before is None else left @ before.T
        left = factors[i].T @ left
    return grads


def as_float64(t: torch.Tensor) -> torch.Tensor:
    """``t`` detached, in float64 (on the CPU where the device has no float64)."""
    t = t.detach()
    if t.device.type == "mps":  # no float64 there
        t = t.cpu()
    return t.to(torch.float64)


def check_chain(factors: Sequence[torch.Tensor], what: str = "factors") -> None:
    """Refuse anything but a non-empty list of 2-D tensors whose shapes chain."""
    if len(factors) == 0:
        raise UserError(f"{what}: empty list; a source returns at least one matrix")
    for i, f in enumerate(factors):
        if not isinstance(f, torch.Tensor) or f.ndim != 2:
            got = tuple(f.shape) if isinstance(f, torch.Tensor) else type(f).__name__
            raise UserError(f"{what}: factor {i} must be a 2-D tensor, got {got}")
    for i in range(1, len(factors)):
        if factors[i].shape[1] != factors[i - 1].shape[0]:
            raise UserError(
                f"{what}: factor shapes do not chain (M = W_L ... W_1 needs W_l.shape[1] == "
                f"W_(l-1).shape[0]): {tuple(factors[i - 1].shape)} then {tuple(factors[i].shape)}"
            )


@torch.no_grad()
def factored_svd(
    factors: Sequence[torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Exact thin SVD ``M = U diag(S) V^T`` of ``M = chain(factors) = W_L ... W_1``, in float64,
    ``S`` descending.

    When the chain is thin (its narrowest inner width ``w`` is below ``min(d_out, d_in)``) ``M``
    is never formed: split it at the narrowest point, ``M = A B`` with ``A`` (d_out x w) and
    ``B`` (w x d_in) built from the narrow end, ``A = Q_a R_a``, ``B^T = Q_b R_b``, and
    ``M = Q_a (R_a R_b^T) Q_b^T``; the ``w x w`` core's SVD gives the rest (``S`` has ``w``
    entries). Otherwise one dense SVD (``min(d_out, d_in)`` entries). Computed on the factors'
    device (CPU for MPS).
    """
    check_chain(factors)
    fs = [as_float64(f) for f in factors]
    d_out, d_in = fs[-1].shape[0], fs[0].shape[1]
    widths = [int(f.shape[0]) for f in fs[:-1]]
    if widths and min(widths) < min(d_out, d_in):
        j = widths.index(min(widths))  # the narrowest point: after factor j
        a = chain(fs[j + 1:])  # d_out x w, every partial product w columns wide
        bt = chain([f.T for f in reversed(fs[: j + 1])])  # d_in x w
        qa, ra = torch.linalg.qr(a)
        qb, rb = torch.linalg.qr(bt)
        uc, s, vch = torch.linalg.svd(ra @ rb.T)
        return qa @ uc, s, qb @ vch.T
    u, s, vh = torch.linalg.svd(chain(fs), full_matrices=False)
    return u, s, vh.T


def orth(m: torch.Tensor) -> torch.Tensor:
    """An orthonormal basis with as many columns as ``m`` that contains the span of ``m``.

    Householder QR returns orthonormal columns even when ``m`` is rank deficient (then the
    extra columns complete the span with arbitrary orthogonal directions).
    """
    return torch.linalg.qr(m).Q


#: Sparse matrices and operators whose smaller side is at least this large get their top
#: singular vectors by randomized subspace iteration instead of Lanczos.
RANDOMIZED_MIN = 20_000
#: Power iterations and oversampling of the randomized method.
RANDOMIZED_ITERS, RANDOMIZED_OVERSAMPLE = 20, 10
#: Dense torch tensors whose smaller side is at most this get exact singular vectors from the
#: eigendecomposition of the smaller Gram matrix; larger ones the randomized method.
EXACT_SVD_MAX_DIM = 1024
#: Power iterations of the randomized method on dense torch tensors.
DENSE_RANDOMIZED_ITERS = 6


@overload
def top_singular(matrix: torch.Tensor, k: int, *, seed: int = 0
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]: ...  # fmt: skip
@overload
def top_singular(matrix: np.ndarray | sp.spmatrix | sp.sparray | LinearOperator, k: int, *,
                 seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]: ...  # fmt: skip
def top_singular(
    matrix: torch.Tensor | np.ndarray | sp.spmatrix | sp.sparray | LinearOperator,
    k: int,
    *,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The top-``k`` singular triplets ``(U, S, V)`` of a matrix: the one truncated SVD of the
    library. Singular values come in descending order; signs are arbitrary.

    A dense torch tensor stays in torch, on its device, in float64: with a smaller side up to
    ``EXACT_SVD_MAX_DIM``, exact from the eigendecomposition of the smaller Gram matrix
    (``A A^T = U S^2 U^T``, ``V = orth(A^T U)``; O(m n min(m, n)), several times cheaper than a
    full SVD); larger, :func:`randomized_svd` from ``k + 10`` seeded columns with
    ``DENSE_RANDOMIZED_ITERS`` iterations (accurate when the spectrum has a gap after the
    ``k``-th value). Used by the compressed Deep LoRA init on one layer's gradient.

    A numpy array, scipy.sparse matrix or :class:`~scipy.sparse.linalg.LinearOperator` (known
    only through its products) gives numpy arrays: small or dense matrices a full SVD (a small
    operator is applied to the identity first); sparse matrices and operators Lanczos (ARPACK)
    with a seeded start vector, cost O(nnz k) per iteration; from ``RANDOMIZED_MIN`` rows and
    columns on, :func:`randomized_svd` (``RANDOMIZED_ITERS`` iterations on
    ``k + RANDOMIZED_OVERSAMPLE`` seeded vectors), where Lanczos needs thousands of products to
    separate a clustered spectrum (docs/METHOD.md 3.2).
    """
    m, n = matrix.shape
    if k < 1:
        raise UserError(f"k must be >= 1, got {k}")
    if isinstance(matrix, torch.Tensor):
        return _top_singular_dense(matrix.detach(), k, seed)
    small = min(m, n) <= max(64, 3 * k) or m * n <= 250_000
    if not small and min(m, n) >= RANDOMIZED_MIN and (
            sp.issparse(matrix) or isinstance(matrix, LinearOperator)):
        return _randomized(matrix, k, seed)
    if isinstance(matrix, LinearOperator):
        if small:
            matrix = np.asarray(matrix.matmat(np.eye(n)))
        else:
            v0 = np.random.default_rng(seed).standard_normal(min(m, n))
            u, s, vt = svds(matrix, k=k, v0=v0, tol=0, return_singular_vectors=True)
            order = np.argsort(s)[::-1]
            return u[:, order], s[order], vt[order].T
    if small or not sp.issparse(matrix):
        dense = sp.csr_matrix(matrix).toarray() if sp.issparse(matrix) else np.asarray(matrix)
        u, s, vt = np.linalg.svd(dense, full_matrices=False)
        return u[:, :k], s[:k], vt[:k].T
    rng = np.random.default_rng(seed)
    v0 = rng.standard_normal(min(m, n))
    u, s, vt = svds(sp.csr_matrix(matrix), k=k, v0=v0, tol=0, return_singular_vectors=True)
    order = np.argsort(s)[::-1]
    return u[:, order], s[order], vt[order].T


def _top_singular_dense(g: torch.Tensor, k: int, seed: int
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    flip = g.shape[0] > g.shape[1]
    a = (g.T if flip else g).double()  # m x n with m <= n
    if a.shape[0] <= EXACT_SVD_MAX_DIM:
        values, vectors = torch.linalg.eigh(a @ a.T)  # ascending eigenvalues
        u, s = vectors[:, -k:].flip(1), values[-k:].flip(0).clamp(min=0).sqrt()
    else:
        gen = torch.Generator(device="cpu").manual_seed(seed)
        q = min(k + 10, a.shape[0])
        omega = torch.randn(a.shape[1], q, generator=gen, dtype=a.dtype).to(a.device)
        u, s, _, _ = randomized_svd(lambda x: a @ x, lambda y: a.T @ y, omega, k,
                                    iters=DENSE_RANDOMIZED_ITERS)
    v = orth(a.T @ u)
    return (v, s, u) if flip else (u, s, v)


def _randomized(matrix: sp.spmatrix | sp.sparray | LinearOperator, k: int, seed: int
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`randomized_svd` from ``RANDOMIZED_ITERS`` power iterations on seeded random
    vectors. A scipy.sparse matrix is multiplied as a torch CSR tensor (multithreaded)."""
    matmat, rmatmat = _block_products(matrix)
    m, n = matrix.shape
    width = min(k + RANDOMIZED_OVERSAMPLE, m, n)
    gen = torch.Generator().manual_seed(seed)
    start = torch.randn(n, width, generator=gen, dtype=torch.float64)
    u, s, v, _ = randomized_svd(matmat, rmatmat, start, k, iters=RANDOMIZED_ITERS)
    return u.numpy(), s.numpy(), v.numpy()


def randomized_svd(
    matmat: Callable[[torch.Tensor], torch.Tensor],
    rmatmat: Callable[[torch.Tensor], torch.Tensor],
    start: torch.Tensor,
    k: int,
    *,
    iters: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-``k`` singular triplets ``(U, S, V)`` of a matrix ``A`` known through
    ``matmat(x) = A x`` and ``rmatmat(y) = A^T y``, by randomized subspace iteration (a block
    power method with re-orthonormalization) from the ``n x w`` block ``start`` (``w >= k``):
    ``Q = orth(A start)``, then ``iters`` times ``Q = orth(A orth(A^T Q))``; with
    ``A^T Q = Q_b R_b``, ``A ~ Q R_b^T Q_b^T`` and the small SVD of ``R_b^T`` gives the rest.
    Also returns the ``n x w`` right basis, to warm-start a later call. ``S`` descends; it is
    accurate when ``A``'s spectrum has a gap after the ``w``-th value or ``iters`` is large.
    The one randomized truncated SVD of the library: the sparse solver's init, soft-impute
    (warm-started) and the compressed Deep LoRA init of large layers use it.
    """
    q = _orth(matmat(start))
    for _ in range(iters):
        q = _orth(matmat(_orth(rmatmat(q))))
    qb, rb = torch.linalg.qr(rmatmat(q))
    x, sig, yt = torch.linalg.svd(rb.T)
    basis = qb @ yt.T
    return (q @ x)[:, :k], sig[:k], basis[:, :k], basis


def _orth(x: torch.Tensor) -> torch.Tensor:
    return torch.linalg.qr(x)[0]


def _block_products(matrix: sp.spmatrix | sp.sparray | LinearOperator) -> tuple[
        Callable[[torch.Tensor], torch.Tensor], Callable[[torch.Tensor], torch.Tensor]]:
    """``(x -> A x, y -> A^T y)`` on float64 tensors of several columns."""
    if not sp.issparse(matrix):
        op = aslinearoperator(matrix)
        return (lambda x: torch.from_numpy(np.asarray(op.matmat(x.numpy()), np.float64)),
                lambda y: torch.from_numpy(np.asarray(op.rmatmat(y.numpy()), np.float64)))

    def csr(a: sp.csr_matrix) -> torch.Tensor:
        index = np.int32 if a.nnz < 2**31 else np.int64
        return torch.sparse_csr_tensor(
            torch.from_numpy(a.indptr.astype(index)), torch.from_numpy(a.indices.astype(index)),
            torch.from_numpy(a.data.astype(np.float64)), size=a.shape, check_invariants=False)

    a = sp.csr_matrix(matrix)
    forward, backward = csr(a), csr(a.T.tocsr())
    return (lambda x: forward @ x), (lambda y: backward @ y)


def normalized_top_singular(
    matrix: np.ndarray | sp.spmatrix | sp.sparray | LinearOperator,
    k: int,
    row_energy: np.ndarray,
    col_energy: np.ndarray,
    *,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Orthonormal bases ``(U, V)`` of the top-``k`` left and right singular subspaces of a
    sampled low-rank matrix, read off its row- and column-normalized form.

    With the row and column sums of squares ``a_i = sum_j E_ij^2``, ``b_j = sum_i E_ij^2``,
    ``D_r = diag(a + mean(a))^(-1/2)`` and ``D_c = diag(b + mean(b))^(-1/2)``:
    ``(U', V') = top_k(D_r E D_c)``, ``U = orth(D_r^(-1) U')``, ``V = orth(D_c^(-1) V')``.

    When a few dozen entries per row are observed, the top singular vectors of ``E`` itself
    settle on the rows and columns whose observed entries carry the most energy, and miss
    the target's subspace. Scaling those down (regularized by the mean, in the manner of
    regularized spectral clustering) keeps ``E ~ X Y^T`` in the form
    ``(D_r X)(D_c Y)^T``, whose left and right subspaces map back to ``X`` and ``Y``. The cost is
    one :func:`top_singular` of the scaled matrix or operator.
    """
    a = np.asarray(row_energy, dtype=np.float64)
    b = np.asarray(col_energy, dtype=np.float64)
    if a.shape != (matrix.shape[0],) or b.shape != (matrix.shape[1],):
        raise UserError(f"energies of shapes {a.shape} and {b.shape} do not fit a "
                         f"{matrix.shape[0]} x {matrix.shape[1]} matrix")  # fmt: skip
    dr = 1.0 / np.sqrt(a + max(a.mean(), np.finfo(np.float64).tiny))
    dc = 1.0 / np.sqrt(b + max(b.mean(), np.finfo(np.float64).tiny))
    scaled: np.ndarray | sp.spmatrix | LinearOperator
    if isinstance(matrix, LinearOperator):
        op = matrix
        scaled = LinearOperator(
            op.shape, dtype=np.float64,
            matvec=lambda x: dr * op.matvec(dc * np.ravel(x)),
            rmatvec=lambda y: dc * op.rmatvec(dr * np.ravel(y)),
            matmat=lambda x: dr[:, None] * op.matmat(dc[:, None] * x),
            rmatmat=lambda y: dc[:, None] * op.rmatmat(dr[:, None] * y))  # fmt: skip
    elif sp.issparse(matrix):
        scaled = sp.diags(dr) @ sp.csr_matrix(matrix) @ sp.diags(dc)
    else:
        scaled = dr[:, None] * np.asarray(matrix) * dc[None, :]
    u, _, v = top_singular(scaled, k, seed=seed)
    return np.linalg.qr(u / dr[:, None])[0], np.linalg.qr(v / dc[:, None])[0]


def compress_dense(
    factors: Sequence[torch.Tensor],
    grad_first: torch.Tensor,
    r_hat: int,
    eps: float,
    *,
    exact: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Outer bases ``(UL1, V11)`` of the compressed network from the wide init (section 3.1).

    ``G = grad_{W_1} l(Theta(0)) = U_G S V_G^T``;
    ``V11 = orth([V_G[:, :r_hat], W_1(0)^T U_G[:, :r_hat] / eps])`` (n x 2 r_hat);
    ``UL1 = f(Theta(0)) V11 / eps^L`` (m x 2 r_hat).
    The compressed network is ``UL1 Wt_L ... Wt_1 V11^T`` with every ``Wt_l(0) = eps I``.

    ``exact=True`` also adds ``Q^T Q V_G`` (``Q = f(Theta(0)) / eps^L``), closing the slice
    under the projection ``Q^T Q``: for ``m < n`` the slice is then exactly invariant (up to
    3 r_hat wide) instead of approximately; for square problems ``Q^T Q = I`` and nothing
    changes.
    """
    u, _, v = top_singular(grad_first, r_hat)
    ug = torch.as_tensor(u, dtype=grad_first.dtype)
    vg = torch.as_tensor(v, dtype=grad_first.dtype)
    q = chain(factors) / eps ** len(factors)
    columns = [vg, factors[0].T @ ug / eps]
    if exact and q.shape[0] < q.shape[1]:
        columns.append(q.T @ (q @ vg))
    right = orth(torch.cat(columns, dim=1))
    return q @ right, right


def compress_identity(
    u_e: torch.Tensor, v_e: torch.Tensor, shape: tuple[int, int], *, exact: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Outer bases for the partial-identity init, without any dense m x n matrix
    (docs/METHOD.md 3.2).

    With ``W_l(0) = eps * I`` (cut or padded), ``f(0) = eps^L J`` and the init gradient of
    ``W_1`` is ``E = grad_f l(f(0))`` padded with zero rows. For ``m <= n``:
    ``V11 = orth([V_E, J^T U_E])`` and ``UL1 = J V11``, where ``U_E, V_E`` are the top
    ``r_hat`` singular vectors of ``E``. Problems with ``m > n`` must be transposed first.

    ``exact=True`` adds ``J^T J V_E`` (the first m coordinates of ``V_E``): the slice is then
    closed under ``J^T J`` and the wide trajectory is reproduced exactly for ``m < n`` too,
    at up to 3 r_hat columns (see :func:`compress_dense`).
    """
    m, n = shape
    if m > n:
        raise UserError(f"compress_identity needs m <= n (got {m} x {n}); transpose the problem")
    padded = torch.zeros(n, u_e.shape[1], dtype=u_e.dtype)
    padded[:m] = u_e
    columns = [v_e, padded]
    if exact and m < n:
        head = torch.zeros_like(v_e)
        head[:m] = v_e[:m]
        columns.append(head)
    right = orth(torch.cat(columns, dim=1))
    return right[:m].clone(), right


def principal_cosines(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosines of the principal angles between ``span(a)`` and ``span(b)``, descending.

    Both are orthonormalised first; the cosines are the singular values of ``Qa^T Qb``.
    """
    qa, qb = torch.linalg.qr(a).Q, torch.linalg.qr(b).Q
    return torch.linalg.svdvals(qa.T @ qb).clamp(max=1.0)


def effective_rank(
    singular_values: torch.Tensor | np.ndarray,
    *,
    atol: float | None = None,
    rtol: float | None = None,
    energy: float | None = None,
) -> int:
    """Effective rank of a matrix from its singular values (descending or not).

    Exactly one criterion: ``atol`` counts ``s_i > atol``; ``rtol`` counts ``s_i > rtol * s_1``;
    ``energy`` is the least k with ``sum_{i<=k} s_i^2 >= energy * sum_i s_i^2`` (0 for a
    zero matrix).
    """
    s = np.sort(np.abs(np.asarray(singular_values, dtype=np.float64)))[::-1]
    given = [x is not None for x in (atol, rtol, energy)]
    if sum(given) != 1:
        raise UserError("give exactly one of atol, rtol or energy")
    if atol is not None:
        return int((s > atol).sum())
    if rtol is not None:
        return 0 if s.size == 0 or s[0] == 0 else int((s > rtol * s[0]).sum())
    assert energy is not None
    if not 0 < energy <= 1:
        raise UserError(f"energy must be in (0, 1], got {energy}")
    total = float((s**2).sum())
    if total == 0:
        return 0
    cum = np.cumsum(s**2) / total
    cum[-1] = 1.0  # no rounding below the whole energy
    return int(np.searchsorted(cum, energy) + 1)

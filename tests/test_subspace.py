"""The shared math: init, chain gradients, the compressed bases, angles, effective rank."""

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from deeplora import subspace
from deeplora.subspace import (
    chain,
    chain_grads,
    compress_dense,
    compress_identity,
    effective_rank,
    eps_orthogonal,
    normalized_top_singular,
    principal_cosines,
    top_singular,
)


@pytest.mark.parametrize("shape", [(5, 5), (7, 3), (3, 7)])
def test_eps_orthogonal_is_scaled_semi_orthogonal(shape):
    w = eps_orthogonal(*shape, 1e-3, generator=torch.Generator().manual_seed(0))
    small = min(shape)
    gram = w.T @ w if shape[0] >= shape[1] else w @ w.T
    torch.testing.assert_close(gram, 1e-6 * torch.eye(small, dtype=w.dtype))
    ident = eps_orthogonal(*shape, 0.5, init="identity")
    torch.testing.assert_close(ident, 0.5 * torch.eye(*shape, dtype=ident.dtype))


def test_chain_grads_match_autograd():
    gen = torch.Generator().manual_seed(0)
    shapes = [(4, 6), (5, 4), (3, 5)]  # W_1: 4x6, W_2: 5x4, W_3: 3x5
    factors = [torch.randn(*s, generator=gen, dtype=torch.float64, requires_grad=True)
               for s in shapes]
    grad_out = torch.randn(3, 6, generator=gen, dtype=torch.float64)
    (chain(factors) * grad_out).sum().backward()
    for w, g in zip(factors, chain_grads([f.detach() for f in factors], grad_out)):
        torch.testing.assert_close(g, w.grad)


def test_top_singular_sparse_matches_dense():
    rng = np.random.default_rng(0)
    dense = rng.standard_normal((300, 400)) * (rng.random((300, 400)) < 0.05)
    u, s, v = top_singular(sp.csr_matrix(dense), 4)
    s_ref = np.linalg.svd(dense, compute_uv=False)[:4]
    np.testing.assert_allclose(s, s_ref, rtol=1e-10)
    np.testing.assert_allclose(np.abs(np.sum(u * (dense @ v), axis=0)), s, rtol=1e-10)


def test_normalized_basis_maps_back_to_the_exact_subspaces():
    """On an exactly low-rank matrix with very uneven rows and columns, the top singular
    vectors of D_r E D_c mapped back by D_r^-1, D_c^-1 span E's own column and row spaces."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((60, 3)) * rng.lognormal(0, 1.5, (60, 1))
    y = rng.standard_normal((80, 3)) * rng.lognormal(0, 1.5, (80, 1))
    e = x @ y.T
    energies = ((e**2).sum(1), (e**2).sum(0))
    for matrix in (e, sp.csr_matrix(e), sp.linalg.aslinearoperator(e)):
        u, v = normalized_top_singular(matrix, 3, *energies)
        np.testing.assert_allclose(u.T @ u, np.eye(3), atol=1e-12)
        cu = principal_cosines(torch.from_numpy(u), torch.from_numpy(np.linalg.qr(x)[0]))
        cv = principal_cosines(torch.from_numpy(v), torch.from_numpy(np.linalg.qr(y)[0]))
        np.testing.assert_allclose(cu.numpy(), 1.0, atol=1e-10)
        np.testing.assert_allclose(cv.numpy(), 1.0, atol=1e-10)
    with pytest.raises(ValueError, match="do not fit a 60 x 80 matrix"):
        normalized_top_singular(e, 3, energies[1], energies[0])


def test_normalized_basis_finds_the_target_in_very_sparse_samples():
    """20 entries per row of a rank-3 matrix with heavy rows: the plain top singular vectors
    lock onto the heaviest rows, the normalized ones onto the target's subspace."""
    rng = np.random.default_rng(0)
    d, r, count = 3000, 3, 60_000
    x = rng.standard_normal((d, r)) * np.where(rng.random((d, 1)) < 0.01, 4.0, 1.0)
    y = rng.standard_normal((d, r))
    flat = rng.choice(d * d, size=count, replace=False)
    rows, cols = flat // d, flat % d
    vals = np.einsum("ij,ij->i", x[rows], y[cols])
    e = sp.csr_matrix((vals, (rows, cols)), shape=(d, d))
    energies = (np.bincount(rows, vals**2, minlength=d), np.bincount(cols, vals**2, minlength=d))
    qx = torch.from_numpy(np.linalg.qr(x)[0])
    plain = principal_cosines(torch.from_numpy(top_singular(e, r)[0]), qx)
    normalized = principal_cosines(torch.from_numpy(normalized_top_singular(e, r, *energies)[0]),
                                   qx)  # fmt: skip
    assert float(normalized.min()) > 0.7
    assert float(normalized.min()) > 2 * float(plain.min())


def _projector(q):
    q = torch.linalg.qr(q).Q
    return q @ q.T


@pytest.mark.parametrize("exact", [False, True])
def test_identity_basis_equals_dense_construction_for_identity_init(exact):
    """docs/METHOD.md 3.2 is 3.1 specialised to the partial-identity init."""
    m, n, w, eps, r_hat = 6, 9, 9, 1e-2, 2
    rng = np.random.default_rng(1)
    grad_f = torch.from_numpy(rng.standard_normal((m, n)))
    factors = [eps_orthogonal(w, n, eps, init="identity"),
               eps_orthogonal(w, w, eps, init="identity"),
               eps_orthogonal(m, w, eps, init="identity")]
    grad_first = chain_grads(factors, grad_f)[0]
    left_d, right_d = compress_dense(factors, grad_first, r_hat, eps, exact=exact)
    u, _, v = top_singular(grad_f, r_hat)
    left_i, right_i = compress_identity(u, v, (m, n),
                                        exact=exact)
    assert right_i.shape == (n, (3 if exact else 2) * r_hat)
    torch.testing.assert_close(right_i.T @ right_i, torch.eye(right_i.shape[1],
                                                              dtype=torch.float64))
    torch.testing.assert_close(_projector(right_i), _projector(right_d))
    torch.testing.assert_close(left_i @ left_i.T, left_d @ left_d.T)


def test_compress_identity_refuses_tall_problems():
    with pytest.raises(ValueError, match="transpose"):
        compress_identity(torch.zeros(5, 1), torch.zeros(3, 1), (5, 3))


def test_principal_cosines():
    a = torch.eye(4, dtype=torch.float64)[:, :2]
    theta = 0.3
    b = torch.tensor([[1, 0], [0, np.cos(theta)], [0, np.sin(theta)], [0, 0]],
                     dtype=torch.float64)
    torch.testing.assert_close(principal_cosines(a, b),
                               torch.tensor([1.0, np.cos(theta)], dtype=torch.float64))


def test_effective_rank_criteria():
    s = np.array([10.0, 1.0, 1e-2, 1e-5])
    assert effective_rank(s, atol=1e-3) == 3
    assert effective_rank(s, rtol=1e-2) == 2
    assert effective_rank(s, energy=0.95) == 1
    assert effective_rank(s, energy=0.999) == 2
    assert effective_rank(s, energy=1.0) == 4
    assert effective_rank(np.zeros(3), energy=0.9) == 0
    with pytest.raises(ValueError, match="exactly one"):
        effective_rank(s)


@pytest.mark.parametrize("as_operator", [False, True])
def test_randomized_subspace_iteration_finds_the_top_subspace(monkeypatch, as_operator):
    """Large sparse inputs take the randomized path: the same singular values and subspaces
    as a full SVD, for a matrix and for an operator known only by its products."""
    import scipy.sparse as sp
    from scipy.sparse.linalg import aslinearoperator

    from deeplora import subspace

    rng = np.random.default_rng(0)
    dense = (rng.standard_normal((600, 3)) * [30.0, 20.0, 10.0]) @ rng.standard_normal((3, 500))
    dense[rng.random(dense.shape) < 0.5] = 0.0
    matrix = sp.csr_matrix(dense)
    monkeypatch.setattr(subspace, "RANDOMIZED_MIN", 0)
    monkeypatch.setattr(subspace, "RANDOMIZED_ITERS", 40)
    calls = []
    randomized = subspace._randomized
    monkeypatch.setattr(subspace, "_randomized", lambda *a: calls.append(a) or randomized(*a))
    u, s, v = top_singular(aslinearoperator(matrix) if as_operator else matrix, 3, seed=1)
    ue, se, vte = np.linalg.svd(dense, full_matrices=False)
    np.testing.assert_allclose(s, se[:3], rtol=1e-8)
    np.testing.assert_allclose(np.abs(u.T @ ue[:, :3]), np.eye(3), atol=1e-6)
    np.testing.assert_allclose(np.abs(v.T @ vte[:3].T), np.eye(3), atol=1e-6)
    assert len(calls) == 1


@pytest.mark.parametrize("exact", [True, False])
@pytest.mark.parametrize("shape", [(30, 50), (50, 30)])
def test_top_singular_of_a_dense_tensor_spans_the_top_singular_spaces(
    exact: bool, shape: tuple[int, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    if not exact:
        monkeypatch.setattr(subspace, "EXACT_SVD_MAX_DIM", 10)  # use the randomized path
    gen = torch.Generator().manual_seed(0)
    u0 = torch.linalg.qr(torch.randn(shape[0], 5, generator=gen, dtype=torch.float64)).Q
    v0 = torch.linalg.qr(torch.randn(shape[1], 5, generator=gen, dtype=torch.float64)).Q
    s = torch.tensor([10.0, 8.0, 6.0, 1e-2, 1e-3], dtype=torch.float64)
    g = (u0 * s) @ v0.T
    u, values, v = subspace.top_singular(g.float(), 3)
    torch.testing.assert_close(values, s[:3], rtol=1e-5, atol=0)
    assert u.shape == (shape[0], 3) and v.shape == (shape[1], 3)
    for found, true in ((u, u0[:, :3]), (v, v0[:, :3])):
        torch.testing.assert_close(found.T @ found, torch.eye(3, dtype=torch.float64))
        cosines = torch.linalg.svdvals(found.T @ true)
        torch.testing.assert_close(cosines, torch.ones(3, dtype=torch.float64), atol=1e-5, rtol=0)

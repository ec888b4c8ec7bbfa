"""Baselines: exact recovery, agreement with dense references, errors, and MovieLens figures."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from deeplora.completion import baselines as bl
from deeplora.completion.baselines import (
    LowRankModel,
    MeanBaseline,
    als,
    alternating,
    rmse,
    soft_impute,
)
from deeplora.completion.data import Observations, random_low_rank, sample_entries


def rel_error(model: LowRankModel, dense: np.ndarray) -> float:
    m, n = dense.shape
    rows, cols = np.divmod(np.arange(m * n), n)
    pred = model.predict(rows, cols).reshape(m, n)
    return float(np.linalg.norm(pred - dense) / np.linalg.norm(dense))


@pytest.fixture(scope="module")
def synthetic() -> tuple[np.ndarray, Observations]:
    target = random_low_rank(100, 100, 5, seed=0)
    return target.to_dense(), sample_entries(target, fraction=0.5, seed=1)


# ---------------------------------------------------------------- exact recovery
@pytest.mark.parametrize("solver", ["randomized", "arpack"])
def test_soft_impute_recovers_low_rank(synthetic, solver) -> None:
    dense, obs = synthetic
    model = soft_impute(obs, shrinkage=0.0, rank=5, tol=1e-6, solver=solver)
    assert model.converged
    assert model.left.shape == (100, 5) and model.right.shape == (100, 5)
    assert rel_error(model, dense) <= 1e-3


def test_als_recovers_low_rank(synthetic) -> None:
    dense, obs = synthetic
    model = als(obs, rank=5, reg=0.0, seed=3)
    assert model.left.shape == (100, 5) and model.right.shape == (100, 5)
    assert rel_error(model, dense) <= 1e-3


@pytest.mark.parametrize("center", ["none", "mean", "biases"])
def test_low_rank_beats_mean_on_held_out(center) -> None:
    target = random_low_rank(100, 100, 5, seed=2)
    train, test = sample_entries(target, fraction=0.5, seed=2).split(0.2, seed=0)
    base = rmse(MeanBaseline().fit(train), test)
    # the defaults are set for noisy ratings: they shrink a lot, yet still beat the mean
    assert rmse(soft_impute(train, center=center), test) < 0.7 * base
    assert rmse(als(train, rank=5, center=center), test) < base
    # with little regularisation, as suits noiseless low-rank data, far better (removing
    # ridge-shrunk biases adds up to two to the rank, so "biases" fits less well here)
    bound = 0.3 if center == "biases" else 0.05
    assert rmse(soft_impute(train, shrinkage=0.1, center=center), test) < bound * base
    assert rmse(als(train, rank=5, reg=1e-3, center=center), test) < bound * base


# ---------------------------------------------------------------- agreement with references
def dense_soft_impute(dense_obs: np.ndarray, mask: np.ndarray, lam: float) -> np.ndarray:
    z = np.zeros_like(dense_obs)
    for _ in range(5000):
        u, s, vt = np.linalg.svd(np.where(mask, dense_obs, z), full_matrices=False)
        new = (u * np.maximum(s - lam, 0.0)) @ vt
        if np.linalg.norm(new - z) <= 1e-12 * np.linalg.norm(new):
            return new
        z = new
    raise AssertionError("dense reference did not converge")


@pytest.mark.parametrize("solver", ["randomized", "arpack"])
def test_soft_impute_matches_dense_reference(solver) -> None:
    rng = np.random.default_rng(0)
    full = random_low_rank(30, 20, 3, seed=4).to_dense() + 0.1 * rng.standard_normal((30, 20))
    obs = sample_entries(full, fraction=0.6, seed=5)
    mask = obs.to_scipy().toarray() != 0
    lam = 1.0
    expected = dense_soft_impute(np.where(mask, full, 0.0), mask, lam)
    model = soft_impute(obs, shrinkage=lam, tol=1e-9, max_iters=3000, solver=solver)
    assert model.converged
    assert model.rank == np.linalg.matrix_rank(expected, tol=1e-6)
    assert rel_error(model, expected) <= 1e-6


def test_ridge_side_matches_per_row_solves(monkeypatch) -> None:
    rng = np.random.default_rng(1)
    m, n, r, reg = 40, 25, 4, 0.3
    mat = sp.random(m, n, density=0.3, random_state=2, format="csr")
    mat.data = rng.standard_normal(mat.nnz)
    pattern = mat.copy()
    pattern.data[:] = 1.0
    other = rng.standard_normal((n, r))
    counts = np.diff(pattern.indptr).astype(float)
    expected = np.zeros((m, r))
    for i in range(m):  # the plain per-row ridge solutions
        idx = mat.indices[mat.indptr[i]:mat.indptr[i + 1]]
        x = mat.data[mat.indptr[i]:mat.indptr[i + 1]]
        gram = other[idx].T @ other[idx] + reg * counts[i] * np.eye(r)
        expected[i] = np.linalg.solve(gram, other[idx].T @ x) if len(idx) else 0.0
    np.testing.assert_allclose(alternating._ridge_side(mat, pattern, counts, other, reg), expected,
                               rtol=1e-8, atol=1e-10)
    monkeypatch.setattr(alternating, "_CHUNK_FLOATS", 40)  # several row chunks and column groups
    np.testing.assert_allclose(alternating._ridge_side(mat, pattern, counts, other, reg), expected,
                               rtol=1e-8, atol=1e-10)


def test_mean_baseline_reproduces_known_offsets() -> None:
    rng = np.random.default_rng(0)
    row_off, col_off = rng.standard_normal(6), rng.standard_normal(5)
    row_off -= row_off.mean()
    col_off -= col_off.mean()
    dense = 3.0 + row_off[:, None] + col_off[None, :]
    full = Observations.from_scipy(sp.csr_matrix(dense))
    model = MeanBaseline(biases=True, reg=0.0).fit(full)
    assert model.mean == pytest.approx(3.0)
    np.testing.assert_allclose(model.row_bias, row_off, atol=1e-12)
    np.testing.assert_allclose(model.col_bias, col_off, atol=1e-12)
    # from two thirds of the entries the additive model is still identified
    part = sample_entries(dense, fraction=2 / 3, seed=1)
    fitted = MeanBaseline(biases=True, reg=0.0, sweeps=2000, tol=1e-13).fit(part)
    rows, cols = np.divmod(np.arange(30), 5)
    np.testing.assert_allclose(fitted.predict(rows, cols), dense.ravel(), atol=1e-8)


def test_mean_baseline_plain_mean_regularisation_and_clip() -> None:
    obs = Observations.from_arrays([0, 0, 1, 2], [0, 1, 1, 0], [1.0, 2.0, 3.0, 6.0], (4, 3))
    plain = MeanBaseline().fit(obs)
    assert plain.predict(np.array([3]), np.array([2]))[0] == pytest.approx(3.0)
    biased = MeanBaseline(biases=True, reg=2.0).fit(obs)
    assert biased.row_bias[3] == 0.0 and biased.col_bias[2] == 0.0  # never observed
    assert np.abs(biased.row_bias).max() < np.abs(
        MeanBaseline(biases=True, reg=0.0).fit(obs).row_bias).max()
    clipped = MeanBaseline(clip=(0.0, 2.5)).fit(obs)
    assert clipped.predict(np.array([0]), np.array([0]))[0] == 2.5


def test_center_options_compose_prediction(synthetic) -> None:
    _, obs = synthetic
    obs = obs.with_values(obs.values + 4.0)
    rows, cols = np.arange(10), np.arange(10)[::-1]
    for center in ("none", "mean", "biases"):
        model = als(obs, rank=3, center=center, iters=3)
        low = np.sum(model.left[rows] * model.right[cols], axis=1)
        if center == "none":
            assert model.offset == 0.0 and model.row_bias is None and model.col_bias is None
        if center == "mean":
            assert model.offset == pytest.approx(obs.values.mean()) and model.row_bias is None
        expected = model.offset + low
        if center == "biases":
            assert model.row_bias is not None and model.col_bias is not None
            base = MeanBaseline(biases=True).fit(obs)
            np.testing.assert_allclose(model.row_bias, base.row_bias)
            expected = expected + model.row_bias[rows] + model.col_bias[cols]
        np.testing.assert_allclose(model.predict(rows, cols), expected)


def test_soft_impute_default_shrinkage_and_rank_cap(synthetic) -> None:
    _, obs = synthetic
    top = np.linalg.svd(obs.to_scipy().toarray(), compute_uv=False)[0]
    model = soft_impute(obs)
    assert model.shrinkage == pytest.approx(bl.DEFAULT_SHRINKAGE_FRACTION * top, rel=1e-6)
    assert als(obs, rank=2, iters=1).shrinkage is None
    capped = soft_impute(obs, shrinkage=0.01, rank=3)
    assert capped.rank == 3 and capped.left.shape == (100, 3)


def test_shrinking_everything_leaves_rank_zero(synthetic) -> None:
    _, obs = synthetic
    model = soft_impute(obs, shrinkage=1e6, center="mean", clip=(-0.1, 0.1))
    assert model.rank == 0 and model.converged
    pred = model.predict(np.array([0, 1]), np.array([2, 3]))
    np.testing.assert_allclose(pred, np.clip(obs.values.mean(), -0.1, 0.1))


def test_seeded_results_are_deterministic(synthetic) -> None:
    _, obs = synthetic
    for fit in (lambda s: als(obs, rank=4, seed=s, iters=5),
                lambda s: soft_impute(obs, rank=8, max_iters=5, seed=s)):
        a, b, c = fit(7), fit(7), fit(8)
        np.testing.assert_array_equal(a.left, b.left)
        np.testing.assert_array_equal(a.right, b.right)
        assert not np.array_equal(a.left, c.left)


# ---------------------------------------------------------------- errors
@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda o: als(o, rank=0), r"rank must be in \[1, min\(m, n\) - 1\] = \[1, 9\]"),
        (lambda o: als(o, rank=10), r"got 10; pick a rank below the smaller dimension"),
        (lambda o: als(o, rank=2.5), r"rank must be an integer"),
        (lambda o: soft_impute(o, rank=12), r"rank must be in \[1, min\(m, n\) - 1\]"),
        (lambda o: als(o, rank=2, reg=-1.0), r"reg must be a finite number >= 0, got -1.0"),
        (lambda o: als(o, rank=2, iters=0), r"iters must be a positive integer, got 0"),
        (lambda o: als(o, rank=2, center="median"),
         r"center must be one of \('none', 'mean', 'biases'\), got 'median'"),
        (lambda o: soft_impute(o, shrinkage=-0.5), r"shrinkage must be a finite number >= 0"),
        (lambda o: soft_impute(o, max_iters=0), r"max_iters must be a positive integer"),
        (lambda o: soft_impute(o, solver="lanczos"), r"solver must be 'randomized' or 'arpack'"),
        (lambda o: soft_impute(o, clip=(5, 1)), r"clip=\(lo, hi\) needs lo < hi"),
        (lambda o: MeanBaseline(reg=float("nan")), r"reg must be a finite number >= 0"),
        (lambda o: MeanBaseline(reg="high"), r"reg must be a number >= 0, got 'high'"),
        (lambda o: MeanBaseline(sweeps=0), r"sweeps must be a positive integer"),
        (lambda o: MeanBaseline(clip=(1.0,)), r"clip must be a pair \(lo, hi\)"),
    ],
)
def test_bad_parameters_raise(call, message) -> None:
    obs = sample_entries(random_low_rank(10, 12, 2, seed=0), fraction=0.5, seed=0)
    with pytest.raises(ValueError, match=message):
        call(obs)


def test_predict_rejects_bad_indices(synthetic) -> None:
    _, obs = synthetic
    model = als(obs, rank=2, iters=2)
    with pytest.raises(ValueError, match=r"row index 100 is out of range \[0, 100\)"):
        model.predict(np.array([100]), np.array([0]))
    with pytest.raises(ValueError, match="integer indices"):
        model.predict(np.array([0.5]), np.array([0]))
    with pytest.raises(ValueError, match="same shape"):
        model.predict(np.array([0, 1]), np.array([0]))
    with pytest.raises(RuntimeError, match="not fitted"):
        MeanBaseline().predict(np.array([0]), np.array([0]))


# ---------------------------------------------------------------- real data
@pytest.mark.slow
def test_movielens_figures() -> None:
    from deeplora.completion.data import load_movielens

    train, test = load_movielens().split(0.1, seed=0)
    clip = (0.5, 5.0)
    figures = {
        "global mean": rmse(MeanBaseline(clip=clip).fit(train), test),
        "biases": rmse(MeanBaseline(biases=True, clip=clip).fit(train), test),
        "als rank 10 on biases": rmse(als(train, rank=10, center="biases", clip=clip), test),
        "soft-impute on biases": rmse(soft_impute(train, center="biases", clip=clip), test),
    }
    print("MovieLens test RMSE:", {k: round(v, 4) for k, v in figures.items()})
    assert figures["global mean"] == pytest.approx(1.06, abs=0.01)
    assert figures["biases"] <= 0.90
    assert figures["als rank 10 on biases"] < figures["biases"]
    assert figures["soft-impute on biases"] < figures["biases"] - 0.01

"""The defaults that calibrate themselves: scale invariance, exact recovery without settings,
jointly learned offsets, r_hat from the data, and a stop that waits out the plateaus."""

import numpy as np
import pytest
import torch

from deeplora.completion import (
    Completion,
    CompressedConfig,
    CompressedSolver,
    Observations,
    complete,
    random_low_rank,
    sample_entries,
)
from deeplora.completion import solver as solver_module
from deeplora.completion.compressed import default_rank
from deeplora.completion.offsets import Offsets


def _table(m=60, n=80, rank=3, fraction=0.35, shift=0.0, seed=0):
    target = random_low_rank(m, n, rank, seed=seed)
    obs = sample_entries(target, fraction=fraction, seed=seed + 1)
    return target, obs.with_values(obs.values + shift)


def _error(model, target, shift=0.0):
    rows, cols = np.divmod(np.arange(target.shape[0] * target.shape[1]), target.shape[1])
    pred = model.predict_index(rows, cols)
    truth = target.entries(rows, cols) + shift
    return float(np.linalg.norm(pred - truth) / np.linalg.norm(truth))


def test_the_same_table_at_three_scales_gives_the_same_run():
    target, obs = _table(shift=2.0)
    runs = {}
    for scale in (1e-3, 1.0, 1e3):
        model = complete(obs.with_values(obs.values * scale), CompressedConfig(progress=False))
        runs[scale] = (_error(model, target, 2.0) if scale == 1.0 else None, model)
    errors = {}
    for scale, (_, model) in runs.items():
        rows, cols = np.divmod(np.arange(60 * 80), 80)
        truth = (target.entries(rows, cols) + 2.0) * scale
        errors[scale] = np.linalg.norm(model.predict_index(rows, cols) - truth) / np.linalg.norm(
            truth)
    steps = {s: m.info["steps"] for s, (_, m) in runs.items()}
    assert len(set(steps.values())) == 1, steps
    assert max(errors.values()) <= 1.01 * min(errors.values())
    assert max(errors.values()) < 1e-3


@pytest.mark.parametrize("shift", [0.0, 3.5])
def test_exact_low_rank_is_recovered_with_every_default(shift):
    target, obs = _table(shift=shift, seed=4)
    model = complete(obs)  # no settings at all: config, validation part, centering
    assert model.info["center"] == "joint" and model.info["r_hat"] >= 3
    assert _error(model, target, shift) <= 1e-3


def test_joint_offsets_fit_a_low_rank_table_at_its_own_rank():
    """Offsets fitted first leave a residual of rank r + 2, which r_hat = r cannot fit; learned
    jointly, they do not get in the way."""
    target, obs = _table(rank=4, shift=1.5, seed=2)
    config = CompressedConfig(r_hat=4, progress=False)
    joint = complete(obs, config, center="joint")
    fixed = complete(obs, config, center="biases")
    assert _error(joint, target, 1.5) <= 1e-3
    assert _error(fixed, target, 1.5) > 10 * _error(joint, target, 1.5)


def test_default_rank_is_what_the_sample_can_determine():
    assert default_rank((100, 100), 1950) == 10  # r (200 - r) <= 1950
    assert default_rank((100, 100), 100 * 100) == 50  # capped at min(m, n) / 2
    assert default_rank((1000, 30), 10) == 1
    r = default_rank((2000, 300), 46_000)
    assert r * (2300 - r) <= 46_000 < (r + 1) * (2300 - r - 1)


def test_offsets_sweeps_reach_the_ridge_solution():
    rng = np.random.default_rng(0)
    obs = sample_entries(random_low_rank(12, 9, 1, seed=0), fraction=0.7, seed=0)
    rows, cols, values = obs.rows, obs.cols, rng.standard_normal(len(obs))
    reg = 2.0
    design = np.zeros((len(obs), 1 + 12 + 9))
    design[:, 0] = 1
    design[np.arange(len(obs)), 1 + rows] = 1
    design[np.arange(len(obs)), 13 + cols] = 1
    penalty = reg * np.diag([0.0] + [1.0] * 21)
    exact = np.linalg.solve(design.T @ design + penalty, design.T @ values)
    off = Offsets(torch.from_numpy(rows), torch.from_numpy(cols), (12, 9), reg)
    off.fit(torch.from_numpy(values), sweeps=500, tol=1e-13)
    np.testing.assert_allclose([float(off.mu), *off.row, *off.col], exact, atol=1e-9)
    flipped = off.transpose()
    np.testing.assert_allclose(flipped.at(torch.tensor([3]), torch.tensor([5])),
                               off.at(torch.tensor([5]), torch.tensor([3])))
    off.sweep(torch.zeros(len(obs), dtype=torch.float64))
    off.reset()
    np.testing.assert_allclose(off.values().numpy(), design @ exact, atol=1e-9)


def test_solvers_on_one_objective_start_alike():
    """Offsets are state of the objective: a second solver on it starts where the first did."""
    _, obs = _table(shift=1.0)
    problem = Completion(obs, offsets=True)
    config = CompressedConfig(r_hat=3, max_steps=200, tol=0.0, progress=False)
    first = CompressedSolver(problem, config).run()
    second = CompressedSolver(problem, config).run()
    torch.testing.assert_close(first.left, second.left, rtol=0, atol=0)


def test_the_stop_never_fires_on_the_initial_plateau():
    """A tiny init takes thousands of steps to leave; validation cannot improve meanwhile, but
    patience waits until the loss has left its start."""
    target, obs = _table(seed=3)
    train, val = obs.split(0.1, seed=0)
    config = CompressedConfig(init_relative=3e-4, patience=2, eval_every=10, progress=False)
    solver = CompressedSolver(train, config, validation=val, truth=target)
    result = solver.run()
    first_drop = next(s for s, loss in zip(result.history.step, result.history.loss)
                      if loss < 0.95 * result.history.loss[0])
    assert first_drop > 200  # a long plateau, far beyond patience x eval_every = 20 steps
    assert result.steps > first_drop
    assert result.history.rel_error[-1] < 1e-3


def _two_scales():
    """Singular values 40 and 10: the second is learned long after the first."""
    rng = np.random.default_rng(0)
    u = np.linalg.qr(rng.standard_normal((50, 2)))[0]
    v = np.linalg.qr(rng.standard_normal((70, 2)))[0]
    dense = u @ np.diag([40.0, 10.0]) @ v.T
    obs = sample_entries(dense, fraction=0.5, seed=1)
    return dense, obs.split(0.1, seed=0)


def test_the_stop_waits_for_a_singular_value_on_its_way(monkeypatch):
    dense, (train, val) = _two_scales()
    config = CompressedConfig(r_hat=2, patience=3, eval_every=20, tol=0.0, momentum=0.0,
                              max_steps=20_000, progress=False)
    waited = CompressedSolver(Completion(train, offsets=False), config, validation=val,
                              truth=dense).run()
    assert waited.history.rel_error[-1] < 1e-3
    monkeypatch.setattr(solver_module, "PENDING_GROWTH", np.inf)  # no pending rule
    hasty = CompressedSolver(Completion(train, offsets=False), config, validation=val,
                             truth=dense).run()
    assert hasty.steps < waited.steps
    assert hasty.history.rel_error[-1] > 0.01  # stopped between the two singular values


def test_observations_with_string_ids_complete_by_id():
    _target, obs = _table()
    ids = Observations.from_ids([f"{i:03d}" for i in obs.rows], [str(j) for j in obs.cols],
                                obs.values)
    model = complete(ids, CompressedConfig(max_steps=50, progress=False))
    assert model.row_ids[0] == "000" and model.predict(["007"], ["7"]).shape == (1,)

"""The wide and compressed solvers: same trajectories, correct gradients, recovery, gamma."""

import json

import numpy as np
import pytest
import torch

from deeplora.completion import (
    Completion,
    CompressedConfig,
    CompressedSolver,
    DivergenceError,
    Factorization,
    Sensing,
    WideConfig,
    WideSolver,
    random_low_rank,
    sample_entries,
)
from deeplora.subspace import chain, principal_cosines


def _max_trajectory_gap(problem, target, steps, rank, init="identity", exact=False,
                        momentum=0.0, lr_factor=1.5):
    """max_t ||f_c(t) - f_wide(t)||_F / ||Phi||_F over every step, and the final error."""
    wide = WideSolver(problem, WideConfig.paper(init=init, lr_factor=lr_factor, progress=False,
                                                seed=3, momentum=momentum))
    comp = CompressedSolver(problem, CompressedConfig.paper(
        r_hat=rank, lr=wide.lr, construction="sparse" if init == "identity" else "dense",
        exact_basis=exact, progress=False, seed=3,
        momentum=momentum))
    norm = np.linalg.norm(target)
    gap = 0.0
    for _ in range(steps):
        wide.step()
        comp.step()
        gap = max(gap, float((wide.end_to_end() - comp.end_to_end()).norm()) / norm)
    error = float(np.linalg.norm(comp.end_to_end().numpy() - target) / norm)
    return gap, error


@pytest.mark.parametrize("init", ["identity", "orthogonal"])
def test_square_factorization_follows_the_wide_trajectory(init):
    """Theorem (section 2): only the 2r-wide slice moves, so gamma = 0 gives the wide run."""
    target = random_low_rank(16, 16, 2, seed=1).to_dense()
    gap, error = _max_trajectory_gap(target, target, 12_000, rank=2, init=init)
    assert error < 1e-6  # the run went all the way: every singular value was learned
    assert gap <= 1e-6


@pytest.mark.parametrize("shape", [(12, 20), (20, 12)])
@pytest.mark.parametrize("init", ["identity", "orthogonal"])
def test_rectangular_factorization_follows_the_wide_trajectory(shape, init):
    """m != n (both orientations): with the slice closed under J^T J the match is exact."""
    target = random_low_rank(*shape, 2, seed=1).to_dense()
    gap, error = _max_trajectory_gap(target, target, 12_000, rank=2, init=init, exact=True)
    assert error < 1e-6
    assert gap <= 1e-6


def test_momentum_keeps_the_compressed_trajectory_on_the_wide_one():
    """Heavy-ball steps are sums of past gradients, each of the slice's form, so the slice
    stays invariant and gamma = 0 still gives the wide run (restarts included)."""
    target = random_low_rank(16, 16, 2, seed=1).to_dense()
    gap, error = _max_trajectory_gap(target, target, 3000, rank=2, momentum=0.9,
                                     lr_factor=0.5)
    assert error < 1e-6
    assert gap <= 1e-6


def test_rectangular_paper_basis_is_close_and_reaches_the_same_matrix():
    """The paper's 2 r_hat slice is invariant only up to eps^L-sized terms for m != n."""
    target = random_low_rank(12, 20, 2, seed=1).to_dense()
    gap, error = _max_trajectory_gap(target, target, 12_000, rank=2)
    assert error < 1e-6
    assert gap <= 1e-3


def test_compressed_step_is_gradient_descent_on_the_compressed_network():
    """Every update equals -lr (inner) or -gamma*lr (outer) times the autograd gradient."""
    target = random_low_rank(15, 25, 2, seed=0)
    obs = sample_entries(target, fraction=0.4, seed=0)
    solver = CompressedSolver(obs, CompressedConfig.paper(r_hat=3, gamma=0.5, lr=1e-2,
                                                          progress=False))
    for _ in range(300):  # leave the init so that every gradient is sizeable
        solver.step()
    before = {k: v.clone().requires_grad_(True) for k, v in solver.parameters().items()}
    inner = [before[f"inner{i + 1}"] for i in range(3)]
    f = before["left"] @ chain(inner) @ before["right"].T
    rows, cols = torch.from_numpy(obs.rows), torch.from_numpy(obs.cols)
    loss = 0.5 * ((f[rows, cols] - torch.from_numpy(obs.values)) ** 2).sum()
    loss.backward()
    reported = solver.step()
    assert reported == pytest.approx(loss.item(), rel=1e-12)
    for name, after in solver.parameters().items():
        step = solver.lr * (solver.gamma if name in ("left", "right") else 1.0)
        torch.testing.assert_close((before[name].detach() - after) / step, before[name].grad,
                                   rtol=1e-7, atol=1e-12)


def test_momentum_step_is_the_heavy_ball_update_and_restarts_when_the_loss_rises():
    target = random_low_rank(15, 25, 2, seed=0)
    obs = sample_entries(target, fraction=0.4, seed=0)
    solver = CompressedSolver(obs, CompressedConfig(r_hat=3, gamma=0.5, lr=1e-2, momentum=0.8,
                                                    progress=False))
    for _ in range(300):
        solver.step()
    before = {k: v.clone() for k, v in solver.parameters().items()}
    velocity = {k: v.clone() for k, v in solver._velocity.items()}
    loss, directions = solver.gradients()
    solver._last_loss = loss  # the loss did not rise: no restart
    solver.parameters()  # gradients() left the parameters alone
    solver.step()
    for name, direction in directions.items():
        expected = before[name] - solver.lr * (0.8 * velocity[name] + direction)
        torch.testing.assert_close(solver.parameters()[name], expected, rtol=1e-10, atol=1e-14)
    solver._last_loss = -1.0  # pretend the loss rose: the next step is a plain gradient step
    before = {k: v.clone() for k, v in solver.parameters().items()}
    _, directions = solver.gradients()
    solver.step()
    for name, direction in directions.items():
        torch.testing.assert_close(solver.parameters()[name],
                                   before[name] - solver.lr * direction, rtol=1e-10, atol=1e-14)


def test_sparse_completion_equals_dense_computation():
    target = random_low_rank(30, 45, 3, seed=2)
    obs = sample_entries(target, fraction=0.3, seed=1)
    objective = Completion(obs)
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(30, 6, generator=gen, dtype=torch.float64)
    v = torch.randn(45, 6, generator=gen, dtype=torch.float64)
    loss, rv, rta = objective.low_rank(a, v)
    loss_d, r = objective.dense(a @ v.T)
    torch.testing.assert_close(loss, loss_d)
    torch.testing.assert_close(rv, r @ v)
    torch.testing.assert_close(rta, r.T @ a)
    f32 = objective.to(torch.float32)
    loss32, _, _ = f32.low_rank(a.float(), v.float())
    assert loss32.dtype == torch.float32
    assert float(loss32) == pytest.approx(float(loss), rel=1e-4)


def test_completion_recovers_with_gamma_and_stalls_without():
    """gamma > 0 lets the outer bases turn towards the truth; gamma = 0 keeps the basis of
    the init gradient, which for completion is not the target's subspace (docs/METHOD.md 3.1)."""
    target = random_low_rank(40, 40, 2, seed=0)
    obs = sample_entries(target, fraction=0.35, seed=0)
    cfg = CompressedConfig.paper(r_hat=2, gamma=0.01, max_steps=30_000, target_error=1e-5,
                                 eval_every=100, progress=False)
    moving = CompressedSolver(obs, cfg, truth=target).run()
    assert moving.stopped == "target_error"
    assert moving.history.rel_error[-1] <= 1e-4
    cfg = CompressedConfig.paper(r_hat=2, gamma=0.0, max_steps=moving.steps, eval_every=100,
                                 progress=False)
    frozen = CompressedSolver(obs, cfg, truth=target).run()  # the same step budget
    assert frozen.history.rel_error[-1] > 0.1


def test_normalized_basis_holds_the_target_in_a_very_sparse_sample():
    """20 entries per row of a 3,000 x 3,000 rank-5 matrix: the slice built from the init
    gradient misses most of the target's column space, the normalized one holds it."""
    target = random_low_rank(3000, 3000, 5, seed=0)
    obs = sample_entries(target, count=60_000, seed=1)
    truth = torch.from_numpy(np.linalg.qr(target.left)[0])

    def held(basis):
        cfg = CompressedConfig(r_hat=5, init_scale=0.03, progress=False, basis=basis)
        solver = CompressedSolver(obs, cfg, truth=target)
        assert solver.left.shape == (3000, 10)
        return float(principal_cosines(solver.left.double(), truth).min())

    assert held("gradient") < 0.3
    assert held("normalized") > 0.75


def test_init_energies_are_the_row_and_column_sums_of_squares():
    target = random_low_rank(9, 7, 2, seed=0)
    obs = sample_entries(target, fraction=0.5, seed=0)
    for objective in (Completion(obs), Factorization(target.to_dense())):
        grad = objective.init_gradient(0.3)
        dense = grad.toarray() if hasattr(grad, "toarray") else grad
        rows, cols = objective.init_energies(0.3)
        np.testing.assert_allclose(rows, (dense**2).sum(1), rtol=1e-12)
        np.testing.assert_allclose(cols, (dense**2).sum(0), rtol=1e-12)


def test_wide_completion_and_sensing_recover_small_problems():
    target = random_low_rank(12, 12, 1, seed=0)
    obs = sample_entries(target, fraction=0.6, seed=0)
    res = WideSolver(obs, WideConfig(max_steps=20_000, target_error=1e-4, progress=False),
                     truth=target).run()
    assert res.history.rel_error[-1] <= 1e-4
    sensing = Sensing.gaussian(target, count=60, seed=0)
    res = WideSolver(sensing, WideConfig(max_steps=20_000, target_error=1e-4, progress=False),
                     truth=target).run()
    assert res.history.rel_error[-1] <= 1e-4


def test_float32_compressed_completion():
    target = random_low_rank(40, 50, 2, seed=0)
    obs = sample_entries(target, fraction=0.4, seed=0)
    cfg = CompressedConfig(r_hat=2, dtype="float32", max_steps=30_000, target_error=1e-4,
                           eval_every=100, progress=False)
    res = CompressedSolver(obs, cfg, truth=target).run()
    assert res.left.dtype == torch.float32
    assert res.history.rel_error[-1] <= 1e-4


def test_divergence_stops_with_a_message_naming_the_step():
    target = random_low_rank(20, 20, 2, seed=0).to_dense()
    solver = CompressedSolver(Factorization(target), CompressedConfig(r_hat=2, lr=5.0,
                                                                      progress=False))
    with pytest.raises(DivergenceError, match=r"lower the step, e\.g\. lr=1\.25"):
        solver.run()


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: CompressedConfig(r_hat=0), "rank must be >= 1"),
        (lambda: CompressedConfig(r_hat=2, depth=1), "depth must be >= 2"),
        (lambda: CompressedConfig(r_hat=2, init_scale=0), "init_scale must be > 0"),
        (lambda: CompressedConfig(r_hat=2, lr=-1), "lr must be > 0"),
        (lambda: CompressedConfig(r_hat=2, gamma=-0.1), "gamma must be >= 0"),
        (lambda: CompressedConfig(r_hat=2, basis="spectral"), "basis must be 'gradient' or"),
        (lambda: CompressedConfig(r_hat=2, construction="dense", basis="normalized"),
         "applies only to construction='sparse'"),
        (lambda: WideConfig(width=0), "width must be >= 1"),
        (lambda: WideConfig(dtype="float16"), "dtype"),
    ],
)
def test_bad_settings_are_refused(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_rank_must_be_below_the_smaller_dimension():
    obs = sample_entries(random_low_rank(5, 8, 1), fraction=0.5)
    with pytest.raises(ValueError, match=r"rank 5 must be < min\(m, n\) = 5"):
        CompressedSolver(obs, CompressedConfig(r_hat=5, progress=False))


@pytest.mark.parametrize("offsets", [False, True])
def test_checkpoint_resume_gives_the_uninterrupted_result(tmp_path, offsets):
    """Momentum buffers, jointly learned offsets and the stopping state resume bit for bit."""
    target = random_low_rank(30, 30, 2, seed=0)
    obs = sample_entries(target, fraction=0.4, seed=0)
    train, val = obs.split(0.2, seed=0)
    problem = Completion(train.with_values(train.values + 3), offsets=offsets)

    def solver(max_steps):
        config = CompressedConfig(r_hat=2, max_steps=max_steps, eval_every=50, patience=1000,
                                  tol=0.0, progress=False)
        return CompressedSolver(problem, config, validation=val.with_values(val.values + 3))

    full = solver(1200).run()
    first = solver(500)  # as if killed at step 500
    first.run(checkpoint=tmp_path / "ckpt", checkpoint_every=100)
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == [
        "state-500.safetensors", "state.json"]
    resumed = solver(1200).run(checkpoint=tmp_path / "ckpt", resume=True)
    assert resumed.steps == full.steps == 1200
    torch.testing.assert_close(resumed.left, full.left, rtol=0, atol=0)
    assert resumed.history.val_rmse == full.history.val_rmse
    if offsets:
        np.testing.assert_array_equal(resumed.offsets[1], full.offsets[1])
        assert abs(full.offsets[0] - 3) < 0.1


def test_resume_refuses_a_checkpoint_of_other_data_or_settings(tmp_path):
    target = random_low_rank(30, 30, 2, seed=0)
    obs = sample_entries(target, fraction=0.4, seed=0)
    config = CompressedConfig(r_hat=2, max_steps=100, progress=False)
    CompressedSolver(obs, config).run(checkpoint=tmp_path / "ckpt")
    other = obs.with_values(obs.values * 1.01)  # same shape, other values
    with pytest.raises(ValueError, match="written for other data"):
        CompressedSolver(other, config).run(checkpoint=tmp_path / "ckpt", resume=True)
    with pytest.raises(ValueError, match=r"other settings \(momentum\)"):
        CompressedSolver(obs, CompressedConfig(r_hat=2, max_steps=100, momentum=0.5,
                                               progress=False)).run(
            checkpoint=tmp_path / "ckpt", resume=True)


def test_a_checkpoint_killed_between_its_two_files_stays_consistent(tmp_path):
    """The tensors are written first under a new name; until state.json names them, a resume
    reads the previous pair."""
    target = random_low_rank(30, 30, 2, seed=0)
    obs = sample_entries(target, fraction=0.4, seed=0)
    config = CompressedConfig(r_hat=2, max_steps=100, tol=0.0, progress=False)
    solver = CompressedSolver(obs, config)
    solver.run(checkpoint=tmp_path / "ckpt")
    saved = json.loads((tmp_path / "ckpt" / "state.json").read_text())
    solver.config.max_steps = 150
    solver.run()  # further steps, then a kill after the tensors but before state.json:
    from deeplora._io import write_tensors

    write_tensors(tmp_path / "ckpt" / "state-150.safetensors",
                  {f"param.{k}": v for k, v in solver.parameters().items()})
    resumed = CompressedSolver(obs, config)
    resumed.load_checkpoint(tmp_path / "ckpt")
    assert resumed.t == saved["step"] == 100


def _too_large_step(**kw):
    target = random_low_rank(30, 30, 2, seed=0)
    obs = sample_entries(target, fraction=0.4, seed=0)
    config = CompressedConfig(r_hat=2, lr_factor=16, max_steps=20_000, target_error=1e-4,
                              eval_every=10, progress=False, **kw)
    return CompressedSolver(obs, config, truth=target)


def test_automatic_step_backs_off_on_divergence_and_still_recovers():
    solver = _too_large_step()
    first = solver.lr
    result = solver.run()
    assert len(solver.backoff_steps) >= 2  # 16x the automatic step diverges, more than once
    assert result.lr == first / 2 ** len(solver.backoff_steps)
    assert result.stopped == "target_error" and result.history.rel_error[-1] <= 1e-4
    # history is the successful path only: steps increase, and the step in force is logged
    assert result.history.step == sorted(set(result.history.step))
    assert result.history.lr[-1] == result.lr


def test_backoffs_exhausted_raise_with_the_count():
    with pytest.raises(DivergenceError, match="after 1 halvings of the automatic step"):
        _too_large_step(backoffs=1).run()


def test_a_given_step_is_never_changed():
    target = random_low_rank(30, 30, 2, seed=0)
    obs = sample_entries(target, fraction=0.4, seed=0)
    solver = CompressedSolver(obs, CompressedConfig(r_hat=2, lr=1.0, progress=False))
    with pytest.raises(DivergenceError, match=r"with lr=1; lower the step"):
        solver.run()


def test_resume_after_a_back_off_gives_the_uninterrupted_result(tmp_path):
    solver = _too_large_step()
    full, full_backoffs = solver.run(), solver.backoff_steps
    first = _too_large_step()
    # killed between two back-offs, at an evaluation (as a periodic checkpoint would leave it)
    first.config.max_steps = -(-full_backoffs[len(full_backoffs) // 2] // 10) * 10
    first.run(checkpoint=tmp_path / "ckpt", checkpoint_every=100)
    assert 1 <= len(first.backoff_steps) < len(full_backoffs)
    resumed_solver = _too_large_step()
    resumed = resumed_solver.run(checkpoint=tmp_path / "ckpt", resume=True)
    assert resumed_solver.backoff_steps == full_backoffs
    assert resumed.steps == full.steps and resumed.lr == full.lr
    torch.testing.assert_close(resumed.left, full.left, rtol=0, atol=0)
    assert resumed.history.rel_error == full.history.rel_error

"""Compressed completion on two gloo processes: the single-process result, one checkpoint
writer, resume, and a clear error when a rank dies or hangs."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # spawned children import workers

from deeplora.completion import CompressedSolver
from deeplora.distributed.completion import ShardedCompletion, shard
from tests.distributed import workers


def single(max_steps: int, basis: str = "gradient") -> torch.Tensor:
    truth, obs = workers.completion_problem()
    result = CompressedSolver(obs, workers.completion_config(max_steps, basis),
                              truth=truth).run()  # fmt: skip
    return result.left @ result.right.T


def test_shard_splits_every_entry_once() -> None:
    _, obs = workers.completion_problem()
    parts = [shard(obs, r, 3) for r in range(3)]
    assert sum(len(p) for p in parts) == len(obs)
    keys = sorted(zip(*(torch.cat([torch.from_numpy(getattr(p, k)) for p in parts]).tolist()
                        for k in ("rows", "cols"))))
    assert keys == sorted(zip(obs.rows.tolist(), obs.cols.tolist()))
    with pytest.raises(ValueError, match="rank must be in"):
        shard(obs, 3, 3)


@pytest.mark.parametrize("basis", ["gradient", "normalized"])
def test_one_process_sharded_equals_plain(basis: str) -> None:
    """Without a process group the sharded objective is the plain one (its init SVD goes
    through a linear operator: equal up to rounding)."""
    truth, obs = workers.completion_problem()
    plain = CompressedSolver(obs, workers.completion_config(100, basis), truth=truth).run()
    sharded = CompressedSolver(ShardedCompletion(obs), workers.completion_config(100, basis),
                               truth=truth).run()
    f, g = plain.left @ plain.right.T, sharded.left @ sharded.right.T
    assert float((f - g).norm() / f.norm()) < 1e-12


def test_two_ranks_sum_the_energies_of_the_normalized_basis(tmp_path: Path) -> None:
    """Each rank holds part of every row's entries: the row and column energies of the
    normalized basis are summed over the ranks, so two ranks build the one-process slice."""
    out = str(tmp_path)
    assert workers.launch(workers.fit_sharded, 2, out, 50, False, "normalized") == [0, 0]
    reference = single(50, "normalized")
    for r in range(2):
        res = torch.load(tmp_path / f"rank{r}.pt")
        f = res["left"] @ res["right"].T
        assert float((f - reference).norm() / reference.norm()) < 1e-9


def test_two_ranks_follow_one_process_and_resume(tmp_path: Path) -> None:
    """Two ranks end where one process ends (to rounding), in a run that was stopped at
    step 150 and resumed to 300 from rank 0's checkpoint."""
    out = str(tmp_path)
    assert workers.launch(workers.fit_sharded, 2, out, 150, False) == [0, 0]
    files = sorted(p.name for p in (tmp_path / "checkpoint").iterdir())
    assert files == ["state-150.safetensors", "state.json"]  # one writer, no leftovers
    assert workers.launch(workers.fit_sharded, 2, out, 300, True) == [0, 0]
    reference = single(300)
    results = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for res in results:
        assert res["steps"] == 300
        f = res["left"] @ res["right"].T
        assert float((f - reference).norm() / reference.norm()) < 1e-9
    assert torch.equal(results[0]["left"], results[1]["left"])
    errors = results[0]["rel_error"]
    assert errors[-1] < 0.5 * errors[0]  # it did learn


@pytest.mark.parametrize("mode", ["die", "hang"])
def test_lost_rank_ends_the_job_with_an_error(tmp_path: Path, mode: str) -> None:
    codes = workers.launch(workers.faulty_rank, 2, str(tmp_path), mode, wait=90, grace=1)
    assert codes[0] == 0  # rank 0 returned (with the error), it did not hang
    assert codes[1] == (3 if mode == "die" else None)
    message = (tmp_path / "rank0.txt").read_text()
    assert message.startswith("PeerError"), message
    waited = float(message.split()[1].rstrip(":"))
    assert waited < (2.0 if mode == "die" else 3.0 + 5.0)
    assert "another rank died or stopped answering" in message and "--resume" in message


def test_cli_under_two_ranks_matches_one_process(tmp_path: Path) -> None:
    """``deeplora complete`` launched as two ranks writes one model, equal to the one a
    single process writes."""
    from deeplora.cli import main
    from deeplora.completion import CompletionModel

    _, obs = workers.completion_problem()
    table = tmp_path / "entries.csv"
    obs.to_dataframe().to_csv(table, index=False, header=False)
    argv = ["complete", str(table), "--rank", "2", "--init-scale", "0.1", "--max-steps", "200",
            "--center", "biases", "--no-progress", "--out"]
    assert main([*argv, str(tmp_path / "one")]) == 0
    assert workers.launch(workers.cli_rank, 2, [*argv, str(tmp_path / "two")]) == [0, 0]
    one = CompletionModel.load(tmp_path / "one")
    two = CompletionModel.load(tmp_path / "two")
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted(
        p.name for p in (tmp_path / "one").iterdir())
    f1, f2 = one.left @ one.right.T, two.left @ two.right.T
    assert float((f1 - f2).norm() / f1.norm()) < 1e-9


def test_complete_shards_only_when_asked(tmp_path: Path) -> None:
    """``complete(..., make_solver=sharded_solver)`` on two ranks gives every rank the model
    one process gets from ``complete`` alone."""
    from deeplora.completion import complete

    assert workers.launch(workers.complete_sharded, 2, str(tmp_path)) == [0, 0]
    _, obs = workers.completion_problem()
    alone = complete(obs, workers.completion_config(200)).predict_index(obs.rows, obs.cols)
    for r in range(2):
        saved = torch.load(tmp_path / f"rank{r}.pt")
        assert saved["solver"] == "DistributedCompressedSolver"  # it did shard
        sharded = saved["predictions"].numpy()
        assert np.abs(sharded - alone).max() < 1e-6 * np.abs(alone).max()

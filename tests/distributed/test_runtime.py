"""The launcher variables, the checks before joining a group, and the CLI's one-line error
for a lost peer."""

from __future__ import annotations

import argparse

import pytest

from deeplora import cli, cli_complete
from deeplora.distributed import runtime

LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_PROCID", "SLURM_NTASKS",
               "SLURM_LOCALID", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in LAUNCH_VARS:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_environment_reads_torchrun_and_slurm(clean_env: pytest.MonkeyPatch) -> None:
    assert runtime.environment() is None
    clean_env.setenv("RANK", "1")
    clean_env.setenv("WORLD_SIZE", "4")
    clean_env.setenv("LOCAL_RANK", "1")
    assert runtime.environment() == runtime.DistEnv(1, 4, 1)
    clean_env.setenv("RANK", "0")
    clean_env.setenv("WORLD_SIZE", "1")
    assert runtime.environment() is None  # one process: no group
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        clean_env.delenv(name)
    clean_env.setenv("SLURM_PROCID", "3")
    clean_env.setenv("SLURM_NTASKS", "8")
    clean_env.setenv("SLURM_LOCALID", "1")
    assert runtime.environment() is None  # SLURM without a rendezvous address
    clean_env.setenv("MASTER_ADDR", "node0")
    env = runtime.environment()
    assert env == runtime.DistEnv(3, 8, 1) and not env.is_main


def test_bad_launcher_values_are_refused(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("RANK", "4")
    clean_env.setenv("WORLD_SIZE", "4")
    with pytest.raises(ValueError, match="rank 4 of world size 4"):
        runtime.environment()
    env = runtime.DistEnv(0, 2, 0)
    with pytest.raises(ValueError, match="timeout must be > 0"):
        runtime.initialize(env, timeout=0)
    with pytest.raises(ValueError, match="MASTER_ADDR and MASTER_PORT are not set"):
        runtime.initialize(env)


def test_lone_process_collectives_are_identities() -> None:
    import torch

    t = torch.ones(3)
    assert runtime.all_reduce(t) is t and torch.equal(t, torch.ones(3))
    assert runtime.all_gather_object({"a": 1}) == [{"a": 1}]
    assert runtime.broadcast_object(5) == 5
    assert (runtime.rank(), runtime.world_size(), runtime.active()) == (0, 1, False)
    runtime.barrier()


def test_cli_reports_a_lost_peer_in_one_line(monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    def lost(args: argparse.Namespace) -> int:
        raise runtime.PeerError("rank 0 of 2: the gradient all-reduce failed, so another rank "
                                "died or stopped answering")

    def exit_now(code: int) -> None:  # the real one ends the process without teardown
        raise SystemExit(code)

    monkeypatch.setattr(cli_complete, "run", lost)  # the parser is built inside main
    monkeypatch.setattr(runtime, "exit_after_lost_peer", exit_now)
    with pytest.raises(SystemExit) as ended:
        cli.main(["complete", "--demo"])
    assert ended.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: rank 0 of 2: the gradient all-reduce failed, so another rank died "
                   "or stopped answering"]

"""Process entry points for the torch.distributed tests (importable by spawned children)."""

from __future__ import annotations

import multiprocessing as mp
import os
import socket
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def launch(target: Callable[..., None], world: int, *args: Any, wait: float = 120.0,
           grace: float | None = None, env: dict[str, str] | None = None) -> list[int | None]:
    """Start ``world`` spawned processes ``target(rank, world, *args)`` in one gloo group
    on 127.0.0.1; return their exit codes (``None``: still running after ``wait``, or
    ``grace`` seconds after rank 0 ended; then killed)."""
    ctx = mp.get_context("spawn")
    port = free_port()
    procs = [ctx.Process(target=_entry, args=(target, rank, world, port, env or {}, args))
             for rank in range(world)]
    for p in procs:
        p.start()
    deadline = time.monotonic() + wait
    codes: list[int | None] = []
    for i, p in enumerate(procs):
        if i == 1 and grace is not None:
            deadline = min(deadline, time.monotonic() + grace)
        p.join(max(0.0, deadline - time.monotonic()))
        codes.append(p.exitcode)
        if p.is_alive():
            p.kill()
            p.join()
    return codes


def _entry(target: Callable[..., None], rank: int, world: int, port: int,
           env: dict[str, str], args: tuple[Any, ...]) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank), OMP_NUM_THREADS="1", **env)
    torch.set_num_threads(1)
    try:
        target(rank, world, *args)
    except BaseException:
        traceback.print_exc()
        raise


# --------------------------------------------------------------------------- completion
def completion_problem() -> tuple[Any, Any]:
    from deeplora.completion import random_low_rank, sample_entries

    truth = random_low_rank(40, 56, 2, seed=1)
    return truth, sample_entries(truth, 0.35, seed=2)


def completion_config(max_steps: int, basis: str = "gradient") -> Any:
    from deeplora.completion import CompressedConfig

    return CompressedConfig(r_hat=2, init_scale=0.1, max_steps=max_steps, eval_every=25,
                            progress=False, basis=basis)  # type: ignore[arg-type]


def fit_sharded(rank: int, world: int, out: str, max_steps: int, resume: bool,
                basis: str = "gradient") -> None:
    """Fit on this rank's share (checkpointing into OUT/checkpoint) and save the factors."""
    from deeplora.distributed import runtime
    from deeplora.distributed.completion import DistributedCompressedSolver, shard

    env = runtime.environment()
    assert env is not None
    runtime.initialize(env, timeout=60)
    truth, obs = completion_problem()
    solver = DistributedCompressedSolver(shard(obs, rank, world),
                                         completion_config(max_steps, basis), truth=truth)
    result = solver.run(checkpoint=Path(out) / "checkpoint", checkpoint_every=50,
                        resume=resume)
    torch.save({"left": result.left, "right": result.right,
                "rel_error": result.history.rel_error, "steps": result.steps},
               Path(out) / f"rank{rank}.pt")
    runtime.shutdown()


def complete_sharded(rank: int, world: int, out: str) -> None:
    """``complete(..., make_solver=sharded_solver)`` as docs/DISTRIBUTED.md shows it; saves
    the predictions at every observed entry."""
    from deeplora.completion import complete
    from deeplora.distributed import runtime
    from deeplora.distributed.completion import sharded_solver

    runtime.initialize(runtime.environment(), timeout=60)  # type: ignore[arg-type]
    _, obs = completion_problem()
    model = complete(obs, completion_config(200), make_solver=sharded_solver)
    torch.save({"solver": model.info["solver"],
                "predictions": torch.from_numpy(model.predict_index(obs.rows, obs.cols))},
               Path(out) / f"rank{rank}.pt")
    runtime.shutdown()


def faulty_rank(rank: int, world: int, out: str, mode: str) -> None:
    """Rank 1 dies (``mode="die"``) or hangs (``"hang"``) at step 10; the others record
    the error they end with and how long it took to arrive."""
    from deeplora.distributed import runtime
    from deeplora.distributed.completion import DistributedCompressedSolver, shard

    class Faulty(DistributedCompressedSolver):
        def step(self) -> float:
            if rank == 1 and self.t == 10:
                if mode == "die":
                    os._exit(3)
                time.sleep(3600)
            return super().step()

    env = runtime.environment()
    assert env is not None
    runtime.initialize(env, timeout=3)
    _, obs = completion_problem()
    solver = Faulty(shard(obs, rank, world), completion_config(200))
    start = time.monotonic()
    try:
        solver.run()
        message = "finished"
    except runtime.PeerError as e:
        message = f"PeerError {time.monotonic() - start:.2f}: {e}"
        Path(out, f"rank{rank}.txt").write_text(message)
        runtime.exit_after_lost_peer(0)  # as the command does (with status 2)
    Path(out, f"rank{rank}.txt").write_text(message)


def cli_rank(rank: int, world: int, argv: list[str]) -> None:
    """``deeplora ARGV`` as one rank of a torchrun-style job."""
    from deeplora.cli import main

    code = main(argv)
    if code:
        raise SystemExit(code)


# --------------------------------------------------------------------------- fine-tuning
FINETUNE = dict(steps=6, batch_size=8, lr=1e-2, head_lr=1e-2, max_length=16, progress=False,
                checkpoint_every=2, eval_every=3)


def finetune_rank(rank: int, world: int, model: str, out: str, kill_at: int | None,
                  resume: bool) -> None:
    """One rank of a few-shot run on the tiny BERT; rank 1 dies after step ``kill_at``.
    A rank that ends with :class:`PeerError` writes its message to OUT.rankR.txt."""
    from deeplora.distributed import runtime
    from deeplora.finetune import FinetuneConfig, finetune
    from tests.finetune.conftest import reviews

    env = runtime.environment()
    assert env is not None
    runtime.initialize(env, timeout=30)

    def on_step(step: int, idx: Any, loss: float) -> None:
        if rank == 1 and step == kill_at:
            os._exit(3)

    cfg = FinetuneConfig(model=model, **FINETUNE)  # type: ignore[arg-type]
    try:
        finetune(reviews(40), cfg, evaluation=reviews(16, seed=1), out=out, resume=resume,
                 on_step=on_step)
    except runtime.PeerError as e:
        Path(f"{out}.rank{rank}.txt").write_text(str(e))
        runtime.exit_after_lost_peer(0)  # as the command does (with status 2)
    runtime.shutdown()


# --------------------------------------------------------------------------- FSDP
def fsdp_training(model: Any, rank: int, world: int, shard: Callable[[Any], None] | None
                  ) -> float:
    """Three AdamW steps of Deep LoRA (query/value, rank 4, classifier trained) on a fixed
    batch of 8, rank ``r`` taking its share; returns the loss on the whole batch after them
    (docs/DISTRIBUTED.md shows the same recipe)."""
    from deeplora.adapters import DeepLoraConfig, parameter_groups, wrap

    model = wrap(model, DeepLoraConfig(target_modules="query-value",
                                       modules_to_train=["classifier"], rank=4))
    if shard is not None:
        shard(model)
    optimizer = torch.optim.AdamW(parameter_groups(model, lr=1e-2), betas=(0.9, 0.999),
                                  eps=1e-6)
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(5, 30, (8, 7), generator=gen)
    labels = torch.randint(0, 2, (8,), generator=gen)
    mask = torch.ones_like(ids)
    share = slice(rank * 8 // world, (rank + 1) * 8 // world)
    for _ in range(3):
        optimizer.zero_grad()
        model(input_ids=ids[share], attention_mask=mask[share], labels=labels[share]
              ).loss.backward()
        optimizer.step()
    with torch.no_grad():
        return float(model(input_ids=ids, attention_mask=mask, labels=labels).loss)


def fsdp_rank(rank: int, world: int, out: str) -> None:
    from torch.distributed.fsdp import fully_shard

    from deeplora.distributed import runtime
    from tests.adapters.conftest import ARCHS, build

    def shard(model: Any) -> None:
        for layer in model.bert.encoder.layer:  # each block, then the rest
            fully_shard(layer)
        fully_shard(model)

    env = runtime.environment()
    assert env is not None
    runtime.initialize(env, timeout=60)
    loss = fsdp_training(build(ARCHS["bert"], seed=0), rank, world, shard)
    Path(out, f"rank{rank}.txt").write_text(repr(loss))
    runtime.barrier("results written")
    runtime.shutdown()
    # Under load, FSDP's background threads can still be joinable when the interpreter tears
    # down, and the C++ runtime then aborts the process (SIGABRT) after the work is done and
    # written: end at once, as a launcher would see a finished rank.
    sys.stdout.flush()
    os._exit(0)

"""``deeplora bench distributed``: compressed completion on 1 and on W processes, side by
side in one run: seconds per gradient step, the init (the distributed Lanczos SVD), the
scaling efficiency and the bytes all-reduced per step against the size of the factors.

Problem: ``Phi = X Y^T / r`` (m x n, r = 5), ``--entries`` observed uniformly, the compressed
solver with r_hat = r (so k = 2 r_hat columns per outer factor), float32 by default. Each
configuration runs in fresh 'spawn' processes with one torch thread each; W processes form a
gloo group on 127.0.0.1 (:mod:`deeplora.distributed`). A step of W processes costs its share
of the sparse products, ``O(|Omega| k / W)``, plus one all-reduce of ``1 + (m + n) k``
numbers, which does not shrink with W: that term and the dense ``(m + n) k^2`` updates every
rank repeats bound the speed-up.

Scaling efficiency = (seconds per step on 1 process) / (W x seconds per step on W processes).
On a machine with fewer cores than W + background load the figure says more about the
machine than the method: the output prints the cores available.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import socket
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from .._io import write_json
from ..errors import UserError
from ..harness.machine import describe_machine, fmt, machine_info, table

RANK = 5


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _problem(size: int, entries: int, seed: int) -> Any:
    from ..completion import random_low_rank, sample_entries

    truth = random_low_rank(size, size, RANK, seed=seed)
    return sample_entries(truth, count=entries, seed=seed + 1)


def _worker(rank: int, world: int, port: int, settings: dict[str, Any], queue: Any) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from ..completion import CompressedConfig
    from ..distributed import runtime
    from ..distributed.completion import DistributedCompressedSolver, ShardedCompletion, shard

    try:
        if world > 1:
            runtime.initialize(runtime.DistEnv(rank, world, rank), timeout=600)
        obs = _problem(settings["size"], settings["entries"], settings["seed"])
        config = CompressedConfig(r_hat=RANK, dtype=settings["dtype"], progress=False,
                                  max_steps=10**9, seed=settings["seed"])
        runtime.barrier("starting")
        start = time.perf_counter()
        share = shard(obs, rank, world)
        problem = ShardedCompletion(share, config.torch_dtype)
        solver = DistributedCompressedSolver(problem, config)
        runtime.barrier("after the init")
        init_seconds = time.perf_counter() - start
        for _ in range(settings["warmup"]):
            solver.step()
        before = problem.bytes_reduced
        times = []
        for _ in range(settings["rounds"]):
            runtime.barrier("between rounds")
            t = time.perf_counter()
            for _ in range(settings["steps"]):
                solver.step()
            times.append((time.perf_counter() - t) / settings["steps"])
        steps = settings["rounds"] * settings["steps"]
        k = solver.left.shape[1]
        m, n = solver.shape
        result = {
            "processes": world, "entries_per_rank": len(share), "init_seconds": init_seconds,
            "seconds_per_step": statistics.median(times),
            "bytes_per_step": (problem.bytes_reduced - before) / steps if world > 1 else 0.0,
            "k": k, "factor_numbers": (m + n) * k + config.depth * k * k,
            "element_bytes": solver.left.element_size(),
        }
        if rank == 0:
            queue.put(result)
    except BaseException as e:  # reported by the parent
        if rank == 0:
            queue.put({"error": f"{type(e).__name__}: {e}"})
        raise
    finally:
        runtime.shutdown()


def measure(world: int, settings: dict[str, Any]) -> dict[str, Any]:
    """One configuration: ``world`` fresh processes; rank 0's figures."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_worker, args=(r, world, port, settings, queue))
             for r in range(world)]
    for p in procs:
        p.start()
    result = queue.get()
    for p in procs:
        p.join()
    if "error" in result:
        raise RuntimeError(f"the {world}-process run failed: {result['error']}")
    return result


def run(args: argparse.Namespace) -> int:
    settings = {"size": args.size, "entries": args.entries, "seed": 0, "dtype": args.dtype,
                "warmup": 3, "rounds": 5, "steps": args.steps}
    if args.quick:
        settings.update(size=2000, entries=60_000, steps=4, rounds=3)
    if settings["entries"] > settings["size"] ** 2 // 2:
        raise UserError(f"--entries {settings['entries']} is more than half of a "
                         f"{settings['size']} x {settings['size']} matrix; lower it")
    info = machine_info()
    print(f"machine: {describe_machine(info)}; each process uses 1 torch thread")
    print(f"problem: {settings['size']:,} x {settings['size']:,}, rank {RANK}, "
          f"{settings['entries']:,} observed entries, r_hat {RANK}, {settings['dtype']}; "
          f"median of {settings['rounds']} rounds of {settings['steps']} steps")
    rows, results = [], []
    for world in args.processes:
        r = measure(world, settings)
        results.append(r)
        base = results[0]
        speedup = base["seconds_per_step"] / r["seconds_per_step"]
        r["speedup"] = speedup
        r["efficiency"] = speedup * base["processes"] / world
        factor_bytes = r["factor_numbers"] * r["element_bytes"]
        r["bytes_per_factor_bytes"] = r["bytes_per_step"] / factor_bytes
        rows.append([str(world), fmt(r["entries_per_rank"], ","), fmt(r["init_seconds"], ".2f"),
                     fmt(r["seconds_per_step"] * 1e3, ".1f"), fmt(speedup, ".2f"),
                     fmt(r["efficiency"], ".2f"),
                     fmt(r["bytes_per_step"] / 1e6, ".2f") if world > 1 else "-",
                     fmt(factor_bytes / 1e6, ".2f")])
    print(table(["processes", "entries/rank", "init s", "ms/step", "speed-up", "efficiency",
                 "MB all-reduced/step", "MB of factors"], rows))
    cores = info["cores_available"]
    if max(args.processes) > (cores or 1):
        print(f"note: {max(args.processes)} processes on {cores} core(s): they compete for "
              "the cores, so the efficiency understates what separate machines would give")
    if args.json is not None:
        write_json(args.json, {"benchmark": "distributed", "machine": info,
                               "settings": settings, "results": results})
        print(f"figures written to {args.json}")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``deeplora bench distributed``."""
    p = sub.add_parser(
        "distributed", help="compressed completion on 1 vs several processes (gloo)",
        description="Seconds per step, init time, scaling efficiency and bytes all-reduced "
                    "per step of compressed completion with Omega sharded over processes "
                    "(torch.distributed, gloo on 127.0.0.1), each on one thread.")
    p.add_argument("--size", type=int, default=50_000, help="m = n (default 50000)")
    p.add_argument("--entries", type=int, default=2_000_000,
                   help="observed entries (default 2000000)")
    p.add_argument("--processes", type=int, nargs="+", default=[1, 2],
                   help="process counts to compare, the first is the baseline (default 1 2)")
    p.add_argument("--steps", type=int, default=10, help="steps per timed round (default 10)")
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    p.add_argument("--json", type=Path, metavar="PATH", help="write the figures to PATH")
    p.add_argument("--quick", action="store_true", help="a tiny problem (seconds)")
    p.set_defaults(func=run)

"""One solver run of the completion benchmark, timed and summarised (in an isolated process
when asked)."""

from __future__ import annotations

import math
import time
from typing import Any

from ...completion.compressed import CompressedConfig, CompressedSolver
from ...completion.data import random_low_rank, sample_entries
from ...completion.solver import DivergenceError, GradientDescent
from ...completion.wide import WideConfig, WideSolver
from ...harness.machine import (
    PeakMemory,
)
from ...harness.matrix import PAPER_LR, SAMPLE_OFFSET, SOLVER_OFFSET
from .settings import BLOWUP, DEPTH, EPS, ERRORS, FRACTION, RANK


# =========================================================================== runners
# Module-level functions so that a 'spawn' subprocess can run them.
def _problem(d: int, seed: int, fraction: float | None = FRACTION,
             count: int | None = None) -> tuple[Any, Any]:
    target = random_low_rank(d, d, RANK, seed=seed)
    obs = sample_entries(target, fraction=fraction if count is None else None, count=count,
                         seed=seed + SAMPLE_OFFSET)
    return target, obs


def _summary(solver: GradientDescent, stopped: str, wall: float) -> dict[str, Any]:
    h = solver.history
    steps = solver.t
    step_seconds = h.seconds[-1] if h.seconds else math.nan
    out: dict[str, Any] = {
        "lr": solver.lr, "steps": steps, "stopped": stopped,
        "final_rel_error": h.rel_error[-1] if h.rel_error else math.nan,
        "seconds_per_step": step_seconds / max(h.step[-1], 1) if h.step else math.nan,
        "gd_seconds": step_seconds, "wall_seconds": wall, "estimated": False,
    }
    for err in ERRORS:
        step = h.first_step_below(err)
        key = f"{err:.0e}"
        out[f"steps_to_{key}"] = None if step is None else int(step)
        out[f"seconds_to_{key}"] = None if step is None else h.seconds[h.step.index(step)]
    return out


def _warm_up(kind: str) -> None:
    """Build and step a tiny solver of this kind, so that lazy imports and first-use
    allocations are not counted in the memory of the measured one."""
    target, obs = _problem(4 * RANK, 0)
    config = dict(depth=DEPTH, init_scale=EPS, lr=PAPER_LR, max_steps=3, target_error=1e-6,
                  eval_every=1, progress=False)
    solver: GradientDescent
    if kind == "compressed":
        solver = CompressedSolver(obs, CompressedConfig.paper(r_hat=RANK, **config),
                                  truth=target)
    else:
        solver = WideSolver(obs, WideConfig.paper(**config), truth=target)
    solver.run()


def run_solver(kind: str, d: int, lr: float | None, max_steps: int, eval_every: int,
               seed: int) -> dict[str, Any]:
    """Run the wide or compressed solver on the synthetic problem of size d until relative
    error 1e-6 or ``max_steps``; a divergence is reported in the result, not raised."""
    target, obs = _problem(d, seed)
    common = dict(depth=DEPTH, init_scale=EPS, lr=lr, max_steps=max_steps,
                  target_error=min(ERRORS), eval_every=eval_every, blowup=BLOWUP,
                  progress=False,
                  seed=seed + SOLVER_OFFSET)
    solver: GradientDescent
    _warm_up(kind)
    with PeakMemory() as mem:
        start = time.perf_counter()
        if kind == "compressed":
            solver = CompressedSolver(obs, CompressedConfig.paper(r_hat=RANK, **common),
                                      truth=target)
        else:
            solver = WideSolver(obs, WideConfig.paper(**common), truth=target)
        setup = time.perf_counter() - start
        try:
            result = solver.run()
        except DivergenceError as e:
            return {"lr": solver.lr, "diverged": str(e), "steps": solver.t,
                    "memory": mem.result()}
        wall = time.perf_counter() - start
    out = _summary(solver, result.stopped, wall)
    out["setup_seconds"] = setup
    out["memory"] = mem.result()
    return out


def time_wide(d: int, lr: float, steps: int, seed: int) -> dict[str, Any]:
    """Seconds per step of the wide network over ``steps`` steps (after one warm-up step),
    with the peak memory of building it and taking them."""
    target, obs = _problem(d, seed)
    config = WideConfig.paper(depth=DEPTH, init_scale=EPS, lr=lr, blowup=BLOWUP, progress=False,
                        seed=seed + SOLVER_OFFSET)
    _warm_up("wide")
    with PeakMemory() as mem:
        solver = WideSolver(obs, config, truth=target)
        solver.step()
        start = time.perf_counter()
        for _ in range(steps):
            solver.step()
        per_step = (time.perf_counter() - start) / steps
    return {"lr": lr, "seconds_per_step": per_step, "timed_steps": steps,
            "memory": mem.result(), "estimated": True}


def run_scale(m: int, count: int, minutes: float, seed: int, eval_every: int,
              eps: float | None = None, dtype: str = "float64",
              basis: str | None = None) -> dict[str, Any]:
    """The compressed solver at the library's defaults on an m x m problem with ``count``
    entries until relative error 1e-2 or ``minutes`` of wall time (solver setup included)."""
    t0 = time.perf_counter()
    target, obs = _problem(m, seed, count=count)
    data_seconds = time.perf_counter() - t0
    config = CompressedConfig(init_scale=eps, max_steps=eval_every, target_error=1e-2,
                              eval_every=eval_every, progress=False, seed=seed + SOLVER_OFFSET,
                              dtype=dtype, basis=basis)  # type: ignore[arg-type]
    _warm_up("compressed")
    with PeakMemory() as mem:
        start = time.perf_counter()
        solver = CompressedSolver(obs, config, truth=target)
        setup = time.perf_counter() - start
        initial_lr = solver.lr
        stopped = "time_limit"
        try:
            while True:
                result = solver.run()
                if result.stopped != "max_steps":
                    stopped = result.stopped
                    break
                if time.perf_counter() - start > 60 * minutes:
                    break
                solver.config.max_steps += eval_every  # continue the same run
        except DivergenceError as e:
            return {"lr": solver.lr, "diverged": str(e), "steps": solver.t,
                    "wall_seconds": time.perf_counter() - start, "memory": mem.result()}
        wall = time.perf_counter() - start
    out = _summary(solver, stopped, wall)
    out.update({"setup_seconds": setup, "data_seconds": data_seconds, "memory": mem.result(),
                "initial_lr": initial_lr, "backoff_steps": solver.backoff_steps,
                "reached_1e-2": stopped == "target_error", "minutes_limit": minutes,
                "r_hat": solver.r_hat, "init_scale": solver.init_scale, "gamma": solver.gamma,
                "basis": solver.config.resolved_basis})
    return out

"""What the matrix experiments (invariance, trajectories, rank-sweep, depth-width) share:
the synthetic problems, timed solver runs, and the figures read off a run's history
(docs/METHOD.md 1-3).

Problems follow ``deeplora bench completion``: the target is ``Phi = X Y^T / r``
(:func:`deeplora.completion.random_low_rank`, seeded), its observed entries are drawn from a
separate seed stream (``SAMPLE_OFFSET``), and each solver's random init from a third
(``SOLVER_OFFSET``). Depth L = 3 and eps = 1e-3 unless an experiment says otherwise.

Step sizes. Our loss is the plain sum ``1/2 sum (f_ij - Phi_ij)^2``, so the paper's
``eta = 5e-3 m n`` on its mean-over-all-entries loss is our ``lr = 5e-3`` (PAPER_LR;
:mod:`deeplora.completion.objectives`). The experiments use the library's automatic step
(``1 / (p L s^(2 - 2/L))``, see :func:`deeplora.completion.solver.auto_lr`) instead: it scales
with the target, so the same rule works at d = 100 and d = 1000, while the paper's fixed step
is several times too small at d = 100 and diverges on our d = 1000 completion target
(docs/BENCHMARKS.md). Runs that are compared with each other use one step, fixed before they
start (so the automatic step's back-off cannot make them part ways).

Seconds are the solver's own gradient-descent time (``FitHistory.seconds``: evaluations, the
recorder and callbacks excluded) on ``torch.get_num_threads()`` threads, recorded with the
results.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import torch

from ..completion.compressed import CompressedConfig, CompressedSolver
from ..completion.data import LowRankMatrix, Observations, random_low_rank, sample_entries
from ..completion.solver import GradientDescent
from ..harness.matrix import PAPER_LR, SAMPLE_OFFSET, SOLVER_OFFSET

__all__ = [
    "DEPTH",
    "EPS",
    "PAPER_LR",
    "SAMPLE_OFFSET",
    "SOLVER_OFFSET",
    "completion_problem",
    "crossing",
    "fmt_count",
    "fmt_seconds",
    "shared_lr",
    "threads",
    "timed_run",
]

DEPTH = 3  # L, the paper's default
EPS = 1e-3  # the paper's init scale


def completion_problem(d: int, rank: int, fraction: float, seed: int
                       ) -> tuple[LowRankMatrix, Observations]:  # fmt: skip
    """A d x d rank-``rank`` target and a uniform ``fraction`` of its entries (the bench's
    seed streams)."""
    target = random_low_rank(d, d, rank, seed=seed)
    return target, sample_entries(target, fraction=fraction, seed=seed + SAMPLE_OFFSET)


def shared_lr(problem: Any, rank: int, depth: int = DEPTH) -> float:
    """The automatic step of the compressed solver with its default gamma on ``problem``
    (for factorization the plain ``1 / (L s^(2 - 2/L))``; for completion also capped by the
    outer factors' curvature at gamma = 0.01), to be given to every solver compared on it."""
    probe = CompressedSolver(problem, CompressedConfig.paper(
        r_hat=rank, depth=depth, init_scale=EPS, max_steps=1, progress=False))
    return float(probe.lr)


def threads() -> int:
    return int(torch.get_num_threads())


def crossing(history: Any, error: float) -> tuple[int | None, float | None]:
    """The first evaluated step whose relative error is <= ``error`` and the solver's
    gradient-descent seconds up to it (None, None if never)."""
    step = history.first_step_below(error)
    if step is None:
        return None, None
    return int(step), float(history.seconds[history.step.index(step)])


def timed_run(
    make: Callable[[], GradientDescent],
    *,
    callback: Callable[[GradientDescent], None] | None = None,
    errors: tuple[float, ...] = (1e-3,),
) -> tuple[GradientDescent, dict[str, Any]]:
    """Build a solver with ``make()`` and run it; returns the solver and a JSON-ready summary:
    step, stopping reason, final error, steps and seconds to each of ``errors``, setup and
    wall seconds, and the history (step, seconds, rel_error) for the figures."""
    start = time.perf_counter()
    solver = make()
    setup = time.perf_counter() - start
    result = solver.run(callback=callback)
    wall = time.perf_counter() - start
    h = solver.history
    gd_seconds = float(h.seconds[-1]) if h.seconds else 0.0
    out: dict[str, Any] = {
        "lr": float(solver.lr),
        "steps": int(solver.t),
        "stopped": result.stopped,
        "final_rel_error": float(h.rel_error[-1]) if h.rel_error else math.nan,
        "gd_seconds": gd_seconds,
        "seconds_per_step": gd_seconds / max(solver.t, 1),
        "setup_seconds": setup,
        "wall_seconds": wall,
        "backoff_steps": list(solver.backoff_steps),
    }
    for err in errors:
        step, seconds = crossing(h, err)
        out[f"steps_to_{err:.0e}"] = step
        out[f"seconds_to_{err:.0e}"] = seconds
    out["history"] = {"step": [int(s) for s in h.step], "seconds": list(h.seconds),
                      "rel_error": list(h.rel_error)}
    return solver, out



def fmt_count(value: int | float | None) -> str:
    """A step count for a summary line (``-`` when it never happened)."""
    return "-" if value is None else f"{int(value):,}"


def fmt_seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g} s"

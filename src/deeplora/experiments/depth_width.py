"""Experiment 4 (docs/METHOD.md 1 "Why depth", 3.3): depth 2 against depth 3 across widths.

Completion of a 100 x 100 rank-10 target ``Phi = X Y^T / r`` from a uniform 30% of its
entries (the paper's setting: 1.6 observations per degree of freedom ``r (2d - r)``), by the
deep factorization ``W_L ... W_1`` (:class:`~deeplora.completion.WideSolver`) of depth
L = 2 or 3 and width w, random eps-orthogonal init (eps = 1e-3), float64, full-batch gradient
descent at the library's automatic step for each depth (``1 / (p L s^(2 - 2/L))``, with its
back-off), for a fixed budget of ``max_steps`` steps; a run also stops once it fits the
observed entries to a relative residual of ``tol`` = 1e-7 (it does not move after that).
Reported: the final relative error ``||f - Phi||_F / ||Phi||_F`` per depth and width (the
median over seeds, and each seed's), with the steps taken.

The paper: depth 3 recovers (error ~0) at every width 10..100; the depth-2 error grows with
the width, to ~1e-3 at widths 90-100. Width r = 10 is a rank constraint that any depth meets;
beyond it only the implicit bias towards low rank (stronger with depth and with a smaller
init) picks the target among the matrices that fit the observations.

Sizes: ``smoke`` d = 20, r = 2, widths 2..20, half the entries, eps 1e-2 (seconds);
``default`` the paper's problem at widths 10, 20, 40, 60, 80, 100, one seed (a few minutes on
one core); ``full`` widths 10, 20, ..., 100, three seeds, a longer budget.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np

from .._io import json_safe
from ..completion.wide import WideConfig, WideSolver
from . import Context
from ._matrix import (
    EPS,
    SOLVER_OFFSET,
    completion_problem,
    fmt_count,
    threads,
    timed_run,
)

DEPTHS = (2, 3)
TOL = 1e-7
PAPER = {
    "d": 100, "rank": 10, "fraction": 0.3, "widths": "10..100",
    "depth3": "error ~0 at every width",
    "depth2": "error grows with the width, ~1e-3 at widths 90-100",
}  # fmt: skip


@dataclass(frozen=True)
class Size:
    d: int
    rank: int
    fraction: float
    widths: tuple[int, ...]
    seeds: int
    max_steps: int
    eval_every: int
    eps: float = EPS


SIZES = {
    "smoke": Size(d=20, rank=2, fraction=0.5, widths=(2, 10, 20), seeds=1, max_steps=4_000,
                  eval_every=100, eps=1e-2),
    "default": Size(d=100, rank=10, fraction=0.3, widths=(10, 20, 40, 60, 80, 100), seeds=1,
                    max_steps=100_000, eval_every=500),
    "full": Size(d=100, rank=10, fraction=0.3, widths=tuple(range(10, 101, 10)), seeds=3,
                 max_steps=200_000, eval_every=500),
}  # fmt: skip


def run(ctx: Context) -> dict[str, Any]:
    """Every depth, width and seed; figure ``error_vs_width`` (final error against width, one
    line per depth) and ``recovery`` (error against steps, first seed)."""
    from ..diagnostics.plots import plot_lines, plot_recovery

    size: Size = ctx.pick(SIZES["smoke"], SIZES["default"], SIZES["full"])
    d, r = size.d, size.rank
    problems = [completion_problem(d, r, size.fraction, ctx.seed + s) for s in range(size.seeds)]
    cells: list[dict[str, Any]] = []
    curves: dict[str, dict[str, list[float]]] = {}
    for depth in DEPTHS:
        for width in size.widths:
            runs = []
            for s, (target, obs) in enumerate(problems):
                config = WideConfig.paper(depth=depth, width=width, init="orthogonal",
                                    init_scale=size.eps, lr=None, max_steps=size.max_steps,
                                    tol=TOL, eval_every=size.eval_every, dtype="float64",
                                    seed=ctx.seed + s + SOLVER_OFFSET,
                                    progress=ctx.progress)  # fmt: skip
                _, res = timed_run(partial(WideSolver, obs, config, truth=target))
                if s == 0:
                    curves[f"depth {depth}, width {width}"] = res["history"]
                runs.append({k: v for k, v in res.items() if k != "history"})
            finals = [run["final_rel_error"] for run in runs]
            cells.append({"depth": depth, "width": width,
                          "median_rel_error": float(np.median(finals)),
                          "max_rel_error": float(np.max(finals)), "runs": runs})  # fmt: skip
    by_depth = {depth: [c for c in cells if c["depth"] == depth] for depth in DEPTHS}
    plot_lines({f"depth {depth}": ([c["width"] for c in cs], [c["median_rel_error"] for c in cs])
                for depth, cs in by_depth.items()},
               ctx.figure("error_vs_width"), xlabel="width w of the inner layers",
               ylabel="final relative error ||f - Phi||_F / ||Phi||_F (log)", logy=True,
               title=f"completion d = {d}, r = {r}, {size.fraction:.0%} observed"
                     + (f" (median of {size.seeds} seeds)" if size.seeds > 1 else ""))  # fmt: skip
    plot_recovery(curves, ctx.figure("recovery"),
                  title=f"depth 2 vs 3 across widths: completion d = {d}, r = {r}")

    def error_list(depth: int) -> str:
        return ", ".join(f"{c['width']}: {c['median_rel_error']:.1e}" for c in by_depth[depth])

    def step_list(depth: int) -> str:
        return ", ".join(fmt_count(max(run["steps"] for run in c["runs"])) for c in by_depth[depth])

    observed = size.fraction * d * d / (r * (2 * d - r))
    lines = [
        f"completion d = {d}, r = {r}, {size.fraction:.0%} observed ({observed:.1f} per degree of "
        f"freedom), eps {size.eps:g}, automatic step, budget {fmt_count(size.max_steps)} steps, "
        f"{size.seeds} seed(s), {threads()} thread(s)",
        f"final relative error by width, depth 3: {error_list(3)}",
        f"final relative error by width, depth 2: {error_list(2)}",
        f"steps taken (stop: budget or residual <= {TOL:g}), depth 3: {step_list(3)}; depth 2: "
        f"{step_list(2)}",
        f"paper: depth 3 {PAPER['depth3']}; depth 2 {PAPER['depth2']}",
    ]
    return json_safe({
        "settings": {"d": d, "rank": r, "fraction": size.fraction,
                     "observed": len(problems[0][1]), "observations_per_dof": observed,
                     "depths": list(DEPTHS), "widths": list(size.widths), "seeds": size.seeds,
                     "init": "orthogonal", "init_scale": size.eps, "dtype": "float64",
                     "lr_source": "automatic (per depth, with back-off)", "tol": TOL,
                     "max_steps": size.max_steps, "eval_every": size.eval_every,
                     "threads": threads(), "seed": ctx.seed},
        "cells": cells,
        "paper": PAPER,
        "summary": lines,
    })  # fmt: skip

"""Sample efficiency: how often each method recovers a low-rank matrix from few entries."""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ...completion.baselines import als, soft_impute
from ...completion.compressed import CompressedConfig, CompressedSolver
from ...completion.results import relative_error
from ...completion.solver import DivergenceError
from ...harness.machine import (
    fmt,
    table,
)
from ...harness.matrix import SOLVER_OFFSET
from .runs import _problem
from .settings import BLOWUP, EPS, RANK, SUCCESS, Plan


def _deep_error(depth: int, rank_hat: int | None, paper: bool, settings: dict[str, Any],
                target: Any, obs: Any, steps: int, eval_every: int,
                seed: int) -> tuple[float, int, str]:
    """A compressed run at the paper's settings (eps 1e-3, plain gradient descent) or at the
    library's defaults (with ``settings`` on top)."""
    common: dict[str, Any] = dict(r_hat=rank_hat, depth=depth, max_steps=steps,
                                  target_error=SUCCESS, eval_every=eval_every, progress=False,
                                  seed=seed + SOLVER_OFFSET)
    config = (CompressedConfig.paper(init_scale=EPS, blowup=BLOWUP, **common) if paper
              else CompressedConfig(**common, **settings))
    try:
        solver = CompressedSolver(obs, config, truth=target)
        result = solver.run()
    except DivergenceError:
        return math.inf, 0, "diverged"
    return relative_error(result.left, result.right, target), result.steps, result.stopped


def _model_error(model: Any, target: Any) -> float:
    return relative_error(torch.from_numpy(model.left), torch.from_numpy(model.right), target)


def section_sample(plan: Plan) -> dict[str, Any]:
    d = plan.sample_d
    dof = RANK * (2 * d - RANK)
    print(f"\n== sample efficiency (d={d}, r={RANK}, success: relative error <= {SUCCESS:g}, "
          f"{plan.seeds} seeds; deep solvers: automatic step, budget {plan.sample_steps:,} "
          "steps)")
    # method -> (label, depth, r_hat (None: from the data), the paper's settings)
    deep: dict[str, tuple[str, int, int | None, bool]] = {
        "deep3_paper": (f"compressed L=3, paper (eps {EPS:g}, plain GD, gamma 0.01), r_hat=r",
                        3, RANK, True)}
    for k in plan.rank_hats:
        deep[f"deep3_rank{k}"] = (f"compressed L=3, defaults, r_hat={k}", 3, k, False)
    deep["deep3_auto"] = ("compressed L=3, defaults, r_hat from the data", 3, None, False)
    deep["deep2"] = ("compressed L=2, defaults, r_hat=r", 2, RANK, False)
    methods = {label: m for m, (label, *_) in deep.items()}
    methods.update({
        "soft-impute (default shrinkage, rank 5)": "soft",
        "hard impute (shrinkage 0, rank 5)": "hard",
        "ALS (rank 5, reg 0)": "als",
    })
    errors: dict[str, dict[str, list[float]]] = {m: {} for m in methods.values()}
    seconds: dict[str, float] = dict.fromkeys(methods.values(), 0.0)
    notes: dict[str, list[str]] = {m: [] for m in methods.values()}
    step_counts: dict[str, dict[str, list[int]]] = {m: {} for m in deep}
    jobs = [(rho, seed) for rho in plan.rhos for seed in range(plan.seeds)]
    for rho, seed in tqdm(jobs, desc="sample efficiency", unit="problem", leave=False,
                           disable=None):
        count = round(rho * dof)
        target, obs = _problem(d, seed, count=count)
        key = f"{rho:g}"
        for m in methods.values():
            start = time.perf_counter()
            if m in deep:
                _, depth, rank_hat, paper = deep[m]
                err, steps, stopped = _deep_error(depth, rank_hat, paper, plan.sample_settings,
                                                  target, obs, plan.sample_steps,
                                                  plan.sample_eval_every, seed)
                step_counts[m].setdefault(key, []).append(steps)
                if stopped == "diverged":
                    notes[m].append(f"rho={key} seed={seed}: diverged")
            elif m == "soft":
                err = _model_error(soft_impute(obs, rank=RANK, tol=1e-6,
                                               max_iters=plan.soft_iters,
                                               seed=seed + SOLVER_OFFSET), target)
            elif m == "hard":
                err = _model_error(soft_impute(obs, shrinkage=0.0, rank=RANK, tol=1e-6,
                                               max_iters=plan.soft_iters,
                                               seed=seed + SOLVER_OFFSET), target)
            else:
                err = _model_error(als(obs, rank=RANK, reg=0.0, iters=plan.als_iters,
                                       tol=1e-12, seed=seed + SOLVER_OFFSET), target)
            seconds[m] += time.perf_counter() - start
            errors[m].setdefault(key, []).append(err)
    result: dict[str, Any] = {"d": d, "rank": RANK, "rhos": plan.rhos, "seeds": plan.seeds,
                              "success_threshold": SUCCESS, "methods": {}}
    lines = []
    for label, m in methods.items():
        successes = {k: int(sum(e <= SUCCESS for e in v)) for k, v in errors[m].items()}
        medians = {k: float(np.median(v)) for k, v in errors[m].items()}
        result["methods"][m] = {"label": label, "successes": successes,
                                "median_rel_error": medians, "rel_errors": errors[m],
                                "seconds": seconds[m], "notes": notes[m]}
        if m in step_counts:
            result["methods"][m]["steps"] = step_counts[m]
        lines.append([label, *[f"{successes[f'{r:g}']}/{plan.seeds} "
                               f"({medians[f'{r:g}']:.0e})" for r in plan.rhos],
                      fmt(seconds[m], ".1f")])
    print(table(["method", *[f"rho={r:g}" for r in plan.rhos], "seconds"], lines))
    print("cells: successes/seeds (median relative error); |Omega| = rho r (2d - r) = "
          + ", ".join(f"{round(r * dof)}" for r in plan.rhos))
    return result

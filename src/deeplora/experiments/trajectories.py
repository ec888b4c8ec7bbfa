"""Experiment 2 (docs/METHOD.md 3.1, 3.3): the compressed network follows the wide network's
trajectory, at a fraction of the cost; for completion it needs the discrepant step gamma.

Two problems, each a d x d target ``Phi = X Y^T / r``:

- factorization (every entry observed), rank ``fact_rank``;
- completion, rank 5, a uniform 20% of the entries observed.

On each, gradient descent from the same eps-orthogonal init (eps = 1e-3, depth 3, float64,
one shared step: the library's automatic step, fixed before the runs) on

- the wide network (:class:`~deeplora.completion.WideSolver`, width d, random orthogonal
  init);
- the compressed network built from that same init (:class:`~deeplora.completion.
  CompressedSolver` with ``construction="dense"``, the authors' construction of docs/METHOD.md 3.1,
  r_hat = r) at its default gamma: 0 for factorization (the outer bases stay fixed, and the
  theorem makes the trajectory the wide one's), 0.01 for completion;
- for completion also the compressed network with gamma = 0, for as many steps as the
  longer of the other two runs: it stalls, because the slice read off the init gradient is
  not the target's subspace when only some entries are seen.

Every run stops at relative error ``target_error`` (1e-6) or ``max_steps``. Reported: steps
and seconds to 1e-3 and to the target, final errors, the wide / compressed time ratio (the
solvers' own gradient-descent seconds, evaluations excluded), and along each problem's runs
``max_t ||f_wide(t) - f_comp(t)||_F / ||Phi||_F`` over the steps both reached (every
``compare_every`` steps), relative to the target's norm because the two differ by the
``eps^L``-sized remainder the compressed network drops, which dominates ``f`` itself at the
start. The paper's figures are for d = 1000 on a GPU (docs/METHOD.md 3.3); our default d = 200 on a
CPU shows the same trajectories, while the time ratio grows with d (the wide step costs
O(d^3), the compressed one O(|Omega| r + d r^2)).

Sizes: ``smoke`` d = 12 (factorization r = 1) and d = 16 (completion r = 1, half the
entries) to relative error 1e-3; ``default`` d = 200, factorization r = 5 (a few minutes on
one core); ``full`` d = 1000 and factorization r = 10, the paper's (hours on a CPU: the wide
step there is about 0.4 s).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .._io import json_safe
from ..completion.compressed import CompressedConfig, CompressedSolver
from ..completion.data import LowRankMatrix, random_low_rank
from ..completion.solver import GradientDescent
from ..completion.wide import WideConfig, WideSolver
from . import Context
from ._matrix import (
    DEPTH,
    EPS,
    PAPER_LR,
    SOLVER_OFFSET,
    completion_problem,
    fmt_count,
    fmt_seconds,
    shared_lr,
    threads,
    timed_run,
)

PAPER = {
    "completion": "d = 1000, r = 5, 20% observed, gamma = 0.01: wide and compressed both reach "
                  "~1e-12 after ~20,000 iterations; about 43 s wide vs 6 s compressed on a GPU "
                  "(~7x)",
    "factorization": "d = 1000, r = 10: about 45 s wide vs 4.5 s compressed (~10x)",
    "gamma_zero": "completion with gamma = 0 stalls (relative error about 0.46 at d = 300 in a "
                  "check of ours, docs/METHOD.md 3.1)",
    "wide_seconds": {"completion": 43.0, "factorization": 45.0},
    "compressed_seconds": {"completion": 6.0, "factorization": 4.5},
}  # fmt: skip


@dataclass(frozen=True)
class Size:
    fact_d: int
    fact_rank: int
    comp_d: int
    comp_rank: int
    fraction: float
    target_error: float
    max_steps: int
    eval_every: int
    compare_every: int
    eps: float = EPS  # init scale (the smoke size takes 1e-2: ten times fewer steps)


SIZES = {
    "smoke": Size(fact_d=12, fact_rank=2, comp_d=16, comp_rank=1, fraction=0.5,
                  target_error=1e-3, max_steps=20_000, eval_every=25, compare_every=100,
                  eps=1e-2),
    "default": Size(fact_d=200, fact_rank=5, comp_d=200, comp_rank=5, fraction=0.2,
                    target_error=1e-6, max_steps=80_000, eval_every=50, compare_every=250),
    "full": Size(fact_d=1000, fact_rank=10, comp_d=1000, comp_rank=5, fraction=0.2,
                 target_error=1e-6, max_steps=120_000, eval_every=100, compare_every=1000),
}  # fmt: skip


def compare(problem: Any, truth: LowRankMatrix | np.ndarray, rank: int, lr: float, size: Size,
            seed: int, progress: bool, gamma_zero: bool) -> dict[str, Any]:  # fmt: skip
    """The compressed run (snapshots of its factors every ``compare_every`` steps), the wide
    run (compared with them), and with ``gamma_zero`` the gamma = 0 compressed run."""
    common = dict(depth=DEPTH, init_scale=size.eps, lr=lr, max_steps=size.max_steps,
                  target_error=size.target_error, eval_every=size.eval_every,
                  dtype="float64", seed=seed + SOLVER_OFFSET, progress=progress)  # fmt: skip
    snapshots: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def keep(solver: GradientDescent) -> None:
        if solver.t % size.compare_every == 0:
            a, v = solver.factors()
            snapshots[solver.t] = (a.clone(), v.clone())

    comp_solver, comp = timed_run(
        lambda: CompressedSolver(problem, CompressedConfig.paper(
            r_hat=rank, construction="dense", **common),
            truth=truth), callback=keep, errors=(1e-3, size.target_error))
    assert isinstance(comp_solver, CompressedSolver)
    comp["gamma"] = comp_solver.gamma
    norm = (truth.frobenius_norm() if isinstance(truth, LowRankMatrix)
            else float(np.linalg.norm(truth)))
    gap_steps: list[int] = []
    gap: list[float] = []

    def check(solver: GradientDescent) -> None:
        if solver.t in snapshots:
            a, v = snapshots[solver.t]
            diff = solver.end_to_end() - a @ v.T
            gap_steps.append(int(solver.t))
            gap.append(float(torch.linalg.matrix_norm(diff)) / norm)

    _, wide = timed_run(lambda: WideSolver(problem, WideConfig.paper(init="orthogonal",
                                                               **common),
                                           truth=truth),
                        callback=check, errors=(1e-3, size.target_error))  # fmt: skip
    out: dict[str, Any] = {
        "lr": lr, "rank": rank, "wide": wide, "compressed": comp,
        "gap_steps": gap_steps, "gap": gap, "max_gap": max(gap) if gap else None,
        "ratio_wide_over_compressed": {
            key: (wide[key] / comp[key] if wide.get(key) and comp.get(key) else None)
            for key in ("seconds_to_1e-03", f"seconds_to_{size.target_error:.0e}",
                        "seconds_per_step")
        },
    }  # fmt: skip
    if gamma_zero:
        budget = max(wide["steps"], comp["steps"])
        zero_common = {**common, "max_steps": budget}
        _, zero = timed_run(
            lambda: CompressedSolver(problem, CompressedConfig.paper(
                r_hat=rank, construction="dense", gamma=0.0, **zero_common),
                truth=truth), errors=(1e-3, size.target_error))
        zero["gamma"] = 0.0
        out["compressed_gamma0"] = zero
    return out


def _curves(res: dict[str, Any], labels: dict[str, str]) -> dict[str, dict[str, list[float]]]:
    return {label: res[key]["history"] for key, label in labels.items() if key in res}


def _line(name: str, res: dict[str, Any], note: str = "") -> str:
    w, c = res["wide"], res["compressed"]
    ratio = res["ratio_wide_over_compressed"]["seconds_to_1e-03"]
    return (f"{name}: to 1e-3 wide {fmt_count(w['steps_to_1e-03'])} steps / "
            f"{fmt_seconds(w['seconds_to_1e-03'])}, compressed (gamma {c['gamma']:g}) "
            f"{fmt_count(c['steps_to_1e-03'])} steps / {fmt_seconds(c['seconds_to_1e-03'])} "
            f"(wide/compressed {'-' if ratio is None else f'{ratio:.2g}x'}); final errors "
            f"{w['final_rel_error']:.1e} / {c['final_rel_error']:.1e}; max "
            f"||f_wide - f_comp|| / ||Phi|| along the run "
            f"{'-' if res['max_gap'] is None else format(res['max_gap'], '.1e')}{note}")


def run(ctx: Context) -> dict[str, Any]:
    """Both problems, all runs; figures ``factorization``, ``completion`` (error against steps
    and seconds) and ``gap`` (the wide-compressed difference along the runs)."""
    from ..diagnostics.plots import plot_lines, plot_recovery

    size: Size = ctx.pick(SIZES["smoke"], SIZES["default"], SIZES["full"])
    d_f, r_f = size.fact_d, size.fact_rank
    fact_target = random_low_rank(d_f, d_f, r_f, seed=ctx.seed)
    phi = fact_target.to_dense()
    fact = compare(phi, phi, r_f, shared_lr(phi, r_f), size, ctx.seed, ctx.progress,
                   gamma_zero=False)
    d_c, r_c = size.comp_d, size.comp_rank
    comp_target, obs = completion_problem(d_c, r_c, size.fraction, ctx.seed)
    comp = compare(obs, comp_target, r_c, shared_lr(obs, r_c), size, ctx.seed, ctx.progress,
                   gamma_zero=True)

    plot_recovery(_curves(fact, {"wide": "wide", "compressed": "compressed (gamma 0)"}),
                  ctx.figure("factorization"),
                  title=f"factorization d = {d_f}, r = {r_f}: wide vs compressed")
    plot_recovery(_curves(comp, {"wide": "wide", "compressed": "compressed (gamma 0.01)",
                                 "compressed_gamma0": "compressed (gamma 0)"}),
                  ctx.figure("completion"),
                  title=f"completion d = {d_c}, r = {r_c}, {size.fraction:.0%} observed")
    series = {name: (res["gap_steps"], res["gap"])
              for name, res in (("factorization", fact), ("completion (gamma 0.01)", comp))
              if res["gap"]}  # fmt: skip
    if series:
        plot_lines(series, ctx.figure("gap"), xlabel="training step",
                   ylabel="||f_wide - f_comp||_F / ||Phi||_F (log)", logy=True,
                   title="wide vs compressed end-to-end matrices along the runs")  # fmt: skip
    zero = comp["compressed_gamma0"]
    lines = [
        f"d = {d_f} (factorization, r = {r_f}) and {d_c} (completion, r = {r_c}, "
        f"{size.fraction:.0%} observed), depth {DEPTH}, eps {size.eps:g}, float64, {threads()} "
        f"thread(s); lr {fact['lr']:.3g} / {comp['lr']:.3g} (automatic; the paper's "
        f"{PAPER_LR:g})",
        _line("factorization", fact),
        _line("completion", comp, " (the slice moves with gamma > 0, so the learning steps "
                                  "come at different times)"),
        f"completion with gamma = 0: relative error {zero['final_rel_error']:.2f} after "
        f"{fmt_count(zero['steps'])} steps (stalls)",
        f"paper: {PAPER['factorization']}; {PAPER['completion']}; {PAPER['gamma_zero']}",
    ]
    return json_safe({
        "settings": {"factorization": {"d": d_f, "rank": r_f}, "completion": {
                         "d": d_c, "rank": r_c, "fraction": size.fraction,
                         "observed": len(obs)},
                     "depth": DEPTH, "init_scale": size.eps, "init": "orthogonal",
                     "dtype": "float64",
                     "lr_source": "automatic", "paper_lr": PAPER_LR,
                     "target_error": size.target_error, "max_steps": size.max_steps,
                     "eval_every": size.eval_every, "compare_every": size.compare_every,
                     "threads": threads(), "seed": ctx.seed},
        "factorization": fact,
        "completion": comp,
        "paper": PAPER,
        "summary": lines,
    })  # fmt: skip

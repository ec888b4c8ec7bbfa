"""Experiment 3 (docs/METHOD.md 3.3): the r_hat sweep. The compressed network needs about the same
number of steps whatever r_hat >= r; a narrow network of the same width 2 r_hat, trained
from a random eps-orthogonal init, needs far more.

Completion of a d x d rank-5 target ``Phi = X Y^T / r`` from a uniform 20% of its entries,
depth 3, eps = 1e-3, float64. For each r_hat:

- the compressed network (:class:`~deeplora.completion.CompressedSolver`, the library's
  default sparse form of docs/METHOD.md 3.2, gamma = 0.01), whose 2 r_hat-wide slice is read off
  the init gradient;
- a narrow network of width 2 r_hat (:class:`~deeplora.completion.WideSolver` with
  ``width=2 * r_hat``, ``init="orthogonal"``): the same number of trainable directions, but
  placed at random.

All runs share one step (the library's automatic step for this problem, fixed before they
start; the paper uses one step for all too) and stop at relative error 1e-3 or
``max_steps``. Reported: steps and seconds (the solvers' own gradient-descent time) to 1e-3.

The paper (d = 1000, r = 5, its step): ~19,500 iterations for the compressed network at
every r_hat = 5..20, 45,000-62,000 for the narrow one. Its d = 1000 problem sees 20
observations per degree of freedom (``|Omega| / (r (2d - r))``); our default d = 200 keeps the
20% and sees 4, d = 100 would see 2 (the edge of recovery, where the compressed network with
r_hat = r stalls: docs/BENCHMARKS.md), so the default is d = 200.

Sizes: ``smoke`` d = 24, r = 2, r_hat in {2, 4}, half the entries; ``default`` d = 200,
r_hat in {5, 10, 15, 20} (a few minutes on one core); ``full`` d = 1000, the paper's.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

from .._io import json_safe
from ..completion.compressed import CompressedConfig, CompressedSolver
from ..completion.wide import WideConfig, WideSolver
from ..errors import UserError
from . import Context
from ._matrix import (
    DEPTH,
    EPS,
    PAPER_LR,
    SOLVER_OFFSET,
    completion_problem,
    fmt_count,
    shared_lr,
    threads,
    timed_run,
)

TARGET_ERROR = 1e-3
PAPER = {
    "d": 1000, "rank": 5, "fraction": 0.2, "rank_hats": [5, 10, 15, 20],
    "compressed_steps": "~19,500 at every r_hat",
    "narrow_steps": "45,000-62,000",
    "compressed_steps_value": 19_500, "narrow_steps_range": [45_000, 62_000],
}  # fmt: skip


@dataclass(frozen=True)
class Size:
    d: int
    rank: int
    fraction: float
    rank_hats: tuple[int, ...]
    max_steps: int
    eval_every: int
    eps: float = EPS  # init scale (the smoke size takes 1e-2: ten times fewer steps)


SIZES = {
    "smoke": Size(d=20, rank=2, fraction=0.5, rank_hats=(2, 4), max_steps=20_000, eval_every=25,
                  eps=1e-2),
    "default": Size(d=200, rank=5, fraction=0.2, rank_hats=(5, 10, 15, 20), max_steps=100_000,
                    eval_every=50),
    "full": Size(d=1000, rank=5, fraction=0.2, rank_hats=(5, 10, 15, 20), max_steps=200_000,
                 eval_every=100),
}  # fmt: skip


def run(ctx: Context) -> dict[str, Any]:
    """Every r_hat, both networks; figures ``steps`` and ``seconds`` (to 1e-3 against r_hat)
    and ``recovery`` (error against steps and seconds, every run)."""
    from ..diagnostics.plots import plot_lines, plot_recovery

    size: Size = ctx.pick(SIZES["smoke"], SIZES["default"], SIZES["full"])
    d, r = size.d, size.rank
    target, obs = completion_problem(d, r, size.fraction, ctx.seed)
    lr = shared_lr(obs, r)
    common = dict(depth=DEPTH, init_scale=size.eps, lr=lr, max_steps=size.max_steps,
                  target_error=TARGET_ERROR, eval_every=size.eval_every, dtype="float64",
                  seed=ctx.seed + SOLVER_OFFSET, progress=ctx.progress)  # fmt: skip
    rows: list[dict[str, Any]] = []
    for r_hat in size.rank_hats:
        if 2 * r_hat >= d:
            raise UserError(f"r_hat {r_hat} is too large for d = {d} (2 r_hat must be < d)")
        _, comp = timed_run(partial(CompressedSolver, obs,
                                    CompressedConfig.paper(r_hat=r_hat, **common),
                                    truth=target))
        _, narrow = timed_run(partial(WideSolver, obs,
                                      WideConfig.paper(width=2 * r_hat, init="orthogonal",
                                                 **common),
                                      truth=target))
        steps_c, steps_n = comp["steps_to_1e-03"], narrow["steps_to_1e-03"]
        rows.append({"rank_hat": r_hat, "width": 2 * r_hat, "compressed": comp,
                     "narrow": narrow,
                     "steps_ratio_narrow_over_compressed":
                         steps_n / steps_c if steps_c and steps_n else None})  # fmt: skip
    xs = [row["rank_hat"] for row in rows]
    for key, ylabel in (("steps", "gradient steps to relative error 1e-3"),
                        ("seconds", "seconds to relative error 1e-3 (gradient steps only)")):
        plot_lines({"compressed (2 r_hat slice from the init gradient)":
                        (xs, [row["compressed"][f"{key}_to_1e-03"] for row in rows]),
                    "narrow, width 2 r_hat, random orthogonal init":
                        (xs, [row["narrow"][f"{key}_to_1e-03"] for row in rows])},
                   ctx.figure(key), xlabel="r_hat (assumed rank)", ylabel=ylabel,
                   title=f"completion d = {d}, r = {r}, {size.fraction:.0%} observed")  # fmt: skip
    curves = {}
    for row in rows:
        curves[f"compressed, r_hat {row['rank_hat']}"] = row["compressed"]["history"]
        curves[f"narrow, width {row['width']}"] = row["narrow"]["history"]
    plot_recovery(curves, ctx.figure("recovery"),
                  title=f"r_hat sweep: completion d = {d}, r = {r}")

    def listing(kind: str, key: str) -> str:
        return " / ".join(fmt_count(row[kind][key]) for row in rows)

    def seconds(kind: str) -> str:
        values = [row[kind]["seconds_to_1e-03"] for row in rows]
        return " / ".join("-" if v is None else f"{v:.3g}" for v in values)

    hats = "/".join(str(x) for x in xs)
    observed = len(obs) / (r * (2 * d - r))
    lines = [
        f"completion d = {d}, r = {r}, {size.fraction:.0%} observed ({observed:.1f} per degree "
        f"of freedom), depth {DEPTH}, eps {size.eps:g}, lr {lr:.3g} (automatic; paper's "
        f"{PAPER_LR:g}), {threads()} thread(s)",
        f"steps to 1e-3 at r_hat {hats}: compressed {listing('compressed', 'steps_to_1e-03')}; "
        f"narrow (width 2 r_hat) {listing('narrow', 'steps_to_1e-03')}",
        f"seconds to 1e-3: compressed {seconds('compressed')}; narrow {seconds('narrow')}",
        f"paper (d = 1000, its step): compressed {PAPER['compressed_steps']}; narrow "
        f"{PAPER['narrow_steps']}",
    ]
    return json_safe({
        "settings": {"d": d, "rank": r, "fraction": size.fraction, "observed": len(obs),
                     "observations_per_dof": observed, "rank_hats": list(xs), "depth": DEPTH,
                     "init_scale": size.eps, "dtype": "float64", "lr": lr, "lr_source": "automatic",
                     "paper_lr": PAPER_LR, "gamma": 0.01, "target_error": TARGET_ERROR,
                     "max_steps": size.max_steps, "eval_every": size.eval_every,
                     "threads": threads(), "seed": ctx.seed},
        "rows": rows,
        "paper": PAPER,
        "summary": lines,
    })  # fmt: skip

"""``deeplora bench completion``: how fast and how well compressed deep matrix completion
works, measured side by side with the wide network and the usual baselines in one run.

Problem (every synthetic section): ``Phi = X Y^T / r`` (:func:`random_low_rank`), r = 5, a
uniform fraction p = 0.2 of entries observed (or a given count), depth L = 3, eps = 1e-3, and
the paper's step ``lr = 5e-3`` on our plain-sum loss (its ``eta = 5e-3 m n`` on the mean loss).
If that step diverges, the automatic step (``lr=None``) is used instead and the output says so;
a synthetic run counts as diverged once its loss exceeds 1.5 times its initial value (a stable
step never gets there; one just past the stability edge can oscillate for ever below the
library's default guard).

Sections (``--only`` / ``--skip`` pick them; ``scale`` runs only with ``--scale``):

``wide``
    Wide vs compressed at each ``--sizes`` d: gradient-descent steps and seconds to relative
    error 1e-3 and 1e-6 (seconds count the GD steps only, not the evaluations), seconds per
    step and peak memory, and the ratio wide/compressed. Both use the same step. Above
    d = 300 (unless ``--full-wide``) the wide network is not run to convergence: its seconds
    per step are measured over a few dozen steps and multiplied by the compressed run's step
    counts (the two follow nearly the same trajectory); the table marks such figures as
    estimates.
``floor``
    The compressed step against its floor: one sampled dense-dense product
    (``torch.sparse.sampled_addmm``) plus two CSR sparse-dense products on the same Omega with
    k = 2r columns, each timed alone.
``sample``
    Sample efficiency at d = 100: success rate (relative error <= 1e-3) over ``--seeds`` seeds
    at oversampling ``rho = |Omega| / (r (m + n - r))`` (``--rhos``) of compressed depth-3
    factorization at the paper's settings (eps 1e-3, plain gradient descent, gamma 0.01, the
    gradient basis; r_hat = r) and at the library's defaults (r_hat = ``--rank-hat`` values and
    from the data; ``--init-relative``, ``--outer-step`` and ``--momentum`` change three
    defaults, which is how they were chosen), depth 2 at the defaults, soft-impute (default
    shrinkage and shrinkage 0, i.e. hard impute) and ALS at the true rank. The deep solvers use
    the automatic step.
``scale``
    m = n = 100,000, 2,000,000 observed entries (``--scale-size`` for others, e.g.
    ``1000000 20000000``), r = 5: wall time and peak memory of the compressed solver until
    relative error 1e-2 (or the time limit) at the library's defaults (init scale, step,
    r_hat, basis, outer step, momentum all chosen from the data; ``--scale-init-scale`` and
    ``--scale-basis`` override two of them), in float32.

MovieLens and the other real and synthetic tables are in ``deeplora bench datasets``.

Peak memory is the peak resident set size of the process running the solver (it sees torch's
CPU allocations), minus its size before the solver was built; measured solvers run in a fresh
'spawn' subprocess unless ``--quick`` (see :mod:`deeplora.bench._common`).
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .._io import json_safe, write_json
from ..completion.baselines import als, soft_impute
from ..completion.compressed import CompressedConfig, CompressedSolver
from ..completion.data import CsrPattern, random_low_rank, sample_entries
from ..completion.results import relative_error
from ..completion.solver import DivergenceError, GradientDescent
from ..completion.wide import WideConfig, WideSolver
from ..errors import UserError
from ..harness.machine import (
    PeakMemory,
    describe_machine,
    fmt,
    machine_info,
    run_isolated,
    seconds_per_call,
    table,
)
from ..harness.matrix import PAPER_LR, SAMPLE_OFFSET, SOLVER_OFFSET

SECTIONS = ("wide", "floor", "sample", "scale")
DEFAULT_SECTIONS = ("wide", "floor", "sample")

RANK = 5  # r of every synthetic target
FRACTION = 0.2  # p, observed fraction in the wide and floor sections
DEPTH = 3  # L
EPS = 1e-3  # init scale
ERRORS = (1e-3, 1e-6)  # relative errors whose crossing is reported
SUCCESS = 1e-3  # sample efficiency: success means relative error <= this
# Synthetic runs count a loss above BLOWUP x its initial value as divergence (a larger value
# lets a step just past the stability edge oscillate for the whole budget).
BLOWUP = 1.5



@dataclass
class Plan:
    """Sizes and budgets of one run (the defaults or ``--quick``)."""

    sizes: list[int]
    max_steps: int  # step budget of the wide-section runs
    eval_every: int  # resolution of the crossing steps in the wide section
    full_wide_max: int  # the wide network runs to convergence up to this d
    wide_timing_steps: int  # steps timed for the wide network above full_wide_max
    floor_repeats: int
    sample_d: int
    rhos: list[float]
    seeds: int
    sample_steps: int  # step budget of each deep solver in the sample section
    sample_eval_every: int
    soft_iters: int  # soft-impute steps per value of lambda (sample section)
    als_iters: int
    rank_hats: list[int]  # r_hat of the depth-3 compressed rows of the sample section
    sample_settings: dict[str, float]  # settings on top of the defaults (sample section)
    scale_shape: int
    scale_count: int
    scale_minutes: float
    scale_eps: float | None  # init scale of the scale run (None: the library default)
    scale_dtype: str
    scale_basis: str | None  # basis of the scale run's slice (None: the library default)
    isolate: bool  # measure solvers in fresh subprocesses
    trimmed: list[str]


def make_plan(args: argparse.Namespace) -> Plan:
    quick = bool(args.quick)
    if quick:
        plan = Plan(
            sizes=[30, 60], max_steps=1500, eval_every=25, full_wide_max=30,
            wide_timing_steps=3, floor_repeats=20,
            sample_d=40, rhos=[2.0, 4.0], seeds=2, sample_steps=1000, sample_eval_every=50,
            soft_iters=30, als_iters=20, rank_hats=[RANK], sample_settings={},
            scale_shape=3_000, scale_count=60_000, scale_minutes=0.25,
            scale_eps=None, scale_dtype="float64", scale_basis=None, isolate=False,
            trimmed=["--quick: tiny sizes and budgets; the numbers only show that it runs"],
        )
    else:
        plan = Plan(
            sizes=[100, 300, 1000], max_steps=100_000, eval_every=25, full_wide_max=300,
            wide_timing_steps=24, floor_repeats=200,
            sample_d=100, rhos=[1.5, 2.0, 2.5, 3.0, 4.0], seeds=10, sample_steps=40_000,
            sample_eval_every=100, soft_iters=300, als_iters=300,
            rank_hats=[RANK, 2 * RANK, 4 * RANK], sample_settings={},
            scale_shape=100_000, scale_count=2_000_000, scale_minutes=30.0,
            scale_eps=None, scale_dtype="float32", scale_basis=None,
            isolate=True,
            trimmed=[
                "wide: the wide network runs to convergence up to d = 300 only; above, its "
                "time is compressed steps x measured seconds per step (--full-wide runs it)",
                "sample: each deep run stops at 40,000 steps (a slower success counts as a "
                "failure)",
            ],
        )
    if args.sizes is not None:
        plan.sizes = list(args.sizes)
    if args.seeds is not None:
        plan.seeds = args.seeds
    if args.max_steps is not None:
        plan.max_steps = args.max_steps
    if args.rank_hat is not None:
        plan.rank_hats = sorted(set(args.rank_hat))
    if args.rhos is not None:
        plan.rhos = sorted(set(args.rhos))
    plan.sample_settings = {k: v for k, v in (("init_relative", args.init_relative),
                                              ("outer_step", args.outer_step),
                                              ("momentum", args.momentum)) if v is not None}
    if args.full_wide:
        plan.full_wide_max = max(plan.sizes)
        plan.trimmed = [t for t in plan.trimmed if not t.startswith("wide:")]
    if args.scale_minutes is not None:
        plan.scale_minutes = args.scale_minutes
    if args.scale_size is not None:
        plan.scale_shape, plan.scale_count = args.scale_size
    if args.scale_init_scale is not None:
        plan.scale_eps = args.scale_init_scale
    if args.scale_dtype is not None:
        plan.scale_dtype = args.scale_dtype
    if args.scale_basis is not None:
        plan.scale_basis = args.scale_basis
    if args.no_isolate:
        plan.isolate = False
    return plan


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


# =========================================================================== sections
def _with_fallback(fn: Any, *args: Any, isolate: bool) -> tuple[dict[str, Any], list[str]]:
    """``fn(..., lr=PAPER_LR, ...)``; on divergence once more with the automatic step.
    ``args`` holds the string "LR" where the step goes."""
    notes: list[str] = []
    res = run_isolated(fn, *[PAPER_LR if a == "LR" else a for a in args], isolate=isolate)
    if "diverged" in res:
        notes.append(f"the paper's step lr={PAPER_LR:g} diverged ({res['diverged']}); "
                     "fell back to the automatic step")
        first = res
        res = run_isolated(fn, *[None if a == "LR" else a for a in args], isolate=isolate)
        res["paper_lr_attempt"] = first
    return res, notes


def section_wide(plan: Plan) -> dict[str, Any]:
    print(f"\n== wide vs compressed (r={RANK}, p={FRACTION}, L={DEPTH}, eps={EPS:g}; "
          f"crossings resolved to {plan.eval_every} steps; budget {plan.max_steps:,} steps)")
    rows: list[dict[str, Any]] = []
    for d in plan.sizes:
        t0 = time.perf_counter()
        comp, notes = _with_fallback(run_solver, "compressed", d, "LR", plan.max_steps,
                                     plan.eval_every, 0, isolate=plan.isolate)
        lr = comp["lr"]
        if "diverged" in comp:
            notes.append(f"the automatic step diverged too: {comp['diverged']}")
        _progress(d, "compressed", comp, t0)
        if d <= plan.full_wide_max:
            wide = run_isolated(run_solver, "wide", d, lr, plan.max_steps, plan.eval_every, 0,
                                isolate=plan.isolate)
        else:
            wide = run_isolated(time_wide, d, lr, plan.wide_timing_steps, 0,
                                isolate=plan.isolate)
            for err in ERRORS:
                key = f"{err:.0e}"
                steps = comp.get(f"steps_to_{key}")
                wide[f"steps_to_{key}"] = steps
                wide[f"seconds_to_{key}"] = (None if steps is None
                                             else steps * wide["seconds_per_step"])
            notes.append(f"wide at d={d}: not run to convergence; seconds = compressed steps x "
                         f"wide seconds/step measured over {plan.wide_timing_steps} steps")
        if "diverged" in wide:
            notes.append(f"wide diverged at lr={lr:.3g}: {wide['diverged']}")
        _progress(d, "wide", wide, t0)
        row = {"d": d, "lr": lr, "lr_source": "paper" if lr == PAPER_LR else "automatic",
               "observed": round(FRACTION * d * d), "compressed": comp, "wide": wide,
               "ratio_wide_over_compressed": _ratios(wide, comp), "notes": notes,
               "section_seconds": time.perf_counter() - t0}
        rows.append(row)
        for note in notes:
            print(f"  note: {note}")
    _print_wide(rows)
    return {"rows": rows, "settings": {"rank": RANK, "fraction": FRACTION, "depth": DEPTH,
                                       "init_scale": EPS, "paper_lr": PAPER_LR,
                                       "eval_every": plan.eval_every,
                                       "max_steps": plan.max_steps,
                                       "full_wide_max": plan.full_wide_max}}


def _progress(d: int, name: str, res: dict[str, Any], t0: float) -> None:
    if "diverged" in res:
        what = "diverged"
    elif res.get("estimated"):
        what = f"timed {res['timed_steps']} steps"
    else:
        what = f"{res['steps']:,} steps ({res['stopped']}), error {res['final_rel_error']:.2e}"
    print(f"  d={d} {name}: lr {res['lr']:.3g}, {what} ({time.perf_counter() - t0:.0f} s "
          f"into d={d})", flush=True)


def _ratios(wide: dict[str, Any], comp: dict[str, Any]) -> dict[str, float | None]:
    def ratio(a: Any, b: Any) -> float | None:
        if a is None or b is None or not b or a != a or b != b:
            return None
        return float(a) / float(b)

    out: dict[str, float | None] = {
        "seconds_per_step": ratio(wide.get("seconds_per_step"), comp.get("seconds_per_step")),
        "peak_memory_increase": ratio(wide.get("memory", {}).get("increase_mb"),
                                      comp.get("memory", {}).get("increase_mb")),
    }
    for err in ERRORS:
        key = f"{err:.0e}"
        out[f"seconds_to_{key}"] = ratio(wide.get(f"seconds_to_{key}"),
                                         comp.get(f"seconds_to_{key}"))
    return out


def _print_wide(rows: list[dict[str, Any]]) -> None:
    lines = []
    for row in rows:
        for name in ("compressed", "wide"):
            r = row[name]
            star = "*" if r.get("estimated") else ""
            cells = [f"{row['d']}", name, f"{row['lr']:.3g}"]
            for err in ERRORS:
                key = f"{err:.0e}"
                cells.append(fmt(r.get(f"steps_to_{key}"), ",d") + star)
                cells.append(fmt(r.get(f"seconds_to_{key}"), ".3g") + star)
            cells += [fmt(r.get("seconds_per_step", math.nan) * 1e3, ".3g"),
                      fmt(r.get("memory", {}).get("increase_mb"), ".1f"),
                      "diverged" if "diverged" in r else fmt(r.get("final_rel_error"), ".2e")]
            lines.append(cells)
        q = row["ratio_wide_over_compressed"]
        lines.append([f"{row['d']}", "wide/comp", "", "", fmt(q["seconds_to_1e-03"], ".3g"), "",
                      fmt(q["seconds_to_1e-06"], ".3g"), fmt(q["seconds_per_step"], ".3g"),
                      fmt(q["peak_memory_increase"], ".3g"), ""])
    print(table(["d", "solver", "lr", "steps@1e-3", "s@1e-3", "steps@1e-6", "s@1e-6",
                 "ms/step", "peak MB", "final err"], lines, left=2))
    print("s@: seconds of GD steps (evaluations excluded); * estimate = compressed steps x "
          "wide s/step; peak MB: peak RSS increase while the solver was built and run")
    last = rows[-1] if rows else None
    if last is not None:
        q = last["ratio_wide_over_compressed"]["seconds_to_1e-06"]
        q3 = last["ratio_wide_over_compressed"]["seconds_to_1e-03"]
        print(f"target: compressed >= 50x faster than wide at d={last['d']} "
              f"(paper's GPU: ~7x); measured {fmt(q3, '.3g')}x to 1e-3, {fmt(q, '.3g')}x to 1e-6")


def _csr(rows: np.ndarray, cols: np.ndarray, shape: tuple[int, int],
         dtype: torch.dtype) -> torch.Tensor:
    """A CSR tensor of random values at the given positions."""
    return CsrPattern.of(rows, cols, shape).torch(torch.randn(len(rows), dtype=dtype))


def _floor_row(d: int, k: int, reps: int) -> dict[str, Any]:
    """Each kernel of a compressed step timed alone on the d x d problem's Omega, and the
    step itself."""
    _, obs = _problem(d, 0)
    dtype = torch.float64
    pattern = _csr(obs.rows, obs.cols, obs.shape, dtype)
    resid = _csr(obs.rows, obs.cols, obs.shape, dtype)
    resid_t = _csr(obs.cols, obs.rows, (obs.shape[1], obs.shape[0]), dtype)
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(d, k, generator=gen, dtype=dtype)
    v = torch.randn(d, k, generator=gen, dtype=dtype)
    sddmm = seconds_per_call(lambda: torch.sparse.sampled_addmm(pattern, a, v.T, beta=0.0),
                             repeats=reps)
    spmm_v = seconds_per_call(lambda: resid @ v, repeats=reps)
    spmm_a = seconds_per_call(lambda: resid_t @ a, repeats=reps)
    solver = CompressedSolver(obs, CompressedConfig.paper(r_hat=RANK, depth=DEPTH, init_scale=EPS,
                                                    lr=PAPER_LR, progress=False))
    step = seconds_per_call(solver.step, repeats=reps)
    floor = sddmm + spmm_v + spmm_a
    return {"d": d, "observed": len(obs), "k": k, "sddmm_s": sddmm, "spmm_rv_s": spmm_v,
            "spmm_rta_s": spmm_a, "floor_s": floor, "step_s": step, "ratio": step / floor,
            "repeats": reps}


def section_floor(plan: Plan) -> dict[str, Any]:
    k = 2 * RANK
    print(f"\n== compressed step vs its floor (one SDDMM + two SpMMs on Omega, k = {k}, "
          "float64)")
    rows = [_floor_row(d, k, plan.floor_repeats) for d in plan.sizes]
    print(table(["d", "|Omega|", "SDDMM ms", "R@V ms", "R^T@A ms", "floor ms", "step ms",
                 "step/floor"],
                [[str(r["d"]), f"{r['observed']:,}", fmt(r["sddmm_s"] * 1e3),
                  fmt(r["spmm_rv_s"] * 1e3), fmt(r["spmm_rta_s"] * 1e3),
                  fmt(r["floor_s"] * 1e3), fmt(r["step_s"] * 1e3), fmt(r["ratio"], ".2f")]
                 for r in rows]))
    print("target: step within 3x of the floor; each figure is the median of 5 rounds")
    return {"rows": rows}


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
    at_two = [f"{info['label']}: {info['successes']['2']}/{plan.seeds}"
              for key, info in result["methods"].items()
              if key.startswith("deep3") and "2" in info["successes"]]
    if at_two:
        print("target: depth 3 succeeds at rho=2 in >= 9 of 10 seeds; measured "
              + ", ".join(at_two))
    return result


def section_scale(plan: Plan) -> dict[str, Any]:
    m, count = plan.scale_shape, plan.scale_count
    chosen = ", ".join(f"{k} {v}" for k, v in (("eps", plan.scale_eps),
                                                ("basis", plan.scale_basis)) if v is not None)
    print(f"\n== scale (m = n = {m:,}, {count:,} observed, r={RANK}; until relative error "
          f"1e-2 or {plan.scale_minutes:g} min; the library's defaults"
          f"{' but ' + chosen if chosen else ''}, {plan.scale_dtype}; "
          f"{torch.get_num_threads()} thread(s))")
    eval_every = 100 if m >= 10_000 else 25
    res = run_isolated(run_scale, m, count, plan.scale_minutes, 0, eval_every,
                       plan.scale_eps, plan.scale_dtype, plan.scale_basis,
                       isolate=plan.isolate)
    if "diverged" in res:
        print(f"  diverged: {res['diverged']}")
    else:
        mem = res["memory"]
        print(table(["r_hat", "eps", "basis", "lr (first, last)", "back-offs", "steps",
                     "stopped", "final err", "data s", "setup s", "wall s", "ms/step",
                     "peak RSS MB"],
                    [[str(res["r_hat"]), f"{res['init_scale']:.3g}", res["basis"],
                      f"{res['initial_lr']:.3g}, {res['lr']:.3g}",
                      str(len(res["backoff_steps"])), f"{res['steps']:,}", res["stopped"],
                      f"{res['final_rel_error']:.2e}", fmt(res["data_seconds"]),
                      fmt(res["setup_seconds"]), fmt(res["wall_seconds"], ".4g"),
                      fmt(res["seconds_per_step"] * 1e3), fmt(mem["peak_rss_mb"], ".0f")]]))
        minutes = res["wall_seconds"] / 60
        print("target: relative error <= 1e-2 in under 30 minutes with peak memory under 4 GB;"
              f" reached: {res['reached_1e-2']} after {minutes:.1f} min (solver setup "
              f"included, data generation not), peak RSS {mem['peak_rss_mb'] / 1024:.2f} GB "
              "(whole process)")
    res.update(shape=[m, m], observed=count)
    return res


# =========================================================================== command
def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``deeplora bench completion``."""
    p = sub.add_parser(
        "completion", help="compressed vs wide deep matrix completion, baselines, scale",
        description="Benchmark compressed deep matrix completion: wide vs compressed time to "
                    "accuracy, the compressed step vs its sparse-kernel floor, sample "
                    "efficiency against soft-impute and ALS, and (with --scale) a 100,000 x "
                    "100,000 problem at the defaults. Prints tables; --json saves all.")
    p.add_argument("--json", type=Path, metavar="PATH", help="write every figure to PATH")
    p.add_argument("--sizes", type=int, nargs="+", metavar="D",
                   help="d of the wide and floor sections (default 100 300 1000)")
    p.add_argument("--seeds", type=int, help="seeds per rho in the sample section (default 10)")
    p.add_argument("--rank-hat", type=int, nargs="+", metavar="R",
                   help=f"r_hat of the depth-3 compressed rows in the sample section (default "
                        f"{RANK} {2 * RANK} {4 * RANK}: the true rank, twice and four times it)")
    p.add_argument("--rhos", type=float, nargs="+", metavar="RHO",
                   help="oversampling factors of the sample section (default 1.5 2 2.5 3 4)")
    p.add_argument("--init-relative", type=float, metavar="R",
                   help="sample section: init_relative of the rows at the defaults")
    p.add_argument("--outer-step", type=float,
                   help="sample section: outer_step of the rows at the defaults")
    p.add_argument("--momentum", type=float,
                   help="sample section: momentum of the rows at the defaults")
    p.add_argument("--max-steps", type=int,
                   help="step budget of the wide-section runs (default 100000)")
    p.add_argument("--full-wide", action="store_true",
                   help="run the wide network to convergence at every size (default: up to "
                        "d = 300; above, steps x measured seconds per step)")
    p.add_argument("--scale", action="store_true",
                   help="also run the 100,000 x 100,000 scale section (up to 30 min)")
    p.add_argument("--scale-minutes", type=float, help="time limit of --scale (default 30)")
    p.add_argument("--scale-init-scale", type=float, metavar="EPS",
                   help="init scale of --scale (default: the library's, from the data)")
    p.add_argument("--scale-dtype", choices=["float32", "float64"],
                   help="dtype of --scale (default float32)")
    p.add_argument("--scale-basis", choices=["gradient", "normalized"],
                   help="basis of the compressed slice in --scale (default: the library's, "
                        "normalized)")
    p.add_argument("--scale-size", type=int, nargs=2, metavar=("M", "OBSERVED"),
                   help="m = n and the number of observed entries of --scale "
                        "(default 100000 2000000)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--only", nargs="+", choices=SECTIONS, metavar="SECTION",
                       help=f"run only these sections ({', '.join(SECTIONS)})")
    group.add_argument("--skip", nargs="+", choices=SECTIONS, metavar="SECTION",
                       help="skip these sections")
    p.add_argument("--quick", action="store_true",
                   help="tiny sizes and budgets: a smoke run of every section (< 1 minute)")
    p.add_argument("--no-isolate", action="store_true",
                   help="run the measured solvers in this process (default: a fresh "
                        "subprocess each, so that peak memory is their own)")
    p.set_defaults(func=run)


def _sections(args: argparse.Namespace) -> list[str]:
    if args.only:
        return [s for s in SECTIONS if s in args.only]
    chosen = [*DEFAULT_SECTIONS, "scale"] if args.scale else list(DEFAULT_SECTIONS)
    return [s for s in chosen if not args.skip or s not in args.skip]


def run(args: argparse.Namespace) -> int:
    for name, value in (("--seeds", args.seeds), ("--max-steps", args.max_steps)):
        if value is not None and value < 1:
            raise UserError(f"{name} must be >= 1, got {value}")
    if args.sizes is not None and min(args.sizes) <= 2 * RANK:
        raise UserError(f"--sizes must all be > {2 * RANK} (the rank is {RANK}), got "
                         f"{args.sizes}")
    if args.rank_hat is not None and min(args.rank_hat) < RANK:
        raise UserError(f"--rank-hat must be >= the true rank {RANK}, got {args.rank_hat}")
    if args.scale_size is not None and not (
            args.scale_size[0] > 2 * RANK and 1 <= args.scale_size[1] <= args.scale_size[0] ** 2):
        raise UserError(f"--scale-size needs M > {2 * RANK} and 1 <= OBSERVED <= M^2, got "
                         f"{args.scale_size}")
    if args.scale_init_scale is not None and args.scale_init_scale <= 0:
        raise UserError(f"--scale-init-scale must be > 0, got {args.scale_init_scale}")
    if args.scale_minutes is not None and args.scale_minutes <= 0:
        raise UserError(f"--scale-minutes must be > 0, got {args.scale_minutes}")
    plan = make_plan(args)
    if 2 * max(plan.rank_hats) >= plan.sample_d:
        raise UserError(f"--rank-hat must be below d/2 = {plan.sample_d / 2:g} (the trained "
                         f"slice is 2 r_hat wide), got {plan.rank_hats}")
    sections = _sections(args)
    machine = machine_info()
    print("deeplora bench completion: " + describe_machine(machine))
    print(f"sections: {', '.join(sections)}; solvers whose memory is measured (wide, scale) "
          "run " + ("each in a fresh subprocess" if plan.isolate else "in this process"))
    for note in plan.trimmed:
        print(f"trimmed: {note}")
    runners = {"wide": section_wide, "floor": section_floor, "sample": section_sample,
               "scale": section_scale}
    report: dict[str, Any] = {
        "benchmark": "completion", "format_version": 1,
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine, "plan": asdict(plan), "sections": {}, "section_seconds": {},
    }
    total = time.perf_counter()
    for name in sections:
        start = time.perf_counter()
        report["sections"][name] = runners[name](plan)
        report["section_seconds"][name] = time.perf_counter() - start
        print(f"({name}: {report['section_seconds'][name]:.1f} s)")
        if args.json is not None:  # keep what is done if a later section fails
            write_json(args.json, json_safe(report))
    report["total_seconds"] = time.perf_counter() - total
    print(f"\ntotal {report['total_seconds']:.1f} s")
    if args.json is not None:
        write_json(args.json, json_safe(report))
        print(f"results written to {args.json}")
    return 0

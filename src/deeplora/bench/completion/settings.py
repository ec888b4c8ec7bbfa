"""Sizes, budgets and fixed settings of ``deeplora bench completion``."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

SECTIONS = ("wide", "floor", "sample", "scale", "basis")
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
    basis_shape: int  # m = n of the basis section (20 entries per row)
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
            scale_eps=None, scale_dtype="float64", scale_basis=None, basis_shape=2_000,
            isolate=False,
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
            scale_eps=None, scale_dtype="float32", scale_basis=None, basis_shape=20_000,
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

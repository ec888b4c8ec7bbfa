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
'spawn' subprocess unless ``--quick`` (see :mod:`deeplora.harness.machine`).
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..._io import json_safe, write_json
from ...errors import UserError
from ...harness.machine import (
    describe_machine,
    machine_info,
)
from ...harness.targets import Target, print_targets, to_json
from .basis import section_basis
from .samples import section_sample
from .scale import section_scale
from .settings import DEFAULT_SECTIONS, RANK, SECTIONS, Plan, make_plan
from .speed import section_floor, section_wide


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


def targets(sections: dict[str, Any], plan: Plan) -> list[Target]:
    """The targets of the sections that ran (docs/BENCHMARKS.md quotes them)."""
    rows: list[Target] = []
    wide = sections.get("wide", {}).get("rows", [])
    if wide:
        last = wide[-1]
        rows.append(Target(
            f"wide / compressed wall time to error 1e-6, d = {last['d']}",
            last["ratio_wide_over_compressed"]["seconds_to_1e-06"], 50.0, at_most=False,
            estimated=bool(last["wide"].get("estimated")), unit="x"))
    for r in sections.get("floor", {}).get("rows", []):
        rows.append(Target(f"compressed step / its floor (SDDMM + 2 SpMM), d = {r['d']}",
                           r["ratio"], 3.0, digits=".3g"))
    for key, info in sections.get("sample", {}).get("methods", {}).items():
        if key.startswith("deep3") and "2" in info["successes"]:
            rows.append(Target(f"success share at rho = 2, d = {plan.sample_d}: "
                               f"{info['label']}", info["successes"]["2"] / plan.seeds, 0.9,
                               at_most=False, digits=".2f"))
    scale = sections.get("scale")
    if scale and "memory" in scale:
        m = scale["shape"][0]
        minutes = scale["wall_seconds"] / 60 if scale["reached_1e-2"] else math.inf
        rows.append(Target(f"scale {m:,} x {m:,}: minutes to error 1e-2", minutes, 30.0,
                           digits=".3g", unit=" min"))
        rows.append(Target(f"scale {m:,} x {m:,}: peak memory",
                           scale["memory"]["peak_rss_mb"] / 1024, 4.0, unit=" GB"))
    return rows


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
               "basis": section_basis,
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
    declared = targets(report["sections"], plan)
    print_targets(declared)
    report["targets"] = to_json(declared)
    report["total_seconds"] = time.perf_counter() - total
    print(f"\ntotal {report['total_seconds']:.1f} s")
    if args.json is not None:
        write_json(args.json, json_safe(report))
        print(f"results written to {args.json}")
    return 0

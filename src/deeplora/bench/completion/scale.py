"""Scale: the compressed solver at the defaults on a large table, under a time budget."""

from __future__ import annotations

from typing import Any

import torch

from ...harness.machine import (
    fmt,
    run_isolated,
    table,
)
from .runs import run_scale
from .settings import RANK, Plan


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
        print(f"reached 1e-2: {res['reached_1e-2']} after {minutes:.1f} min (solver setup "
              f"included, data generation not), peak RSS {mem['peak_rss_mb'] / 1024:.2f} GB "
              "(whole process)")
    res.update(shape=[m, m], observed=count)
    return res

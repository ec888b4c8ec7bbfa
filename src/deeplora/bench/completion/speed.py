"""Speed sections: wide against compressed to a target error, and the compressed step against
its kernel floor."""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import torch

from ...completion.compressed import CompressedConfig, CompressedSolver
from ...completion.data import CsrPattern
from ...harness.machine import (
    fmt,
    run_isolated,
    seconds_per_call,
    table,
)
from ...harness.matrix import PAPER_LR
from .runs import _problem, run_solver, time_wide
from .settings import DEPTH, EPS, ERRORS, FRACTION, RANK, Plan


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
    print("each figure is the median of the rounds")
    return {"rows": rows}

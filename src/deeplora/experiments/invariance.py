"""Experiment 1 (docs/METHOD.md 2): in deep matrix factorization only 2r singular values of each
layer move; the rest stay at eps.

Setting: factorization (every entry observed) of a d x d rank-r target ``Phi = X Y^T / r``
by the wide network ``W_3 W_2 W_1`` (width d, :class:`~deeplora.completion.WideSolver`), every
``W_l(0) = eps * (random orthogonal)``, eps = 1e-3, float64, full-batch gradient descent at
the automatic step (about the paper's 5e-3 at d = 100), until relative error 1e-6.

The theorem: ``W_l(t) = U_l diag(Wt_l(t), eps I) V_l^T`` with fixed ``U_l, V_l`` and a 2r x 2r
block ``Wt_l``; so at most 2r singular values of each layer leave eps, and the change
``D_l = W_l(t) - W_l(0)`` lies in the slice ``span(U_l) x span(V_l)`` predicted at init
(:func:`deeplora.diagnostics.predicted_bases`). Recorded (``SubspaceRecorder.from_solver(...,
r_hat=r)``) at ``every`` steps:

- the top-k singular values of each layer and of the end-to-end matrix (k = d up to d = 100);
- ``outside = ||D - P_U D P_V||_F / ||D||_F``, the part of each layer's change outside the
  predicted slice (0 by the theorem);
- and, separately at the same steps, the full spectrum of each layer, from which we count
  the singular values that left eps: ``|s_i - eps| > MOVED_RTOL * eps``.

The threshold, ``MOVED_RTOL = 1e-6``: in exact arithmetic the eps block is not quite frozen,
its common scale shrinks by ``lr eps^4`` (relative) per step, because the end-to-end matrix
keeps an ``eps^L`` part outside the target (about 1e-10 of eps over a d = 100 run), and a
float64 SVD resolves ``s_i`` to ~1e-12 of eps; of the 2r singular values that do move, r
grow to ``s_i(Phi)^(1/3)`` (thousands of times eps) and the other r shrink by 5-20% of eps (in
our runs at d = 12 and 100). 1e-6 sits about four decades above the first and four below the
second. The results also give both sides of the gap
(``largest_rest_deviation``: the (2r+1)-th largest ``|s_i - eps| / eps`` over all records;
``smallest_moved_deviation``: the 2r-th largest at the end), so the count can be checked
against any other threshold.

Sizes: ``smoke`` d = 12, r = 2; ``default`` d = 100, r = 5 (about 15 s on one core);
``full`` d = 1000, r = 10 (the paper's factorization size: hours on a CPU).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .._io import json_safe
from ..completion.data import random_low_rank
from ..completion.objectives import Factorization
from ..completion.solver import GradientDescent, auto_lr
from ..completion.wide import WideConfig, WideSolver
from . import Context
from ._matrix import DEPTH, EPS, PAPER_LR, SOLVER_OFFSET, fmt_count, threads, timed_run

MOVED_RTOL = 1e-6  # a singular value has left eps when |s - eps| > MOVED_RTOL * eps
TARGET_ERROR = 1e-6
PAPER = {
    "claim": "only 2r singular values of each layer move; the rest stay at eps "
             "(orthogonal eps-init, gradient descent, factorization)",
    "source": "docs/METHOD.md 2",
}  # fmt: skip


@dataclass(frozen=True)
class Size:
    d: int
    rank: int
    max_steps: int
    every: int  # record every this many steps
    k: int  # singular values recorded per matrix (for the figure)
    eval_every: int


SIZES = {
    "smoke": Size(d=12, rank=2, max_steps=30_000, every=250, k=12, eval_every=50),
    "default": Size(d=100, rank=5, max_steps=60_000, every=250, k=100, eval_every=50),
    "full": Size(d=1000, rank=10, max_steps=150_000, every=1_000, k=50, eval_every=100),
}


def deviations(spectra: np.ndarray, eps: float) -> np.ndarray:
    """``|s - eps| / eps`` sorted in descending order along the last axis."""
    return -np.sort(-np.abs(spectra - eps) / eps, axis=-1)


def run(ctx: Context) -> dict[str, Any]:
    """Run the factorization, record, count; figures ``singular_values``, ``outside`` and
    ``eps_gap``; the recording itself as ``recording.npz``."""
    from ..diagnostics.plots import plot_lines, plot_singular_values
    from ..diagnostics.recorder import SubspaceRecorder

    size: Size = ctx.pick(SIZES["smoke"], SIZES["default"], SIZES["full"])
    d, r = size.d, size.rank
    target = random_low_rank(d, d, r, seed=ctx.seed)
    phi = target.to_dense()
    lr = auto_lr(Factorization(phi), DEPTH)
    config = WideConfig.paper(depth=DEPTH, init_scale=EPS, lr=lr, init="orthogonal",
                        max_steps=size.max_steps, target_error=TARGET_ERROR,
                        eval_every=size.eval_every, dtype="float64",
                        seed=ctx.seed + SOLVER_OFFSET, progress=ctx.progress)  # fmt: skip
    holder: dict[str, Any] = {}
    spectra: list[np.ndarray] = []  # [L, d] per record

    def full_spectra(solver: WideSolver) -> np.ndarray:
        return np.stack([torch.linalg.svdvals(w.double()).numpy() for w in solver.weights])

    def make() -> GradientDescent:
        solver = WideSolver(phi, config, truth=phi)  # dense truth: exact errors below 1e-8
        rec = SubspaceRecorder.from_solver(solver, r_hat=r, k=min(size.k, d), every=size.every,
                                           reference="predicted")  # fmt: skip
        rec.record(0)
        spectra.append(full_spectra(solver))
        holder.update(recorder=rec)
        return solver

    def callback(solver: GradientDescent) -> None:
        rec: SubspaceRecorder = holder["recorder"]
        rec(solver)
        if rec.recorded_steps[-1] == solver.t and len(spectra) < len(rec.recorded_steps):
            assert isinstance(solver, WideSolver)
            spectra.append(full_spectra(solver))

    solver, summary = timed_run(make, callback=callback, errors=(1e-3, TARGET_ERROR))
    assert isinstance(solver, WideSolver)
    rec = holder["recorder"]
    if rec.recorded_steps[-1] != solver.t:  # the last state, whatever the schedule
        rec.record(solver.t)
        spectra.append(full_spectra(solver))
    recording = rec.finish()
    recording.save(ctx.out / "recording.npz")
    steps = recording.steps
    spec = np.stack(spectra)  # [T, L, d]
    dev = deviations(spec, EPS)
    moved = (dev > MOVED_RTOL).sum(axis=-1)  # [T, L]
    layers: dict[str, Any] = {}
    names = [f"W{i + 1}" for i in range(DEPTH)]
    for i, name in enumerate(names):
        outside = recording.layers[name].outside
        assert outside is not None
        layers[name] = {
            "moved_final": int(moved[-1, i]),
            "moved_max": int(moved[:, i].max()),
            "largest_rest_deviation": float(dev[:, i, 2 * r].max()) if d > 2 * r else None,
            "smallest_moved_deviation": float(dev[-1, i, 2 * r - 1]),
            "outside_max": float(np.nanmax(outside)),
            "outside_final": float(outside[-1]),
            "final_singular_values": spec[-1, i, : 2 * r + 2].tolist(),
        }
    e2e = recording.layers["end_to_end"].outside
    assert e2e is not None
    outside_max = max(v["outside_max"] for v in layers.values())
    rest = [v["largest_rest_deviation"] for v in layers.values()
            if v["largest_rest_deviation"] is not None]  # fmt: skip
    largest_rest = max(rest) if rest else None
    smallest_moved = min(v["smallest_moved_deviation"] for v in layers.values())

    plot_singular_values(recording, ctx.figure("singular_values"),
                         layers=[*names, "end_to_end"],
                         title=f"factorization d = {d}, r = {r}, eps = {EPS:g}: layers and "
                               "W3 W2 W1")  # fmt: skip
    series = {name: (steps.tolist(), recording.layers[name].outside.tolist())
              for name in [*names, "end_to_end"]}  # fmt: skip
    plot_lines(series, ctx.figure("outside"), xlabel="training step",
               ylabel="||D - P_U D P_V||_F / ||D||_F (log)", logy=True,
               title=f"change outside the predicted 2r = {2 * r} slice (theorem: 0)")  # fmt: skip
    gap: dict[str, tuple[list[float], list[float]]] = {
        f"{2 * r}th largest (the last that moves), smallest over the layers":
            (steps.tolist(), dev[:, :, 2 * r - 1].min(axis=1).tolist()),
    }
    if d > 2 * r:
        gap[f"{2 * r + 1}th largest (the first that stays), largest over the layers"] = (
            steps.tolist(), dev[:, :, 2 * r].max(axis=1).tolist())
    gap[f"threshold {MOVED_RTOL:g}"] = ([0.0, float(steps[-1])], [MOVED_RTOL, MOVED_RTOL])
    plot_lines(gap, ctx.figure("eps_gap"), xlabel="training step",
               ylabel="|s_i - eps| / eps (log)", logy=True, markers=False,
               title=f"how far singular values move off eps (2r = {2 * r})")

    counts = ", ".join(f"{n} {v['moved_final']}" for n, v in layers.items())
    lines = [
        f"factorization d = {d}, r = {r}, depth {DEPTH}, eps {EPS:g}, float64, lr {lr:.3g} "
        f"(paper's {PAPER_LR:g}), {threads()} thread(s): {fmt_count(solver.t)} steps, "
        f"relative error {summary['final_rel_error']:.2e}",
        f"singular values that left eps (|s - eps| > {MOVED_RTOL:g} eps) per layer: {counts}; "
        f"at most {max(v['moved_max'] for v in layers.values())} at any record "
        f"(theorem: at most 2r = {2 * r})",
        "the others stay at eps to within "
        + ("-" if largest_rest is None else f"{largest_rest:.1e}")
        + f" of eps; the {2 * r}th moved one is {smallest_moved:.2g} eps away",
        f"change outside the predicted 2r slice: at most {outside_max:.1e} of each layer's "
        f"change (end-to-end {float(np.nanmax(e2e)):.1e}; theorem: 0)",
        f"paper: {PAPER['claim']} ({PAPER['source']})",
    ]
    return json_safe({
        "settings": {"d": d, "rank": r, "depth": DEPTH, "init_scale": EPS, "lr": lr,
                     "lr_source": "automatic", "paper_lr": PAPER_LR, "dtype": "float64",
                     "init": "orthogonal", "target_error": TARGET_ERROR,
                     "max_steps": size.max_steps, "record_every": size.every, "k": recording.k,
                     "moved_rtol": MOVED_RTOL, "threads": threads(), "seed": ctx.seed},
        "run": {k: v for k, v in summary.items() if k != "history"},
        "two_r": 2 * r,
        "layers": layers,
        "moved": {n: moved[:, i].tolist() for i, n in enumerate(names)},
        "outside_max": outside_max,
        "outside_end_to_end_max": float(np.nanmax(e2e)),
        "largest_rest_deviation": largest_rest,
        "smallest_moved_deviation": smallest_moved,
        "record_steps": steps.tolist(),
        "recorder_seconds_per_record": recording.meta.get("seconds_per_record"),
        "history": summary["history"],
        "paper": PAPER,
        "summary": lines,
    })

"""Figures of benchmark and experiment results: recovery curves, few-shot accuracy and
generic sweeps (see :mod:`deeplora.diagnostics.plots`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import UserError

if TYPE_CHECKING:

    pass

from .figures import (
    FEWSHOT_LABELS,
    MARKERS,
    Stem,
    _floats,
    _positive,
    _pyplot,
    _stem,
    save_figure,
)


# =========================================================================== other figures
def plot_effective_rank_histogram(
    ranks: Mapping[str, Sequence[int]],
    stem: Stem,
    *,
    title: str | None = None,
    xlabel: str = "effective rank (singular values above the threshold)",
) -> list[Path]:
    """Grouped bars: for each effective rank, how many updates have it, one colour per method.

    docs/METHOD.md 4.1: every LoRA update has rank 8, while most Deep LoRA updates have rank 0-4.
    """
    _stem(stem)
    if not ranks:
        raise UserError("ranks is empty: pass {method: [effective rank of each update]}")
    counts: dict[str, np.ndarray] = {}
    for method, values in ranks.items():
        array = _floats(values, f"ranks[{method!r}]")
        if array.ndim != 1 or array.size == 0:
            raise UserError(f"ranks[{method!r}] is empty: pass one effective rank per update")
        if (~np.isfinite(array)).any() or (array < 0).any() or (array != np.round(array)).any():
            raise UserError(f"ranks[{method!r}] must hold non-negative integers, got "
                             f"{sorted(set(array.tolist()))[:8]}")  # fmt: skip
        counts[str(method)] = array.astype(int)
    lo = min(int(a.min()) for a in counts.values())
    hi = max(int(a.max()) for a in counts.values())
    if hi - lo <= 40:
        xs = list(range(lo, hi + 1))
    else:  # a wide range: only the ranks that occur
        xs = sorted({int(v) for a in counts.values() for v in a})
    plt = _pyplot()
    fig, axis = plt.subplots(figsize=(max(5.5, 0.45 * len(xs) * max(1, len(counts)) + 2), 3.8),
                             constrained_layout=True)  # fmt: skip
    try:
        width = 0.8 / len(counts)
        positions = np.arange(len(xs), dtype=float)
        for j, (method, array) in enumerate(counts.items()):
            heights = [int((array == x).sum()) for x in xs]
            bars = axis.bar(positions + (j - (len(counts) - 1) / 2) * width, heights, width,
                            label=f"{method} ({array.size} updates)")  # fmt: skip
            if len(xs) * len(counts) <= 40:
                axis.bar_label(bars, labels=[str(h) if h else "" for h in heights], fontsize=7)
        axis.set_xticks(positions, [str(x) for x in xs])
        axis.set_xlabel(xlabel)
        axis.set_ylabel("number of updates (count)")
        axis.set_title("effective rank of the learned updates" if title is None else title)
        axis.grid(alpha=0.3, axis="y")
        axis.legend(fontsize=8)
        return save_figure(fig, stem)
    finally:
        plt.close(fig)


def plot_recovery(
    curves: Mapping[str, Mapping[str, Sequence[float]]],
    stem: Stem,
    *,
    title: str | None = None,
) -> list[Path]:
    """Two panels: the relative recovery error ``||f - Phi||_F / ||Phi||_F`` (log) against
    gradient steps and against wall seconds, one curve per run (docs/METHOD.md 3.3).

    Each curve needs ``"step"``, ``"seconds"`` and ``"rel_error"`` of one length (a completion
    ``FitHistory.to_dict()`` has them); curves may differ in length. Entries whose error is nan,
    None or not positive are skipped.
    """
    _stem(stem)
    if not curves:
        raise UserError("curves is empty: pass {label: FitHistory.to_dict()} for each run")
    data: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    for label, curve in curves.items():
        missing = [key for key in ("step", "seconds", "rel_error") if key not in curve]
        if missing:
            raise UserError(f"curve {label!r} lacks {missing}: each curve needs 'step', "
                            "'seconds' and 'rel_error' (FitHistory.to_dict() has them)")
        step, seconds, error = (_floats(curve[key], f"curve {label!r} {key!r}")
                                for key in ("step", "seconds", "rel_error"))  # fmt: skip
        if not len(step) == len(seconds) == len(error):
            raise UserError(f"curve {label!r} has {len(step)} steps, {len(seconds)} seconds and "
                             f"{len(error)} rel_error entries: they must be the same length, "
                             "one row per evaluation")  # fmt: skip
        if len(step) == 0:
            raise UserError(f"curve {label!r} is empty: it needs at least one evaluation")
        data[str(label)] = (step, seconds, _positive(error))
    if not any(np.isfinite(error).any() for _, _, error in data.values()):
        raise UserError("nothing to plot: every rel_error is nan or not positive")
    plt = _pyplot()
    fig, (by_step, by_time) = plt.subplots(1, 2, figsize=(10, 4), sharey=True,
                                           constrained_layout=True)  # fmt: skip
    try:
        colours = plt.get_cmap("tab10")
        for j, (label, (step, seconds, error)) in enumerate(data.items()):
            ok = np.isfinite(error)
            style = {"color": colours(j % 10), "ls": ("-", "--", ":", "-.")[(j // 10) % 4],
                     "marker": "o" if ok.sum() <= 30 else None, "ms": 3, "lw": 1.4}  # fmt: skip
            if not ok.any():
                label += " (no finite error)"
            keep = ok & np.isfinite(step)
            by_step.plot(step[keep], error[keep], label=label, **style)
            keep = ok & np.isfinite(seconds)
            by_time.plot(seconds[keep], error[keep], **style)
        by_step.set_yscale("log")
        by_step.set_ylabel(r"relative error $\|f - \Phi\|_F \,/\, \|\Phi\|_F$ (log)")
        by_step.set_xlabel("gradient steps")
        by_time.set_xlabel("wall time (s)")
        by_step.set_title("error vs steps")
        by_time.set_title("error vs wall time")
        for axis in (by_step, by_time):
            axis.grid(alpha=0.3, which="both")
        by_step.legend(fontsize=8)
        fig.suptitle("recovery error" if title is None else title)
        return save_figure(fig, stem)
    finally:
        plt.close(fig)


def plot_fewshot(
    summary: dict[str, Any],
    stem: Stem,
    *,
    ns: Sequence[int],
    ranks: Sequence[int],
    base_rank: int,
    rank_n: int,
    majority: float | None = None,
    labels: Mapping[str, str] | None = None,
) -> list[Path]:
    """Few-shot score (mean ± std over seeds): against the number of examples ``n`` at
    ``base_rank`` (left), and against the rank at ``n = rank_n`` (right), one marker per
    method, with the majority-class accuracy as a dotted line (docs/METHOD.md 4.1).

    ``summary["cells"]`` holds ``{"method", "n", "rank", "score": {"mean", "std"}}`` per cell
    and ``summary["metric"]`` names the score (``deeplora.harness.fewshot_report.aggregate``);
    cells with no mean are left out. ``labels`` names the methods in the legend.
    """
    _stem(stem)
    cells = summary.get("cells") if isinstance(summary, dict) else None
    if not cells:
        raise UserError("the summary has no 'cells': pass deeplora.bench.fewshot.aggregate(...)")
    if not ns or not ranks:
        raise UserError(f"ns and ranks need at least one value each, got ns={list(ns)}, "
                         f"ranks={list(ranks)}")  # fmt: skip
    names = {**FEWSHOT_LABELS, **(labels or {})}
    by = {(c["method"], c["n"], c["rank"]): c["score"] for c in cells}
    metric = {"pearson": "Pearson r"}.get(summary.get("metric", ""), "accuracy")
    split = summary.get("split", "test")
    methods = list(dict.fromkeys(c["method"] for c in cells))
    panels = (
        (list(ns), lambda x: (x, base_rank), "training examples n",
         f"{metric} vs n (rank {base_rank})"),
        (list(ranks), lambda x: (rank_n, x), "rank", f"{metric} vs rank (n = {rank_n})"),
    )  # fmt: skip
    for xs, key, _, _ in panels:
        absent = [(m, *key(x)) for m in methods for x in xs if (m, *key(x)) not in by]
        if absent:
            raise UserError(f"the summary has no cell for (method, n, rank) = {absent[0]}: "
                             "pass the ns, ranks, base_rank and rank_n it was aggregated "
                             "with")  # fmt: skip
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    try:
        offsets = [1 + 0.06 * (j - (len(methods) - 1) / 2) for j in range(len(methods))]
        for axis, (xs, key, xlabel, panel_title) in zip(axes, panels):
            for j, (method, offset) in enumerate(zip(methods, offsets)):
                stats = [by[(method, *key(x))] for x in xs]
                shown = [(x * offset, s["mean"], s["std"] or 0.0) for x, s in zip(xs, stats)
                         if s["mean"] is not None]  # fmt: skip
                if shown:
                    px, py, pe = zip(*shown)
                    axis.errorbar(px, py, yerr=pe, marker=MARKERS[j % len(MARKERS)], capsize=3,
                                  label=names.get(method, method))  # fmt: skip
            if majority is not None:
                axis.axhline(majority, color="grey", linestyle=":", label="majority class")
            axis.set_xscale("log", base=2)
            axis.set_xticks(xs, [str(x) for x in xs])
            axis.minorticks_off()
            axis.set_xlabel(xlabel)
            axis.set_ylabel(f"{split} {metric} (mean ± std over seeds)")
            axis.set_title(panel_title)
            axis.grid(alpha=0.3)
            if axis.get_legend_handles_labels()[0]:
                axis.legend()
        return save_figure(fig, stem)
    finally:
        plt.close(fig)


def plot_lines(
    series: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    stem: Stem,
    *,
    xlabel: str,
    ylabel: str,
    title: str | None = None,
    logx: bool = False,
    logy: bool = False,
    markers: bool = True,
) -> list[Path]:
    """A labelled line plot, one line per ``label: (xs, ys)`` (error against width for depth
    2 vs 3, steps against r_hat, ...: docs/METHOD.md 3.3). Non-finite points are skipped, and so
    are non-positive ones on a log axis."""
    _stem(stem)
    if not series:
        raise UserError("series is empty: pass {label: (xs, ys)} with at least one line")
    for name, text in (("xlabel", xlabel), ("ylabel", ylabel)):
        if not isinstance(text, str) or not text.strip():
            raise UserError(f"{name} is empty: say what the axis shows and its unit")
    data: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for label, pair in series.items():
        if isinstance(pair, str) or len(pair) != 2:
            raise UserError(f"series[{label!r}] must be a pair (xs, ys)")
        xs = _floats(pair[0], f"series[{label!r}] xs")
        ys = _floats(pair[1], f"series[{label!r}] ys")
        if len(xs) != len(ys):
            raise UserError(f"series[{label!r}] has {len(xs)} xs and {len(ys)} ys: pass one y "
                             "per x")  # fmt: skip
        if len(xs) == 0:
            raise UserError(f"series[{label!r}] is empty: pass at least one point")
        keep = np.isfinite(xs) & np.isfinite(ys)
        if logx:
            keep &= xs > 0
        if logy:
            keep &= ys > 0
        data[str(label)] = (xs[keep], ys[keep])
    if not any(len(xs) for xs, _ in data.values()):
        raise UserError("nothing to plot: no series has a finite point"
                         + (" (with positive values on the log axes)" if logx or logy else ""))
    plt = _pyplot()
    fig, axis = plt.subplots(figsize=(6, 4.2), constrained_layout=True)
    try:
        for j, (label, (xs, ys)) in enumerate(data.items()):
            axis.plot(xs, ys, label=label, lw=1.4, ms=4,
                      marker=MARKERS[j % len(MARKERS)] if markers else None)  # fmt: skip
        if logx:
            axis.set_xscale("log")
        if logy:
            axis.set_yscale("log")
        axis.set_xlabel(xlabel)
        axis.set_ylabel(ylabel)
        if title is not None:
            axis.set_title(title)
        axis.grid(alpha=0.3, which="both")
        axis.legend(fontsize=8)
        return save_figure(fig, stem)
    finally:
        plt.close(fig)

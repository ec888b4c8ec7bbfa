"""Figures of recorded training dynamics and benchmark results (matplotlib, PNG + SVG).

Every function takes a path *stem* (no suffix), writes ``STEM.png`` (120 dpi) and ``STEM.svg``
atomically (a temporary file beside each, moved into place), closes its figure and returns
``[png, svg]``. matplotlib is imported inside the functions with the Agg backend, so importing
deeplora never needs a display. Bad input raises ``ValueError`` saying what is wrong and what
to pass instead.

The figures and the part of docs/METHOD.md each one illustrates:

:func:`plot_singular_values`
    One panel per tracked matrix: its top-k singular values (or those of each factor, with
    ``factors=True``) against the training step, log y. For a deep factorization with
    eps-orthogonal init only about 2r of them move while the rest stay at eps (docs/METHOD.md 2, the
    compressible dynamics); for Deep LoRA the singular values of each ``dW`` grow one at a
    time, so few leave zero (docs/METHOD.md 1 "Why depth", and 4).
:func:`plot_alignment`
    One panel per tracked matrix: the cosines of the principal angles between its current
    top-k left / right singular subspaces and a reference (the final subspaces, or those
    predicted at init), y in [0, 1]. Curves that sit near 1 from early on show the subspace
    is fixed early (docs/METHOD.md 2: the moving subspace is decided at t = 0).
:func:`plot_effective_rank_histogram`
    Grouped bars: how many learned updates have each effective rank, one colour per method
    (docs/METHOD.md 4.1: every LoRA update has rank 8, most Deep LoRA updates rank 0-4).
:func:`plot_recovery`
    Relative recovery error ``||f - Phi||_F / ||Phi||_F`` (log) against gradient steps and
    against wall seconds, one curve per run (wide vs compressed, with and without gamma:
    docs/METHOD.md 3.1 and 3.3).
:func:`plot_fewshot`
    Few-shot test accuracy (mean ± std over seeds) against the number of examples and against
    the rank, one marker per method (docs/METHOD.md 4 and the STS-B figures of 4.1).
:func:`plot_lines`
    A generic labelled line plot for the sweeps of docs/METHOD.md 3.3 (error against width for
    depth 2 vs 3, steps against r_hat, ...).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .._io import atomic_path
from ..errors import UserError

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from .recorder import Recording

__all__ = [
    "plot_alignment",
    "plot_effective_rank_histogram",
    "plot_fewshot",
    "plot_lines",
    "plot_recovery",
    "plot_singular_values",
    "save_figure",
]

DPI = 120
PANEL_SIZE = (4.4, 3.2)  # inches per panel
MAX_COLUMNS = 3
MAX_LEGEND_INDICES = 10  # label every index up to this k; beyond it, the first and the last
FEWSHOT_LABELS = {"deep-lora": "Deep LoRA", "lora": "PEFT LoRA"}
REFERENCES = {  # Recording.meta["reference"] -> the alignment figure's title
    "final": "the final subspaces",
    "first": "the first record's subspaces",
    "given": "the given reference",
    "predicted": "the subspaces predicted at init",
}
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
Stem = str | os.PathLike[str]


# =========================================================================== shared helpers
def _pyplot() -> Any:
    """matplotlib.pyplot with the non-interactive Agg backend (never opens a window)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _stem(stem: Stem) -> Path:
    path = Path(stem)
    if not path.name or path.name in (".", ".."):
        raise UserError(f"the figure stem {str(stem)!r} has no file name: pass e.g. out/figure")
    if path.suffix.lower() in (".png", ".svg"):
        raise UserError(
            f"the figure stem {path} ends in {path.suffix}: pass the path without a suffix "
            f"({path.with_suffix('')}); the plot writes both .png and .svg"
        )
    return path


def save_figure(fig: Figure, stem: Stem) -> list[Path]:
    """Write ``fig`` to ``STEM.png`` (120 dpi) and ``STEM.svg``, each atomically; close it.

    Returns ``[png, svg]``. The figure is closed even when writing fails.
    """
    plt = _pyplot()
    try:
        path = _stem(stem)
        png = path.parent / f"{path.name}.png"
        svg = path.parent / f"{path.name}.svg"
        with atomic_path(png) as tmp:
            fig.savefig(tmp, format="png", dpi=DPI)
        with atomic_path(svg) as tmp:  # no date: the same figure gives the same file
            fig.savefig(tmp, format="svg", metadata={"Date": None})
    finally:
        plt.close(fig)
    return [png, svg]


def _few(names: Sequence[str], limit: int = 6) -> str:
    shown = ", ".join(repr(n) for n in names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def _short(name: str, width: int = 44) -> str:
    """A long module path cut from the left, for panel titles."""
    return name if len(name) <= width else "…" + name[-(width - 1) :]


def _floats(values: Any, what: str) -> np.ndarray:
    """``values`` as a float array (None becomes nan)."""
    try:
        if isinstance(values, np.ndarray):
            return values.astype(float)
        return np.array([np.nan if v is None else v for v in values], dtype=float)
    except (TypeError, ValueError) as e:
        raise UserError(f"{what} must be a sequence of numbers ({e})") from e


def _positive(values: np.ndarray) -> np.ndarray:
    """Non-positive and non-finite values as nan (a log axis cannot show them)."""
    out = np.array(values, dtype=float)
    out[~np.isfinite(out) | (out <= 0)] = np.nan
    return out


def _grid(n: int, *, extra_width: float = 0.0) -> tuple[Figure, list[Axes]]:
    """``n`` panels in rows of at most three (four as 2 x 2), constrained layout; unused
    cells removed."""
    plt = _pyplot()
    ncols = 2 if n == 4 else min(n, MAX_COLUMNS)
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(
        nrows, ncols, squeeze=False, constrained_layout=True,
        figsize=(PANEL_SIZE[0] * ncols + extra_width, PANEL_SIZE[1] * nrows + 0.5),
    )  # fmt: skip
    flat = list(axes.flat)
    for axis in flat[n:]:
        axis.remove()
    from matplotlib.ticker import MaxNLocator

    for axis in flat[:n]:  # step counts of five digits must not run together
        axis.xaxis.set_major_locator(MaxNLocator(nbins=4, integer=True))
    return fig, flat[:n]


def _legend(fig: Figure, axes: Sequence[Axes], handles: list[Any], labels: list[str]) -> None:
    """One legend: inside the panel when there is one, else shared at the figure's right."""
    if len(axes) == 1:
        axes[0].legend(handles, labels, fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1))
        return
    try:
        fig.legend(handles, labels, loc="outside right upper", fontsize=8)
    except ValueError:  # matplotlib < 3.7 has no "outside" placement
        fig.legend(handles, labels, loc="upper right", fontsize=8)


def _label_axes(fig: Figure, axes: Sequence[Axes], xlabel: str, ylabel: str) -> None:
    """Axis labels on the one panel, or once for the whole figure."""
    if len(axes) == 1:
        axes[0].set_xlabel(xlabel)
        axes[0].set_ylabel(ylabel)
    else:
        fig.supxlabel(xlabel)
        fig.supylabel(ylabel)


def _index_colours(k: int) -> list[Any]:
    plt = _pyplot()
    cmap = plt.get_cmap("viridis")
    return [cmap(0.85 * i / max(k - 1, 1)) for i in range(k)]


def _index_labelled(i: int, k: int) -> bool:
    return k <= MAX_LEGEND_INDICES or i in (0, k - 1)


# =========================================================================== recordings
def _select_layers(
    recording: Recording, layers: Sequence[str] | None, max_panels: int
) -> tuple[np.ndarray, list[str], int]:
    """The recorded steps, the layers to draw (at most ``max_panels``) and how many were asked."""
    if isinstance(max_panels, bool) or not isinstance(max_panels, int) or max_panels < 1:
        raise UserError(f"max_panels must be a positive integer, got {max_panels!r}")
    steps = np.asarray(recording.steps, dtype=float)
    if steps.ndim != 1 or steps.size == 0:
        raise UserError(
            "the recording holds no recorded steps: record at least one step "
            "(SubspaceRecorder.record or maybe_record) before finish()"
        )
    known = list(recording.layers)
    if not known:
        raise UserError("the recording holds no layers: give the recorder at least one source")
    if layers is None:
        names = known
    else:
        names = list(dict.fromkeys([layers] if isinstance(layers, str) else layers))
        if not names:
            raise UserError(f"layers is empty: pass some of {_few(known)}, or None for all")
        unknown = [n for n in names if n not in recording.layers]
        if unknown:
            raise UserError(
                f"unknown layer name(s) {_few(unknown)}: this recording has {_few(known)}; "
                "pass names from recording.layers"
            )
    return steps, names[:max_panels], len(names)


def _trace(recording: Recording, name: str, field: str, ndim: int, steps: int) -> np.ndarray:
    value = getattr(recording.layers[name], field)
    if value is None:
        raise UserError(f"layer {name!r} has no {field} recorded")
    array = np.asarray(value, dtype=float)
    if array.ndim != ndim or array.shape[0] != steps or array.size == 0:
        raise UserError(
            f"layer {name!r}: {field} has shape {array.shape}, expected {ndim} dimensions with "
            f"{steps} rows (one per recorded step); the recording is inconsistent: rebuild it "
            "with SubspaceRecorder.finish() or Recording.load()"
        )
    return array


def _title(base: str, title: str | None, shown: int, total: int) -> str:
    text = base if title is None else title
    if total > shown:
        text += f"\n(showing {shown} of {total} layers; pass layers=[...] or max_panels to choose)"
    return text


def plot_singular_values(
    recording: Recording,
    stem: Stem,
    *,
    layers: Sequence[str] | None = None,
    factors: bool = False,
    max_panels: int = 6,
    title: str | None = None,
) -> list[Path]:
    """One panel per layer: the top-k singular values of ``M = W_L ... W_1`` against the step
    (or, with ``factors=True``, those of each factor ``W_l``, one colour per factor), log y.

    docs/METHOD.md 2: with eps-orthogonal init only ~2r singular values of each factor move; the
    others stay at eps. Zero or missing values (nan padding) are left out of the log axis. A
    dotted line marks the effective-rank threshold ``recording.meta["rank_atol"]`` (docs/METHOD.md
    4.1) in the panels whose values come within a decade of it.
    """
    _stem(stem)
    steps, names, total = _select_layers(recording, layers, max_panels)
    field = "factor_singular_values" if factors else "singular_values"
    data = {n: _positive(_trace(recording, n, field, 3 if factors else 2, steps.size))
            for n in names}  # fmt: skip
    # the effective-rank threshold (docs/METHOD.md 4.1), drawn on the spectra of the matrices
    atol = recording.meta.get("rank_atol") if isinstance(recording.meta, dict) else None
    threshold = None
    if not factors and isinstance(atol, int | float) and math.isfinite(atol) and atol > 0:
        threshold = float(atol)
    plt = _pyplot()
    from matplotlib.lines import Line2D

    fig, axes = _grid(len(names), extra_width=1.3)
    try:
        legend: dict[str, Any] = {}
        for axis, name in zip(axes, names):
            values = data[name]
            if factors:
                colours = plt.get_cmap("tab10")
                for f in range(values.shape[1]):
                    colour = colours(f % 10)
                    for i in range(values.shape[2]):
                        axis.plot(steps, values[:, f, i], color=colour, lw=1.6 if i == 0 else 0.8,
                                  alpha=1.0 if i == 0 else 0.55)  # fmt: skip
                    label = ("dense matrix (one factor)" if values.shape[1] == 1
                             else f"factor $W_{{{f + 1}}}$")  # fmt: skip
                    legend.setdefault(label, Line2D([], [], color=colour, lw=1.6))
            else:
                k = values.shape[1]
                for i, colour in enumerate(_index_colours(k)):
                    axis.plot(steps, values[:, i], color=colour, lw=1.4)
                    if _index_labelled(i, k):
                        legend.setdefault(rf"$\sigma_{{{i + 1}}}$",
                                          Line2D([], [], color=colour, lw=1.4))  # fmt: skip
            if np.isfinite(values).any():
                axis.set_yscale("log")
                low, high = np.nanmin(values), np.nanmax(values)
                # the threshold only where it is near the data (it would squash the curves)
                if threshold is not None and low / 10 <= threshold <= high * 10:
                    axis.axhline(threshold, color="grey", ls=":", lw=1.0)
                    legend.setdefault(f"rank threshold {threshold:g}",
                                      Line2D([], [], color="grey", ls=":", lw=1.0))  # fmt: skip
            else:
                axis.text(0.5, 0.5, "all singular values zero\n(nothing to show on a log axis)",
                          ha="center", va="center", transform=axis.transAxes,
                          fontsize=8)  # fmt: skip
            axis.set_title(_short(name), fontsize=9)
            axis.grid(alpha=0.3, which="both")
        if factors:
            legend[r"thick: $\sigma_1$, thin: $\sigma_2$ ..."] = Line2D([], [], color="grey",
                                                                       lw=0.8, alpha=0.55)
        what = "each factor" if factors else "the matrix"
        _label_axes(fig, axes, "training step",
                    f"top-{recording.k} singular values of {what} (log)")  # fmt: skip
        _legend(fig, axes, list(legend.values()), list(legend))
        base = ("singular values of each factor over training" if factors
                else "top singular values over training")  # fmt: skip
        fig.suptitle(_title(base, title, len(names), total))
        return save_figure(fig, stem)
    finally:
        plt.close(fig)


def plot_alignment(
    recording: Recording,
    stem: Stem,
    *,
    layers: Sequence[str] | None = None,
    max_panels: int = 6,
    title: str | None = None,
) -> list[Path]:
    """One panel per layer: the cosines of the principal angles between the current top-k left
    (solid) and right (dashed) singular subspaces and the reference's, against the step.

    ``cos theta_i = sigma_i(U_ref^T U(t))``; 1 means aligned. docs/METHOD.md 2: the subspace that
    moves is fixed at t = 0, so the cosines against the final subspaces reach 1 early.
    """
    _stem(stem)
    steps, names, total = _select_layers(recording, layers, max_panels)
    data = {n: (_trace(recording, n, "cosines_left", 2, steps.size),
                _trace(recording, n, "cosines_right", 2, steps.size)) for n in names}  # fmt: skip
    plt = _pyplot()
    from matplotlib.lines import Line2D

    fig, axes = _grid(len(names), extra_width=1.3)
    try:
        legend: dict[str, Any] = {}
        for axis, name in zip(axes, names):
            left, right = data[name]
            k = max(left.shape[1], right.shape[1])
            colours = _index_colours(k)
            for values, style in ((left, "-"), (right, "--")):
                for i in range(values.shape[1]):
                    axis.plot(steps, values[:, i], color=colours[i], ls=style, lw=1.3)
            for i, colour in enumerate(colours):
                if _index_labelled(i, k):
                    legend.setdefault(rf"$\cos\theta_{{{i + 1}}}$",
                                      Line2D([], [], color=colour, lw=1.3))  # fmt: skip
            axis.set_ylim(0, 1.02)
            axis.set_title(_short(name), fontsize=9)
            axis.grid(alpha=0.3)
        legend["left (U), solid"] = Line2D([], [], color="black", ls="-", lw=1.3)
        legend["right (V), dashed"] = Line2D([], [], color="black", ls="--", lw=1.3)
        _label_axes(fig, axes, "training step", "cosine of principal angle (1 = aligned)")
        _legend(fig, axes, list(legend.values()), list(legend))
        reference = recording.meta.get("reference") if isinstance(recording.meta, dict) else None
        against = REFERENCES.get(reference, "the reference") if isinstance(reference, str) else (
            "the reference")
        base = f"top-{recording.k} singular subspaces vs {against}"
        fig.suptitle(_title(base, title, len(names), total))
        return save_figure(fig, stem)
    finally:
        plt.close(fig)


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
    """Few-shot test accuracy (mean ± std over seeds): against the number of examples ``n``
    at ``base_rank`` (left), and against the rank at ``n = rank_n`` (right), one marker per
    method, with the majority-class accuracy as a dotted line (docs/METHOD.md 4.1).

    ``summary["cells"]`` holds ``{"method", "n", "rank", "accuracy": {"mean", "std"}}`` per
    cell (``deeplora.bench.fewshot.aggregate``); cells with no mean are left out. ``labels``
    names the methods in the legend (default: Deep LoRA, PEFT LoRA).
    """
    _stem(stem)
    cells = summary.get("cells") if isinstance(summary, dict) else None
    if not cells:
        raise UserError("the summary has no 'cells': pass deeplora.bench.fewshot.aggregate(...)")
    if not ns or not ranks:
        raise UserError(f"ns and ranks need at least one value each, got ns={list(ns)}, "
                         f"ranks={list(ranks)}")  # fmt: skip
    names = {**FEWSHOT_LABELS, **(labels or {})}
    by = {(c["method"], c["n"], c["rank"]): c["accuracy"] for c in cells}
    methods = list(dict.fromkeys(c["method"] for c in cells))
    panels = (
        (list(ns), lambda x: (x, base_rank), "training examples n",
         f"accuracy vs n (rank {base_rank})"),
        (list(ranks), lambda x: (rank_n, x), "rank", f"accuracy vs rank (n = {rank_n})"),
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
            axis.set_ylabel("test accuracy (mean ± std over seeds)")
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

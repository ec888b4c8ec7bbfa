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
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import UserError

if TYPE_CHECKING:

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

from .figures import (
    REFERENCES,
    Stem,
    _few,
    _grid,
    _index_colours,
    _index_labelled,
    _label_axes,
    _legend,
    _positive,
    _pyplot,
    _short,
    _stem,
    save_figure,
)
from .result_plots import (
    plot_effective_rank_histogram,
    plot_fewshot,
    plot_lines,
    plot_recovery,
)


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

"""What the figures of :mod:`deeplora.diagnostics.plots` share: saving (PNG + SVG, atomic),
panel grids, legends, colours and argument checks."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .._io import atomic_path
from ..errors import UserError

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


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

"""Diagnostics: watch the invariant low-rank subspaces form while training (docs/METHOD.md 2, 4.1).

:class:`SubspaceRecorder` samples the singular values, subspace alignment, effective rank and
(for deep factorizations) the part of each change outside the predicted slice, from any
training loop; :class:`Recording` holds the result and saves it as ``.npz`` or ``.json``. For a
Hugging Face ``Trainer`` use :class:`deeplora.diagnostics.hf.RecorderCallback`.
:mod:`deeplora.diagnostics.plots` draws recordings and benchmark results (PNG and SVG).
"""

from .plots import (
    plot_alignment,
    plot_effective_rank_histogram,
    plot_fewshot,
    plot_lines,
    plot_recovery,
    plot_singular_values,
    save_figure,
)
from .recorder import (
    LayerTrace,
    Recording,
    Source,
    SubspaceRecorder,
    factored_svd,
    model_sources,
    predicted_bases,
    solver_sources,
    weight_sources,
)

__all__ = [
    "LayerTrace",
    "Recording",
    "Source",
    "SubspaceRecorder",
    "factored_svd",
    "model_sources",
    "plot_alignment",
    "plot_effective_rank_histogram",
    "plot_fewshot",
    "plot_lines",
    "plot_recovery",
    "plot_singular_values",
    "predicted_bases",
    "save_figure",
    "solver_sources",
    "weight_sources",
]

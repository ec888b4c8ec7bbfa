"""``complete``: fit a deep factorization to observed entries and return a
:class:`~deeplora.completion.model.CompletionModel` that predicts by ID.

At its defaults it needs nothing but the table: a validation part is carved from ``train``
for early stopping, the init scale, step and r_hat follow from the data
(:mod:`deeplora.completion.solver`, :func:`~deeplora.completion.compressed.default_rank`), and
row and column offsets are learned with the factorization.

Centering (``center``) decides what the low-rank model should not spend its rank on:

- ``"joint"`` (default): offsets ``mu + b_i + c_j`` learned jointly with the factorization
  (:mod:`deeplora.completion.offsets`). Ratings keep the benefit of user and item offsets, and
  an exactly low-rank table is fitted at its own rank.
- ``"none"``: the values as they are (the paper's setting);
- ``"mean"``: subtract the global mean first;
- ``"biases"``: subtract the mean and regularised row and column offsets fitted first
  (:class:`~deeplora.completion.baselines.Centering`). The residual of a rank-r table has
  rank up to r + 2, which a rank-r slice cannot fit and which needs more samples.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import asdict
from typing import Literal

import numpy as np

from ..errors import UserError
from .baselines import Centering
from .compressed import CompressedConfig, CompressedSolver
from .data import LowRankMatrix, Observations
from .model import CompletionModel
from .objectives import Completion
from .solver import GradientDescent
from .wide import WideConfig, WideSolver

Center = Literal["joint", "none", "mean", "biases"]
CENTERS = ("joint", "none", "mean", "biases")
#: Fraction of ``train`` held out for early stopping when no validation part is given.
DEFAULT_VAL_FRACTION = 0.1

#: Builds the solver from the (centred) training entries: ``(train, config, joint=...,
#: truth=..., validation=...)``. :func:`local_solver` by default;
#: :func:`deeplora.distributed.completion.sharded_solver` shares the entries among the ranks
#: of a torch.distributed process group.
SolverFactory = Callable[..., GradientDescent]


def complete(
    train: Observations,
    config: CompressedConfig | WideConfig | None = None,
    *,
    validation: Observations | None = None,
    val_fraction: float = DEFAULT_VAL_FRACTION,
    center: Center = "joint",
    clip: tuple[float, float] | None = None,
    truth: LowRankMatrix | np.ndarray | None = None,
    checkpoint: str | os.PathLike[str] | None = None,
    checkpoint_every: int = 1000,
    resume: bool = False,
    make_solver: SolverFactory | None = None,
) -> CompletionModel:
    """Complete the matrix behind ``train`` by a deep factorization.

    ``config`` picks the solver: :class:`CompressedConfig` (the fast one, default) or
    :class:`WideConfig` (the full-width reference). Validation RMSE is recorded on
    ``validation``, or, without one, on a ``val_fraction`` of ``train`` held out by
    ``config.seed`` (``val_fraction=0``: none, and no early stopping); ``config.patience``
    stops early on it and keeps the best factors.

    ``make_solver`` builds the solver (:func:`local_solver`: this process, all entries). Under
    ``torchrun`` pass :func:`deeplora.distributed.completion.sharded_solver`: every rank calls
    this with the same data, trains on its share of the entries, and all return the same
    model; only rank 0 writes the checkpoint.
    """
    config = config if config is not None else CompressedConfig()
    if not isinstance(config, CompressedConfig | WideConfig):
        raise TypeError(f"config must be CompressedConfig or WideConfig, got {type(config)}")
    if center not in CENTERS:
        raise UserError(f"center must be one of {', '.join(map(repr, CENTERS))}, got "
                         f"{center!r}")
    if clip is not None and not clip[0] < clip[1]:
        raise UserError(f"clip must be (low, high) with low < high, got {clip}")
    if validation is None and val_fraction:
        train, validation = train.split(val_fraction, seed=config.seed)
    elif validation is not None and (validation.shape != train.shape
                                     or validation.row_ids != train.row_ids
                                     or validation.col_ids != train.col_ids):
        raise UserError("validation entries must come from the same table as the training "
                         "entries (use Observations.split)")
    centering = Centering.fit(train, "none" if center == "joint" else center)
    offset, row_bias, col_bias = centering.offset, centering.row_bias, centering.col_bias
    residual = centering.residual(train)
    val_residual = None if validation is None else centering.residual(validation)
    solver = (make_solver or local_solver)(residual, config, joint=center == "joint",
                                           truth=truth, validation=val_residual)
    result = solver.run(checkpoint=checkpoint, checkpoint_every=checkpoint_every,
                        resume=resume)
    if result.offsets is not None:
        offset, row_bias, col_bias = result.offsets
    info = {"solver": type(solver).__name__, "config": asdict(config), "center": center,
            "init_scale": solver.init_scale, "lr": result.lr, "steps": result.steps,
            "stopped": result.stopped, "validation_entries": 0 if validation is None
            else len(validation)}
    if isinstance(solver, CompressedSolver):
        info.update(r_hat=solver.r_hat, basis=solver.config.resolved_basis)
    return CompletionModel(
        left=result.left, right=result.right, row_ids=train.row_ids, col_ids=train.col_ids,
        offset=offset, row_bias=row_bias, col_bias=col_bias, clip=clip,
        observed_rows=train.rows, observed_cols=train.cols, history=result.history, info=info,
    )


def local_solver(train: Observations, config: CompressedConfig | WideConfig, *, joint: bool,
                 truth: LowRankMatrix | np.ndarray | None = None,
                 validation: Observations | None = None) -> GradientDescent:
    """The solver for ``config`` on all of ``train``, in this process (``joint``: learn the
    offsets with the factorization)."""
    objective = Completion(train, config.torch_dtype, offsets=joint)
    if isinstance(config, CompressedConfig):
        return CompressedSolver(objective, config, truth=truth, validation=validation)
    return WideSolver(objective, config, truth=truth, validation=validation)

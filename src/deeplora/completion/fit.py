"""``complete``: fit a deep factorization to observed entries and return a
:class:`~deeplora.completion.model.CompletionModel` that predicts by ID.

Centering (``center``) removes what a low-rank model should not spend its rank on:
``"none"`` fits the values as they are (the paper's setting), ``"mean"`` subtracts the global
mean, ``"biases"`` subtracts the global mean plus regularised row and column offsets
(:class:`~deeplora.completion.baselines.MeanBaseline`). The deep factorization then completes
the residual, and the model adds the offsets back.
"""

from __future__ import annotations

import os
from dataclasses import asdict
from typing import Literal

import numpy as np

from .baselines import MeanBaseline
from .compressed import CompressedConfig, CompressedSolver
from .data import LowRankMatrix, Observations
from .model import CompletionModel
from .solver import GradientDescent
from .wide import WideConfig, WideSolver

Center = Literal["none", "mean", "biases"]


def complete(
    train: Observations,
    config: CompressedConfig | WideConfig,
    *,
    validation: Observations | None = None,
    center: Center = "none",
    clip: tuple[float, float] | None = None,
    truth: LowRankMatrix | np.ndarray | None = None,
    checkpoint: str | os.PathLike[str] | None = None,
    checkpoint_every: int = 1000,
    resume: bool = False,
) -> CompletionModel:
    """Complete the matrix behind ``train`` by a deep factorization.

    ``config`` picks the solver: :class:`CompressedConfig` (the fast one, default choice) or
    :class:`WideConfig` (the full-width reference). With ``validation`` the history records
    validation RMSE and ``config.patience`` stops early on it, keeping the best factors.

    Inside a torch.distributed process group (``torchrun``), every rank calls this with the
    same data; each trains on its share of the entries (:mod:`deeplora.distributed.completion`)
    and all return the same model. Only rank 0 writes the checkpoint.
    """
    if validation is not None and (validation.shape != train.shape
                                   or validation.row_ids != train.row_ids
                                   or validation.col_ids != train.col_ids):
        raise ValueError("validation entries must come from the same table as the training "
                         "entries (use Observations.split)")
    if center not in ("none", "mean", "biases"):
        raise ValueError(f"center must be 'none', 'mean' or 'biases', got {center!r}")
    if clip is not None and not clip[0] < clip[1]:
        raise ValueError(f"clip must be (low, high) with low < high, got {clip}")
    offset, row_bias, col_bias = 0.0, None, None
    if center == "mean":
        offset = float(train.values.mean())
    elif center == "biases":
        base = MeanBaseline(biases=True).fit(train)
        offset, row_bias, col_bias = base.mean, base.row_bias, base.col_bias
    residual = _centered(train, offset, row_bias, col_bias)
    val_residual = None if validation is None else _centered(validation, offset, row_bias,
                                                             col_bias)
    solver: GradientDescent
    from ..distributed import runtime

    if runtime.active():  # launched with torchrun: every rank trains on its share of Omega
        from ..distributed.completion import DistributedCompressedSolver, shard

        if not isinstance(config, CompressedConfig):
            raise ValueError("only the compressed solver runs on several processes; use "
                             "CompressedConfig (--solver compressed) or launch one process")
        share = shard(residual, runtime.rank(), runtime.world_size())
        solver = DistributedCompressedSolver(share, config, truth=truth,
                                             validation=val_residual)
    elif isinstance(config, CompressedConfig):
        solver = CompressedSolver(residual, config, truth=truth, validation=val_residual)
    elif isinstance(config, WideConfig):
        solver = WideSolver(residual, config, truth=truth, validation=val_residual)
    else:
        raise TypeError(f"config must be CompressedConfig or WideConfig, got {type(config)}")
    result = solver.run(checkpoint=checkpoint, checkpoint_every=checkpoint_every,
                        resume=resume)
    info = {"solver": type(solver).__name__, "config": asdict(config), "center": center,
            "lr": result.lr, "steps": result.steps, "stopped": result.stopped}
    return CompletionModel(
        left=result.left, right=result.right, row_ids=train.row_ids, col_ids=train.col_ids,
        offset=offset, row_bias=row_bias, col_bias=col_bias, clip=clip,
        observed_rows=train.rows, observed_cols=train.cols, history=result.history, info=info,
    )


def _centered(obs: Observations, offset: float, row_bias: np.ndarray | None,
              col_bias: np.ndarray | None) -> Observations:
    values = obs.values - offset
    if row_bias is not None:
        values = values - row_bias[obs.rows]
    if col_bias is not None:
        values = values - col_bias[obs.cols]
    return obs.with_values(values)

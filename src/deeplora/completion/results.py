"""What a solver run gives back: its history of evaluations, its result, and the recovery
error against a known target (docs/METHOD.md 1)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np
import torch

from .data import LowRankMatrix


@dataclass
class FitHistory:
    """What a solver records at each evaluation, one row per evaluation."""

    step: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    train_rmse: list[float] = field(default_factory=list)
    val_rmse: list[float] = field(default_factory=list)
    rel_error: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)

    def truncate(self, rows: int) -> None:
        """Keep the first ``rows`` rows."""
        for f in fields(self):
            del getattr(self, f.name)[rows:]

    def append(self, **row: float) -> None:
        for key, value in row.items():
            getattr(self, key).append(value)

    def to_dict(self) -> dict[str, list[Any]]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, list[Any]]) -> FitHistory:
        return cls(**{k: list(v) for k, v in data.items()})

    def first_step_below(self, error: float) -> int | None:
        """The first recorded step whose relative error is <= ``error``."""
        for s, e in zip(self.step, self.rel_error):
            if e <= error:
                return s
        return None


@dataclass
class FitResult:
    """What a run returns: the end-to-end matrix ``left @ right.T`` as factors (in the
    problem's orientation), the offsets learned with it (``mu``, row and column offsets; or
    None), the history and why it stopped."""

    left: torch.Tensor
    right: torch.Tensor
    history: FitHistory
    stopped: str
    steps: int
    lr: float
    offsets: tuple[float, np.ndarray, np.ndarray] | None = None


def relative_error(left: torch.Tensor, right: torch.Tensor,
                   truth: LowRankMatrix | np.ndarray | torch.Tensor) -> float:
    """``||left right^T - Phi||_F / ||Phi||_F``; from small Gram matrices when the truth is
    low rank, never forming m x n matrices."""
    a, v = left.double(), right.double()
    if isinstance(truth, LowRankMatrix):
        x = torch.from_numpy(truth.left).double()
        y = torch.from_numpy(truth.right).double()
        ff = ((a.T @ a) * (v.T @ v)).sum()
        fp = ((x.T @ a) * (y.T @ v)).sum()
        pp = ((x.T @ x) * (y.T @ y)).sum()
        diff2 = (ff - 2 * fp + pp).clamp(min=0)
        return float(diff2.sqrt() / pp.sqrt())
    t = torch.as_tensor(np.asarray(truth) if not isinstance(truth, torch.Tensor) else truth)
    t = t.double()
    return float(torch.linalg.matrix_norm(a @ v.T - t) / torch.linalg.matrix_norm(t))

"""Settings shared by the wide and the compressed solver, with defaults that calibrate
themselves to the data (docs/METHOD.md 5) and the paper's one call away (:meth:`paper`)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import torch

from ..errors import UserError

DTYPES = {"float32": torch.float32, "float64": torch.float64}

#: Default ``init_relative``: with heavy-ball momentum, the largest value at which a slice
#: four or eight times wider than the rank still recovers from twice the information limit
#: (docs/BENCHMARKS.md, "How the defaults were chosen").
DEFAULT_INIT_RELATIVE = 3e-3
#: The paper's settings (absolute eps = 1e-3, plain gradient descent, no early stopping).
PAPER = {"init_scale": 1e-3, "momentum": 0.0, "patience": None, "tol": 0.0}


@dataclass(kw_only=True)
class SolverConfig:
    """Settings shared by the wide and the compressed solver. The defaults calibrate
    themselves to the data (module docstring); :meth:`paper` gives the paper's."""

    depth: int = 3  # L, number of factors; the paper's default is 3
    init_scale: float | None = None  # eps: every factor starts as eps times an orthogonal
    # matrix; None: init_relative * s^(1/L) for the target's estimated top singular value s
    init_relative: float = DEFAULT_INIT_RELATIVE  # eps relative to s^(1/L) (init_scale=None)
    lr: float | None = None  # step on the plain-sum loss; None: lr_factor / curvature estimate
    lr_factor: float = 1.0  # the automatic step is lr_factor / (p L s^(2 - 2/L))
    momentum: float = 0.9  # heavy-ball momentum with restart on a rising loss; 0: plain GD
    max_steps: int = 20_000  # step budget
    tol: float = 1e-6  # stop when the relative training residual is <= tol
    target_error: float | None = None  # stop when the relative error to the truth is <= this
    patience: int | None = 10  # with validation: evaluations without a clear improvement
    patience_ratio: float = 1.0  # ... and at least this times the steps to the last one
    min_improvement: float = 1e-4  # a val RMSE counts as better below best * (1 - this)
    eval_every: int = 50  # steps between evaluations (history rows, stopping checks)
    blowup: float = 1.5  # a loss above blowup * initial loss counts as divergence
    backoffs: int = 8  # automatic step only: halvings allowed on divergence before an error
    dtype: Literal["float32", "float64"] = "float64"
    seed: int = 0  # every random choice (init, SVD start vector)
    progress: bool = True  # tqdm progress bar (also off when not a terminal)

    def __post_init__(self) -> None:
        for name in ("init_scale", "init_relative", "lr", "lr_factor", "momentum", "tol",
                     "target_error", "patience_ratio", "min_improvement", "blowup"):
            value = getattr(self, name)
            _check(value is None or (isinstance(value, int | float) and math.isfinite(value)),
                   f"{name} must be a finite number, got {value!r}")
        _check(self.depth >= 2, f"depth must be >= 2 (a product of factors), got {self.depth}")
        _check(self.init_scale is None or 0 < self.init_scale <= 1e6,
               f"init_scale must be > 0 and <= 1e6 (or None: relative to the data), got "
               f"{self.init_scale}")
        _check(self.init_relative > 0, f"init_relative must be > 0, got {self.init_relative}")
        _check(self.seed >= 0, f"seed must be >= 0, got {self.seed}")
        _check(0 <= self.momentum < 1, f"momentum must be in [0, 1), got {self.momentum}")
        _check(self.patience_ratio >= 0,
               f"patience_ratio must be >= 0, got {self.patience_ratio}")
        _check(self.lr is None or self.lr > 0, f"lr must be > 0 (or None for auto), got {self.lr}")
        _check(self.lr_factor > 0, f"lr_factor must be > 0, got {self.lr_factor}")
        _check(self.max_steps >= 1, f"max_steps must be >= 1, got {self.max_steps}")
        _check(self.tol >= 0, f"tol must be >= 0, got {self.tol}")
        _check(self.target_error is None or self.target_error > 0,
               f"target_error must be > 0, got {self.target_error}")
        _check(self.patience is None or self.patience >= 1,
               f"patience must be >= 1 evaluation, got {self.patience}")
        _check(self.eval_every >= 1, f"eval_every must be >= 1, got {self.eval_every}")
        _check(self.blowup > 1, f"blowup must be > 1, got {self.blowup}")
        _check(self.backoffs >= 0, f"backoffs must be >= 0, got {self.backoffs}")
        _check(0 <= self.min_improvement < 1,
               f"min_improvement must be in [0, 1), got {self.min_improvement}")
        _check(self.dtype in DTYPES, f"dtype must be 'float32' or 'float64', got {self.dtype!r}")

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @classmethod
    def paper(cls: type[_Config], **settings: Any) -> _Config:
        """The paper's settings (:data:`PAPER`: absolute eps = 1e-3, plain gradient descent,
        no early stopping), with ``settings`` on top."""
        return cls(**{**cls._paper_settings(), **settings})

    @classmethod
    def _paper_settings(cls) -> dict[str, Any]:
        return dict(PAPER)


_Config = TypeVar("_Config", bound=SolverConfig)


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise UserError(message)

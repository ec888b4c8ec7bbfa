"""The wide deep factorization: the reference the compressed solver must match (docs/METHOD.md 1).

    f(Theta) = W_L ... W_2 W_1,   W_1: w x n,  W_l: w x w,  W_L: m x w,
    W_l(0) = eps * (semi-)orthogonal,

trained by full-batch gradient descent ``W_l <- W_l - lr * dl/dW_l`` on the plain-sum loss
of :mod:`deeplora.completion.objectives`. Cost O(L w^3) per step and O(L w^2) memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from ..errors import UserError
from ..subspace import chain, chain_grads, eps_orthogonal
from .config import SolverConfig
from .data import LowRankMatrix, Observations
from .solver import GradientDescent


@dataclass(kw_only=True)
class WideConfig(SolverConfig):
    """Settings of the wide network."""

    width: int | None = None  # w; None: the full dimension max(m, n)
    init: Literal["orthogonal", "identity"] = "orthogonal"  # random or partial identity

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.width is not None and self.width < 1:
            raise UserError(f"width must be >= 1, got {self.width}")
        if self.init not in ("orthogonal", "identity"):
            raise UserError(f"init must be 'orthogonal' or 'identity', got {self.init!r}")


def wide_init(
    shape: tuple[int, int], width: int, depth: int, eps: float, init: str, seed: int,
    dtype: torch.dtype = torch.float64,
) -> list[torch.Tensor]:
    """``[W_1, ..., W_L]`` at the eps-orthogonal init, seeded."""
    m, n = shape
    gen = torch.Generator().manual_seed(seed)
    dims = [n] + [width] * (depth - 1) + [m]
    return [
        eps_orthogonal(dims[i + 1], dims[i], eps, init=init,  # type: ignore[arg-type]
                       generator=gen, dtype=dtype)
        for i in range(depth)
    ]


class WideSolver(GradientDescent):
    """Gradient descent on the full-width deep factorization."""

    config: WideConfig

    def __init__(
        self,
        problem: Any,
        config: WideConfig | None = None,
        *,
        truth: LowRankMatrix | np.ndarray | torch.Tensor | None = None,
        validation: Observations | None = None,
    ) -> None:
        config = config or WideConfig()
        super().__init__(problem, config, truth=truth, validation=validation)
        width = config.width or max(self.shape)
        self.weights = wide_init(self.shape, width, config.depth, self.init_scale,
                                 config.init, config.seed, config.torch_dtype)

    def gradients(self) -> tuple[float, dict[str, torch.Tensor]]:
        loss, grad_f = self.objective.dense(chain(self.weights))
        grads = chain_grads(self.weights, grad_f)
        return float(loss), {f"W{i + 1}": g for i, g in enumerate(grads)}

    def spectrum(self) -> torch.Tensor:
        """Singular values of the end-to-end map."""
        return torch.linalg.svdvals(self.end_to_end().double())

    def factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        return chain(self.weights[1:]), self.weights[0].T

    def end_to_end(self) -> torch.Tensor:
        return chain(self.weights)

    def parameters(self) -> dict[str, torch.Tensor]:
        params = {f"W{i + 1}": w for i, w in enumerate(self.weights)}
        params.update(self._offset_parameters())
        return params

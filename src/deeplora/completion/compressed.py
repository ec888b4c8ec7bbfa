"""Compressed deep factorization: train only the 2 r_hat-wide slice that moves (docs/METHOD.md 3).

    f_c = UL1 @ Wt_L ... Wt_1 @ V11^T,   UL1: m x 2r_hat,  Wt_l: 2r_hat x 2r_hat,  V11: n x 2r_hat,
    Wt_l(0) = eps * I,

with ``(UL1, V11)`` read off the init gradient of the wide network (:mod:`deeplora.subspace`).
Gradient descent updates the inner ``Wt_l`` with step ``lr`` and the outer ``UL1, V11`` with
the discrepant step ``gamma * lr`` (section 3.1): ``gamma = 0`` reproduces the wide
trajectory for factorization; completion needs ``gamma > 0`` (the paper's 0.01).

``construction="sparse"`` (default) is our scalable form (docs/METHOD.md 3.2): from the
partial-identity init of the wide network, the basis comes from a
truncated sparse SVD of ``E = grad_f l(eps^L J)``, and a completion step costs
O(|Omega| r_hat + (m + n) r_hat^2 + L r_hat^3) without any m x n matrix.
``construction="dense"`` follows the paper's construction from a random orthogonal wide init
(docs/METHOD.md 3.1; small sizes).
Problems with m > n are solved transposed (the basis needs m <= n); results come back in the
original orientation.

``basis="normalized"`` (sparse construction only) reads the r_hat directions off ``E`` with its
rows and columns scaled by their energy (:func:`~deeplora.subspace.normalized_top_singular`)
instead of off ``E`` itself. It leaves the paper's construction, so the wide trajectory is no
longer reproduced, but on very sparse samples (a few dozen entries per row) the top singular
vectors of ``E`` sit on the rows and columns of largest observed energy and the slice misses
the target; the normalized ones do not (docs/METHOD.md 5.3).

For square problems the slice is exactly invariant under factorization and the compressed
trajectory is the wide one up to the constant eps^L remainder it drops. For m != n the
paper's 2 r_hat slice is invariant only up to eps^L-sized terms (they shift the sharp
transitions of incremental learning slightly); ``exact_basis=True`` closes the slice under
``J^T J`` (at most 3 r_hat wide) and makes it exact again.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from ..errors import UserError
from ..subspace import (
    chain,
    chain_grads,
    compress_dense,
    compress_identity,
    normalized_top_singular,
    top_singular,
)
from .config import SolverConfig
from .data import LowRankMatrix, Observations
from .objectives import Factorization
from .solver import GradientDescent
from .wide import wide_init


def default_rank(shape: tuple[int, int], count: int) -> int:
    """The r_hat used when none is given: the largest r whose degrees of freedom
    ``r (m + n - r)`` the ``count`` observed numbers cover (the most a sample can determine),
    at most ``min(m, n) // 2`` so that the 2 r_hat-wide slice fits. Depth makes a generous
    r_hat harmless (docs/METHOD.md, "Choosing r_hat")."""
    m, n = shape
    top = max(min(m, n) // 2, 1)
    # r (m + n - r) <= count  <=>  r <= ((m + n) - sqrt((m + n)^2 - 4 count)) / 2
    disc = (m + n) ** 2 - 4 * count
    r = top if disc <= 0 else int(((m + n) - math.sqrt(disc)) / 2)
    return max(1, min(r, top))


#: The outer bases' step ``gamma * lr`` when ``gamma`` is not given (completion), as a
#: fraction of the inverse of their curvature ``q s^2`` (docs/METHOD.md, "The outer step").
DEFAULT_OUTER_STEP = 0.03
#: The paper's discrepant factor for completion (for factorization its ``gamma = 0``).
PAPER_GAMMA = 0.01


@dataclass(kw_only=True)
class CompressedConfig(SolverConfig):
    """Settings of the compressed network."""

    r_hat: int | None = None  # the assumed rank (>= r); None: default_rank of the data
    gamma: float | None = None  # outer step factor; None: 0 for factorization, else from
    # outer_step (completion)
    outer_step: float | None = DEFAULT_OUTER_STEP  # gamma=None, completion: the outer step
    # gamma * lr as a fraction of 1 / (q s^2); None: the paper's gamma = 0.01
    # the outer bases: "sparse" (partial-identity init, docs/METHOD.md 3.2) or "dense" (the
    # paper's construction from a random orthogonal wide network, 3.1)
    construction: Literal["sparse", "dense"] = "sparse"
    width: int | None = None  # width of the wide network behind construction="dense"
    exact_basis: bool = False  # m != n: close the slice so the wide trajectory is exact
    # the r_hat directions of E that span the slice: "gradient" (the paper's: top singular
    # vectors of E) or "normalized" (of E with rows and columns scaled by their energy; for
    # sparse samples, see the module docstring; sparse construction only); None: "normalized"
    # with the sparse construction, "gradient" with the dense one
    basis: Literal["gradient", "normalized"] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.r_hat is not None and self.r_hat < 1:
            raise UserError(f"rank must be >= 1 (or None: chosen from the data), got "
                            f"{self.r_hat}")
        if self.gamma is not None and not (math.isfinite(self.gamma) and self.gamma >= 0):
            raise UserError(f"gamma must be >= 0 and finite (or None for the default), "
                            f"got {self.gamma}")
        if self.outer_step is not None and not (math.isfinite(self.outer_step)
                                                and self.outer_step > 0):
            raise UserError(f"outer_step must be > 0 and finite (or None: the paper's "
                            f"gamma), got {self.outer_step}")
        if self.construction not in ("sparse", "dense"):
            raise UserError(f"construction must be 'sparse' or 'dense', got "
                            f"{self.construction!r}")
        if self.basis not in (None, "gradient", "normalized"):
            raise UserError(f"basis must be 'gradient' or 'normalized', got {self.basis!r}")
        if self.basis == "normalized" and self.construction != "sparse":
            raise UserError("basis='normalized' applies only to construction='sparse'")
        if self.width is not None and self.construction != "dense":
            raise UserError("width applies only to construction='dense'")

    @property
    def resolved_basis(self) -> str:
        """The basis in force (``basis``, or its default for ``construction``)."""
        if self.basis is not None:
            return self.basis
        return "normalized" if self.construction == "sparse" else "gradient"

    @classmethod
    def _paper_settings(cls) -> dict[str, Any]:
        return {**super()._paper_settings(), "basis": "gradient", "outer_step": None}


class CompressedSolver(GradientDescent):
    """Gradient descent on the compressed deep factorization."""

    config: CompressedConfig

    def __init__(
        self,
        problem: Any,
        config: CompressedConfig,
        *,
        truth: LowRankMatrix | np.ndarray | torch.Tensor | None = None,
        validation: Observations | None = None,
    ) -> None:
        super().__init__(problem, config, truth=truth, validation=validation)
        m, n = self.shape
        self.r_hat = config.r_hat if config.r_hat is not None else default_rank(
            self.shape, len(self.objective))
        if not self.r_hat < min(m, n):
            raise UserError(
                f"rank {self.r_hat} must be < min(m, n) = {min(m, n)} for a {m} x {n} "
                "matrix; lower --rank"
            )
        # The outer bases carry no eps-scaled part: they see curvature ~ q s^2 at the step
        # gamma * lr, where the inner factors see ~ q L s^(2 - 2/L) at lr.
        curvature = self.objective.sampling_rate * self.objective.target_scale() ** 2
        if config.gamma is None and isinstance(self.objective, Factorization):
            self.gamma = 0.0  # the wide trajectory exactly
        elif config.gamma is None and config.outer_step is not None:
            # the outer step a fixed fraction of its own stability bound: scale-free
            self.gamma = config.outer_step * config.lr_factor / (curvature * self.lr)
        else:  # a factor given, or the paper's; the step must suit the outer factors too
            self.gamma = PAPER_GAMMA if config.gamma is None else config.gamma
            if config.lr is None and self.gamma > 0:  # on large targets the tighter bound
                self.lr = min(self.lr, config.lr_factor / (self.gamma * curvature))
        self.transposed = m > n
        self._obj = self.objective.transpose() if self.transposed else self.objective
        dtype, eps, depth = config.torch_dtype, self.init_scale, config.depth
        if config.construction == "sparse":
            grad = self._obj.init_gradient(eps**depth)
            if config.resolved_basis == "normalized":
                u, v = normalized_top_singular(grad, self.r_hat,
                                               *self._obj.init_energies(eps**depth),
                                               seed=config.seed)  # fmt: skip
            else:
                u, _, v = top_singular(grad, self.r_hat, seed=config.seed)
            left, right = compress_identity(
                torch.from_numpy(np.ascontiguousarray(u)).double(),
                torch.from_numpy(np.ascontiguousarray(v)).double(), self._obj.shape,
                exact=config.exact_basis)
        else:
            weights = wide_init(self.shape, config.width or max(m, n), depth, eps,
                                "orthogonal", config.seed, torch.float64)
            if self.transposed:  # f^T = W_1^T ... W_L^T
                weights = [w.T for w in reversed(weights)]
            _, grad_f = self._obj.to(torch.float64).dense(chain(weights))
            grad_first = chain_grads(weights, grad_f)[0]
            left, right = compress_dense(weights, grad_first, self.r_hat, eps,
                                         exact=config.exact_basis)
        k = left.shape[1]
        self.left = left.to(dtype).contiguous()
        self.right = right.to(dtype).contiguous()
        self.inner = [eps * torch.eye(k, dtype=dtype) for _ in range(depth)]

    def gradients(self) -> tuple[float, dict[str, torch.Tensor]]:
        p = chain(self.inner)
        a = self.left @ p
        loss, r_right, rt_a = self._obj.low_rank(a, self.right)
        grads = chain_grads(self.inner, self.left.T @ r_right)
        directions = {f"inner{i + 1}": g for i, g in enumerate(grads)}
        if self.gamma:  # the outer bases move at gamma times the step
            directions.update(left=self.gamma * (r_right @ p.T), right=self.gamma * rt_a)
        return float(loss), directions

    def spectrum(self) -> torch.Tensor:
        """Singular values of ``Wt_L ... Wt_1`` (2r_hat x 2r_hat): the end-to-end map's, up
        to the outer bases' departure from orthonormality."""
        return torch.linalg.svdvals(chain(self.inner).double())

    def factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        a = self.left @ chain(self.inner)
        return (self.right, a) if self.transposed else (a, self.right)

    def parameters(self) -> dict[str, torch.Tensor]:
        params = {"left": self.left, "right": self.right}
        params.update({f"inner{i + 1}": w for i, w in enumerate(self.inner)})
        params.update(self._offset_parameters())
        return params

"""Compressed deep matrix completion with the observed entries sharded across ranks.

Every rank holds the small factors in full (``UL1``: m x 2r_hat, ``V11``: n x 2r_hat and the
inner 2r_hat x 2r_hat factors, identical on all ranks) and one share of Omega. The loss and
the two sparse-dense products of a step (docs/METHOD.md 3.2) are sums over Omega, so each rank
computes them on its share and one all-reduce adds them up::

    loss = sum_ranks loss_r,   R V = sum_ranks R_r V,   R^T A = sum_ranks R_r^T A

packed into a single buffer of ``1 + (m + n) 2r_hat`` numbers per step. Every rank then takes
the same gradient step, so the factors stay identical without further communication.

The init subspace (the top-r_hat singular vectors of ``E = grad_f l(eps^L J)``) comes from
Lanczos (ARPACK, :func:`scipy.sparse.linalg.svds`) on a linear operator whose products
``E x`` and ``E^T y`` are local sparse products followed by an all-reduce of an m- or
n-vector; Omega is never gathered on one rank. All ranks run the same Lanczos iteration
(same start vector, identical reduced vectors) and rank 0's bases are broadcast at the end
to rule out any drift.

Memory per rank: O(|Omega| / world + (m + n) r_hat) for the solver. The input table is read
by every rank and split the same way (:func:`shard`), so loading still needs O(|Omega|) per
rank for a moment; give each rank a pre-split file where that is too much.
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np
import torch
from scipy.sparse.linalg import LinearOperator

from ..completion.compressed import CompressedConfig, CompressedSolver
from ..completion.data import LowRankMatrix, Observations
from ..completion.objectives import Completion
from ..completion.offsets import DEFAULT_OFFSET_REG
from ..completion.wide import WideConfig
from ..errors import UserError
from . import runtime


def shard(obs: Observations, rank: int, world_size: int) -> Observations:
    """Rank ``rank``'s share of the entries: every ``world_size``-th entry, starting at
    ``rank`` (shares differ in size by at most one entry)."""
    if not 0 <= rank < world_size:
        raise UserError(f"rank must be in [0, {world_size}), got {rank}")
    if len(obs) < world_size:
        raise UserError(f"{len(obs)} observed entries cannot be shared by {world_size} ranks; "
                         "use fewer processes")
    return obs.subset(np.arange(rank, len(obs), world_size))


def _reduced(x: np.ndarray, what: str) -> np.ndarray:
    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64))
    return runtime.all_reduce(t, what).numpy()


class ShardedCompletion(Completion):
    """:class:`Completion` on this rank's share of Omega, with every sum over Omega reduced
    across the ranks (see the module docstring)."""

    def __init__(self, share: Observations, dtype: torch.dtype = torch.float64, *,
                 offsets: bool = False, offset_reg: float = DEFAULT_OFFSET_REG) -> None:
        self.bytes_reduced = 0  # payload this rank has all-reduced (for the benchmark)
        super().__init__(share, dtype, offsets=offsets, offset_reg=offset_reg)
        target = self._target().double()
        counts = torch.stack([torch.tensor(float(len(share)), dtype=torch.float64),
                              target @ target])
        self._reduce(counts)
        self.total, self._norm = int(counts[0]), math.sqrt(float(counts[1]))

    def _reduce(self, x: torch.Tensor) -> torch.Tensor:
        runtime.all_reduce(x, "a sum over the entries")
        self.bytes_reduced += x.numel() * x.element_size()
        return x

    def __len__(self) -> int:
        return self.total

    def observed_norm(self) -> float:
        return self._norm

    def low_rank(
        self, a: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        loss, rv, rta = super().low_rank(a, v)
        buf = torch.cat([loss.reshape(1), rv.reshape(-1), rta.reshape(-1)])
        runtime.all_reduce(buf, "the gradient all-reduce")
        self.bytes_reduced += buf.numel() * buf.element_size()
        m, k = rv.shape
        n = rta.shape[0]
        return buf[0], buf[1 : 1 + m * k].view(m, k), buf[1 + m * k :].view(n, k)

    def dense(self, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        loss, grad = super().dense(f)
        buf = torch.cat([loss.reshape(1), grad.reshape(-1)])
        runtime.all_reduce(buf, "the gradient all-reduce")
        return buf[0], buf[1:].view_as(grad)

    def _operator(self, matrix: Any) -> LinearOperator:
        """``x -> sum_ranks matrix_r x`` (and the transpose) for a local scipy matrix."""
        local = matrix.tocsr()
        local_t = local.T.tocsr()

        def matvec(x: np.ndarray) -> np.ndarray:
            return _reduced(local @ np.asarray(x, dtype=np.float64).reshape(-1),
                            "a Lanczos product")

        def rmatvec(y: np.ndarray) -> np.ndarray:
            return _reduced(local_t @ np.asarray(y, dtype=np.float64).reshape(-1),
                            "a Lanczos product")

        def matmat(x: np.ndarray) -> np.ndarray:  # one all-reduce per block product
            return _reduced(np.asarray(local @ x), "a block product")

        def rmatmat(y: np.ndarray) -> np.ndarray:
            return _reduced(np.asarray(local_t @ y), "a block product")

        return LinearOperator(local.shape, matvec=matvec, rmatvec=rmatvec, matmat=matmat,
                              rmatmat=rmatmat, dtype=np.float64)

    def init_gradient(self, scale: float) -> LinearOperator:
        return self._operator(super().init_gradient(scale))

    def init_energies(self, scale: float) -> tuple[np.ndarray, np.ndarray]:
        rows, cols = super().init_energies(scale)  # of this rank's entries: sum over ranks
        both = _reduced(np.concatenate([rows, cols]), "the row and column energies")
        return both[: rows.shape[0]], both[rows.shape[0] :]

    def _top_matrix(self, target: np.ndarray) -> LinearOperator:
        return self._operator(super()._top_matrix(target))


class DistributedCompressedSolver(CompressedSolver):
    """:class:`CompressedSolver` on a :class:`ShardedCompletion`: rank 0's init bases are
    broadcast, checkpoints are written by rank 0 alone (atomically) and read by all."""

    def __init__(
        self,
        share: Observations | ShardedCompletion,
        config: CompressedConfig,
        *,
        truth: LowRankMatrix | np.ndarray | torch.Tensor | None = None,
        validation: Observations | None = None,
    ) -> None:
        problem = share if isinstance(share, ShardedCompletion) else ShardedCompletion(
            share, config.torch_dtype)
        super().__init__(problem, config, truth=truth, validation=validation)
        runtime.broadcast(self.left, 0, "sharing the init bases")
        runtime.broadcast(self.right, 0, "sharing the init bases")

    def save_checkpoint(self, folder: str | os.PathLike[str]) -> None:
        if runtime.rank() == 0:
            super().save_checkpoint(folder)
        runtime.barrier("writing the checkpoint")


def sharded_solver(train: Observations, config: CompressedConfig | WideConfig, *, joint: bool,
                   truth: LowRankMatrix | np.ndarray | None = None,
                   validation: Observations | None = None) -> DistributedCompressedSolver:
    """The solver of :func:`deeplora.completion.complete` under ``torchrun``
    (``complete(..., make_solver=sharded_solver)``): this rank's share of ``train``, with the
    sums over the entries reduced across the ranks."""
    if not isinstance(config, CompressedConfig):
        raise UserError("only the compressed solver runs on several processes; use "
                        "CompressedConfig (--solver compressed) or launch one process")
    share = shard(train, runtime.rank(), runtime.world_size())
    problem = ShardedCompletion(share, config.torch_dtype, offsets=joint)
    return DistributedCompressedSolver(problem, config, truth=truth, validation=validation)

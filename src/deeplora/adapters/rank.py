"""Spectra of the learned updates ``dW``: effective rank and post-training truncation.

Reference: docs/METHOD.md 4 (Deep LoRA learns updates of low effective rank: in the authors' runs 40
of 74 updates had spectral norm <= 1e-3 and most others rank 1-4). Singular values come from
the exact SVD of each ``dW`` computed from its factors
(:meth:`deeplora.adapters.layer.DeepLoraBranch.svd`), never from a dense ``dW``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import UserError
from ..subspace import effective_rank
from .layer import DeepLoraBranch, DeepLoraLayer
from .model import adapter_branches, adapter_configs


@dataclass(frozen=True)
class LayerTruncation:
    """What cutting one ``dW`` to ``rank`` costs: ``error = ||dW - dW_rank||_F / ||dW||_F``
    (0 for a zero ``dW``); ``full_rank`` is the width it was cut from."""

    rank: int
    full_rank: int
    error: float


def choose_rank(s: torch.Tensor, rank: int | None, energy: float | None) -> int:
    """Rank kept from singular values ``s``: ``min(rank, len(s))``, or the least rank holding
    ``energy`` of ``sum s_i^2`` (at least 1), or ``len(s)`` when both are ``None``."""
    if rank is not None and energy is not None:
        raise UserError("give rank or energy, not both")
    if rank is not None:
        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
            raise UserError(f"rank must be an integer >= 1, got {rank!r}")
        return min(rank, len(s))
    if energy is not None:
        if not 0 < energy <= 1:
            raise UserError(f"energy must be in (0, 1], got {energy}; e.g. 0.99")
        return max(1, effective_rank(s, energy=energy))
    return len(s)


def tail_error(s: torch.Tensor, rank: int) -> float:
    """``||dW - dW_rank||_F / ||dW||_F`` from the singular values (Eckart-Young)."""
    total = float((s.double() ** 2).sum())
    return 0.0 if total == 0 else math.sqrt(float((s[rank:].double() ** 2).sum()) / total)


def singular_values(model: nn.Module, adapter_name: str = "default") -> dict[str, torch.Tensor]:
    """Singular values (float64, descending) of each layer's ``dW``, by module path."""
    return {path: b.svd()[1] for path, _, b in adapter_branches(model, adapter_name)}


def effective_ranks(
    model: nn.Module,
    adapter_name: str = "default",
    *,
    atol: float | None = None,
    rtol: float | None = None,
    energy: float | None = None,
) -> dict[str, int]:
    """Effective rank of each layer's ``dW`` under exactly one threshold
    (:func:`deeplora.subspace.effective_rank`): ``atol`` counts ``s_i > atol`` (``atol=1e-3``
    with rank 0 is the paper's "spectral norm <= 1e-3"), ``rtol`` counts
    ``s_i > rtol * ||dW||_2``, ``energy`` the least k holding that share of ``||dW||_F^2``."""
    return {
        path: effective_rank(s, atol=atol, rtol=rtol, energy=energy)
        for path, s in singular_values(model, adapter_name).items()
    }


@torch.no_grad()
def truncate(
    model: nn.Module,
    adapter_name: str = "default",
    *,
    rank: int | None = None,
    energy: float | None = None,
) -> dict[str, LayerTruncation]:
    """Cut each ``dW`` of ``adapter_name`` to its best approximation of rank ``rank`` (or the
    least rank holding ``energy`` of its squared Frobenius norm), in place.

    ``dW_r = U_r S_r V_r^T`` becomes ``n`` balanced factors (``n`` as before):
    ``W_1 = S_r^(1/n) V_r^T``, ``W_l = S_r^(1/n)``, ``W_n = U_r S_r^(1/n)``. The adapter is then a
    plain chain (a compressed adapter loses its outer/inner split, so ``gamma`` no longer
    applies); build a new optimizer before training further. Returns the error per layer.
    """
    if rank is None and energy is None:
        raise UserError("give rank (an integer) or energy (a share in (0, 1]) to truncate to")
    plans: list[tuple[str, DeepLoraLayer, DeepLoraBranch, torch.Tensor, torch.Tensor, torch.Tensor]]
    plans = []
    for path, layer, branch in adapter_branches(model, adapter_name):
        if adapter_name in layer.merged:
            raise UserError(
                f"adapter {adapter_name!r} is merged into {path!r}; unmerge() before truncating"
            )
        u, s, v = branch.svd()
        plans.append((path, layer, branch, u, s, v))
    report: dict[str, LayerTruncation] = {}
    for path, layer, branch, u, s, v in plans:
        r = choose_rank(s, rank, energy)
        n = len(branch.factors)
        root = s[:r] ** (1.0 / n)
        factors = [root[:, None] * v[:, :r].T]
        factors += [torch.diag(root)] * (n - 2)
        factors += [u[:, :r] * root[None, :]] if n > 1 else []
        if n == 1:
            factors = [(u[:, :r] * s[:r]) @ v[:, :r].T]
        p = branch.dropout.p if isinstance(branch.dropout, nn.Dropout) else 0.0
        new = DeepLoraBranch([f.to(branch.dtype) for f in factors], dropout=p)
        new.requires_grad_(branch.factors[0].requires_grad)
        layer.adapters[adapter_name] = new.to(branch.factors[0].device)
        report[path] = LayerTruncation(r, len(s), tail_error(s, r))
    configs = adapter_configs(model)
    configs[adapter_name] = dataclasses.replace(
        configs[adapter_name], init="orthogonal", rank=max(t.rank for t in report.values())
    )
    return report

"""Spectra, effective rank and truncation of learned updates dW."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from deeplora.adapters import (
    DeepLoraConfig,
    effective_ranks,
    merge,
    parameter_groups,
    singular_values,
    truncate,
    wrap,
)

from .conftest import perturb


def _model(rank: int = 6, init: str = "orthogonal") -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 12), nn.Tanh(), nn.Linear(12, 16)).double()
    return wrap(model, DeepLoraConfig(rank=rank, target_modules="all-linear"))


@torch.no_grad()
def _set_spectrum(model: nn.Module, path: str, s: list[float]) -> torch.Tensor:
    """Give layer ``path``'s dW the singular values ``s`` (and return that dW)."""
    layer = model.get_submodule(path)
    branch = layer.branch("default")
    d_out, d_in, k = layer.d_out, layer.d_in, len(s)
    u = torch.linalg.qr(torch.randn(d_out, k, dtype=torch.float64)).Q
    v = torch.linalg.qr(torch.randn(d_in, k, dtype=torch.float64)).Q
    root = torch.tensor(s, dtype=torch.float64) ** (1 / 3)
    branch.factors[0].copy_(root[:, None] * v.T)
    branch.factors[1].copy_(torch.diag(root))
    branch.factors[2].copy_(u * root)
    return (u * torch.tensor(s, dtype=torch.float64)) @ v.T


def test_singular_values_are_those_of_the_dense_update() -> None:
    model = _model()
    perturb(model)
    spectra = singular_values(model)
    assert list(spectra) == ["0", "2"]
    for path, s in spectra.items():
        dense = model.get_submodule(path).branch("default").delta_weight()
        torch.testing.assert_close(s, torch.linalg.svdvals(dense)[: len(s)].double())


def test_effective_rank_under_each_threshold() -> None:
    model = _model()
    _set_spectrum(model, "0", [3.0, 1.0, 0.1, 1e-4, 1e-6, 0.0])
    _set_spectrum(model, "2", [2e-4, 1e-4, 0.0, 0.0, 0.0, 0.0])
    assert effective_ranks(model, atol=1e-3) == {"0": 3, "2": 0}  # "spectral norm <= 1e-3"
    assert effective_ranks(model, rtol=0.1) == {"0": 2, "2": 2}
    assert effective_ranks(model, rtol=0.6) == {"0": 1, "2": 1}
    assert effective_ranks(model, energy=0.9) == {"0": 2, "2": 2}
    assert effective_ranks(model, energy=0.75) == {"0": 1, "2": 1}
    assert effective_ranks(model, energy=0.9999) == {"0": 3, "2": 2}
    with pytest.raises(ValueError, match="exactly one"):
        effective_ranks(model)


def test_truncation_keeps_the_best_low_rank_approximation() -> None:
    model = _model()
    perturb(model)  # layer "2" random
    dense = _set_spectrum(model, "0", [3.0, 1.0, 0.5, 0.1, 0.01, 0.001])
    x = torch.randn(5, 20, dtype=torch.float64)
    report = truncate(model, rank=2)
    assert report["0"].rank == 2 and report["0"].full_rank == 6
    tail, total = 0.5**2 + 0.1**2 + 0.01**2 + 0.001**2, 3.0**2 + 1.0**2
    assert report["0"].error == pytest.approx((tail / (tail + total)) ** 0.5)
    branch = model.get_submodule("0").branch("default")
    assert branch.shapes == [(2, 20), (2, 2), (12, 2)]
    u, s, vh = torch.linalg.svd(dense)
    torch.testing.assert_close(branch.delta_weight(), (u[:, :2] * s[:2]) @ vh[:2])
    assert torch.isfinite(model(x)).all()
    parameter_groups(model, lr=1e-3)  # still trainable


def test_truncating_to_a_rank_at_least_the_width_is_lossless() -> None:
    model = _model(rank=4)
    perturb(model)
    x = torch.randn(5, 20, dtype=torch.float64)
    with torch.no_grad():
        before = model(x)
        report = truncate(model, rank=10)
        assert all(r.rank == 4 and r.error < 1e-12 for r in report.values())
        torch.testing.assert_close(model(x), before)


def test_truncation_refuses_merged_adapters_and_needs_a_target() -> None:
    model = _model()
    with pytest.raises(ValueError, match="give rank"):
        truncate(model)
    with pytest.raises(ValueError, match="rank must be an integer >= 1"):
        truncate(model, rank=0)
    merge(model)
    with pytest.raises(ValueError, match="unmerge"):
        truncate(model, energy=0.9)

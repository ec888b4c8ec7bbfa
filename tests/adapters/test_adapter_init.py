"""Compressed init (docs/METHOD.md 3.1, 3.2, 4.2): the 2 r_hat basis and the wide adapter's
trajectory."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from deeplora.adapters import (
    DeepLoraBranch,
    DeepLoraConfig,
    adapter_layers,
    parameter_groups,
    trainable_parameters,
    wrap,
)
from deeplora.adapters import init as init_module
from deeplora.errors import UserError

from .conftest import ARCHS, build

EPS = 1e-3


def _least_squares(d_out: int, d_in: int, seed: int = 0):
    """``0.5 ||X W^T - Y||^2`` with orthonormal columns in X: a factorization problem in
    ``W``, whose target differs from ``W0`` by a rank-2 matrix."""
    gen = torch.Generator().manual_seed(seed)
    w0 = torch.randn(d_out, d_in, generator=gen, dtype=torch.float64) / d_in**0.5
    x = torch.linalg.qr(torch.randn(40, d_in, generator=gen, dtype=torch.float64)).Q
    low = torch.randn(d_out, 2, generator=gen, dtype=torch.float64)
    delta = low @ torch.randn(2, d_in, generator=gen, dtype=torch.float64) / (d_in * d_out) ** 0.25
    y = x @ (w0 + delta).T
    base = nn.Sequential(nn.Linear(d_in, d_out, bias=False).double())
    base[0].weight.data.copy_(w0)

    def loss_fn(model: nn.Module) -> torch.Tensor:
        return 0.5 * ((model(x) - y) ** 2).sum()

    return base, loss_fn


def _delta(model: nn.Module) -> torch.Tensor:
    return model[0].branch("default").delta_weight().detach()


def _max_relative_deviation(wide: nn.Module, comp: nn.Module, loss_fn, steps: int, lr: float):
    """Largest ``||moved_wide - moved_compressed|| / ||moved_wide||`` over ``steps`` SGD steps,
    ``moved = dW(t) - dW(0)``."""
    opts = [torch.optim.SGD(parameter_groups(m, lr, lr_rank=None)) for m in (wide, comp)]
    start = [_delta(wide), _delta(comp)]
    worst = 0.0
    for _ in range(steps):
        for model, opt in zip((wide, comp), opts, strict=True):
            opt.zero_grad()
            loss_fn(model).backward()
            opt.step()
        a, b = _delta(wide) - start[0], _delta(comp) - start[1]
        worst = max(worst, float((a - b).norm() / a.norm()))
    return worst


def test_compressed_follows_the_wide_adapter_on_a_square_layer() -> None:
    base, loss_fn = _least_squares(10, 10)
    wide = wrap(
        copy.deepcopy(base),
        DeepLoraConfig(init="wide", factor_init="identity", init_scale=EPS, target_modules=["0"]),
    )
    comp = wrap(
        copy.deepcopy(base),
        DeepLoraConfig(init="compressed", rank=4, init_scale=EPS, gamma=0.0, target_modules=["0"]),
        loss_fn=loss_fn,
    )
    assert wide[0].branch("default").shapes == [(10, 10)] * 3
    assert comp[0].branch("default").shapes == [(4, 10), (4, 4), (4, 4), (4, 4), (10, 4)]
    assert _max_relative_deviation(wide, comp, loss_fn, steps=25, lr=0.2) < 1e-6


@pytest.mark.parametrize(("d_out", "d_in"), [(8, 12), (12, 8)])
def test_compressed_follows_the_full_width_network_on_rectangular_layers(
    d_out: int, d_in: int
) -> None:
    """The compressed init is exact for the wide network of width max(d_in, d_out) at its
    partial-identity init (for width min(d_in, d_out) only approximately)."""
    base, loss_fn = _least_squares(d_out, d_in, seed=1)
    wide = wrap(copy.deepcopy(base), DeepLoraConfig(init="wide", target_modules=["0"]))
    wide[0].adapters["default"] = DeepLoraBranch.semi_orthogonal(
        d_out, d_in, max(d_out, d_in), 3, EPS, init="identity", dtype=torch.float64
    )
    comp = wrap(
        copy.deepcopy(base),
        DeepLoraConfig(init="compressed", rank=4, init_scale=EPS, gamma=0.0, target_modules=["0"]),
        loss_fn=loss_fn,
    )
    assert _max_relative_deviation(wide, comp, loss_fn, steps=25, lr=0.2) < 1e-6


@pytest.mark.parametrize(("d_out", "d_in"), [(8, 12), (12, 8), (10, 10)])
def test_the_basis_has_2_r_hat_orthonormal_columns_holding_the_gradients_top_space(
    d_out: int, d_in: int
) -> None:
    base, loss_fn = _least_squares(d_out, d_in, seed=2)
    layer = base[0]
    layer.weight.requires_grad_(True)
    loss_fn(base).backward()
    grad = layer.weight.grad.clone()
    layer.weight.grad = None
    comp = wrap(
        copy.deepcopy(base),
        DeepLoraConfig(init="compressed", rank=4, target_modules=["0"]),
        loss_fn=loss_fn,
    )
    branch = comp[0].branch("default")
    right, left = branch.factors[0].detach().T, branch.factors[-1].detach()
    basis = right if d_out <= d_in else left  # the side of the larger dimension
    assert basis.shape[1] == 4
    torch.testing.assert_close(basis.T @ basis, torch.eye(4, dtype=torch.float64))
    u, _, vh = torch.linalg.svd(grad)  # G has rank 2 here
    top = vh[:2].T if d_out <= d_in else u[:, :2]  # r_hat = 2 top singular vectors of G
    torch.testing.assert_close((basis.T @ top).norm(dim=0), torch.ones(2, dtype=torch.float64))
    assert branch.outer == (True, False, False, False, True)
    for inner in branch.factors[1:-1]:
        torch.testing.assert_close(inner.detach(), 1e-3 * torch.eye(4, dtype=torch.float64))


def test_gamma_trains_the_outer_factors_and_the_loss_is_fitted() -> None:
    base, loss_fn = _least_squares(10, 12, seed=3)
    comp = wrap(
        copy.deepcopy(base),
        DeepLoraConfig(init="compressed", rank=4, init_scale=0.1, gamma=0.5, target_modules=["0"]),
        loss_fn=loss_fn,
    )
    before = [f.detach().clone() for f in comp[0].branch("default").factors]
    start = loss_fn(comp).item()
    opt = torch.optim.SGD(parameter_groups(comp, lr=0.1, lr_rank=None))
    for _ in range(150):
        opt.zero_grad()
        loss_fn(comp).backward()
        opt.step()
    after = comp[0].branch("default").factors
    assert all(not torch.equal(a, b) for a, b in zip(after, before, strict=True))
    assert loss_fn(comp).item() < 1e-3 * start


@pytest.mark.parametrize("rank", [4, 16])
def test_adams_first_step_moves_each_inner_factor_as_much_at_every_rank(rank: int) -> None:
    """Adam's first step moves each entry of a ``k x k`` inner factor by its lr (or not at
    all, where the gradient is exactly 0): at ``lr * 8 / k`` a step of Frobenius norm at most
    ``8 lr`` whatever ``k``; unscaled (``lr_rank=None``), up to ``k lr``. The outer factors
    train at ``gamma`` times the inner rate."""
    base, loss_fn = _least_squares(24, 20, seed=1)
    lr, gamma = 1e-3, 0.5
    config = DeepLoraConfig(init="compressed", rank=rank, init_scale=0.3, gamma=gamma,
                            target_modules=["0"])  # fmt: skip
    for lr_rank in (8, None):
        comp = wrap(copy.deepcopy(base), config, loss_fn=loss_fn)
        branch = comp[0].branch("default")
        groups = parameter_groups(comp, lr, lr_rank=lr_rank)
        inner_lr = lr * 8 / rank if lr_rank else lr
        assert sorted(g["lr"] for g in groups) == pytest.approx([gamma * inner_lr, inner_lr])
        before = [f.detach().clone() for f in branch.factors]
        opt = torch.optim.Adam(groups, eps=1e-12)
        loss_fn(comp).backward()
        opt.step()
        for f, b, outer in zip(branch.factors, before, branch.outer, strict=True):
            if outer:
                continue
            step = f.detach() - b
            assert float(step.abs().max()) == pytest.approx(inner_lr, rel=1e-6)
            assert float(step.norm()) <= rank * inner_lr * (1 + 1e-6)  # k^2 entries at most


def test_parameter_groups_scale_only_compressed_adapters() -> None:
    model = nn.Sequential(nn.Linear(12, 10), nn.Linear(10, 12))
    model = wrap(model, DeepLoraConfig(rank=4, target_modules=["0"]))
    groups = parameter_groups(model, 1e-3)
    assert [g["lr"] for g in groups] == [1e-3]  # an orthogonal adapter trains at lr, any rank
    for bad in (0, 2.0, True):
        with pytest.raises(UserError, match="lr_rank must be a positive int or None"):
            parameter_groups(model, 1e-3, lr_rank=bad)


def test_compressed_init_on_a_transformer_holds_one_gradient_at_a_time(monkeypatch) -> None:
    arch = ARCHS["bert"]
    model = build(arch)
    live: list[init_module._LayerCapture] = []
    most = [0]
    original_init, original_finish = (
        init_module._LayerCapture.__init__,
        init_module._LayerCapture.finish,
    )

    def tracking_init(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        live.append(self)

    def tracking_finish(self):
        most[0] = max(most[0], sum(c.grad is not None for c in live))
        original_finish(self)

    monkeypatch.setattr(init_module._LayerCapture, "__init__", tracking_init)
    monkeypatch.setattr(init_module._LayerCapture, "finish", tracking_finish)
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    config = DeepLoraConfig(
        init="compressed", rank=4, target_modules="attention-mlp", modules_to_train=["classifier"]
    )
    wrap(model, config, loss_fn=arch.loss)
    assert len(live) == len(adapter_layers(model)) == 12 and most[0] == 1
    assert all(p.grad is None for p in model.parameters())
    assert {n for n, _ in trainable_parameters(model)} == {
        n for n in dict(model.named_parameters()) if ".adapters." in n or ".copies." in n
    }
    assert flags  # the base's own flags are restored by unload
    with torch.no_grad():
        assert torch.isfinite(arch.logits(model)).all()


def test_compressed_init_errors() -> None:
    arch = ARCHS["bert"]
    config = DeepLoraConfig(init="compressed", rank=4)
    with pytest.raises(ValueError, match="init='compressed' needs loss_fn"):
        wrap(build(arch), config)
    with pytest.raises(ValueError, match="loss_fn is only used by init='compressed'"):
        wrap(build(arch), DeepLoraConfig(), loss_fn=arch.loss)
    with pytest.raises(ValueError, match=r"one element, got Tensor of shape \(2, 3\)"):
        wrap(build(arch), config, loss_fn=arch.logits)

    def no_grad_loss(m: nn.Module) -> torch.Tensor:
        with torch.no_grad():
            return arch.loss(m)

    with pytest.raises(ValueError, match=r"ran with gradients disabled.*torch.no_grad"):
        wrap(build(arch), config, loss_fn=no_grad_loss)
    model = build(arch)
    with pytest.raises(ValueError, match="does not depend on any target layer"):
        wrap(model, config, loss_fn=lambda m: torch.tensor(1.0))
    assert not adapter_layers(model)  # left as it was
    with pytest.raises(ValueError, match=r"no gradient reached 1 target layer\(s\), e.g. 'bert"):
        wrap(  # only the first layer's query runs
            build(arch),
            DeepLoraConfig(init="compressed", rank=4, target_modules=["query"]),
            loss_fn=lambda m: m.bert.encoder.layer[0].attention.self.query(torch.ones(3, 32)).sum(),
        )

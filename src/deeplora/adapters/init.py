"""Compressed init of Deep LoRA from one batch's gradient, without building wide factors.

Reference: docs/METHOD.md 3.1 (the authors' construction), 3.2 (the same without dense factors) and
4 (compressed Deep LoRA). The authors build the wide adapter (width ``min(d_in, d_out)``, every
factor ``eps`` times a semi-orthogonal matrix), take the gradient of its first factor on the
first training batch and run :func:`deeplora.subspace.compress_dense` per layer; the wide
factors alone run out of memory on large layers.

We take the wide adapter at its partial-identity init (a valid orthogonal choice, docs/METHOD.md
3.2): then ``dW(0) = eps^L J`` (``J`` the ``d_out x d_in`` partial identity) and the gradient
of its first factor is ``eps^(L-1)`` times ``G = dL/dW`` at ``W0 + eps^L J``, the gradient
full fine-tuning would compute for that layer. For ``d_out <= d_in``
(:func:`deeplora.subspace.compress_identity`)::

    G ~ U_G S V_G^T (top r_hat),  right = orth([V_G, J^T U_G])  (d_in x 2 r_hat),
    left = J right  (d_out x 2 r_hat),  dW = left Wt_L ... Wt_1 right^T,  Wt_l(0) = eps I;

for ``d_out > d_in`` the same on the transposed problem (left and right swap roles). This is
the authors' construction for this init: :func:`~deeplora.subspace.compress_dense` gives the
same bases from the min-width adapter.

Which wide network it follows: checked in float64 on least squares with orthonormal inputs (a
factorization, tests/adapters/test_adapter_init.py), the compressed adapter with ``gamma = 0``
moves exactly like the wide network of width ``max(d_in, d_out)`` at partial-identity init
(relative deviation of the update < 1e-6 over the first steps, up to the dropped
``eps^L``-sized remainder later). For square layers that is ``init="wide"``; for rectangular
ones the ``init="wide"`` adapter (width ``min(d_in, d_out)``, as in the paper's ablation) has
a rank-deficient first (or last) factor and follows a different path, ~30% apart early on.

Memory: one forward and backward pass on the batch with every parameter frozen. Each target
layer keeps a reference to its input (which the adapter's own backward would keep anyway) and
hooks its output gradient; when that arrives, ``G = grad_out^T x`` (summed over tokens) is
formed for that one layer, compressed to its ``2 r_hat`` basis and dropped before the backward
pass moves on. So at most one ``d_out x d_in`` matrix exists at a time, against every layer's
wide factors (three ``d x d`` matrices each) plus their gradients in the authors' version.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError
from ..subspace import compress_identity, top_singular
from .config import DeepLoraConfig
from .layer import DeepLoraBranch, DeepLoraLayer, adapters_disabled, factor_dtype


class _LayerCapture:
    """Collects ``G = dL/dW`` of one layer during the backward pass and compresses it as soon
    as every call's output gradient has arrived."""

    def __init__(self, path: str, layer: DeepLoraLayer, config: DeepLoraConfig) -> None:
        self.path, self.config = path, config
        self.d_out, self.d_in = layer.d_out, layer.d_in
        self.dtype = factor_dtype(layer.weight.dtype)
        self.inputs: list[torch.Tensor | None] = []
        self.pending = 0
        self.grad: torch.Tensor | None = None
        self.branch: DeepLoraBranch | None = None

    def __call__(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        if not torch.is_grad_enabled():
            raise UserError(
                f"compressed init: {self.path!r} ran with gradients disabled; loss_fn must not "
                "run the model under torch.no_grad() or inference_mode()"
            )
        # the wide adapter at init adds eps^L J x: take the gradient at that point
        jx = (
            x[..., : self.d_out]
            if self.d_in >= self.d_out
            else F.pad(x, (0, self.d_out - self.d_in))
        )
        scale = self.config.eps**self.config.depth
        out = out + (scale * jx.to(self.dtype)).to(out.dtype)
        # a zero leaf makes the output require grad even when everything before is frozen
        out = out + torch.zeros((), dtype=out.dtype, device=out.device, requires_grad=True)
        self.inputs.append(x.detach())
        self.pending += 1
        out.register_hook(partial(self._on_grad, len(self.inputs) - 1))
        return out

    def _on_grad(self, index: int, grad_out: torch.Tensor) -> None:
        x = self.inputs[index]
        assert x is not None
        self.inputs[index] = None
        part = grad_out.reshape(-1, self.d_out).to(self.dtype).T @ x.reshape(-1, self.d_in).to(
            self.dtype
        )
        self.grad = part if self.grad is None else self.grad.add_(part)
        self.pending -= 1
        if self.pending == 0:
            self.finish()

    def finish(self) -> None:
        """Turn the accumulated ``G`` into the compressed branch and drop ``G``."""
        if self.grad is None or self.branch is not None:
            return
        g, self.grad = self.grad, None
        self.inputs.clear()
        self.branch = compressed_branch(g, self.config)


def compressed_branch(grad: torch.Tensor, config: DeepLoraConfig) -> DeepLoraBranch:
    """The compressed adapter of one layer from ``G = dL/dW`` (``d_out x d_in``).

    Factors ``[right^T, Wt_1, ..., Wt_L, left]``; ``Wt_l = eps I`` (k x k, ``k = rank =
    2 r_hat``); the outer two are flagged to train at ``gamma * lr``.
    """
    d_out, d_in = grad.shape
    k, r_hat = config.rank, config.r_hat
    if k > min(d_out, d_in):
        raise UserError(f"rank {k} is larger than the layer's dimensions {d_out} x {d_in}")
    dtype = grad.dtype
    if d_out <= d_in:
        u, _, v = top_singular(grad, r_hat, seed=config.seed)
        left, right = compress_identity(u.cpu(), v.cpu(), (d_out, d_in))
    else:
        u, _, v = top_singular(grad.T, r_hat, seed=config.seed)
        small, big = compress_identity(u.cpu(), v.cpu(), (d_in, d_out))
        left, right = big, small
    eye = config.eps * torch.eye(k, dtype=torch.float64)
    factors = [right.T, *([eye] * config.depth), left]
    outer = [True] + [False] * config.depth + [True]
    return DeepLoraBranch(
        [f.to(dtype=dtype, device=grad.device) for f in factors], outer, config.dropout
    )


def compressed_branches(
    model: nn.Module,
    layers: dict[str, DeepLoraLayer],
    config: DeepLoraConfig,
    loss_fn: Callable[[nn.Module], torch.Tensor],
) -> dict[str, DeepLoraBranch]:
    """Compressed branches for ``layers`` from one batch: ``loss_fn(model)`` is run once and
    back-propagated with every parameter frozen and every adapter disabled (the base model
    plus the implicit wide init); each layer's ``G`` is compressed as soon as it is complete.
    No parameter's ``.grad`` is touched."""
    captures = {path: _LayerCapture(path, layer, config) for path, layer in layers.items()}
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        for path, layer in layers.items():
            layer.capture = captures[path]
        with adapters_disabled(model), torch.enable_grad():
            loss = loss_fn(model)
            if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
                raise UserError(
                    "loss_fn must return the loss as a tensor with one element, got "
                    f"{type(loss).__name__}"
                    + (f" of shape {tuple(loss.shape)}" if isinstance(loss, torch.Tensor) else "")
                )
            if not loss.requires_grad:
                raise UserError(
                    "the loss returned by loss_fn does not depend on any target layer's output; "
                    "run the model inside loss_fn (loss_fn(model) -> loss) without torch.no_grad"
                )
            loss.reshape(()).backward()
    finally:
        for layer in layers.values():
            layer.capture = None
        for p, flag in flags:
            p.requires_grad_(flag)
    missing = []
    for path, capture in captures.items():
        capture.finish()  # layers whose output was partly unused
        if capture.branch is None:
            missing.append(path)
    if missing:
        raise UserError(
            f"compressed init: no gradient reached {len(missing)} target layer(s), e.g. "
            f"{missing[0]!r}; loss_fn must run the model on a batch whose loss depends on "
            "every target layer (or exclude those layers)"
        )
    return {path: c.branch for path, c in captures.items() if c.branch is not None}

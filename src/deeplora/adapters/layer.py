"""The Deep LoRA layer: a frozen ``nn.Linear`` or Hugging Face ``Conv1D`` plus named adapters.

Reference: Yaras, Wang, Balzano, Qu, ICML 2024 (arXiv 2406.04112), section 4 (docs/METHOD.md 4).

::

                 y = W0 x + W_L ( ... W_2 ( W_1 dropout(x) ) )

              +--------------------+
              |         y          |
              +--------------------+
                        ^
                        + <----------------------------+
                        ^                              |
              +-------------------+         +--------------------+
              |  frozen weight W0 |         |  W_L  (d_out x k)  |  outer factor
              |   (d_out x d_in)  |         +--------------------+
              |                   |         |  W_l  (k x k)      |  L - 2 inner factors
              |                   |         +--------------------+
              |                   |         |  W_1  (k x d_in)   |  outer factor
              +-------------------+         +--------------------+
                        ^                              ^
                        |                          dropout
                        +------------- x --------------+

Each factor starts as ``eps`` times a semi-orthogonal matrix (``eps = 1e-3``), so
``dW(0) = W_L ... W_1`` has norm ~eps^L: the wrapped model starts where the base model is.
No alpha/r scaling. ``dW`` is never formed in the forward pass (only to merge or analyse).
A compressed adapter is the same chain with ``L + 2`` factors
``[right^T, Wt_1, ..., Wt_L, left]`` whose two outer ones train at ``gamma * lr``.

A layer holds any number of named adapters (``nn.ModuleDict`` keyed by name); the active
ones are added, a merged one lives inside ``W0``. Whatever the state, the forward pass gives
``W0 x + sum over active adapters of dW_a x``: merged adapters that are not active are
subtracted again, so switching or disabling adapters after a merge stays correct.

Adapter factors are kept in float32 (float64 for a float64 layer) whatever the layer's
dtype; the branch runs in the factors' dtype, or under autocast in autocast's, and its output
is cast to the layer's output dtype.
"""

from __future__ import annotations

import itertools
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError
from ..subspace import Init, chain, eps_orthogonal, factored_svd

Capture = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def conv1d_type() -> type | None:
    """Hugging Face's ``Conv1D`` class if transformers is loaded (a model using it must be)."""
    module = sys.modules.get("transformers.pytorch_utils")
    return getattr(module, "Conv1D", None) if module is not None else None


def is_adaptable(module: nn.Module) -> bool:
    """Whether Deep LoRA can wrap ``module``: an ``nn.Linear`` or a Hugging Face ``Conv1D``."""
    conv1d = conv1d_type()
    return isinstance(module, nn.Linear) or (conv1d is not None and isinstance(module, conv1d))


def weight_shape(module: nn.Module) -> tuple[int, int]:
    """``(d_out, d_in)`` of an adaptable module (``Conv1D`` stores its weight transposed)."""
    w = module.weight
    assert isinstance(w, torch.Tensor)
    rows, cols = int(w.shape[0]), int(w.shape[1])
    return (rows, cols) if isinstance(module, nn.Linear) else (cols, rows)


def _autocast_enabled(device_type: str) -> bool:
    try:
        return bool(torch.is_autocast_enabled(device_type))
    except TypeError:  # torch < 2.4 takes no device type
        if device_type == "cpu":
            return bool(torch.is_autocast_cpu_enabled())
        return bool(torch.is_autocast_enabled())


def factor_dtype(dtype: torch.dtype) -> torch.dtype:
    """Adapter factors are float32, or float64 on a float64 layer."""
    return torch.float64 if dtype == torch.float64 else torch.float32


class DeepLoraBranch(nn.Module):
    """One adapter on one layer: ``dW = W_n ... W_1`` with ``factors = [W_1, ..., W_n]``.

    ``outer[i]`` marks the factors that train at ``gamma * lr`` (the ``left``/``right`` bases
    of a compressed adapter, docs/METHOD.md 3.1).
    """

    def __init__(
        self,
        factors: Sequence[torch.Tensor],
        outer: Sequence[bool] | None = None,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if not factors:
            raise UserError("a branch needs at least one factor")
        for prev, nxt in itertools.pairwise(factors):
            if prev.shape[0] != nxt.shape[1]:
                raise UserError(
                    f"factor shapes do not chain: {tuple(prev.shape)} then {tuple(nxt.shape)}"
                )
        self.factors = nn.ParameterList(
            [nn.Parameter(f.detach().clone(memory_format=torch.contiguous_format)) for f in factors]
        )
        self.outer: tuple[bool, ...] = tuple(outer) if outer else (False,) * len(factors)
        if len(self.outer) != len(factors):
            raise UserError("outer must have one flag per factor")
        self.dropout: nn.Module = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    @classmethod
    def semi_orthogonal(
        cls,
        d_out: int,
        d_in: int,
        width: int,
        depth: int,
        eps: float,
        *,
        init: Init = "orthogonal",
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float32,
        dropout: float = 0.0,
    ) -> DeepLoraBranch:
        """``W_1`` (width x d_in), ``depth - 2`` of (width x width), ``W_L`` (d_out x width), each
        ``eps`` times a random semi-orthogonal matrix (or the partial identity)."""
        shapes = [(width, d_in)] + [(width, width)] * (depth - 2) + [(d_out, width)]
        factors = [
            eps_orthogonal(r, c, eps, init=init, generator=generator, dtype=dtype)
            for r, c in shapes
        ]
        return cls(factors, dropout=dropout)

    @property
    def shapes(self) -> list[tuple[int, int]]:
        return [(int(f.shape[0]), int(f.shape[1])) for f in self.factors]

    @property
    def rank(self) -> int:
        """The width of the narrowest factor: an upper bound on rank(dW)."""
        return min(min(s) for s in self.shapes)

    @property
    def dtype(self) -> torch.dtype:
        return self.factors[0].dtype

    def forward(self, x: torch.Tensor, use_dropout: bool = True) -> torch.Tensor:
        h = self.dropout(x) if use_dropout else x
        for f in self.factors:
            h = F.linear(h, f)
        return h

    def delta_weight(self) -> torch.Tensor:
        """``dW = W_n ... W_1`` (d_out x d_in), formed only to merge or analyse."""
        return chain(list(self.factors))

    def svd(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Exact thin SVD ``dW = U diag(S) V^T`` in float64, without forming ``dW``
        (:func:`deeplora.subspace.factored_svd`). ``S`` is descending, of length ``k`` (the
        width)."""
        return factored_svd(list(self.factors))


class DeepLoraLayer(nn.Module):
    """A frozen ``nn.Linear`` / ``Conv1D`` (``base_layer``) with named Deep LoRA ``adapters``."""

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__()
        if not is_adaptable(base_layer):
            raise UserError(
                f"Deep LoRA wraps nn.Linear or transformers' Conv1D, got "
                f"{type(base_layer).__name__}"
            )
        self.base_layer = base_layer
        self.adapters = nn.ModuleDict()
        self.active: tuple[str, ...] = ()
        self.merged: list[str] = []
        self.disabled = False
        self.capture: Capture | None = None  # set by the compressed init, see init.py
        self.is_conv1d = not isinstance(base_layer, nn.Linear)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name in ("base_layer", "adapters"):
                raise
            return getattr(self.base_layer, name)  # in_features, nf, ... of the base layer

    @property
    def weight(self) -> torch.Tensor:
        w = self.base_layer.weight
        assert isinstance(w, torch.Tensor)
        return w

    @property
    def bias(self) -> torch.Tensor | None:
        b = self.base_layer.bias
        return b if isinstance(b, torch.Tensor) else None

    @property
    def d_out(self) -> int:
        return weight_shape(self.base_layer)[0]

    @property
    def d_in(self) -> int:
        return weight_shape(self.base_layer)[1]

    def branch(self, name: str) -> DeepLoraBranch:
        b = self.adapters[name]
        assert isinstance(b, DeepLoraBranch)
        return b

    def add_adapter(self, name: str, branch: DeepLoraBranch) -> None:
        if name in self.adapters:
            raise UserError(f"this layer already has an adapter named {name!r}")
        first, last = branch.shapes[0], branch.shapes[-1]
        if first[1] != self.d_in or last[0] != self.d_out:
            raise UserError(
                f"adapter {name!r} maps {first[1]} -> {last[0]} features but the layer maps "
                f"{self.d_in} -> {self.d_out}"
            )
        self.adapters[name] = branch.to(self.weight.device)

    def remove_adapter(self, name: str) -> None:
        if name in self.merged:
            self.unmerge([name])
        self.active = tuple(a for a in self.active if a != name)
        del self.adapters[name]

    def _run_branch(
        self, name: str, x: torch.Tensor, out_dtype: torch.dtype, use_dropout: bool = True
    ) -> torch.Tensor:
        branch = self.branch(name)
        if not _autocast_enabled(x.device.type):
            x = x.to(branch.dtype)
        return branch(x, use_dropout=use_dropout).to(out_dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base_layer(x)
        active = () if self.disabled else self.active
        for name in active:
            if name not in self.merged:
                out = out + self._run_branch(name, x, out.dtype)
        for name in self.merged:
            if name not in active:
                out = out - self._run_branch(name, x, out.dtype, use_dropout=False)
        if self.capture is not None:
            out = self.capture(x, out)
        return out

    def _delta_for_weight(self, name: str) -> torch.Tensor:
        dw = self.branch(name).delta_weight().detach()
        return (dw.T if self.is_conv1d else dw).to(self.weight.dtype)

    @torch.no_grad()
    def merge(self, names: Sequence[str]) -> None:
        """``W0 <- W0 + dW`` for each named adapter not merged yet."""
        for name in names:
            if name not in self.merged:
                self.weight.add_(self._delta_for_weight(name))
                self.merged.append(name)

    @torch.no_grad()
    def unmerge(self, names: Sequence[str] | None = None) -> None:
        """``W0 <- W0 - dW`` for the named (default: all) merged adapters."""
        for name in list(self.merged if names is None else names):
            if name in self.merged:
                self.weight.sub_(self._delta_for_weight(name))
                self.merged.remove(name)

    def extra_repr(self) -> str:
        return f"active={list(self.active)}, merged={self.merged}, disabled={self.disabled}"


class TrainedModule(nn.Module):
    """A module trained fully (e.g. a classification head): one trainable copy per adapter.

    The active adapter's copy runs; with adapters disabled (or none with a copy active) the
    frozen ``original`` runs.
    """

    def __init__(self, original: nn.Module) -> None:
        super().__init__()
        self.original = original
        self.copies = nn.ModuleDict()
        self.active: str | None = None
        self.disabled = False

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name in ("original", "copies"):
                raise
            return getattr(self.current(), name)

    def current(self) -> nn.Module:
        if self.disabled or self.active is None:
            return self.original
        return self.copies[self.active]

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.current()(*args, **kwargs)


@contextmanager
def adapters_disabled(model: nn.Module) -> Iterator[None]:
    """Run ``model`` as its base model: every Deep LoRA layer and trained module disabled."""
    wrapped = [m for m in model.modules() if isinstance(m, DeepLoraLayer | TrainedModule)]
    before = [m.disabled for m in wrapped]
    for m in wrapped:
        m.disabled = True
    try:
        yield
    finally:
        for m, flag in zip(wrapped, before, strict=True):
            m.disabled = flag

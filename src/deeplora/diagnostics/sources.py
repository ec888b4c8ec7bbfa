"""Sources for :class:`~deeplora.diagnostics.recorder.SubspaceRecorder`: callables that
return the current factors of one tracked matrix, for Deep LoRA and PEFT LoRA models, plain
weights under full fine-tuning and the layers of a deep-factorization solver, and the slices
the theory predicts from the init (docs/METHOD.md 2, 3.1)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..errors import UserError
from ..subspace import (
    as_float64,
    check_chain,
    compress_dense,
    orth,
)

if TYPE_CHECKING:
    from ..completion.solver import GradientDescent

Source = Callable[[], list[torch.Tensor]]
"""Returns the current factors ``[W_1, ..., W_L]`` of one tracked matrix ``M = W_L ... W_1`` (a
one-element list for a dense matrix); the tensors are only read."""


# ----------------------------------------------------------------------------- sources


def model_sources(model: nn.Module, adapter_name: str = "default") -> dict[str, Source]:
    """A source per adapted layer of ``model``, keyed by module path.

    Deep LoRA branches (:func:`deeplora.adapters.adapter_branches`): ``dW = W_L ... W_1`` from
    the branch factors. PEFT LoRA layers (modules with ``lora_A`` / ``lora_B`` ModuleDicts):
    ``dW = scaling * B A``, factors ``[A.weight, scaling * B.weight]`` (convolution weights are
    flattened to ``out x (in * kernel)``; DoRA's magnitude is not part of ``dW`` here).
    """
    from ..adapters.model import adapter_branches, adapter_configs

    sources: dict[str, Source] = {}
    if adapter_name in adapter_configs(model):
        for path, _, branch in adapter_branches(model, adapter_name):
            sources[path] = _branch_source(branch)
    found: set[str] = set(adapter_configs(model))
    for path, module in model.named_modules():
        lora_a = module.__dict__.get("_modules", {}).get("lora_A")
        lora_b = module.__dict__.get("_modules", {}).get("lora_B")
        if not (isinstance(lora_a, nn.ModuleDict) and isinstance(lora_b, nn.ModuleDict)):
            continue
        found.update(lora_a.keys())
        if adapter_name in lora_a and adapter_name in lora_b:
            sources[path] = _peft_source(module, adapter_name)
    if not sources:
        known = f"; it has adapters {sorted(found)}" if found else ""
        raise UserError(
            f"no Deep LoRA or PEFT LoRA adapter named {adapter_name!r} on this "
            f"{type(model).__name__}{known}: wrap it with Deep LoRA or PEFT LoRA first, or pass "
            "sources yourself (weight_sources for full fine-tuning)"
        )
    return sources


def _branch_source(branch: nn.Module) -> Source:
    def read() -> list[torch.Tensor]:
        return [f.detach() for f in branch.factors]  # type: ignore[union-attr]

    return read


def _peft_source(module: nn.Module, name: str) -> Source:
    layer: Any = module

    def read() -> list[torch.Tensor]:
        a = layer.lora_A[name].weight.detach()
        b = layer.lora_B[name].weight.detach()
        scaling = module.__dict__.get("scaling", {}).get(name, 1.0)
        return [a.flatten(1), float(scaling) * b.flatten(1)]

    return read


def weight_sources(model: nn.Module, names: Sequence[str]) -> dict[str, Source]:
    """Full fine-tuning: ``dW = W(t) - W(now)`` for each named parameter (its value when this
    is called is copied as the start; a copy per weight is the memory cost). Parameters with
    more than two dimensions are flattened to ``shape[0] x rest``."""
    params = dict(model.named_parameters())
    if isinstance(names, str):
        names = [names]
    if not names:
        raise UserError("weight_sources: no parameter names given; name the weights to track")
    sources: dict[str, Source] = {}
    for name in names:
        if name not in params:
            close = [p for p in params if p.endswith(name) or name in p][:5]
            hint = f"; did you mean {close}" if close else ""
            raise UserError(f"weight_sources: the model has no parameter {name!r}{hint}")
        p = params[name]
        if p.ndim < 2:
            raise UserError(
                f"weight_sources: {name} has shape {tuple(p.shape)}; only matrices (2-D or more) "
                "have a spectrum to track"
            )
        sources[name] = _delta_source(p, p.detach().clone())
    return sources


def _delta_source(param: torch.Tensor, start: torch.Tensor) -> Source:
    def read() -> list[torch.Tensor]:
        return [(param.detach() - start).flatten(1)]

    return read


def solver_sources(solver: GradientDescent) -> dict[str, Source]:
    """Sources of a deep-factorization solver (:mod:`deeplora.completion`).

    :class:`~deeplora.completion.WideSolver`: ``"W1" ... "WL"`` (each layer) and
    ``"end_to_end"`` (``W_L ... W_1``). :class:`~deeplora.completion.CompressedSolver`:
    ``"inner1" ... "innerL"`` (each inner factor as stored, in the solver's orientation) and
    ``"end_to_end"``, equal to ``solver.end_to_end()``: ``left @ P @ right.T`` with
    ``P = inner_L ... inner_1``, or its transpose when the solver works on the transposed
    problem (``m > n``).
    """
    from ..completion.compressed import CompressedSolver
    from ..completion.wide import WideSolver

    sources: dict[str, Source] = {}
    if isinstance(solver, WideSolver):
        for i in range(len(solver.weights)):
            sources[f"W{i + 1}"] = _index_source(lambda: solver.weights, i)
        sources["end_to_end"] = lambda: list(solver.weights)
        return sources
    if isinstance(solver, CompressedSolver):
        for i in range(len(solver.inner)):
            sources[f"inner{i + 1}"] = _index_source(lambda: solver.inner, i)

        def end_to_end() -> list[torch.Tensor]:
            if solver.transposed:  # f = right P^T left^T
                return [solver.left.T, *[w.T for w in reversed(solver.inner)], solver.right]
            return [solver.right.T, *solver.inner, solver.left]

        sources["end_to_end"] = end_to_end
        return sources
    raise UserError(
        f"solver_sources: expected a WideSolver or CompressedSolver, got {type(solver).__name__}; "
        "pass sources yourself for other models"
    )


def _index_source(get: Callable[[], list[torch.Tensor]], i: int) -> Source:
    return lambda: [get()[i]]


def predicted_bases(
    weights0: Sequence[torch.Tensor], grad_first: torch.Tensor, r_hat: int, eps: float
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per layer ``l`` the orthonormal ``(U_l, V_l)`` (2 r_hat columns) of the slice that moves
    (docs/METHOD.md 2 and 3.1), from the init weights ``W_l(0) = eps * orthogonal`` and the init
    gradient ``grad_first`` of ``W_1``:
    ``V_1 = V11 = orth([V_G, W_1(0)^T U_G / eps])`` (:func:`deeplora.subspace.compress_dense`),
    ``U_l = W_l(0) V_l / eps`` (orthonormalised; exactly orthonormal already when ``W_l(0)``
    has orthonormal columns) and ``V_{l+1} = U_l``. Under gradient descent on factorization
    ``W_l(t) - W_l(0)`` lies in ``span(U_l) x span(V_l)``.
    """
    if r_hat < 1:
        raise UserError(f"r_hat must be >= 1, got {r_hat}")
    if eps <= 0:
        raise UserError(f"eps must be > 0, got {eps}")
    check_chain(weights0, "weights0")
    ws = [as_float64(w) for w in weights0]
    if 2 * r_hat > min(min(w.shape) for w in ws):
        raise UserError(
            f"2 r_hat = {2 * r_hat} exceeds the narrowest layer dimension "
            f"{min(min(w.shape) for w in ws)}; lower r_hat"
        )
    _, v = compress_dense(ws, as_float64(grad_first), r_hat, eps)
    bases = []
    for w in ws:
        u = orth(w @ v / eps)
        bases.append((u, v))
        v = u
    return bases



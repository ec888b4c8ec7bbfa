"""Deep LoRA on a whole model: inject, switch, count, group for the optimizer, merge, unload.

Reference: docs/METHOD.md 4. The functions work on any ``nn.Module`` in place (in the spirit
of minLoRA and PEFT's ``inject_adapter_in_model``): :func:`wrap` replaces each target
``nn.Linear`` / ``Conv1D`` by a :class:`~deeplora.adapters.layer.DeepLoraLayer` at the same
path, freezes every base parameter and makes the new adapter the active, trainable one.

A model can hold several adapters (call :func:`wrap` or :func:`load_adapter` again with another
``adapter_name``); :func:`set_adapter` picks the active ones, :func:`adapters_disabled` runs the
base model. The adapter configs live in ``model.deeplora_configs`` (name -> config).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple

import torch
from torch import nn

from ..errors import UserError
from .config import COMPRESSED_LR_RANK, DeepLoraConfig
from .init import compressed_branches
from .layer import (
    DeepLoraBranch,
    DeepLoraLayer,
    TrainedModule,
    adapters_disabled,
    factor_dtype,
)
from .targets import find_targets, layer_shape, resolve_trained

LossFn = Callable[[nn.Module], torch.Tensor]

__all__ = [
    "ParameterCount",
    "active_adapters",
    "adapter_branches",
    "adapter_configs",
    "adapter_layers",
    "adapters_disabled",
    "count_parameters",
    "delete_adapter",
    "find_targets",
    "merge",
    "merge_and_unload",
    "parameter_groups",
    "set_adapter",
    "trainable_parameters",
    "unload",
    "unmerge",
    "wrap",
]


# ----------------------------------------------------------------------------- state on the model


def adapter_configs(model: nn.Module) -> dict[str, DeepLoraConfig]:
    """The configs of the adapters on ``model``, by name (empty if none)."""
    configs = model.__dict__.get("deeplora_configs")
    return configs if isinstance(configs, dict) else {}


def active_adapters(model: nn.Module) -> tuple[str, ...]:
    """Names of the active adapters (those whose updates the forward pass adds)."""
    active = model.__dict__.get("deeplora_active")
    return tuple(active) if active else ()


def adapter_layers(model: nn.Module) -> dict[str, DeepLoraLayer]:
    """Every Deep LoRA layer of ``model`` by its module path (the wrapped module's path)."""
    return {n: m for n, m in model.named_modules() if isinstance(m, DeepLoraLayer)}


def _trained_modules(model: nn.Module) -> dict[str, TrainedModule]:
    return {n: m for n, m in model.named_modules() if isinstance(m, TrainedModule)}


def _set_submodule(model: nn.Module, path: str, module: nn.Module) -> None:
    parent_path, _, leaf = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, leaf, module)


def _check_names(model: nn.Module, names: Sequence[str]) -> None:
    known = adapter_configs(model)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise UserError(
            f"no adapter named {unknown[0]!r} on this model; it has {sorted(known) or 'none'}"
        )


# ----------------------------------------------------------------------------- wrapping


def _check_adapter_name(name: str) -> None:
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_\-]+", name):
        raise UserError(
            f"adapter_name must be a non-empty string of letters, digits, '_' or '-', got {name!r}"
        )


def _check_layer_rank(config: DeepLoraConfig, path: str, shape: tuple[int, int]) -> None:
    if config.init == "wide":
        return
    d_out, d_in = shape
    if config.rank > min(d_out, d_in):
        raise UserError(
            f"rank {config.rank} is larger than layer {path!r}, a {d_in} -> {d_out} map: the "
            f"rank must be <= min(d_in, d_out) = {min(d_out, d_in)}; lower the rank or add "
            "the layer to exclude_modules"
        )


def _build_branches(
    layers: dict[str, DeepLoraLayer], config: DeepLoraConfig
) -> dict[str, DeepLoraBranch]:
    generator = torch.Generator().manual_seed(config.seed)
    branches: dict[str, DeepLoraBranch] = {}
    for path, layer in layers.items():
        d_out, d_in = layer.d_out, layer.d_in
        width = min(d_out, d_in) if config.init == "wide" else config.rank
        branches[path] = DeepLoraBranch.semi_orthogonal(
            d_out,
            d_in,
            width,
            config.depth,
            config.eps,
            init=config.factor_init,
            generator=generator,
            dtype=factor_dtype(layer.weight.dtype),
            dropout=config.dropout,
        )
    return branches


def _freeze_base(model: nn.Module) -> None:
    branch_params = {
        id(p)
        for m in model.modules()
        if isinstance(m, DeepLoraBranch | TrainedModule)
        for p in (m.parameters() if isinstance(m, DeepLoraBranch) else m.copies.parameters())
    }
    for p in model.parameters():
        if id(p) not in branch_params:
            p.requires_grad_(False)


def _attach(
    model: nn.Module,
    adapter_name: str,
    config: DeepLoraConfig,
    build: Callable[[dict[str, DeepLoraLayer]], dict[str, DeepLoraBranch]],
    targets: Sequence[str],
    trained: Sequence[str],
    trained_state: dict[str, dict[str, torch.Tensor]] | None = None,
) -> None:
    """Wrap ``targets``, add the branches ``build`` makes, copy ``trained`` modules; on failure
    leave the model as it was."""
    first = not adapter_configs(model)
    if first:  # remember the base's own requires_grad flags, by name, for unload()
        model.__dict__["deeplora_base_requires_grad"] = {
            name: p.requires_grad for name, p in model.named_parameters()
        }
    new_layers: list[str] = []
    layers: dict[str, DeepLoraLayer] = {}
    for path in targets:
        module = model.get_submodule(path)
        if not isinstance(module, DeepLoraLayer):
            module = DeepLoraLayer(module).train(module.training)  # follow the model's mode
            _set_submodule(model, path, module)
            new_layers.append(path)
        layers[path] = module
    try:
        branches = build(layers)
    except BaseException:
        for path in new_layers:
            _set_submodule(model, path, layers[path].base_layer)
        if first:
            model.__dict__.pop("deeplora_base_requires_grad", None)
        raise
    for path, layer in layers.items():
        # on the base layer's device (a model on a GPU gets its factors there)
        layer.add_adapter(adapter_name,
                          branches[path].to(layer.weight.device).train(layer.training))
    for path in trained:
        module = model.get_submodule(path)
        if not isinstance(module, TrainedModule):
            module = TrainedModule(module).train(module.training)
            _set_submodule(model, path, module)
        twin = copy.deepcopy(module.original)
        if trained_state is not None:
            twin.load_state_dict(trained_state[path])
        module.copies[adapter_name] = twin
    model.__dict__.setdefault("deeplora_configs", {})[adapter_name] = config
    _freeze_base(model)


def wrap(
    model: nn.Module,
    config: DeepLoraConfig | None = None,
    *,
    adapter_name: str = "default",
    loss_fn: LossFn | None = None,
) -> nn.Module:
    """Add a Deep LoRA adapter to ``model`` in place and return it (docs/METHOD.md 4).

    Each target layer gets ``dW = W_L ... W_1`` with ``eps``-scaled semi-orthogonal factors
    (``init="orthogonal"``/``"wide"``); ``init="compressed"`` needs ``loss_fn(model) -> loss``
    on one training batch, see :func:`deeplora.adapters.init.compressed_branches`. Base
    parameters are frozen; the new adapter becomes the only active one and is trainable,
    together with its copies of ``config.modules_to_train``. Call again with another
    ``adapter_name`` to add a second adapter.
    """
    config = DeepLoraConfig() if config is None else config
    if not isinstance(config, DeepLoraConfig):
        raise UserError(f"config must be a DeepLoraConfig, got {type(config).__name__}")
    _check_adapter_name(adapter_name)
    if adapter_name in adapter_configs(model):
        raise UserError(
            f"the model already has an adapter named {adapter_name!r}; pick another "
            "adapter_name or delete_adapter() it first"
        )
    if config.init == "compressed" and loss_fn is None:
        raise UserError(
            "init='compressed' needs loss_fn: a function that takes the model and returns the "
            "loss on one training batch (its gradient sets the adapter's subspace)"
        )
    if config.init != "compressed" and loss_fn is not None:
        raise UserError(f"loss_fn is only used by init='compressed', not init={config.init!r}")
    targets = find_targets(model, config)
    for path in targets:
        _check_layer_rank(config, path, layer_shape(model.get_submodule(path)))
    trained = resolve_trained(model, config.modules_to_train)

    def build(layers: dict[str, DeepLoraLayer]) -> dict[str, DeepLoraBranch]:
        if config.init == "compressed":
            assert loss_fn is not None
            return compressed_branches(model, layers, config, loss_fn)
        return _build_branches(layers, config)

    _attach(model, adapter_name, config, build, targets, trained)
    set_adapter(model, adapter_name)
    return model


# ----------------------------------------------------------------------------- switching


def set_adapter(model: nn.Module, names: str | Sequence[str]) -> None:
    """Make ``names`` the active adapters: their updates are added and their parameters (and
    copies of trained modules) train; every other adapter is inactive and frozen."""
    names = [names] if isinstance(names, str) else list(names)
    _check_names(model, names)
    for layer in adapter_layers(model).values():
        layer.active = tuple(n for n in names if n in layer.adapters)
        for name, branch in layer.adapters.items():
            branch.requires_grad_(name in names)
    for module in _trained_modules(model).values():
        module.active = next((n for n in names if n in module.copies), None)
        for name, twin in module.copies.items():
            twin.requires_grad_(name in names)
    model.__dict__["deeplora_active"] = tuple(names)


def delete_adapter(model: nn.Module, name: str) -> None:
    """Remove adapter ``name`` (unmerged first if merged) and its trained-module copies."""
    _check_names(model, [name])
    for layer in adapter_layers(model).values():
        if name in layer.adapters:
            layer.remove_adapter(name)
    for module in _trained_modules(model).values():
        if name in module.copies:
            del module.copies[name]
            if module.active == name:
                module.active = None
    del adapter_configs(model)[name]
    model.__dict__["deeplora_active"] = tuple(a for a in active_adapters(model) if a != name)


# ----------------------------------------------------------------------------- training


def trainable_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """``(name, parameter)`` of every parameter that requires a gradient."""
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


class ParameterCount(NamedTuple):
    trainable: int
    total: int

    @property
    def fraction(self) -> float:
        return self.trainable / self.total if self.total else 0.0

    def __str__(self) -> str:
        return (
            f"trainable parameters: {self.trainable:,} of {self.total:,} "
            f"({100 * self.fraction:.4f}%)"
        )


def count_parameters(model: nn.Module) -> ParameterCount:
    """Trainable and total parameter counts (shared parameters counted once)."""
    params = list(model.parameters())
    trainable = sum(p.numel() for p in params if p.requires_grad)
    return ParameterCount(trainable, sum(p.numel() for p in params))


def parameter_groups(
    model: nn.Module,
    lr: float,
    *,
    weight_decay: float = 0.0,
    lr_rank: int | None = COMPRESSED_LR_RANK,
) -> list[dict[str, Any]]:
    """Optimizer parameter groups: everything trainable at ``lr``, except compressed adapters.

    A compressed adapter of rank ``k`` trains its inner factors at ``lr * lr_rank / k`` and its
    outer ones at ``gamma`` times that (docs/METHOD.md 4.2; ``gamma`` from each adapter's
    config). Adam moves every entry of a ``k x k`` inner factor by about ``lr`` a step, so the
    step's norm grows with ``k``; the ``lr_rank / k`` keeps one ``lr`` right at every rank.
    ``lr_rank=None`` trains them at ``lr`` as the paper does (the exact wide/compressed
    correspondence under gradient descent). Pass the result to any ``torch.optim`` optimizer.
    """
    if not lr > 0:
        raise UserError(f"lr must be > 0, got {lr}")
    if lr_rank is not None and (isinstance(lr_rank, bool) or not isinstance(lr_rank, int)
                                or lr_rank < 1):  # fmt: skip
        raise UserError(f"lr_rank must be a positive int or None, got {lr_rank!r}")
    configs: dict[str, DeepLoraConfig] = {}
    for module in model.modules():  # the wrapped model may be inside (a DeepLoraModel)
        configs.update(adapter_configs(module))
    scaled: dict[float, list[nn.Parameter]] = {}  # lr -> the compressed adapters' factors
    for layer in adapter_layers(model).values():
        for name, branch in layer.adapters.items():
            assert isinstance(branch, DeepLoraBranch)
            if not any(branch.outer):
                continue
            config = configs[name]
            inner_lr = lr if lr_rank is None else lr * lr_rank / config.rank
            for flag, p in zip(branch.outer, branch.factors, strict=True):
                if p.requires_grad:
                    scaled.setdefault(config.gamma * inner_lr if flag else inner_lr, []).append(p)
    done = {id(p) for params in scaled.values() for p in params}
    main = [p for p in model.parameters() if p.requires_grad and id(p) not in done]
    groups: list[dict[str, Any]] = []
    if main:
        groups.append({"params": main, "lr": lr, "weight_decay": weight_decay})
    for group_lr, params in sorted(scaled.items(), reverse=True):
        groups.append({"params": params, "lr": group_lr, "weight_decay": weight_decay})
    if not groups:
        raise UserError("the model has no trainable parameter; wrap() it or set_adapter() first")
    return groups


# ----------------------------------------------------------------------------- merging


def merge(model: nn.Module, adapter_names: Sequence[str] | None = None) -> None:
    """Add ``dW`` of the named (default: active) adapters into the base weights, ``W0 + dW``.

    The forward pass gives the same outputs before and after (up to rounding).
    """
    names = list(active_adapters(model) if adapter_names is None else adapter_names)
    _check_names(model, names)
    uses: dict[int, int] = {}
    for _, p in model.named_parameters(remove_duplicate=False):
        uses[id(p)] = uses.get(id(p), 0) + 1
    layers = adapter_layers(model)
    for path, layer in layers.items():
        if uses.get(id(layer.weight), 0) > 1 and any(n in layer.adapters for n in names):
            raise UserError(
                f"the weight of {path!r} is shared with another module (tied embeddings?); "
                "merging would change both: keep the adapter unmerged or untie the weights"
            )
    for layer in layers.values():
        layer.merge([n for n in names if n in layer.adapters])


def unmerge(model: nn.Module, adapter_names: Sequence[str] | None = None) -> None:
    """Subtract ``dW`` of the named (default: every merged) adapter from the base weights."""
    if adapter_names is not None:
        _check_names(model, adapter_names)
    for layer in adapter_layers(model).values():
        layer.unmerge(adapter_names)


def _strip(model: nn.Module, keep_trained: bool) -> nn.Module:
    for path, layer in adapter_layers(model).items():
        _set_submodule(model, path, layer.base_layer)
    for path, module in _trained_modules(model).items():
        _set_submodule(model, path, module.current() if keep_trained else module.original)
    model.__dict__.pop("deeplora_configs", None)
    model.__dict__.pop("deeplora_active", None)
    flags = model.__dict__.pop("deeplora_base_requires_grad", {})
    for name, p in model.named_parameters():  # the original names again
        if name in flags:
            p.requires_grad_(flags[name])
    return model


def merge_and_unload(model: nn.Module) -> nn.Module:
    """Merge the active adapters and return the plain model: no Deep LoRA module left, the
    active adapter's trained modules in place of the originals, and every base parameter's
    ``requires_grad`` as it was before the first :func:`wrap`."""
    active = active_adapters(model)
    for layer in adapter_layers(model).values():
        layer.unmerge([n for n in layer.merged if n not in active])
    merge(model, active)
    return _strip(model, keep_trained=True)


def unload(model: nn.Module) -> nn.Module:
    """Remove every adapter (unmerging first) and return the original model."""
    unmerge(model)
    return _strip(model, keep_trained=False)


def adapter_branches(
    model: nn.Module, adapter_name: str = "default"
) -> Iterator[tuple[str, DeepLoraLayer, DeepLoraBranch]]:
    """``(path, layer, branch)`` for every layer that holds adapter ``adapter_name``."""
    _check_names(model, [adapter_name])
    for path, layer in adapter_layers(model).items():
        if adapter_name in layer.adapters:
            yield path, layer, layer.branch(adapter_name)

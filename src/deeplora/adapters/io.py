"""Save and load Deep LoRA adapters; export one as a standard PEFT LoRA adapter.

Our format (a folder): ``deeplora_adapter.safetensors`` with every factor
(``layers.<module path>.<i>``) and every trained module's state
(``trained.<module path>.<key>``), and ``deeplora_adapter.json`` with the kind, the format
version, the config and each layer's factor shapes. Both are written atomically, the JSON last.

PEFT export (docs/METHOD.md 4: a Deep LoRA update is a low-rank ``dW``): for each layer the exact
SVD ``dW = U S V^T`` (from the factors) gives ``lora_B = U_r S_r^(1/2)`` and
``lora_A = S_r^(1/2) V_r^T``, so ``lora_B lora_A = dW_r`` with PEFT's scaling
``lora_alpha / r = 1`` (per-layer ranks through ``rank_pattern``/``alpha_pattern``). The export
is lossless when ``rank`` is at least the adapter's width; a smaller ``rank`` or an ``energy``
share truncates, and the relative error of each layer is returned.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import _io
from ..errors import UserError
from .config import DeepLoraConfig
from .layer import DeepLoraBranch, DeepLoraLayer, TrainedModule, factor_dtype, is_adaptable
from .layer import weight_shape as _weight_shape
from .model import (
    _attach,
    _check_adapter_name,
    _trained_modules,
    adapter_branches,
    adapter_configs,
    find_targets,
    set_adapter,
)
from .rank import LayerTruncation, choose_rank, tail_error

KIND = "deeplora-adapter"
WEIGHTS_NAME = "deeplora_adapter.safetensors"
META_NAME = "deeplora_adapter.json"
PEFT_WEIGHTS_NAME = "adapter_model.safetensors"
PEFT_CONFIG_NAME = "adapter_config.json"


def _trained_state(model: nn.Module, adapter_name: str) -> dict[str, dict[str, torch.Tensor]]:
    return {
        path: module.copies[adapter_name].state_dict()
        for path, module in _trained_modules(model).items()
        if adapter_name in module.copies
    }


def _adapter_config(model: nn.Module, adapter_name: str) -> Any:
    """The config of adapter ``adapter_name``; an unknown name lists the ones that exist."""
    configs = adapter_configs(model)
    if adapter_name not in configs:
        raise UserError(
            f"no adapter named {adapter_name!r} on this model; it has "
            f"{sorted(configs) or 'none'}"
        )
    return configs[adapter_name]


def save_adapter(model: nn.Module, directory: str | Path, adapter_name: str = "default") -> Path:
    """Write adapter ``adapter_name`` of ``model`` to ``directory``; returns the folder."""
    directory = Path(directory)
    meta, tensors = adapter_state(model, adapter_name)
    _io.write_tensors(directory / WEIGHTS_NAME, tensors)
    _io.write_json(directory / META_NAME, meta)
    return directory


def adapter_state(model: nn.Module, adapter_name: str = "default"
                  ) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:  # fmt: skip
    """What :func:`save_adapter` writes: the description (kind, version, config, each layer's
    factor shapes, each trained module's keys) and the tensors (``layers.<path>.<i>``,
    ``trained.<path>.<key>``)."""
    from .. import __version__

    config = _adapter_config(model, adapter_name)
    tensors: dict[str, torch.Tensor] = {}
    layers: dict[str, Any] = {}
    for path, layer, branch in adapter_branches(model, adapter_name):
        layers[path] = {
            "d_out": layer.d_out,
            "d_in": layer.d_in,
            "shapes": [list(s) for s in branch.shapes],
            "outer": list(branch.outer),
        }
        for i, f in enumerate(branch.factors):
            tensors[f"layers.{path}.{i}"] = f
    trained: dict[str, Any] = {}
    for path, state in _trained_state(model, adapter_name).items():
        trained[path] = {key: list(t.shape) for key, t in state.items()}
        for key, t in state.items():
            tensors[f"trained.{path}.{key}"] = t
    meta = {
        "kind": KIND,
        "format_version": _io.FORMAT_VERSION,
        "deeplora_version": __version__,
        "adapter_name": adapter_name,
        "config": config.to_dict(),
        "layers": layers,
        "modules_to_train": trained,
    }
    return meta, tensors


def _corrupt(what: str, detail: str) -> UserError:
    return UserError(f"{what}: {detail}; the file is incomplete or corrupt, save it again")


def load_adapter(
    model: nn.Module,
    directory: str | Path,
    adapter_name: str = "default",
    *,
    trainable: bool = False,
) -> nn.Module:
    """Add the adapter saved in ``directory`` to ``model`` (in place) under ``adapter_name``
    and make it the active one; frozen unless ``trainable``.

    Every layer and trained module is checked against the model before anything changes:
    a missing layer or a shape that differs raises ``ValueError`` naming the layer and both
    shapes. A missing file raises ``FileNotFoundError``, a corrupt one ``ValueError``.
    """
    directory = Path(directory)
    _check_adapter_name(adapter_name)
    if adapter_name in adapter_configs(model):
        raise UserError(
            f"the model already has an adapter named {adapter_name!r}; load under another "
            "adapter_name or delete_adapter() it first"
        )
    what = f"Deep LoRA adapter {str(directory)!r}"
    meta = _io.read_json(directory / META_NAME, what)
    _io.check_version(meta, what, KIND)
    tensors = _io.read_tensors(directory / WEIGHTS_NAME, what)
    return attach_state(model, meta, tensors, adapter_name, trainable=trainable, what=what)


def attach_state(
    model: nn.Module,
    meta: dict[str, Any],
    tensors: dict[str, torch.Tensor],
    adapter_name: str,
    *,
    trainable: bool,
    what: str,
) -> nn.Module:
    """Add the adapter that :func:`adapter_state` described to ``model`` under
    ``adapter_name``, checking every layer and trained module first (``what`` names the source
    in errors), and make it the active one; frozen unless ``trainable``."""
    _check_adapter_name(adapter_name)
    if adapter_name in adapter_configs(model):
        raise UserError(
            f"the model already has an adapter named {adapter_name!r}; load under another "
            "adapter_name or delete_adapter() it first"
        )
    try:
        config = DeepLoraConfig.from_dict(dict(meta["config"]))
        layers_meta = dict(meta["layers"])
        trained_meta = dict(meta.get("modules_to_train", {}))
    except (KeyError, TypeError) as e:
        raise _corrupt(what, f"{META_NAME} lacks or garbles {e}") from e

    branches: dict[str, DeepLoraBranch] = {}
    for path, info in layers_meta.items():
        try:
            module = model.get_submodule(path)
        except AttributeError:
            raise UserError(
                f"{what}: layer {path!r} does not exist in this {type(model).__name__}; the "
                "adapter was saved for another architecture"
            ) from None
        base = module.base_layer if isinstance(module, DeepLoraLayer) else module
        if not is_adaptable(base):
            raise UserError(
                f"{what}: layer {path!r} is a {type(base).__name__} in this model, not an "
                "nn.Linear/Conv1D; the adapter was saved for another architecture"
            )
        try:
            saved = (int(info["d_out"]), int(info["d_in"]))
            shapes = [tuple(int(d) for d in s) for s in info["shapes"]]
            outer = [bool(o) for o in info["outer"]]
        except (KeyError, TypeError, ValueError) as e:
            raise _corrupt(what, f"the entry of layer {path!r} is malformed ({e})") from e
        have = _weight_shape(base)
        weight = base.weight
        assert isinstance(weight, torch.Tensor)
        if saved != have:
            raise UserError(
                f"{what}: layer {path!r} has weight shape (d_out, d_in) = {saved} in the "
                f"adapter but {have} in this model; load it onto the model it was trained on"
            )
        factors = []
        for i, shape in enumerate(shapes):
            key = f"layers.{path}.{i}"
            if key not in tensors:
                raise _corrupt(what, f"tensor {key!r} is missing")
            if tuple(tensors[key].shape) != shape:
                raise _corrupt(
                    what, f"tensor {key!r} has shape {tuple(tensors[key].shape)}, not {shape}"
                )
            factors.append(tensors[key].to(factor_dtype(weight.dtype)))
        try:
            branch = DeepLoraBranch(factors, outer, config.dropout)
        except ValueError as e:
            raise _corrupt(what, f"layer {path!r}: {e}") from e
        if branch.shapes[0][1] != have[1] or branch.shapes[-1][0] != have[0]:
            raise _corrupt(what, f"the factors of {path!r} do not map {have[1]} -> {have[0]}")
        branches[path] = branch
    _check_covered(model, config, branches, what)

    trained_state: dict[str, dict[str, torch.Tensor]] = {}
    for path, keys in trained_meta.items():
        try:
            module = model.get_submodule(path)
        except AttributeError:
            raise UserError(
                f"{what}: trained module {path!r} does not exist in this {type(model).__name__}"
            ) from None
        original = module.original if isinstance(module, TrainedModule) else module
        own = original.state_dict()
        state: dict[str, torch.Tensor] = {}
        for key in keys:
            full = f"trained.{path}.{key}"
            if full not in tensors:
                raise _corrupt(what, f"tensor {full!r} is missing")
            if key not in own:
                raise UserError(f"{what}: trained module {path!r} has no entry {key!r} here")
            if tensors[full].shape != own[key].shape:
                raise UserError(
                    f"{what}: trained module {path!r}.{key} has shape "
                    f"{tuple(tensors[full].shape)} in the adapter but {tuple(own[key].shape)} "
                    "in this model (another number of labels?)"
                )
            state[key] = tensors[full]
        missing = sorted(set(own) - set(state))
        if missing:
            raise _corrupt(what, f"trained module {path!r} lacks {missing}")
        trained_state[path] = state

    def build(_: dict[str, DeepLoraLayer]) -> dict[str, DeepLoraBranch]:
        return branches

    _attach(model, adapter_name, config, build, list(branches), list(trained_state), trained_state)
    set_adapter(model, adapter_name)
    if not trainable:
        for _, _, branch in adapter_branches(model, adapter_name):
            branch.requires_grad_(False)
        for module in _trained_modules(model).values():
            if adapter_name in module.copies:
                module.copies[adapter_name].requires_grad_(False)
    return model


def _check_covered(model: nn.Module, config: DeepLoraConfig, branches: dict[str, Any],
                   what: str) -> None:  # fmt: skip
    """Refuse a model with layers the adapter's ``target_modules`` match but the adapter does
    not hold: it was saved for a smaller model of the family (more layers here)."""
    try:
        wanted = find_targets(model, config)
    except ValueError:  # its names match nothing here: the per-layer checks have spoken
        return
    uncovered = [path for path in wanted if path not in branches]
    if uncovered:
        raise UserError(
            f"{what}: this {type(model).__name__} has {len(uncovered)} layer(s) that the "
            f"adapter's target_modules match but the adapter does not hold (e.g. "
            f"{uncovered[0]!r}); it was saved for a model with fewer layers: load it onto the "
            "model it was trained on"
        )


def export_peft(
    model: nn.Module,
    directory: str | Path,
    adapter_name: str = "default",
    *,
    rank: int | None = None,
    energy: float | None = None,
    base_model_name_or_path: str | None = None,
    dtype: torch.dtype = torch.float32,
) -> dict[str, LayerTruncation]:
    """Write ``adapter_name`` as a PEFT LoRA adapter (``adapter_config.json`` +
    ``adapter_model.safetensors``, ``peft_type`` LORA) that ``peft.PeftModel.from_pretrained``
    loads onto the base model.

    ``rank=None`` and ``energy=None`` keep every singular value (lossless); ``rank`` caps
    each layer's rank, ``energy`` keeps the least rank holding that share of
    ``||dW||_F^2``. Returns the rank and relative error ``||dW - dW_r||_F / ||dW||_F`` of each
    layer. Trained modules (e.g. a head) go to PEFT's ``modules_to_save``.
    """
    directory = Path(directory)
    config = _adapter_config(model, adapter_name)
    tensors: dict[str, torch.Tensor] = {}
    report: dict[str, LayerTruncation] = {}
    conv1d = False
    for path, layer, branch in adapter_branches(model, adapter_name):
        u, s, v = branch.svd()
        r = choose_rank(s, rank, energy)
        root = s[:r].sqrt()
        prefix = f"base_model.model.{path}"
        tensors[f"{prefix}.lora_A.weight"] = (root[:, None] * v[:, :r].T).to(dtype)
        tensors[f"{prefix}.lora_B.weight"] = (u[:, :r] * root[None, :]).to(dtype)
        report[path] = LayerTruncation(r, len(s), tail_error(s, r))
        conv1d = conv1d or layer.is_conv1d
    trained = _trained_state(model, adapter_name)
    for path, state in trained.items():
        for key, t in state.items():
            tensors[f"base_model.model.{path}.{key}"] = t
    top = max(t.rank for t in report.values())
    pattern = {re.escape(p): t.rank for p, t in report.items() if t.rank != top}
    if base_model_name_or_path is None:
        name = getattr(getattr(model, "config", None), "_name_or_path", None)
        base_model_name_or_path = name if isinstance(name, str) and name else None
    peft_config = {
        "peft_type": "LORA",
        "task_type": None,
        "base_model_name_or_path": base_model_name_or_path,
        "r": top,
        "lora_alpha": top,  # scaling lora_alpha / r = 1: lora_B lora_A is dW itself
        "rank_pattern": pattern,
        "alpha_pattern": dict(pattern),
        "target_modules": sorted(report),
        "modules_to_save": sorted(trained) or None,
        "fan_in_fan_out": conv1d,  # Conv1D (GPT-2) stores W0 transposed; PEFT fixes per layer
        "lora_dropout": config.dropout,
        "bias": "none",
        "use_rslora": False,
        "use_dora": False,
        "init_lora_weights": True,
        "inference_mode": True,
    }
    _io.write_tensors(directory / PEFT_WEIGHTS_NAME, tensors)
    _io.write_json(directory / PEFT_CONFIG_NAME, peft_config)
    return report

"""Which modules of a model an adapter targets (``target_modules``, ``exclude_modules``) and
which it trains fully (``modules_to_train``): the matching rules are in
:mod:`deeplora.adapters.config`."""

from __future__ import annotations

import re
from collections.abc import Sequence

from torch import nn

from ..errors import UserError
from .config import ALL_LINEAR, PRESETS, DeepLoraConfig
from .layer import DeepLoraLayer, TrainedModule, is_adaptable, weight_shape

# ----------------------------------------------------------------------------- finding targets


def _candidates(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Every module by path, not descending into Deep LoRA layers or trained modules."""
    found: list[tuple[str, nn.Module]] = []

    def walk(prefix: str, module: nn.Module) -> None:
        for name, child in module.named_children():
            path = f"{prefix}.{name}" if prefix else name
            found.append((path, child))
            if not isinstance(child, DeepLoraLayer | TrainedModule):
                walk(path, child)

    walk("", model)
    return found


def _adaptable(module: nn.Module) -> bool:
    return isinstance(module, DeepLoraLayer) or is_adaptable(module)


def layer_shape(module: nn.Module) -> tuple[int, int]:
    return weight_shape(module.base_layer if isinstance(module, DeepLoraLayer) else module)


def _name_matches(path: str, name: str) -> bool:
    return path == name or path.endswith("." + name)


def _matches(patterns: str | list[str], path: str) -> bool:
    if isinstance(patterns, str):
        return re.fullmatch(patterns, path) is not None
    return any(_name_matches(path, n) for n in patterns)


def _describe_linear(modules: list[tuple[str, nn.Module]]) -> str:
    """Compact listing of linear modules: numeric path parts folded into ``*``."""
    seen: dict[str, tuple[int, int]] = {}
    for path, module in modules:
        if _adaptable(module):
            key = re.sub(r"(?<=\.)\d+(?=\.|$)|^\d+(?=\.)", "*", path)
            seen.setdefault(key, layer_shape(module))
    if not seen:
        return "(none: the model has no nn.Linear or Conv1D module)"
    return ", ".join(f"{k} ({d_in}->{d_out})" for k, (d_out, d_in) in seen.items())


def _output_layer(model: nn.Module) -> nn.Module | None:
    getter = getattr(model, "get_output_embeddings", None)
    if not callable(getter):
        return None
    try:
        out = getter()
    except (AttributeError, NotImplementedError, TypeError):
        return None
    return out if isinstance(out, nn.Module) else None


def find_targets(model: nn.Module, config: DeepLoraConfig) -> list[str]:
    """Paths of the modules ``config`` adapts, in model order.

    Raises ``ValueError`` listing the model's linear modules when nothing matches, when a
    listed name matches no module or a module Deep LoRA cannot adapt.
    """
    modules = _candidates(model)
    targets = config.target_modules
    output = _output_layer(model)
    linear = [(p, m) for p, m in modules if _adaptable(m)]
    trained = set(resolve_trained(model, config.modules_to_train))

    def in_trained(path: str) -> bool:
        return any(path == t or path.startswith(t + ".") for t in trained)

    if isinstance(targets, list):
        chosen: list[str] = []
        for name in targets:
            hits = [(p, m) for p, m in modules if _name_matches(p, name)]
            if not hits:
                raise UserError(
                    f"target_modules entry {name!r} matches no module of this "
                    f"{type(model).__name__}; its linear modules are: {_describe_linear(modules)}"
                )
            bad = [(p, m) for p, m in hits if not _adaptable(m)]
            if bad:
                p, m = bad[0]
                raise UserError(
                    f"target_modules entry {name!r} matches {p} ({type(m).__name__}), which "
                    "Deep LoRA cannot adapt (only nn.Linear and Conv1D); name the linear "
                    f"layers instead: {_describe_linear(modules)}"
                )
            chosen += [p for p, _ in hits]
        both = [p for p in chosen if in_trained(p)]
        if both:
            raise UserError(
                f"{both[0]} is both a target and in modules_to_train; a module is either "
                "adapted or trained fully: remove it from one of the two"
            )
        selected = set(chosen)
    else:
        presets = PRESETS.get(targets)
        selected = set()
        for path, module in linear:
            if module is output or in_trained(path):
                continue
            if targets == "all-dense":
                ok = min(layer_shape(module)) >= config.min_dense_dim
            elif targets == ALL_LINEAR:
                ok = True
            elif presets is not None:
                ok = _matches(list(presets), path)
            else:
                ok = re.fullmatch(targets, path) is not None
            if ok:
                selected.add(path)
    if config.exclude_modules is not None:
        selected = {p for p in selected if not _matches(config.exclude_modules, p)}
    result = [p for p, _ in linear if p in selected]
    if not result:
        extra = (
            f" with both dimensions >= min_dense_dim={config.min_dense_dim}"
            if targets == "all-dense"
            else ""
        )
        raise UserError(
            f"target_modules={targets!r}{extra} (exclude_modules={config.exclude_modules!r}) "
            f"matched no nn.Linear/Conv1D module of this {type(model).__name__}; its linear "
            f"modules are: {_describe_linear(modules)}. Pass names from this list or a regex"
        )
    return result


def resolve_trained(model: nn.Module, names: Sequence[str]) -> list[str]:
    modules = _candidates(model)
    found: list[str] = []
    for name in names:
        hits = [p for p, _ in modules if _name_matches(p, name)]
        if not hits:
            children = ", ".join(n for n, _ in model.named_children())
            raise UserError(
                f"modules_to_train entry {name!r} matches no module of this "
                f"{type(model).__name__}; its top-level modules are: {children}"
            )
        # keep the outermost matches only
        found += [p for p in hits if not any(p.startswith(q + ".") for q in hits)]
    return list(dict.fromkeys(found))

"""A model with Deep LoRA adapters and the habits of a PEFT model (docs/METHOD.md 4).

:class:`DeepLoraModel` holds a base model wrapped by :func:`~deeplora.adapters.wrap` and offers
what PEFT's ``PeftModel`` users reach for: ``save_pretrained`` / ``from_pretrained`` (the
adapters and trained modules only, in our format), ``print_trainable_parameters``,
``add_adapter`` / ``set_adapter`` / ``delete_adapter`` / ``disable_adapter``,
``merge_and_unload``, ``get_base_model()`` and the base model's ``generate``; any other
attribute is the base model's (``model.config``, ``model.base_model``: Hugging Face's backbone,
as TRL expects). The base model itself is ``model.wrapped``.

Hugging Face ``Trainer`` (and TRL's ``SFTTrainer``) save a model that is not a
``PreTrainedModel`` through its ``state_dict()``, and resume with ``load_state_dict(...,
strict=False)``. So the ``state_dict`` of a :class:`DeepLoraModel` holds the adapters' factors,
the trained modules' copies and one entry ``deeplora_adapters`` (the adapters' descriptions as
UTF-8 JSON bytes) and no base weight: checkpoints hold the adapters, ``load_state_dict`` of
such a state puts them back (the base weights it lacks are not reported missing), and
:meth:`DeepLoraModel.from_pretrained` also reads a folder that ``trainer.save_model()`` wrote.
Each instance's class is a subclass named after the base model whose ``forward`` has the base
model's signature, so ``Trainer`` keeps the dataset's columns and finds the label names.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import _io
from ..errors import MissingFileError, UserError
from .config import DeepLoraConfig
from .io import (
    KIND,
    META_NAME,
    adapter_state,
    attach_state,
    load_adapter,
    save_adapter,
)
from .layer import DeepLoraBranch, TrainedModule, adapters_disabled
from .model import (
    LossFn,
    active_adapters,
    adapter_configs,
    count_parameters,
    delete_adapter,
    merge,
    merge_and_unload,
    set_adapter,
    unload,
    unmerge,
    wrap,
)

STATE_KEY = "deeplora_adapters"  # the state_dict entry with the adapters' descriptions
TRAINER_WEIGHTS = "model.safetensors"  # what Trainer writes for a model that is not Hugging Face's


class DeepLoraModel(nn.Module):
    """``model`` with the adapter ``config`` added as ``adapter_name`` (none when ``config``
    is None: add one with :meth:`add_adapter` or :meth:`load_adapter`). The model is changed
    in place; :meth:`unload` gives it back. ``loss_fn`` feeds ``init="compressed"``."""

    wrapped: nn.Module  # the base model (``base_model`` is a Hugging Face backbone's name)

    def __new__(cls, *args: Any, **kwargs: Any) -> DeepLoraModel:
        model = args[0] if args else kwargs.get("model")
        if cls is DeepLoraModel and isinstance(model, nn.Module):
            cls = _subclass_for(type(model))
        return super().__new__(cls)

    def __init__(
        self,
        model: nn.Module,
        config: DeepLoraConfig | None = None,
        *,
        adapter_name: str = "default",
        loss_fn: LossFn | None = None,
    ) -> None:
        if not isinstance(model, nn.Module) or isinstance(model, DeepLoraModel):
            raise UserError(f"DeepLoraModel wraps a torch nn.Module that is not one already, "
                            f"got {type(model).__name__}")  # fmt: skip
        super().__init__()
        self.wrapped = model
        self.train(model.training)
        if config is not None:
            wrap(model, config, adapter_name=adapter_name, loss_fn=loss_fn)
        self.register_state_dict_post_hook(_keep_adapter_state)
        self.register_load_state_dict_pre_hook(_check_adapter_state)
        self.register_load_state_dict_post_hook(_base_keys_are_not_missing)

    # ------------------------------------------------------------------ the base model
    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.wrapped(*args, **kwargs)

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        """The base model's ``generate`` with the active adapters."""
        generate = getattr(self.wrapped, "generate", None)
        if generate is None:
            raise UserError(f"{type(self.wrapped).__name__} has no generate(): it is not a "
                            "generative Hugging Face model")  # fmt: skip
        return generate(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "wrapped":
                raise
            return getattr(self.wrapped, name)

    def get_base_model(self) -> nn.Module:
        return self.wrapped

    # ------------------------------------------------------------------ adapters
    @property
    def peft_config(self) -> dict[str, DeepLoraConfig]:
        """Adapter name -> config (PEFT's name for it)."""
        return dict(adapter_configs(self.wrapped))

    @property
    def active_adapters(self) -> list[str]:
        return list(active_adapters(self.wrapped))

    @property
    def active_adapter(self) -> str:
        active = self.active_adapters
        if not active:
            raise UserError("no adapter is active; set_adapter() one")
        return active[0]

    def add_adapter(self, adapter_name: str, config: DeepLoraConfig, *,
                    loss_fn: LossFn | None = None) -> None:  # fmt: skip
        """Add a new adapter and make it the active, trainable one."""
        wrap(self.wrapped, config, adapter_name=adapter_name, loss_fn=loss_fn)

    def load_adapter(self, directory: str | Path, adapter_name: str = "default", *,
                     is_trainable: bool = False) -> None:  # fmt: skip
        """Add the adapter saved in ``directory`` (our format) as ``adapter_name``; active,
        frozen unless ``is_trainable``."""
        load_adapter(self.wrapped, directory, adapter_name, trainable=is_trainable)

    def set_adapter(self, names: str | Sequence[str]) -> None:
        set_adapter(self.wrapped, names)

    def delete_adapter(self, adapter_name: str) -> None:
        delete_adapter(self.wrapped, adapter_name)

    @contextmanager
    def disable_adapter(self) -> Iterator[None]:
        """Run the base model inside the ``with`` block."""
        with adapters_disabled(self.wrapped):
            yield

    def merge_adapter(self, adapter_names: Sequence[str] | None = None) -> None:
        merge(self.wrapped, adapter_names)

    def unmerge_adapter(self, adapter_names: Sequence[str] | None = None) -> None:
        unmerge(self.wrapped, adapter_names)

    def merge_and_unload(self) -> nn.Module:
        """The base model with the active adapters merged into its weights."""
        return merge_and_unload(self.wrapped)

    def unload(self) -> nn.Module:
        """The base model without any adapter."""
        return unload(self.wrapped)

    # ------------------------------------------------------------------ parameters
    def get_nb_trainable_parameters(self) -> tuple[int, int]:
        count = count_parameters(self.wrapped)
        return count.trainable, count.total

    def print_trainable_parameters(self) -> None:
        trainable, total = self.get_nb_trainable_parameters()
        print(f"trainable params: {trainable:,} || all params: {total:,} || trainable%: "
              f"{100 * trainable / max(total, 1):.4f}")  # fmt: skip

    # ------------------------------------------------------------------ files
    def save_pretrained(self, directory: str | Path,
                        selected_adapters: Sequence[str] | None = None,
                        **_: Any) -> None:  # fmt: skip
        """Write the adapters (default: all) in our format: ``default`` in ``directory``,
        any other in ``directory/<name>`` (PEFT's layout). No base weight is written."""
        names = list(self.peft_config) if selected_adapters is None else list(selected_adapters)
        if not names:
            raise UserError("the model has no adapter to save")
        directory = Path(directory)
        for name in names:
            save_adapter(self.wrapped, directory if name == "default" else directory / name,
                         name)  # fmt: skip

    @classmethod
    def from_pretrained(cls, model: nn.Module, directory: str | Path,
                        adapter_name: str = "default", *,
                        is_trainable: bool = False) -> DeepLoraModel:  # fmt: skip
        """``model`` with the adapter in ``directory``: a folder that :meth:`save_pretrained`
        wrote (the ``default`` adapter, or ``adapter_name`` in its sub-folder), or one that
        ``Trainer.save_model()`` wrote (every adapter in it, ``adapter_name`` active)."""
        directory = Path(directory)
        if not directory.is_dir():
            raise MissingFileError(f"{directory}: no such adapter folder; give the folder that "
                                   "save_pretrained() or trainer.save_model() wrote")  # fmt: skip
        wrapped = cls(model)
        if (directory / META_NAME).is_file() or (directory / adapter_name / META_NAME).is_file():
            folder = directory if (directory / META_NAME).is_file() else directory / adapter_name
            wrapped.load_adapter(folder, adapter_name, is_trainable=is_trainable)
            return wrapped
        if not (directory / TRAINER_WEIGHTS).is_file():
            raise MissingFileError(f"{directory}: holds neither {META_NAME} (save_pretrained) "
                                   f"nor {TRAINER_WEIGHTS} (trainer.save_model)")  # fmt: skip
        what = f"Deep LoRA checkpoint {str(directory / TRAINER_WEIGHTS)!r}"
        state = _io.read_tensors(directory / TRAINER_WEIGHTS, what)
        metas = _descriptions(state, what)
        for name, meta in metas.items():
            attach_state(model, meta, _renamed(state, "wrapped.", meta, name), name,
                         trainable=is_trainable, what=what)  # fmt: skip
        if adapter_name not in metas:
            raise UserError(f"{what} has no adapter {adapter_name!r}; it has {sorted(metas)}")
        wrapped.set_adapter(adapter_name)
        if not is_trainable:
            for p in wrapped.parameters():
                p.requires_grad_(False)
        return wrapped


# ---------------------------------------------------------------------------- state dict
def _adapter_keys(model: DeepLoraModel, prefix: str) -> set[str]:
    """The state_dict keys of every adapter's factors and trained-module copies."""
    keys: set[str] = set()
    for path, module in model.named_modules(prefix=prefix.rstrip(".")):
        if isinstance(module, DeepLoraBranch):
            keys.update(f"{path}.{k}" for k in module.state_dict())
        elif isinstance(module, TrainedModule):
            keys.update(f"{path}.copies.{k}" for k in module.copies.state_dict())
    return keys


def _keep_adapter_state(module: nn.Module, state: dict[str, Any], prefix: str,
                        _: Any) -> None:  # fmt: skip
    assert isinstance(module, DeepLoraModel)
    keep = _adapter_keys(module, prefix)
    for key in [k for k in state if k.startswith(prefix) and k not in keep]:
        del state[key]
    metas = {name: adapter_state(module.wrapped, name)[0] for name in module.peft_config}
    state[prefix + STATE_KEY] = _encode(metas)


def _check_adapter_state(module: nn.Module, state: dict[str, Any], prefix: str, *_: Any) -> None:
    """A state of adapters this model does not hold is refused (it would load nothing)."""
    assert isinstance(module, DeepLoraModel)
    blob = state.pop(prefix + STATE_KEY, None)
    if blob is None:
        return
    saved = set(_decode(blob, "the state dict"))
    have = set(module.peft_config)
    if not saved <= have:
        raise UserError(f"the state holds adapters {sorted(saved)} but this model has "
                        f"{sorted(have)}; DeepLoraModel.from_pretrained() builds them")  # fmt: skip


def _base_keys_are_not_missing(module: nn.Module, incompatible: Any) -> None:
    """Only an adapter's own entries count as missing (under any prefix, e.g. DDP's)."""
    assert isinstance(module, DeepLoraModel)
    keep = _adapter_keys(module, "")
    incompatible.missing_keys[:] = [
        k for k in incompatible.missing_keys
        if any(k == a or k.endswith("." + a) for a in keep)]  # fmt: skip


def _encode(metas: dict[str, Any]) -> torch.Tensor:
    return torch.frombuffer(bytearray(json.dumps(metas).encode("utf-8")), dtype=torch.uint8)


def _decode(blob: torch.Tensor, what: str) -> dict[str, Any]:
    try:
        metas = json.loads(bytes(blob.to(torch.uint8).tolist()).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{what}: its {STATE_KEY} entry is not the adapters' description "
                        f"({e}); save it again") from None  # fmt: skip
    if not isinstance(metas, dict) or any(
            not isinstance(m, dict) or m.get("kind") != KIND for m in metas.values()):
        raise UserError(f"{what}: its {STATE_KEY} entry is not the adapters' description")
    return metas


def _descriptions(state: dict[str, torch.Tensor], what: str) -> dict[str, Any]:
    if STATE_KEY not in state:
        raise UserError(f"{what} holds no {STATE_KEY} entry: it was not written from a "
                        "DeepLoraModel")  # fmt: skip
    metas = _decode(state[STATE_KEY], what)
    for meta in metas.values():
        _io.check_version(meta, what, KIND)
    return metas


def _renamed(state: dict[str, torch.Tensor], prefix: str, meta: dict[str, Any],
             name: str) -> dict[str, torch.Tensor]:  # fmt: skip
    """The tensors of adapter ``name`` under :func:`adapter_state`'s names."""
    out: dict[str, torch.Tensor] = {}
    for path, info in meta.get("layers", {}).items():
        for i in range(len(info.get("shapes", []))):
            key = f"{prefix}{path}.adapters.{name}.factors.{i}"
            if key in state:
                out[f"layers.{path}.{i}"] = state[key]
    for path, keys in meta.get("modules_to_train", {}).items():
        for key in keys:
            full = f"{prefix}{path}.copies.{name}.{key}"
            if full in state:
                out[f"trained.{path}.{key}"] = state[full]
    return out


# ---------------------------------------------------------------------------- class per base
_SUBCLASSES: dict[type, type[DeepLoraModel]] = {}


def _subclass_for(base: type) -> type[DeepLoraModel]:
    """A :class:`DeepLoraModel` subclass whose ``forward`` shows ``base.forward``'s signature
    (``Trainer`` reads it to keep the dataset's columns and find the label names); one per
    base class."""
    if base in _SUBCLASSES:
        return _SUBCLASSES[base]
    forward: Callable[..., Any] = getattr(base, "forward")  # noqa: B009  # a subclass's

    def relay(self: DeepLoraModel, *args: Any, **kwargs: Any) -> Any:
        return self.wrapped(*args, **kwargs)

    with suppress(TypeError, ValueError):
        relay.__signature__ = inspect.signature(forward)  # type: ignore[attr-defined]
    relay.__doc__ = forward.__doc__
    made = type(f"DeepLora{base.__name__}", (DeepLoraModel,),
                {"forward": relay, "__module__": __name__})
    _SUBCLASSES[base] = made
    return made

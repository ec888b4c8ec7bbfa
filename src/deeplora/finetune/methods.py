"""The three ways to train a task model: Deep LoRA, PEFT's LoRA, or every weight.

Everything else (data, head, loss, loop, optimizer, evaluation) is shared, so the methods
differ only in what :func:`attach` puts on the model and which parameters train:

``deep-lora``
    :func:`deeplora.adapters.wrap` with ``DeepLoraConfig(rank, depth, init_scale, init,
    target_modules)``; the task head is in ``modules_to_train``. ``init="compressed"`` reads
    its subspace off the gradient of the first training batch.
``lora``
    PEFT's ``get_peft_model`` with ``LoraConfig(r=rank, lora_alpha, lora_dropout=0,
    target_modules)`` on the same modules (the same names are resolved by
    :func:`deeplora.adapters.find_targets`); the head goes to ``modules_to_save``.
    ``lora_init="paper"``: the paper's vanilla LoRA on the same PEFT model, ``lora_A`` drawn
    from N(0, 1) and ``lora_alpha = rank`` (scaling 1; :func:`paper_lora_init`).
``full``
    every parameter trains.

The head (if the task has one) trains at ``head_lr`` in its own optimizer group.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import _io
from ..adapters import DeepLoraConfig, export_peft, find_targets, parameter_groups, save_adapter
from ..adapters import wrap as wrap_deep_lora
from ..adapters.layer import conv1d_type
from ..errors import UserError
from .config import FinetuneConfig

LossFn = Callable[[nn.Module], torch.Tensor]
FULL_WEIGHTS = "model.safetensors"


@dataclass
class Adapted:
    """A task model prepared for training by one method."""

    method: str
    model: nn.Module  # what the loop calls (a PeftModel for "lora")
    inner: nn.Module  # the task model itself, adapter layers inside (to generate with)
    groups: list[dict[str, Any]] = field(default_factory=list)  # optimizer parameter groups

    def trainable(self) -> dict[str, nn.Parameter]:
        """Every trained parameter by name: what a checkpoint holds."""
        return {n: p for n, p in self.model.named_parameters() if p.requires_grad}

    def save(self, folder: Path) -> None:
        """The trained weights: a Deep LoRA adapter, a PEFT adapter, or the whole model."""
        if self.method == "deep-lora":
            save_adapter(self.model, folder)
        elif self.method == "lora":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self.model.save_pretrained(str(folder))  # type: ignore[operator]
        else:  # copies, so that tied weights do not share storage
            state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
            _io.write_tensors(folder / FULL_WEIGHTS, state)

    def export_peft(self, folder: Path) -> None:
        if self.method != "deep-lora":
            raise UserError(f"a PEFT export is made from a Deep LoRA adapter, not {self.method}")
        export_peft(self.model, folder)


def _deep_config(config: FinetuneConfig, head: str | None) -> DeepLoraConfig:
    return DeepLoraConfig(
        rank=config.rank,
        depth=config.depth,
        init_scale=config.factor_scale,
        init=config.init,
        target_modules=config.target_modules,
        modules_to_train=[head] if head else [],
        gamma=config.gamma,
        seed=config.adapter_seed,
    )


def _groups(
    model: nn.Module, head_params: list[nn.Parameter], config: FinetuneConfig, deep: bool
) -> list[dict[str, Any]]:
    lr, decay = config.learning_rate, config.weight_decay
    if deep:  # the outer factors of a compressed adapter at gamma * lr
        groups = parameter_groups(model, lr, weight_decay=decay)
    else:
        groups = [{"params": [p for p in model.parameters() if p.requires_grad], "lr": lr,
                   "weight_decay": decay}]  # fmt: skip
    head_ids = {id(p) for p in head_params}
    for group in groups:
        group["params"] = [p for p in group["params"] if id(p) not in head_ids]
    groups = [g for g in groups if g["params"]]
    if head_params:
        groups.append({"params": head_params, "lr": config.head_learning_rate,
                       "weight_decay": decay})  # fmt: skip
    return groups


def paper_lora_init(model: nn.Module, seed: int) -> int:
    """The paper's vanilla LoRA init on a PEFT model (docs/METHOD.md 4.1): every ``lora_A``
    drawn from N(0, 1) by ``seed`` (``lora_B`` stays 0, so the model is unchanged). With
    ``lora_alpha = rank`` the scaling is 1. Returns the number of ``lora_A`` matrices."""
    from peft.tuners.lora import LoraLayer

    gen = torch.Generator(device="cpu").manual_seed(seed)
    count = 0
    for module in model.modules():
        if isinstance(module, LoraLayer):
            for name in sorted(module.lora_A):
                weight = module.lora_A[name].weight
                assert isinstance(weight, torch.Tensor)
                with torch.no_grad():
                    weight.copy_(torch.randn(tuple(weight.shape), generator=gen))
                count += 1
    return count


def _head_parameters(inner: nn.Module, head: str | None) -> list[nn.Parameter]:
    if head is None:
        return []
    return [p for p in inner.get_submodule(head).parameters() if p.requires_grad]


def attach(
    model: nn.Module,
    config: FinetuneConfig,
    head: str | None,
    first_batch_loss: LossFn | None = None,
) -> Adapted:
    """Prepare ``model`` (in place) for ``config.method``; ``head`` is the path of the task
    head that trains fully (or None). ``first_batch_loss`` feeds the compressed init."""
    torch.manual_seed(config.adapter_seed)  # PEFT's LoRA init draws from the global generator
    if config.method == "deep-lora":
        deep = _deep_config(config, head)
        loss_fn = first_batch_loss if deep.init == "compressed" else None
        was_training = model.training
        model.eval()  # the init gradient without dropout
        wrap_deep_lora(model, deep, loss_fn=loss_fn)
        model.train(was_training)
        return Adapted("deep-lora", model, model, _groups(model, _head_parameters(model, head),
                                                           config, deep=True))
    if config.method == "lora":
        from peft import LoraConfig, get_peft_model

        targets = find_targets(model, _deep_config(config, head))
        conv1d = conv1d_type()
        fan_in_fan_out = conv1d is not None and any(
            isinstance(model.get_submodule(t), conv1d) for t in targets
        )
        lora_config = LoraConfig(
            r=config.rank,
            lora_alpha=config.lora_scaling_alpha,  # type: ignore[arg-type]  # a float works
            lora_dropout=0.0,
            bias="none",
            target_modules=targets,
            modules_to_save=[head] if head else None,
            fan_in_fan_out=fan_in_fan_out,
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            peft_model = get_peft_model(model, lora_config)
        if config.lora_init == "paper":
            paper_lora_init(peft_model, config.adapter_seed)
        inner = peft_model.get_base_model()
        groups = _groups(peft_model, _head_parameters(inner, head), config, deep=False)
        return Adapted("lora", peft_model, inner, groups)
    for p in model.parameters():
        p.requires_grad_(True)
    return Adapted("full", model, model, _groups(model, _head_parameters(model, head), config,
                                                 deep=False))

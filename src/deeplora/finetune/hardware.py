"""Where and how the training step runs: the device, autocast precision, gradient checkpointing
of the base model and ``torch.compile`` (``FinetuneConfig.device``, ``precision``,
``gradient_checkpointing``, ``compile``)."""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import nn

from ..errors import UserError
from .config import FinetuneConfig

# torch.compile's backend for training (tests use a cheaper one)
COMPILE_BACKEND = "inductor"
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(config: FinetuneConfig) -> torch.device:
    """``config.device`` as a torch device ("auto": the first GPU if torch sees one, else the
    CPU); a GPU torch cannot see, and fp16 without a GPU, are refused."""
    name = config.device
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"--device {config.device}: torch sees no GPU here "
                            "(torch.cuda.is_available() is False); use --device cpu or auto")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UserError(f"--device {config.device}: there are {torch.cuda.device_count()} "
                            "GPU(s)")  # fmt: skip
    if config.precision == "fp16" and device.type != "cuda":
        raise UserError("--precision fp16 needs a GPU (gradients are scaled for it); use bf16 "
                        "on the CPU")  # fmt: skip
    return device


def autocast(config: FinetuneConfig,
             device: torch.device) -> contextlib.AbstractContextManager[Any]:  # fmt: skip
    """The forward passes' autocast context (a no-op at fp32)."""
    if config.precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=DTYPES[config.precision])


def grad_scaler(config: FinetuneConfig, device: torch.device) -> torch.amp.GradScaler:
    """Loss scaling for fp16 (disabled otherwise)."""
    return torch.amp.GradScaler(device.type, enabled=config.precision == "fp16")


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def enable_gradient_checkpointing(model: nn.Module) -> None:
    """Recompute the Hugging Face base model's activations in the backward pass (the
    non-reentrant form: the frozen embeddings need no gradient)."""
    for module in model.modules():  # the model itself first
        enable = getattr(module, "gradient_checkpointing_enable", None)
        if callable(enable) and getattr(module, "supports_gradient_checkpointing", False):
            enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            return
    raise UserError(f"{type(model).__name__} has no Hugging Face model that supports gradient "
                    "checkpointing; drop --gradient-checkpointing")  # fmt: skip


def compiled(model: nn.Module) -> nn.Module:
    """``torch.compile`` of the training forward (the first steps pay for the compilation)."""
    return torch.compile(model, backend=COMPILE_BACKEND)  # type: ignore[return-value]

"""Devices, autocast precision, gradient checkpointing and torch.compile: each against the
plain float32 run on the CPU (CUDA cases skip without a GPU)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from deeplora.adapters import DeepLoraConfig, DeepLoraModel
from deeplora.finetune import FinetuneConfig, finetune, hardware

from ..adapters.conftest import ARCHS, build
from .conftest import reviews

CUDA = torch.cuda.is_available()
RUN = dict(steps=6, batch_size=8, lr=1e-2, head_lr=1e-2, max_length=16, progress=False,
           device="cpu")  # fmt: skip


def losses(models: dict[str, Path], **settings: object) -> tuple[list[float], dict]:
    settings = {**RUN, **settings}
    config = FinetuneConfig(model=str(models["bert"]), **settings)  # type: ignore[arg-type]
    result = finetune(reviews(24), config, evaluation=reviews(8, seed=1))
    return result.history.loss, result.metrics


def test_bf16_autocast_is_close_to_float32(models: dict[str, Path]) -> None:
    plain, _ = losses(models)
    bf16, metrics = losses(models, precision="bf16")
    assert metrics["precision"] == "bf16" and metrics["device"] == "cpu"
    assert bf16 != plain  # autocast changed the arithmetic
    np.testing.assert_allclose(bf16, plain, rtol=0.05, atol=0.02)


def test_gradient_checkpointing_gives_the_same_steps(models: dict[str, Path]) -> None:
    plain, _ = losses(models)
    checkpointed, _ = losses(models, gradient_checkpointing=True)
    np.testing.assert_allclose(checkpointed, plain, rtol=1e-5, atol=1e-6)


def test_compiled_training_gives_the_same_steps(
    models: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(hardware, "COMPILE_BACKEND", "aot_eager")  # no C++ build in the tests
    plain, _ = losses(models)
    torch._dynamo.reset()
    compiled, _ = losses(models, compile=True)
    np.testing.assert_allclose(compiled, plain, rtol=1e-4, atol=1e-5)


def test_a_compiled_deep_lora_model_matches_eager() -> None:
    arch = ARCHS["gpt2"]
    model = DeepLoraModel(build(arch), DeepLoraConfig(rank=4, target_modules="all-linear"))
    torch._dynamo.reset()
    fast = torch.compile(model, backend="aot_eager")
    torch.testing.assert_close(arch.logits(fast), arch.logits(model))
    arch.loss(fast).backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


@pytest.mark.skipif(CUDA, reason="the machine has a GPU")
def test_a_gpu_that_is_not_there_is_refused_before_any_work(models: dict[str, Path]) -> None:
    with pytest.raises(ValueError, match="torch sees no GPU here"):
        losses(models, device="cuda")
    with pytest.raises(ValueError, match="fp16 needs a GPU"):
        losses(models, precision="fp16")
    with pytest.raises(ValueError, match="device must be auto, cpu, cuda or cuda:N"):
        FinetuneConfig(device="gpu0")


@pytest.mark.skipif(not CUDA, reason="needs a GPU")
@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_cuda_training_matches_the_cpu(models: dict[str, Path], precision: str) -> None:
    plain, _ = losses(models)
    gpu, metrics = losses(models, device="cuda", precision=precision)
    assert metrics["device"].startswith("cuda")
    np.testing.assert_allclose(gpu, plain, rtol=0.05, atol=0.02)

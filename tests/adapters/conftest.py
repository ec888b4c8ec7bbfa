"""Tiny Hugging Face models built from configs (no downloads) and helpers for adapter tests."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
from torch import nn

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(1)

transformers = pytest.importorskip("transformers")

VOCAB = 64


@dataclass
class Arch:
    """A tiny model of one family, a batch, and how to get its logits."""

    name: str
    build: Callable[[], nn.Module]
    batch: dict[str, torch.Tensor]
    head: list[str]  # modules to train fully with the adapter

    def logits(self, model: nn.Module) -> torch.Tensor:
        return model(**self.batch).logits

    def loss(self, model: nn.Module) -> torch.Tensor:
        out = self.logits(model).float()
        flat = out.reshape(-1, out.shape[-1])
        return nn.functional.cross_entropy(flat, torch.arange(len(flat)) % flat.shape[1])


def _ids(shape: tuple[int, int], seed: int) -> torch.Tensor:
    return torch.randint(1, VOCAB, shape, generator=torch.Generator().manual_seed(seed))


def _bert() -> nn.Module:
    cfg = transformers.BertConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=48,
        max_position_embeddings=32,
        num_labels=3,
    )
    return transformers.BertForSequenceClassification(cfg)


def _gpt2() -> nn.Module:
    cfg = transformers.GPT2Config(
        vocab_size=VOCAB,
        n_embd=32,
        n_layer=2,
        n_head=2,
        n_positions=32,
        bos_token_id=0,
        eos_token_id=0,
    )
    return transformers.GPT2LMHeadModel(cfg)


def _llama() -> nn.Module:
    cfg = transformers.LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=32,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
    )
    return transformers.LlamaForCausalLM(cfg)


def _t5() -> nn.Module:
    cfg = transformers.T5Config(
        vocab_size=VOCAB,
        d_model=32,
        d_kv=8,
        d_ff=48,
        num_layers=1,
        num_decoder_layers=1,
        num_heads=4,
        decoder_start_token_id=0,
        pad_token_id=0,
        eos_token_id=1,
    )
    return transformers.T5ForConditionalGeneration(cfg)


ARCHS: dict[str, Arch] = {
    "bert": Arch(
        "bert",
        _bert,
        {"input_ids": _ids((2, 7), 1), "attention_mask": torch.ones(2, 7, dtype=torch.long)},
        ["classifier"],
    ),
    "gpt2": Arch("gpt2", _gpt2, {"input_ids": _ids((2, 7), 2)}, []),
    "llama": Arch("llama", _llama, {"input_ids": _ids((2, 7), 3)}, []),
    "t5": Arch("t5", _t5, {"input_ids": _ids((2, 7), 4), "decoder_input_ids": _ids((2, 5), 5)}, []),
}


def build(arch: Arch, seed: int = 0, dtype: torch.dtype = torch.float32) -> nn.Module:
    torch.manual_seed(seed)
    return arch.build().to(dtype).eval()


@torch.no_grad()
def perturb(model: nn.Module, adapter_name: str = "default", scale: float = 0.5, seed: int = 0):
    """Give every factor of an adapter (and its trained modules) a random value, so that dW
    is far from zero and the adapter is no no-op."""
    from deeplora.adapters import TrainedModule, adapter_branches

    gen = torch.Generator().manual_seed(seed)
    params = [f for _, _, branch in adapter_branches(model, adapter_name) for f in branch.factors]
    for module in model.modules():
        if isinstance(module, TrainedModule) and adapter_name in module.copies:
            params += list(module.copies[adapter_name].parameters())
    for f in params:
        noise = torch.randn(f.shape, generator=gen, dtype=torch.float64)
        f.copy_(noise * scale / f.shape[-1] ** 0.5)


@pytest.fixture(params=list(ARCHS))
def arch(request: pytest.FixtureRequest) -> Arch:
    return ARCHS[request.param]

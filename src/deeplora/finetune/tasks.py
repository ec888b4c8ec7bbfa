"""The three tasks: how examples become token batches, what the model and its head are, the
loss, and the predictions evaluated.

classification / regression
    The pretrained model's last hidden states are pooled into one vector per text and a new
    linear head maps it to one logit per class (cross-entropy) or to one score (squared error
    on the standardised score; predictions are mapped back). Pooling: the mean over the real
    tokens for encoders (every token has read the whole text; all-MiniLM-L6-v2 was trained for
    mean-pooled sentence embeddings), the last real token for decoder-only models (only it has
    read the whole text). The head starts at random, so it always trains, fully, beside the
    adapter (``modules_to_train`` / PEFT ``modules_to_save``).
causal-lm
    Prompt and completion are tokenized apart and joined (the completion ends with the
    end-of-text token); the labels are -100 on the prompt and the padding, so the loss is the
    mean cross-entropy of the completion tokens. The model's own output layer is the head and
    stays frozen (often tied to the input embedding). Too long examples lose the start of the
    prompt first.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError
from .data import Examples
from .models import decoder_only, pad_token_id

Features = dict[str, Any]  # one example: token id lists and its target
Batch = dict[str, torch.Tensor]
HEAD = "head"  # the path of the task head in a PooledModel


class PooledModel(nn.Module):
    """A pretrained ``backbone``'s last hidden states pooled per text, then ``head``."""

    def __init__(self, backbone: nn.Module, outputs: int, pooling: str) -> None:
        super().__init__()
        if pooling not in ("mean", "last"):
            raise UserError(f"pooling must be 'mean' or 'last', got {pooling!r}")
        self.backbone = backbone
        self.pooling = pooling
        config = getattr(backbone, "config", None)
        hidden = getattr(config, "hidden_size", None) or getattr(config, "d_model", None)
        if not isinstance(hidden, int):
            raise UserError(f"cannot tell the hidden size of {type(backbone).__name__}")
        self.head = nn.Linear(hidden, outputs)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **extra: Any):
        out = self.backbone(input_ids=input_ids, attention_mask=attention_mask, **extra)
        hidden = out.last_hidden_state
        if self.pooling == "mean":
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)
        else:  # right padding: the last real token
            last = attention_mask.sum(1).clamp_min(1) - 1
            pooled = hidden[torch.arange(len(hidden), device=hidden.device), last]
        return self.head(pooled)


def collate(features: Sequence[Features], pad_id: int) -> Batch:
    """Right-pad a list of examples to the longest: ``input_ids`` with ``pad_id``,
    ``attention_mask`` / ``token_type_ids`` with 0, ``labels`` with -100."""
    width = max(len(f["input_ids"]) for f in features)
    fill = {"input_ids": pad_id, "labels": -100}
    batch: Batch = {}
    for key in features[0]:
        if key == "target":
            batch[key] = torch.tensor([f[key] for f in features])
            continue
        rows = [list(f[key]) + [fill.get(key, 0)] * (width - len(f[key])) for f in features]
        batch[key] = torch.tensor(rows, dtype=torch.long)
    return batch


def fingerprint(features: Sequence[Features], classes: Sequence[str] = ()) -> str:
    """A hash of encoded examples and the class names (a checkpoint refuses other data)."""
    digest = hashlib.sha256()
    if classes:
        digest.update(f"classes={list(classes)!r};".encode())
    for f in features:
        for key in sorted(f):
            digest.update(f"{key}={f[key]!r};".encode())
    return digest.hexdigest()[:16]


@dataclass
class TextTask:
    """Classification (``classes``) or regression (a score standardised by the training
    ``mean`` and ``scale``) of single texts or pairs."""

    kind: str  # "classification" or "regression"
    classes: tuple[str, ...] = ()
    mean: float = 0.0
    scale: float = 1.0
    head: str | None = HEAD

    @classmethod
    def for_training(cls, train: Examples) -> TextTask:
        if train.task == "classification":
            return cls("classification", classes=train.classes)
        assert train.label is not None
        scale = float(train.label.std())
        return cls("regression", mean=float(train.label.mean()), scale=scale if scale > 0 else 1.0)

    @property
    def outputs(self) -> int:
        return len(self.classes) if self.kind == "classification" else 1

    def build(self, pretrained: nn.Module) -> nn.Module:
        return PooledModel(pretrained, self.outputs, "last" if decoder_only(pretrained) else "mean")

    def encode(self, examples: Examples, tokenizer: Any, max_length: int) -> list[Features]:
        args = [examples.text] + ([examples.pair] if examples.pair is not None else [])
        enc = tokenizer(*args, truncation=True, max_length=max_length)
        keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc]
        assert examples.label is not None
        targets = (
            examples.label.tolist()
            if self.kind == "classification"
            else ((examples.label - self.mean) / self.scale).astype(np.float32).tolist()
        )
        return [
            {**{k: enc[k][i] for k in keys}, "target": targets[i]} for i in range(len(examples))
        ]

    @staticmethod
    def _inputs(batch: Batch) -> Batch:
        return {k: v for k, v in batch.items() if k != "target"}

    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        out = model(**self._inputs(batch))
        if self.kind == "classification":
            return F.cross_entropy(out, batch["target"])
        return F.mse_loss(out.squeeze(-1), batch["target"].to(out.dtype))

    def outputs_of(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        """Class probabilities (``batch x classes``) or scores in the data's units."""
        out = model(**self._inputs(batch)).float()
        if self.kind == "classification":
            return out.softmax(-1)
        return out.squeeze(-1) * self.scale + self.mean

    def summary(self) -> dict[str, Any]:
        if self.kind == "classification":
            return {"classes": list(self.classes)}
        return {"score_mean": self.mean, "score_scale": self.scale}


@dataclass
class CausalLMTask:
    """Causal language modelling of completions given prompts (``chat``: each prompt wrapped
    in the tokenizer's chat template as a user turn, with the assistant's turn opened)."""

    eos_id: int | None = None
    chat: bool = False
    kind: str = "causal-lm"
    head: str | None = None  # the model's own output layer, frozen

    def build(self, pretrained: nn.Module) -> nn.Module:
        return pretrained

    def prompt_ids(self, tokenizer: Any, prompts: Sequence[str]) -> list[list[int]]:
        """The token ids of each prompt, in the chat template when ``chat``."""
        if not self.chat:
            return [list(ids) for ids in tokenizer(list(prompts))["input_ids"]]
        texts = [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                               add_generation_prompt=True) for p in prompts]
        return [list(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]

    def encode(self, examples: Examples, tokenizer: Any, max_length: int) -> list[Features]:
        assert examples.completion is not None
        prompts = self.prompt_ids(tokenizer, examples.text)
        completions = tokenizer(examples.completion, add_special_tokens=False)["input_ids"]
        eos = [] if self.eos_id is None else [self.eos_id]
        features = []
        for prompt, completion in zip(prompts, completions, strict=True):
            completion = (list(completion) + eos)[:max_length - 1]
            prompt = list(prompt)[-(max_length - len(completion)):]
            ids = prompt + completion
            features.append({
                "input_ids": ids,
                "attention_mask": [1] * len(ids),
                "labels": [-100] * len(prompt) + completion,
            })  # fmt: skip
        return features

    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        loss = model(**batch).loss
        assert isinstance(loss, torch.Tensor)
        return loss

    def token_losses(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed cross-entropy of each example's completion tokens, and their counts."""
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        labels = batch["labels"][:, 1:]
        nll = F.cross_entropy(
            logits[:, :-1].float().transpose(1, 2), labels, ignore_index=-100, reduction="none"
        )
        return nll.sum(1), (labels != -100).sum(1)

    @torch.no_grad()
    def generate(self, model: nn.Module, tokenizer: Any, prompts: Sequence[str],
                 max_new_tokens: int, *, max_length: int,
                 batch_size: int) -> list[str]:  # fmt: skip
        """Greedy completions of ``prompts`` (deterministic), in batches of prompts of similar
        length padded on the left; each prompt keeps its last ``max_length`` tokens and no
        completion runs past the model's last position."""
        ids = [p[-max_length:] for p in self.prompt_ids(tokenizer, prompts)]
        limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
        pad = pad_token_id(tokenizer)
        device = next(model.parameters()).device
        out: list[str] = [""] * len(ids)
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            width = max(len(ids[i]) for i in chunk)
            new = max_new_tokens if not isinstance(limit, int) else min(max_new_tokens,
                                                                          limit - width)
            if new < 1:
                continue
            rows = [[pad] * (width - len(ids[i])) + ids[i] for i in chunk]
            mask = [[0] * (width - len(ids[i])) + [1] * len(ids[i]) for i in chunk]
            result = model.generate(  # type: ignore[operator]
                input_ids=torch.tensor(rows, device=device),
                attention_mask=torch.tensor(mask, device=device),
                max_new_tokens=new, do_sample=False, pad_token_id=pad,
                eos_token_id=self.eos_id,
            )  # fmt: skip
            for row, i in zip(result[:, width:].tolist(), chunk, strict=True):
                out[i] = str(tokenizer.decode(row, skip_special_tokens=True))
        return out

    def summary(self) -> dict[str, Any]:
        return {"chat_template": self.chat}


FinetuneTask = TextTask | CausalLMTask


def make_task(train: Examples, tokenizer: Any, chat: bool = False) -> FinetuneTask:
    """The task object for the training examples (``chat``: causal-lm prompts in the
    tokenizer's chat template, which must have one)."""
    if train.task == "causal-lm":
        if chat and not getattr(tokenizer, "chat_template", None):
            raise UserError("chat_template=True, but this model's tokenizer has no chat "
                            "template; drop --chat-template or use an instruct model's "
                            "tokenizer")  # fmt: skip
        eos = getattr(tokenizer, "eos_token_id", None)
        return CausalLMTask(eos if isinstance(eos, int) else None, chat)
    return TextTask.for_training(train)

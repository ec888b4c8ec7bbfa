"""Token batches, pooling and the causal-LM labels."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from deeplora.finetune import CausalLMTask, FinetuneConfig, PooledModel, collate
from deeplora.finetune.data import examples_from_table

from ..adapters.conftest import ARCHS, build
from .conftest import make_tokenizer


def test_collate_pads_right() -> None:
    batch = collate([
        {"input_ids": [5, 6, 7], "attention_mask": [1, 1, 1], "labels": [-100, 6, 7], "target": 1},
        {"input_ids": [8], "attention_mask": [1], "labels": [8], "target": 0},
    ], pad_id=0)  # fmt: skip
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]
    assert batch["target"].tolist() == [1, 0]


def test_causal_labels_cover_the_completion_only() -> None:
    tokenizer = make_tokenizer(bert=False)
    eos = tokenizer.eos_token_id
    frame = pd.DataFrame({"prompt": ["rate : good food", "rate : bad"],
                          "completion": ["positive mixed", "negative"]})  # fmt: skip
    examples = examples_from_table(frame, FinetuneConfig(task="causal-lm"))
    task = CausalLMTask(eos)
    first, second = task.encode(examples, tokenizer, max_length=16)
    ids = tokenizer.convert_tokens_to_ids
    assert first["input_ids"] == [*ids(["rate", ":", "good", "food", "positive", "mixed"]), eos]
    assert first["labels"] == [-100] * 4 + ids(["positive", "mixed"]) + [eos]
    assert second["labels"] == [-100] * 3 + ids(["negative"]) + [eos]
    batch = collate([first, second], pad_id=tokenizer.pad_token_id)
    assert (batch["labels"][1, -1] == -100) and batch["attention_mask"][1, -1] == 0
    # too long: the prompt loses its start, the completion stays whole
    (short,) = task.encode(examples.take([0]), tokenizer, max_length=4)
    assert short["input_ids"] == [*ids(["food", "positive", "mixed"]), eos]
    assert short["labels"] == [-100, *ids(["positive", "mixed"]), eos]


def test_causal_loss_ignores_the_prompt() -> None:
    model = build(ARCHS["gpt2"])
    tokenizer = make_tokenizer(bert=False)
    frame = pd.DataFrame({"prompt": ["rate : good", "rate : bad food"],
                          "completion": ["positive", "negative"]})  # fmt: skip
    task = CausalLMTask(tokenizer.eos_token_id)
    features = task.encode(examples_from_table(frame, FinetuneConfig(task="causal-lm")),
                           tokenizer, 16)  # fmt: skip
    batch = collate(features, tokenizer.pad_token_id)
    with torch.no_grad():
        sums, counts = task.token_losses(model, batch)
        logits = model(input_ids=batch["input_ids"]).logits.log_softmax(-1)
    # by hand: each completion token (and [EOS]) predicted from the position before it
    nll = []
    for row, f in enumerate(features):
        start = len(f["input_ids"]) - 2
        for j in (start, start + 1):
            nll.append(-logits[row, j - 1, f["input_ids"][j]].item())
    assert counts.tolist() == [2, 2]
    assert sums.tolist() == pytest.approx([nll[0] + nll[1], nll[2] + nll[3]], rel=1e-5)
    with torch.no_grad():
        assert task.loss(model, batch).item() == pytest.approx(sum(nll) / 4, rel=1e-5)


@pytest.mark.parametrize("pooling", ["mean", "last"])
def test_pooling_ignores_padding(pooling: str) -> None:
    torch.manual_seed(0)
    backbone = build(ARCHS["bert"]).bert if pooling == "mean" else build(ARCHS["gpt2"]).transformer
    model = PooledModel(backbone, 3, pooling).eval()
    ids = torch.tensor([[5, 6, 7, 8]])
    padded = torch.tensor([[5, 6, 7, 8, 0, 0]])
    with torch.no_grad():
        plain = model(ids, torch.ones_like(ids))
        with_pad = model(padded, torch.tensor([[1, 1, 1, 1, 0, 0]]))
    torch.testing.assert_close(plain, with_pad, atol=1e-5, rtol=0)
    assert plain.shape == (1, 3)

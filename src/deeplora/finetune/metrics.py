"""Evaluation metrics: accuracy, macro-F1 and Matthews correlation for classes; Pearson and
Spearman correlation (and RMSE) for scores; exact match and token-level F1 for generations. A
value that is undefined (a correlation with a constant) is ``nan``; :func:`finite_or_none`
turns it into ``None`` for JSON."""

from __future__ import annotations

import math
import unicodedata
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import stats


def accuracy(y: np.ndarray, pred: np.ndarray) -> float:
    return float(np.mean(np.asarray(y) == np.asarray(pred)))


def _confusion(y: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Confusion counts over the labels occurring in ``y`` or ``pred`` (rows: truth)."""
    labels, codes = np.unique(np.concatenate([y, pred]), return_inverse=True)
    k = len(labels)
    truth, guess = codes[: len(y)], codes[len(y) :]
    return np.bincount(truth * k + guess, minlength=k * k).reshape(k, k).astype(np.float64)


def macro_f1(y: np.ndarray, pred: np.ndarray) -> float:
    """Mean F1 over the classes that occur in ``y`` or ``pred`` (a class never predicted and
    present counts 0), as scikit-learn's ``f1_score(average="macro")``."""
    c = _confusion(np.asarray(y), np.asarray(pred))
    tp = np.diag(c)
    denom = c.sum(0) + c.sum(1)  # 2 tp + fp + fn
    f1 = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
    return float(f1.mean())


def mcc(y: np.ndarray, pred: np.ndarray) -> float:
    """Matthews correlation coefficient, multi-class (Gorodkin's R_K); 0 when undefined."""
    c = _confusion(np.asarray(y), np.asarray(pred))
    n = c.sum()
    correct = np.trace(c)
    p, t = c.sum(0), c.sum(1)
    denom = math.sqrt((n**2 - p @ p) * (n**2 - t @ t))
    return float((correct * n - p @ t) / denom) if denom > 0 else 0.0


def classification_metrics(y: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    return {"accuracy": accuracy(y, pred), "macro_f1": macro_f1(y, pred), "mcc": mcc(y, pred)}


def _constant(x: np.ndarray) -> bool:
    return bool(np.all(x == x[0]))


def regression_metrics(y: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    y, pred = np.asarray(y, dtype=np.float64), np.asarray(pred, dtype=np.float64)
    defined = len(y) > 1 and not _constant(y) and not _constant(pred)
    return {
        "pearson": float(stats.pearsonr(y, pred)[0]) if defined else math.nan,
        "spearman": float(stats.spearmanr(y, pred)[0]) if defined else math.nan,
        "rmse": float(np.sqrt(np.mean((y - pred) ** 2))),
    }


def finite_or_none(data: Any) -> Any:
    """``data`` with every non-finite float replaced by ``None`` (nested dicts and lists)."""
    if isinstance(data, dict):
        return {k: finite_or_none(v) for k, v in data.items()}
    if isinstance(data, list | tuple):
        return [finite_or_none(v) for v in data]
    if isinstance(data, float) and not math.isfinite(data):
        return None
    return data


def _words(text: str) -> list[str]:
    """Lower case, punctuation dropped, split on white space (SQuAD's normalisation without
    its English article rule)."""
    kept = "".join(" " if unicodedata.category(c).startswith("P") else c for c in text.lower())
    return kept.split()


def generation_metrics(references: Sequence[str], generations: Sequence[str]) -> dict[str, float]:
    """Exact match (the normalised words equal) and token-level F1 (the harmonic mean of the
    shared words' precision and recall, per example) of greedy generations against the
    reference completions, averaged over examples."""
    exact, f1 = [], []
    for reference, generation in zip(references, generations, strict=True):
        ref, gen = _words(reference), _words(generation)
        exact.append(float(ref == gen))
        common = sum((Counter(ref) & Counter(gen)).values())
        if not ref or not gen:
            f1.append(float(ref == gen))
        elif common == 0:
            f1.append(0.0)
        else:
            precision, recall = common / len(gen), common / len(ref)
            f1.append(2 * precision * recall / (precision + recall))
    return {"exact_match": float(np.mean(exact)) if exact else math.nan,
            "token_f1": float(np.mean(f1)) if f1 else math.nan}  # fmt: skip

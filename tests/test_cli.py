"""The `deeplora complete` command: files written, predictions, top-k, one-line errors."""

import json

import numpy as np
import pandas as pd
import pytest

from deeplora.cli import main
from deeplora.completion import CompletionModel, random_low_rank, sample_entries


@pytest.fixture()
def table(tmp_path):
    target = random_low_rank(30, 40, 2, seed=0)
    obs = sample_entries(target, fraction=0.5, seed=0)
    path = tmp_path / "ratings.csv"
    pd.DataFrame({"user": [f"u{i}" for i in obs.rows], "item": [f"i{j}" for j in obs.cols],
                  "rating": 3 + obs.values}).to_csv(path, index=False)
    return path


def test_complete_writes_model_predictions_and_top_k(table, tmp_path, capsys):
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("row_id,col_id\nu3,i5\nu0,i1\nu3,i5\n")
    out = tmp_path / "out"
    code = main(["complete", str(table), "--rank", "2", "--init-scale", "0.05",
                 "--max-steps", "2000", "--out", str(out), "--predict", str(pairs),
                 "--top-k", "3", "--basis", "normalized", "--no-progress"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "validation RMSE" in printed and "mean-rating baseline" in printed
    pred = pd.read_csv(out / "predictions.csv")
    assert list(pred.columns) == ["row_id", "col_id", "prediction"]
    assert list(pred["row_id"]) == ["u3", "u0", "u3"]  # the input's order
    model = CompletionModel.load(out)
    np.testing.assert_allclose(pred["prediction"], model.predict(["u3", "u0", "u3"],
                                                                 ["i5", "i1", "i5"]), rtol=1e-5)
    top = pd.read_csv(out / "top_k.csv")
    assert len(top) == 3 * 30
    meta = json.loads((out / "model.json").read_text())
    assert meta["kind"] == "deeplora.completion"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["complete"], "give an INPUT file or --demo"),
        (["complete", "{table}"], "--rank is required"),
        (["complete", "{table}", "--rank", "0"], "rank must be >= 1"),
        (["complete", "{table}", "--rank", "2", "--depth", "1"], "depth must be >= 2"),
        (["complete", "{table}", "--rank", "2", "--init-scale", "-1"], "init_scale must be > 0"),
        (["complete", "{table}", "--rank", "2", "--lr", "0"], "lr must be > 0"),
        (["complete", "{table}", "--rank", "2", "--width", "5"], "--width applies to"),
        (["complete", "{table}", "--rank", "2", "--solver", "wide", "--basis", "normalized"],
         "--basis applies to --solver compressed only"),
        (["complete", "{table}", "--rank", "40"], "must be < min(m, n)"),
        (["complete", "{missing}", "--rank", "2"], "does not exist"),
        (["complete", "{table}", "--rank", "2", "--predict", "{missing}"], "does not exist"),
    ],
)
def test_bad_input_exits_2_with_one_line(args, message, table, tmp_path, capsys):
    argv = [a.format(table=table, missing=tmp_path / "nope.csv") for a in args]
    argv += ["--out", str(tmp_path / "o"), "--max-steps", "5", "--no-progress"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0]


def test_unknown_ids_in_pairs_exit_2(table, tmp_path, capsys):
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("u0,nobody\n")
    argv = ["complete", str(table), "--rank", "2", "--max-steps", "5", "--no-progress",
            "--out", str(tmp_path / "o"), "--predict", str(pairs)]
    assert main(argv) == 2
    assert "unknown column ID" in capsys.readouterr().err


def test_malformed_table_exits_2(tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b,1\na,b,2\n")
    assert main(["complete", str(bad), "--rank", "1", "--no-progress",
                 "--out", str(tmp_path / "o")]) == 2
    assert "duplicate" in capsys.readouterr().err

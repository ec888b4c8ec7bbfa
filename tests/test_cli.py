"""The `deeplora complete` command: defaults, files written, predictions, top-k, the three-way
split, the output folder's rules and one-line errors before any work."""

import json

import numpy as np
import pandas as pd
import pytest

from deeplora.cli import main
from deeplora.completion import CompletionModel, random_low_rank, sample_entries


@pytest.fixture()
def table(tmp_path):
    """A rank-2 table plus 3 (ratings-like), keyed by string IDs, with a header line."""
    target = random_low_rank(30, 40, 2, seed=0)
    obs = sample_entries(target, fraction=0.5, seed=0)
    path = tmp_path / "ratings.csv"
    pd.DataFrame({"user": [f"u{i}" for i in obs.rows], "item": [f"i{j}" for j in obs.cols],
                  "rating": 3 + obs.values}).to_csv(path, index=False)
    return path


def test_defaults_complete_an_exactly_low_rank_table(tmp_path, capsys):
    """No rank, no init flags: an exactly low-rank table with an offset is recovered, and the
    held-out test part is scored once."""
    target = random_low_rank(60, 90, 3, seed=1)
    obs = sample_entries(target, fraction=0.4, seed=2)
    path = tmp_path / "t.csv"
    pd.DataFrame({"r": obs.rows, "c": obs.cols, "v": 5 + obs.values}).to_csv(
        path, index=False, header=False)
    out = tmp_path / "out"
    assert main(["complete", str(path), "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "test RMSE" in printed and "baselines" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test"]["relative_error"] < 1e-4
    assert metrics["test"]["rmse"] < 1e-3 * metrics["test"]["baselines"]["mean"]["rmse"]
    assert metrics["split"]["test"] == round(0.1 * len(obs))
    assert metrics["fit"]["r_hat"] >= 3 and metrics["fit"]["center"] == "joint"


def test_complete_writes_model_predictions_and_top_k(table, tmp_path, capsys):
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("user,item\nu3,i5\nu0,i1\nu3,i5\n")
    out = tmp_path / "out"
    code = main(["complete", str(table), "--max-steps", "300", "--out", str(out),
                 "--predict", str(pairs), "--top-k", "3", "--no-progress"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "line 1 read as a header (user,item)" in printed
    pred = pd.read_csv(out / "predictions.csv")
    assert list(pred.columns) == ["row_id", "col_id", "prediction"]
    assert list(pred["row_id"]) == ["u3", "u0", "u3"]  # the input's order
    model = CompletionModel.load(out)
    np.testing.assert_allclose(pred["prediction"], model.predict(["u3", "u0", "u3"],
                                                                 ["i5", "i1", "i5"]), rtol=1e-5)
    top = pd.read_csv(out / "top_k.csv")
    assert len(top) == 3 * 30
    given = pd.read_csv(table)
    in_input = set(zip(given["user"], given["item"]))  # train, validation and test parts
    assert not in_input & set(zip(top["row_id"], top["col_id"]))
    meta = json.loads((out / "model.json").read_text())
    assert meta["kind"] == "deeplora.completion"


def test_pairs_with_and_without_header_give_the_same_predictions(table, tmp_path):
    with_header, without = tmp_path / "a.csv", tmp_path / "b.csv"
    with_header.write_text("user,item\nu3,i5\nu0,i1\n")
    without.write_text("u3,i5\nu0,i1\n")
    for name, pairs in (("a", with_header), ("b", without)):
        assert main(["complete", str(table), "--max-steps", "50", "--out", str(tmp_path / name),
                     "--predict", str(pairs), "--no-progress"]) == 0
    a = pd.read_csv(tmp_path / "a" / "predictions.csv")
    b = pd.read_csv(tmp_path / "b" / "predictions.csv")
    pd.testing.assert_frame_equal(a, b)


def test_numeric_looking_ids_stay_distinct_strings(tmp_path):
    """'007' and '7' are two rows, through the fit, the model file and the predictions."""
    rng = np.random.default_rng(0)
    rows = ["007", "7", "07", "NA"] * 10
    cols = [f"{j:03d}" for j in range(10) for _ in range(4)]
    path = tmp_path / "ids.csv"
    pd.DataFrame({"r": rows, "c": cols, "v": rng.standard_normal(40)}).to_csv(path, index=False)
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("007,001\n7,001\nNA,009\n")
    out = tmp_path / "out"
    assert main(["complete", str(path), "--max-steps", "20", "--out", str(out), "--predict",
                 str(pairs), "--test-fraction", "0", "--no-progress"]) == 0
    model = CompletionModel.load(out)
    assert sorted(model.row_ids) == ["007", "07", "7", "NA"]
    assert model.col_ids[:2] == ["000", "001"]
    pred = pd.read_csv(out / "predictions.csv", dtype={"row_id": str, "col_id": str},
                       keep_default_na=False)
    assert list(pred["row_id"]) == ["007", "7", "NA"]
    assert pred["prediction"][0] != pred["prediction"][1]


# Each bad input, and the words its one error line holds (docs/RELIABILITY.md lists them).
BAD_COMPLETE = [
    (["complete"], "give an INPUT file or --demo"),
    (["complete", "{table}", "--rank", "0"], "rank must be >= 1"),
    (["complete", "{table}", "--depth", "1"], "depth must be >= 2"),
    (["complete", "{table}", "--init-scale", "-1"], "init_scale must be > 0"),
    (["complete", "{table}", "--lr", "0"], "lr must be > 0"),
    (["complete", "{table}", "--momentum", "1"], "momentum must be in [0, 1)"),
    (["complete", "{table}", "--width", "5"], "--width applies to"),
    (["complete", "{table}", "--solver", "wide", "--basis", "normalized"],
     "--basis applies to --solver compressed only"),
    (["complete", "{table}", "--rank", "40"], "must be < min(m, n)"),
    (["complete", "{missing}"], "does not exist"),
    (["complete", "{table}", "--predict", "{missing}"], "does not exist"),
    (["complete", "{table}", "--top-k", "0"], "--top-k must be >= 1"),
    (["complete", "{table}", "--test-fraction", "0.5", "--val-fraction", "0.5"],
     "leave nothing to train on"),
    (["complete", "{table}", "--clip", "5", "1"], "LOW < HIGH"),
    (["complete", "{empty}"], "is empty: expected lines of"),
    (["complete", "{latin}"], "latin.csv line 2: not UTF-8 text; save the file as UTF-8"),
    (["complete", "{twice}"], "twice.csv line 2: duplicate entry"),
    (["complete", "{words}"], "words.csv line 3: the value 'many' is not a number"),
    (["complete", "{folder}"], "is not a file"),
    (["complete", "{table}", "--predict", "{unknown}"],
     "unknown.csv line 2: unknown column ID 'nobody'"),
    (["complete", "{table}", "--out", "{table}"], "is a file, not a folder; choose another --out"),
    (["complete", "{table}", "--out", "{table}/run"], "cannot be written"),
    (["complete", "{table}", "--resume", "--overwrite"], "choose one"),
    (["complete", "{table}", "--lr", "inf"], "lr must be a finite number"),
    (["complete", "{table}", "--gamma", "nan"], "gamma must be >= 0 and finite"),
    (["complete", "{table}", "--outer-step", "inf"], "outer_step must be > 0 and finite"),
    (["complete", "{table}", "--init-scale", "1e300"], "init_scale must be > 0 and <= 1e6"),
    (["complete", "{table}", "--seed", "-1"], "seed must be >= 0"),
    (["complete", "{table}", "--dist-timeout", "-3"], "--dist-timeout must be a number of seconds"),
    (["complete", "{infinite}"], "infinite.csv line 2: the value 'inf' is not a finite number"),
    (["complete", "{short}"], "short.csv line 2: expected 3 fields (row_id,col_id,value), found 2"),
    (["complete", "{typo}"], "typo.csv line 1: the value '4.1x' is not a number"),
    (["complete", "{table}", "--out", "{dangling}"], "which does not exist; create that folder"),
]


@pytest.mark.parametrize(("args", "message"), BAD_COMPLETE)
def test_bad_input_exits_2_with_one_line(args, message, table, tmp_path, capsys):
    files = {"table": table, "missing": tmp_path / "nope.csv", "folder": tmp_path}
    for name, text in (("empty", b""), ("latin", "a,b,1\n\xe9t\xe9,b,2\n".encode("latin-1")),
                       ("twice", b"a,b,1\na,b,2\n"), ("words", b"a,b,1\n\nc,d,many\n"),
                       ("unknown", b"u0,i1\nu0,nobody\n"), ("infinite", b"a,b,1\nc,d,inf\n"),
                       ("short", b"a,b,1\nc,d\n"), ("typo", b"a,b,4.1x\na,c,2\n")):
        files[name] = tmp_path / f"{name}.csv"
        files[name].write_bytes(text)
    files["dangling"] = tmp_path / "link"
    files["dangling"].symlink_to(tmp_path / "nowhere")
    argv = [a.format(**files) for a in args]
    if "--out" not in argv:
        argv += ["--out", str(tmp_path / "o")]
    assert main([*argv, "--max-steps", "5", "--no-progress"]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0]
    assert "steps" not in captured.out and not (tmp_path / "o").exists()  # before any work


def test_unknown_ids_in_pairs_are_refused_before_the_fit(table, tmp_path, capsys):
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("u0,i1\nu0,nobody\n")
    argv = ["complete", str(table), "--no-progress", "--out", str(tmp_path / "o"),
            "--predict", str(pairs)]
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert "pairs.csv line 2: unknown column ID 'nobody'" in captured.err
    assert "steps" not in captured.out  # nothing was fitted
    assert not (tmp_path / "o" / "model.json").exists()


def test_malformed_tables_name_the_file_and_line(tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b,1\na,b,2\n")
    assert main(["complete", str(bad), "--no-progress", "--out", str(tmp_path / "o")]) == 2
    assert "duplicate" in capsys.readouterr().err
    latin = tmp_path / "latin.csv"
    latin.write_bytes("a,b,1\n\xe9t\xe9,b,2\n".encode("latin-1"))
    assert main(["complete", str(latin), "--no-progress", "--out", str(tmp_path / "o")]) == 2
    assert "latin.csv line 2: not UTF-8 text" in capsys.readouterr().err


def test_the_output_folder_is_never_overwritten_by_surprise(table, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["complete", str(table), "--max-steps", "20", "--no-progress", "--out", str(out)]
    assert main([*argv, "--predict", str(_pairs(tmp_path))]) == 0
    assert main(argv) == 2  # a finished run is there
    assert "holds a finished run" in capsys.readouterr().err
    assert main([*argv, "--overwrite"]) == 0
    assert not (out / "predictions.csv").exists()  # the old run's files went first
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("my notes")
    assert main(["complete", str(table), "--no-progress", "--out", str(mine)]) == 2
    assert "holds files this command did not write (notes.txt)" in capsys.readouterr().err
    file_out = tmp_path / "file"
    file_out.write_text("x")
    assert main(["complete", str(table), "--no-progress", "--out", str(file_out)]) == 2
    assert "is a file" in capsys.readouterr().err
    under_file = file_out / "run"  # cannot be created: refused before the fit, nothing made
    assert main(["complete", str(table), "--no-progress", "--out", str(under_file)]) == 2
    err = capsys.readouterr().err
    assert "cannot be written" in err and f"{file_out} is not a writable folder" in err
    fresh = tmp_path / "new" / "deeper"
    bad_pairs = tmp_path / "bad_pairs.csv"
    bad_pairs.write_text("u0,nobody\n")
    assert main(["complete", str(table), "--no-progress", "--out", str(fresh), "--predict",
                 str(bad_pairs)]) == 2
    assert not (tmp_path / "new").exists()  # a refused run leaves no folder behind


def test_resume_continues_only_the_same_run(table, tmp_path, capsys):
    """A killed run resumes; another split, centering or input is refused before any step.
    A first run may carry --resume (launch lines on clusters do)."""
    out = tmp_path / "out"
    argv = ["complete", str(table), "--no-progress", "--out", str(out), "--eval-every", "10"]
    assert main([*argv, "--max-steps", "20", "--resume", "--predict", str(_pairs(tmp_path))]) == 0
    assert "no checkpoint in" in capsys.readouterr().out
    for other, why in ((["--val-fraction", "0.2"], "for other data"),
                       (["--center", "mean"], "for other data"),
                       (["--seed", "1"], "by CompressedSolver with other settings (seed)")):
        assert main([*argv, "--max-steps", "40", "--resume", *other]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"was written {why}" in err[0], other
    shifted = tmp_path / "shifted.csv"  # the same shape and IDs, other values
    frame = pd.read_csv(table)
    frame.assign(rating=frame["rating"] + 1).to_csv(shifted, index=False)
    assert main(["complete", str(shifted), *argv[2:], "--max-steps", "40", "--resume"]) == 2
    assert "was written for other data" in capsys.readouterr().err
    assert main([*argv, "--max-steps", "40", "--resume"]) == 0
    assert json.loads((out / "metrics.json").read_text())["fit"]["steps"] == 40
    assert not (out / "predictions.csv").exists()  # the earlier model's predictions went
    assert main([*argv, "--max-steps", "30", "--resume"]) == 2
    assert "is at step 40, beyond max_steps 30" in capsys.readouterr().err


def test_a_bug_keeps_its_traceback(monkeypatch):
    """Only user mistakes (UserError) become an `error:` line; any other exception, even a
    ValueError or KeyError, propagates with its traceback."""
    import deeplora.cli_complete

    for bug in (ValueError("a bug"), KeyError("a bug")):
        def broken(args, bug=bug):
            raise bug

        monkeypatch.setattr(deeplora.cli_complete, "run", broken)
        with pytest.raises(type(bug), match="a bug"):
            main(["complete", "--demo"])


def test_version(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0
    assert capsys.readouterr().out.startswith("deeplora ")


def _pairs(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text("u0,i1\n")
    return path

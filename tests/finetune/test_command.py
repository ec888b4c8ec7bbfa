"""`deeplora finetune`: a run on files, resume, and every bad input as one line, exit 2,
nothing written."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from deeplora.cli import _target_modules, main
from deeplora.finetune import FinetuneConfig, finetune

from .conftest import completions, reviews

FAST = ["--steps", "4", "--batch-size", "8", "--max-length", "16", "--no-progress"]


@pytest.fixture()
def files(tmp_path: Path) -> dict[str, Path]:
    paths = {"train": tmp_path / "train.csv", "eval": tmp_path / "eval.tsv",
             "lm": tmp_path / "lm.jsonl"}  # fmt: skip
    reviews(24).to_csv(paths["train"], index=False)
    reviews(8, seed=1).to_csv(paths["eval"], sep="\t", index=False)
    completions(12).to_json(paths["lm"], orient="records", lines=True)
    return paths


def test_classification_run(models: dict[str, Path], files: dict[str, Path], tmp_path: Path,
                            capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    out = tmp_path / "out"
    argv = ["finetune", str(files["train"]), "--eval", str(files["eval"]), "--model",
            str(models["bert"]), "--n", "16", "--balanced", "--out", str(out), *FAST]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "evaluation (8 examples): accuracy" in printed
    assert "zero-training baseline (majority class" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["train_examples"] == 16 and metrics["steps"] == 4
    assert main(argv) == 2  # a finished run is not overwritten by accident
    assert "holds a finished run" in capsys.readouterr().err
    assert main([*argv, "--resume"]) == 2  # nor replaced by a resume with nothing to continue
    assert "holds a finished run and no checkpoint: there is nothing to resume" in (
        capsys.readouterr().err)
    assert main([*argv, "--overwrite", "--method", "lora"]) == 0
    assert json.loads((out / "metrics.json").read_text())["method"] == "lora"
    assert not (out / "peft").exists()


def test_the_papers_recipe_under_explicit_options(models: dict[str, Path],
                                                  files: dict[str, Path], tmp_path: Path) -> None:
    pytest.importorskip("peft")
    base = ["finetune", str(files["train"]), "--eval", str(files["eval"]), "--model",
            str(models["bert"]), "--recipe", "paper", *FAST]  # fmt: skip
    assert main([*base, "--out", str(tmp_path / "deep")]) == 0
    deep = json.loads((tmp_path / "deep" / "config.json").read_text())
    assert (deep["config"]["target_modules"], deep["init_scale"], deep["lr"]) == (
        "attention-mlp", 1e-3, 1e-4)
    assert deep["config"]["steps"] == 4  # --steps on top of the recipe's 1000
    assert main([*base, "--method", "lora", "--lora-init", "paper", "--init-seed", "3",
                 "--out", str(tmp_path / "lora")]) == 0  # fmt: skip
    lora = json.loads((tmp_path / "lora" / "config.json").read_text())["config"]
    assert (lora["lora_init"], lora["init_seed"], lora["lr"], lora["init_scale"]) == (
        "paper", 3, 1e-4, None)
    adapter = json.loads((tmp_path / "lora" / "adapter" / "adapter_config.json").read_text())
    assert adapter["lora_alpha"] == adapter["r"] == 8  # scaling 1


@pytest.mark.parametrize("mine", [["notes.txt"], ["config.json", "predictions.csv"]])
def test_a_folder_of_the_users_files_is_not_overwritten(
        models: dict[str, Path], files: dict[str, Path], tmp_path: Path,
        capsys: pytest.CaptureFixture[str], mine: list[str]) -> None:  # fmt: skip
    """The output folder rule of both commands: files this command did not write (even under
    the names it writes, without a run of its own beside them) are refused before any work
    unless --overwrite."""
    out = tmp_path / "mine"
    out.mkdir()
    for name in mine:
        (out / name).write_text("my notes")
    argv = ["finetune", str(files["train"]), "--eval", str(files["eval"]), "--model",
            str(models["bert"]), "--out", str(out), *FAST]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"holds files this command did not write ({', '.join(mine)})" in err
    assert err.count("\n") == 1 and sorted(p.name for p in out.iterdir()) == mine
    assert all((out / name).read_text() == "my notes" for name in mine)


def test_causal_lm_run_prints_generations(models: dict[str, Path], files: dict[str, Path],
                                          tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                          ) -> None:  # fmt: skip
    argv = ["finetune", str(files["lm"]), "--task", "causal-lm", "--model", str(models["llama"]),
            "--eval-fraction", "0.25", "--generations", "2", "--max-new-tokens", "3",
            "--out", str(tmp_path / "o"), *FAST]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "evaluation (3 examples): loss" in printed and "perplexity" in printed
    assert printed.count("'rate : the food was") == 2  # the two generations


def test_resume_on_the_command_line(models: dict[str, Path], files: dict[str, Path],
                                    tmp_path: Path) -> None:  # fmt: skip
    common = [str(files["train"]), "--eval", str(files["eval"]), "--model", str(models["bert"]),
              "--checkpoint-every", "2", *FAST]  # fmt: skip
    assert main(["finetune", *common, "--out", str(tmp_path / "a")]) == 0
    config = FinetuneConfig(model=str(models["bert"]), steps=4, batch_size=8, max_length=16,
                            checkpoint_every=2, progress=False)  # fmt: skip

    def stop(step: int, idx: np.ndarray, loss: float) -> None:
        if step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        finetune(files["train"], config, evaluation=files["eval"], out=tmp_path / "b",
                 on_step=stop)  # fmt: skip
    assert main(["finetune", *common, "--out", str(tmp_path / "b"), "--resume"]) == 0
    a, b = (json.loads((tmp_path / x / "metrics.json").read_text()) for x in "ab")
    assert a["eval"] == b["eval"] and a["history"] == b["history"]


# Each bad input, and the words its one error line holds (docs/RELIABILITY.md lists them).
BAD_FINETUNE = [
    (["{train}", "--text-column", "review"],
     "training data: no column 'review' (the text_column); the columns are: 'text', "
     "'other', 'label', 'score'"),
    (["{empty}"], "is empty"),
    (["{header}"], "has no rows"),
    (["{train}", "--eval", "{unseen}"], "label(s) 'mixed' never occur in the training data"),
    (["{train}", "--n", "100"], "n=100 is more than the 19 training example(s) available "
                                "after holding out 5"),
    (["{train}", "--eval", "{eval}", "--n", "25"], "n=25 is more than the 24"),
    (["{train}", "--model", "{not_model}"], "is not a model folder: it has no config.json"),
    (["{train}", "--model", "{broken}"], "is not a model: its config cannot be read"),
    (["{train}", "--model", "{train}"], "is not a model: give a Hugging Face model folder"),
    (["{train}", "--model", "{missing}"], "does not exist"),
    (["{missing}"], "training data: {missing} does not exist"),
    (["{train}", "--task", "regression"], "must hold numbers for regression"),
    (["{train}", "--lr", "0"], "lr must be > 0"),
    (["{train}", "--method", "lora", "--export-peft"], "already saves a PEFT adapter"),
    (["{train}", "--demo"], "give a TRAIN file or --demo (not both)"),
    ([], "give a TRAIN file or --demo (not both)"),
    (["--demo", "--task", "regression"], "--demo is a classification of its own data"),
    (["{train}", "--target-modules", "nothing_here"], "matches no module"),
    (["{train}", "--method", "lora", "--depth", "4"], "depth=4 has no effect with "
                                                      "method='lora'"),
    (["{train}", "--lora-alpha", "16"], "lora_alpha=16.0 has no effect with "
                                        "method='deep-lora'"),
    (["{train}", "--gamma", "0.1"], "gamma=0.1 has no effect with method='deep-lora', "
                                    "init='orthogonal'"),
    (["{train}", "--method", "full", "--rank", "4"], "rank=4 has no effect"),
    (["{latin}"], "latin.csv line 2: not UTF-8 text; save the file as UTF-8"),
    (["{train}", "--eval", "{folder}"], "is not a file; give a .csv, .tsv or .jsonl file"),
    (["{train}", "--out", "{train}"], "is a file, not a folder; choose another --out"),
    (["{train}", "--text-column", "label"], "text_column and label_column are both 'label'"),
    (["{train}", "--generations", "5"], "generations=5 has no effect with task='classification'"),
    (["{train}", "--chat-template"], "chat_template=True has no effect with task='classification'"),
    (["{lm}", "--task", "causal-lm", "--chat-template", "--model", "{llama}"],
     "tokenizer has no chat template"),
    (["{train}", "--method", "lora", "--lora-init", "paper", "--lora-alpha", "16"],
     "lora_alpha=16.0 has no effect with method='lora', lora_init='paper'"),
    (["{train}", "--recipe", "paper", "--method", "full"], "the paper's recipe is for adapters"),
    (["{train}", "--eval", "{eval}", "--eval-fraction", "0.5"],
     "--eval-fraction holds out part of TRAIN when there is no --eval"),
    (["{train}", "--max-length", "100000"], "max_length=100000 is more than the"),
    (["{lm}", "--task", "causal-lm"], "is an encoder (Bert"),
    (["{broken_json}"], "broken.jsonl line 2: not valid JSON"),
    (["{array_json}"], "array.jsonl line 1: a JSON list, not an object"),
]  # fmt: skip


@pytest.mark.parametrize(("args", "message"), BAD_FINETUNE)
def test_bad_input_is_one_line_exit_2_and_nothing_written(
    args: list[str], message: str, models: dict[str, Path], files: dict[str, Path],
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    (tmp_path / "latin.csv").write_bytes("text,label\ncaf\xe9,great\n".encode("latin-1"))
    (tmp_path / "broken.jsonl").write_text('{"text": "a", "label": "x"}\n{"text": "b",\n')
    (tmp_path / "array.jsonl").write_text('["a", "x"]\n')
    (tmp_path / "empty.csv").write_text("")
    (tmp_path / "header.csv").write_text("text,label\n")
    unseen = reviews(6, seed=2)
    unseen.loc[3, "label"] = "mixed"
    unseen.to_csv(tmp_path / "unseen.csv", index=False)
    (tmp_path / "not_model").mkdir()
    (tmp_path / "not_model" / "notes.txt").write_text("hello")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{")
    names = {"train": files["train"], "eval": files["eval"], "empty": tmp_path / "empty.csv",
             "header": tmp_path / "header.csv", "unseen": tmp_path / "unseen.csv",
             "not_model": tmp_path / "not_model", "broken": tmp_path / "broken",
             "missing": tmp_path / "missing.csv", "latin": tmp_path / "latin.csv",
             "folder": tmp_path / "not_model", "lm": files["lm"],
             "broken_json": tmp_path / "broken.jsonl", "array_json": tmp_path / "array.jsonl",
             "llama": models["llama"]}
    argv = [a.format(**names) for a in args]
    if "--model" not in argv:
        argv += ["--model", str(models["bert"])]
    out = tmp_path / "out"
    if "--out" not in argv:
        argv += ["--out", str(out)]
    assert main(["finetune", *FAST, *argv]) == 2  # the case's own flags win
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")
    assert message.format(**names) in err[0]
    assert not out.exists()


def test_target_modules_option() -> None:
    assert _target_modules("query-value") == "query-value"
    assert _target_modules("all-linear") == "all-linear"
    assert _target_modules("query, value") == ["query", "value"]
    assert _target_modules(r".*\.(query|key)") == r".*\.(query|key)"

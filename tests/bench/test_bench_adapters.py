"""Smoke tests of ``deeplora bench adapters``: at --quick size (tiny models built from
configs, no downloads) it runs end to end and writes every figure to the JSON file. Timings
are never asserted, only that they were taken."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from deeplora.cli import main

pytest.importorskip("transformers")
pytest.importorskip("peft")

torch.set_num_threads(1)


def test_quick_run_writes_every_figure(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "adapters.json"
    assert main(["bench", "adapters", "--quick", "--repeats", "1", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "1 thread(s)" in printed and "results written to" in printed
    assert "train step Deep LoRA / LoRA" in printed and "<= 1.10" in printed
    assert "peak of a step: Deep LoRA / LoRA" in printed

    report = json.loads(out.read_text())
    assert report["benchmark"] == "adapters"
    assert report["threads"] == report["machine"]["torch_threads"] == 1
    assert report["settings"]["rank"] == 8
    assert set(report["models"]) == {"minilm", "smollm"}
    for result in report["models"].values():
        assert result["case"]["quick"]
        steps = result["train_step_seconds"]
        assert len(steps["lora"]["all"]) == len(steps["deeplora"]["all"]) == 1
        assert steps["lora"]["median"] > 0 and steps["deeplora"]["median"] > 0
        for key in ("train_step_ratio", "inference_ratio", "compressed_init_in_steps"):
            ratio = result[key]
            assert ratio["median"] > 0 and ratio["q1"] <= ratio["median"] <= ratio["q3"]
        assert len(result["inference_seconds"]["merged"]["all"]) == 2  # twice the repeats
        # same rank and targets: Deep LoRA adds one k x k factor per adapted layer
        params = result["trainable_parameters"]
        assert 0 < params["lora"] < params["deeplora"]
        assert result["merged_adapter_modules_left"] == 0
        assert result["merged_max_abs_diff"] < 1e-4
        for name in ("lora_step", "compressed_init"):
            assert result["peak_memory"][name]["peak_rss_mb"] > 0
        step = result["step_memory"]  # the quick run measures at the timing batch
        assert step["case"]["batch_size"] == result["case"]["batch_size"]
        assert step["deeplora_step"]["peak_rss_mb"] > 0 and step["lora_step"]["peak_rss_mb"] > 0
        sizes = result["adapter_bytes"]
        assert "adapter_model.safetensors" in sizes["peft"]["files"]
        assert "deeplora_adapter.safetensors" in sizes["deeplora"]["files"]
        assert all(sizes[k]["total"] > 0 for k in ("peft", "deeplora", "deeplora_compressed"))


def test_bad_repeats_is_a_user_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "adapters", "--quick", "--repeats", "0"]) == 2
    assert "--repeats" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="the machine has a GPU")
def test_a_gpu_that_is_not_there_is_a_user_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "adapters", "--quick", "--device", "cuda"]) == 2
    assert "torch sees no GPU here" in capsys.readouterr().err


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_quick_run_on_the_gpu(tmp_path: Path) -> None:
    out = tmp_path / "adapters.json"
    assert main(["bench", "adapters", "--quick", "--repeats", "1", "--device", "cuda",
                 "--json", str(out)]) == 0  # fmt: skip
    report = json.loads(out.read_text())
    for result in report["models"].values():
        assert result["case"]["device"] == "cuda"
        assert result["step_memory"]["deeplora_step"]["method"].startswith("torch.cuda")

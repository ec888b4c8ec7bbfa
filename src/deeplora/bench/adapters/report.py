"""The adapter benchmark's printed table."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ...harness.machine import (
    fmt,
    table,
)
from ...harness.targets import Target
from .settings import TARGETS


# =========================================================================== report
def _ratio_cell(r: dict[str, Any]) -> str:
    return f"{r['median']:.3f} [{r['q1']:.2f}-{r['q3']:.2f}]"


def _print_table(results: dict[str, dict[str, Any]]) -> None:
    names = list(results)

    def row(label: str, cell: Callable[[dict[str, Any]], str], target: str = "") -> list[str]:
        return [label, *[cell(results[n]) for n in names], target]

    def kb(key: str) -> Callable[[dict[str, Any]], str]:
        def cell(r: dict[str, Any]) -> str:
            found = r["adapter_bytes"][key]
            weights = sum(b for n, b in found["files"].items() if n.endswith(".safetensors"))
            return f"{weights / 1024:,.1f} / {found['total'] / 1024:,.1f}"

        return cell

    rows = [
        row(
            "trainable params LoRA / Deep LoRA",
            lambda r: "{:,} / {:,}".format(
                r["trainable_parameters"]["lora"], r["trainable_parameters"]["deeplora"]
            ),
        ),
        row(
            "train step LoRA (s, median)",
            lambda r: fmt(r["train_step_seconds"]["lora"]["median"], ".3f"),
        ),
        row(
            "train step Deep LoRA (s, median)",
            lambda r: fmt(r["train_step_seconds"]["deeplora"]["median"], ".3f"),
        ),
        row(
            "train step Deep LoRA / LoRA",
            lambda r: _ratio_cell(r["train_step_ratio"]),
            f"<= {TARGETS['train_step']:.2f}",
        ),
        row(
            "inference base (s, median)",
            lambda r: fmt(r["inference_seconds"]["base"]["median"], ".4f"),
        ),
        row(
            "inference LoRA, unmerged (s, median)",
            lambda r: fmt(r["inference_seconds"]["lora"]["median"], ".4f"),
        ),
        row(
            "inference Deep LoRA, unmerged (s, median)",
            lambda r: fmt(r["inference_seconds"]["deeplora"]["median"], ".4f"),
        ),
        row(
            "inference unmerged Deep LoRA / LoRA",
            lambda r: _ratio_cell(r["inference_ratio"]),
            f"<= {TARGETS['inference']:.2f}",
        ),
        row(
            "inference merged / base (the same network: a check)",
            lambda r: _ratio_cell(r["merged_over_base"]),
        ),
        row(
            "compressed init (s, median)",
            lambda r: fmt(r["compressed_init_seconds"]["median"], ".3f"),
        ),
        row(
            "compressed init / Deep LoRA step", lambda r: _ratio_cell(r["compressed_init_in_steps"])
        ),
        row(
            "peak +MB: LoRA step",
            lambda r: fmt(r["peak_memory"]["lora_step"]["increase_mb"], ",.0f"),
        ),
        row(
            "peak +MB: compressed init",
            lambda r: fmt(r["peak_memory"]["compressed_init"]["increase_mb"], ",.0f"),
        ),
        row("peak: compressed init / LoRA step", lambda r: fmt(r["memory_ratio"], ".2f")),
        row("step memory: batch (rows x tokens)",
            lambda r: f"{r['step_memory']['case']['batch_size']} x "
                      f"{r['step_memory']['case']['seq_len']}"),
        row("peak +MB of a step: LoRA / Deep LoRA",
            lambda r: f"{fmt(r['step_memory']['lora_step']['increase_mb'], ',.0f')} / "
                      f"{fmt(r['step_memory']['deeplora_step']['increase_mb'], ',.0f')}"),
        row("peak of a step: Deep LoRA / LoRA", lambda r: fmt(r["step_memory"]["ratio"], ".3f"),
            f"<= {TARGETS['step_memory']:.2f}"),
        row("adapter KB weights / folder: PEFT LoRA", kb("peft")),
        row("adapter KB weights / folder: Deep LoRA", kb("deeplora")),
        row("adapter KB weights / folder: compressed", kb("deeplora_compressed")),
        row("merged vs wrapped max |diff|", lambda r: fmt(r["merged_max_abs_diff"], ".1e")),
    ]
    print(table(["", *names, "target"], rows))
    print(
        "ratios: median over rounds of the per-round ratio [quartiles]; peak +MB: increase "
        "of the peak RSS over the RSS before, one run each"
    )


def targets(results: dict[str, dict[str, Any]]) -> list[Target]:
    """The benchmark's targets, one row per model and ratio."""
    rows = []
    for name, r in results.items():
        rows.append(Target(f"train step Deep LoRA / PEFT LoRA ({name})",
                           r["train_step_ratio"]["median"], TARGETS["train_step"]))
        rows.append(Target(f"inference, both unmerged, Deep LoRA / PEFT LoRA ({name})",
                           r["inference_ratio"]["median"], TARGETS["inference"]))
        case = r["step_memory"]["case"]
        rows.append(Target(f"peak memory of a train step, Deep LoRA / PEFT LoRA ({name}, "
                           f"{case['batch_size']} x {case['seq_len']})",
                           r["step_memory"]["ratio"], TARGETS["step_memory"]))
    return rows

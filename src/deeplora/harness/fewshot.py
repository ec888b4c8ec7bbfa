"""The few-shot study that ``deeplora bench fewshot`` and ``deeplora reproduce fewshot`` run:
Deep LoRA against LoRA baselines over the number of examples and the rank, on a text task
shipped in a package (:mod:`deeplora.harness.fewshot_tasks`).

Every run goes through :func:`deeplora.finetune.finetune` (same data, head, loop, optimizer
and evaluation for every method; only the adapter differs):

methods
    ``deep-lora`` (orthogonal init), ``compressed`` (Deep LoRA's compressed init),
    ``vanilla-lora`` (the paper's LoRA baseline on PEFT: A ~ N(0, 1), B = 0, scaling 1) and
    ``lora`` (PEFT's LoRA with ``lora_alpha = 2 * rank``: the rule of thumb of most PEFT
    guides, r 8 / alpha 16, which keeps one update scale across the rank sweep).
recipes
    ``library``: the library's defaults (query and value projections, 100 steps; Deep LoRA at
    eps 3e-2 and its default lr, not tuned here; PEFT LoRA's lr chosen from 1e-4 / 5e-4 / 2e-3;
    vanilla LoRA's from 3e-5 / 1e-4 / 3e-4; the head at lr 1e-3). ``paper``: the paper's
    (attention and MLP layers, eps 1e-3, 1000 steps, only the adapter trained: the head kept at
    its random init; every method's lr chosen from 3e-5 / 1e-4 / 3e-4 around the paper's 1e-4,
    compressed Deep LoRA's inner lr from 3e-3 / 1e-2 / 3e-2 with gamma 1e-2). ``--lrs`` sets a
    method's grid, ``--eps`` Deep LoRA's init scale, ``--head-lr`` the head's lr.
cells
    n = 16, 64, 256 at rank 8 (score vs n) and the ranks at n = 16 (score vs rank), seeds
    0 .. S-1 for each; the seed sets the sample, the head and adapter init and the data order,
    so every method sees the same examples for a seed. ``--init-draws K`` also runs each
    (cell, seed) with K - 1 other adapter inits (``init_seed``), the sample kept.
learning rates
    a method with more than one lr in its grid has it chosen per n by the mean *validation*
    score at rank 8 over separate selection seeds (1000, 1001, ...); the rank sweep uses the
    lr chosen at n = 16. ``--eval validation`` scores every cell on the validation split at
    selection seeds instead (one lr per method): how the library's defaults were chosen,
    without the test examples.
shared loop
    AdamW (betas 0.9, 0.999, eps 1e-6, no weight decay), constant lr, the recipe's steps of
    batch 16 (all n examples when n < 16), ``--max-length`` tokens; a new linear head on the
    mean-pooled last hidden states, at the recipe's head lr.

Reported per cell: the task's score (accuracy, or Pearson r) and a second metric, mean and
sample standard deviation over seeds; the spread across ranks is max - min of the per-rank
means at n = 16. Targets: Deep LoRA's mean >= each LoRA baseline's at every n, and Deep LoRA's
spread across ranks <= half of the baseline's.

Runs are spread over ``--workers`` single-threaded 'spawn' processes. Each finished run is
appended (one JSON line, flushed and fsynced) to a run log; ``--resume`` skips the runs the
log already holds (a torn last line is ignored), so a killed benchmark continues where it
stopped; with more ``--seeds`` (or other ``--ns`` / ``--ranks`` / methods) it adds runs to an
earlier benchmark, as long as the settings that decide a run are the same.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..errors import UserError
from ..finetune import FinetuneConfig, finetune
from ..finetune.config import (
    DEFAULT_COMPRESSED_LR,
    DEFAULT_HEAD_LR,
    DEFAULT_LR,
    RECIPES,
    recipe_settings,
)
from .fewshot_tasks import FewshotTask, Tables, task_named
from .machine import exit_with_parent

if TYPE_CHECKING:
    from .fewshot_log import RunLog

RUNS_KIND = "deeplora.bench-fewshot-runs"
FORMAT_VERSION = 2
METHODS = ("deep-lora", "compressed", "vanilla-lora", "lora")
LABELS = {"deep-lora": "Deep LoRA", "compressed": "compressed Deep LoRA",
          "vanilla-lora": "vanilla LoRA", "lora": "PEFT LoRA"}  # fmt: skip
DEEP = ("deep-lora", "compressed")  # the Deep LoRA methods (an eps)
BASELINES = ("vanilla-lora", "lora")  # what Deep LoRA's targets compare it with
# each method's lr grid when --lrs does not give one, per recipe
GRIDS: dict[str, dict[str, tuple[float, ...]]] = {
    "library": {"deep-lora": (DEFAULT_LR["deep-lora"],), "compressed": (DEFAULT_COMPRESSED_LR,),
                "vanilla-lora": (3e-5, 1e-4, 3e-4), "lora": (1e-4, 5e-4, 2e-3)},
    "paper": {"deep-lora": (3e-5, 1e-4, 3e-4), "compressed": (3e-3, 1e-2, 3e-2),
              "vanilla-lora": (3e-5, 1e-4, 3e-4), "lora": (3e-5, 1e-4, 3e-4)},
}  # fmt: skip
RECIPE_STEPS = {"library": 100, "paper": 1000}
SPREAD_TARGET = 0.5  # Deep LoRA's spread across ranks at most this times a baseline's
TIE = 1e-9  # scores closer than this are equal (for the targets)
SELECTION_SEED0 = 1000  # lr-selection (and --eval validation) seeds, apart from 0 .. S-1
INIT_SEED_STRIDE = 100_000  # init draw d > 0 of seed s: init_seed = d * stride + s
# the settings that decide what a run computes (with its split, method, n, rank, seed, lr and
# init draw, which its key holds): a resumed benchmark must keep them; the rest (ns, ranks,
# seeds, methods, the lr grids, workers) only decide which runs there are
RUN_SETTINGS = ("task", "recipe", "model", "steps", "batch_size", "max_length", "val_size",
                "test_size", "alpha_per_rank", "eps", "head_lr", "device")  # fmt: skip


@dataclass(frozen=True)
class Settings:
    """What one benchmark runs (the defaults are the 60-minute run on 2 cores)."""

    task: str = "reviews"  # a name in fewshot_tasks.TASKS
    methods: tuple[str, ...] = ("deep-lora", "lora")
    recipe: str = "library"  # "library" or "paper"
    model: str = "minilm"  # as FinetuneConfig.model
    ns: tuple[int, ...] = (16, 64, 256)  # training examples (score vs n, at base_rank)
    ranks: tuple[int, ...] = (4, 8, 16, 32, 64)  # the rank sweep, at rank_n
    base_rank: int = 8  # rank of the n sweep and of the lr selection
    rank_n: int = 16  # n of the rank sweep
    seeds: int = 5  # seeds 0 .. seeds-1 per cell
    lrs: dict[str, tuple[float, ...]] = field(default_factory=dict)  # grids other than GRIDS
    eps: float | None = None  # Deep LoRA's init scale (None: the recipe's)
    head_lr: float | None = None  # the task head's lr (None: the recipe's; 0: kept at init)
    selection_seeds: int = 1  # seeds per (method, n, lr) of the lr selection (--full: 2)
    init_draws: int = 1  # adapter inits per (cell, seed): the seed's own and draws - 1 others
    eval_split: str = "test"  # "test", or "validation" (selection seeds, one lr per method)
    alpha_per_rank: float = 2.0  # PEFT LoRA: lora_alpha = alpha_per_rank * rank
    steps: int | None = None  # optimizer steps per run (None: the recipe's)
    batch_size: int = 16
    max_length: int = 64  # tokens per example (longer ones are cut)
    val_size: int = 300  # validation examples held out of the training data
    test_size: int | None = 500  # test examples (None: all; else a stratified subsample)
    workers: int = 2  # single-threaded worker processes
    device: str = "cpu"  # where each run trains (as FinetuneConfig.device)

    def __post_init__(self) -> None:
        task_named(self.task)
        if self.recipe not in RECIPES:
            raise UserError(f"--recipe must be one of {', '.join(RECIPES)}; got {self.recipe!r}")
        if self.eval_split not in ("test", "validation"):
            raise UserError(f"--eval must be test or validation, got {self.eval_split!r}")
        _values("methods", self.methods)
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise UserError(f"--methods: unknown {unknown[0]!r}; choose from {', '.join(METHODS)}")
        for method, grid in self.lrs.items():
            if method not in METHODS:
                raise UserError(f"--lrs: unknown method {method!r}; choose from "
                                 f"{', '.join(METHODS)}")  # fmt: skip
            _values(f"--lrs {method}", grid)
            if any(not (isinstance(v, int | float) and math.isfinite(v) and v > 0) for v in grid):
                raise UserError(f"--lrs {method} must be positive numbers, got {grid}")
        for name, values in (("ns", self.ns), ("ranks", self.ranks)):
            _values(f"--{name}", values)
            if any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in values):
                raise UserError(f"--{name} must be positive integers, got {values}")
        if "compressed" in self.methods and any(r % 2 for r in self.ranks):
            raise UserError(f"the compressed init needs even ranks (2 r_hat), got "
                             f"{list(self.ranks)}")  # fmt: skip
        if self.eps is not None and not (math.isfinite(self.eps) and self.eps > 0):
            raise UserError(f"--eps must be a positive number, got {self.eps}")
        for name in ("seeds", "selection_seeds", "init_draws", "batch_size", "workers"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be >= 1, got "
                                 f"{getattr(self, name)}")  # fmt: skip
        if self.head_lr is not None and not (math.isfinite(self.head_lr) and self.head_lr >= 0):
            raise UserError(f"--head-lr must be a number >= 0, got {self.head_lr}")
        if self.steps is not None and self.steps < 1:
            raise UserError(f"--steps must be >= 1, got {self.steps}")
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
        if self.eval_split == "validation":
            several = [m for m in self.methods if len(self.grid(m)) > 1]
            if several:
                raise UserError(f"--eval validation scores every cell at one lr per method; "
                                 f"{several[0]} has {list(self.grid(several[0]))}: give "
                                 f"--lrs {several[0]}=LR")  # fmt: skip

    @property
    def fewshot_task(self) -> FewshotTask:
        return task_named(self.task)

    @property
    def run_steps(self) -> int:
        return RECIPE_STEPS[self.recipe] if self.steps is None else self.steps

    @property
    def run_head_lr(self) -> float:
        """The task head's lr: ``head_lr``, else the recipe's (0 for the paper's: frozen)."""
        if self.head_lr is not None:
            return self.head_lr
        return float(recipe_settings(self.recipe).get("head_lr", DEFAULT_HEAD_LR))

    def grid(self, method: str) -> tuple[float, ...]:
        """``method``'s learning rates: one is used as is, several are chosen from."""
        return self.lrs.get(method, GRIDS[self.recipe][method])

    def selected(self) -> list[str]:
        """The methods whose lr is chosen on validation."""
        if self.eval_split == "validation":
            return []
        return [m for m in self.methods if len(self.grid(m)) > 1]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for name in ("methods", "ns", "ranks"):
            data[name] = list(data[name])
        data["lrs"] = {m: list(self.grid(m)) for m in self.methods}
        data["steps"] = self.run_steps
        data["head_lr"] = self.run_head_lr
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Settings:
        """The settings :meth:`to_dict` wrote (every grid and the steps made explicit)."""
        values: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v
                                  for k, v in data.items()}  # fmt: skip
        values["lrs"] = {m: tuple(v) for m, v in data.get("lrs", {}).items()}
        return cls(**values)

    def lora_alpha(self, rank: int) -> float:
        return float(self.alpha_per_rank * rank)


def _values(name: str, values: Sequence[Any]) -> None:
    if not values:
        raise UserError(f"{name} needs at least one value")
    if len(set(values)) != len(values):
        raise UserError(f"{name} has a repeated value: {tuple(values)}")


QUICK = Settings(ns=(16, 64), ranks=(4, 8), seeds=2, lrs={"lora": (5e-4, 2e-3)}, steps=15,
                 max_length=32, val_size=64, test_size=128)  # fmt: skip
# --recipe paper: the four methods, the paper's ranks 8-64, 3 seeds (sized for 2 cores with
# --resume: hours, not days)
PAPER = Settings(recipe="paper", methods=METHODS, ranks=(8, 16, 32, 64), seeds=3)
FULL_SEEDS = 10
# --full: more seeds, longer inputs, every test example and two selection seeds per lr
FULL = dict(seeds=FULL_SEEDS, max_length=128, test_size=None, selection_seeds=2)


# =========================================================================== runs
@dataclass(frozen=True)
class Job:
    """One fine-tuning run: a method at (n, rank, seed, lr), evaluated on one split."""

    split: str  # "validation" (lr selection, --eval validation) or "test"
    method: str
    n: int
    rank: int
    seed: int
    lr: float
    draw: int = 0  # the adapter init: 0 is the seed's own

    @property
    def key(self) -> str:
        return job_key(self.split, self.method, self.n, self.rank, self.seed, self.lr, self.draw)

    @property
    def init_seed(self) -> int | None:
        return None if self.draw == 0 else self.draw * INIT_SEED_STRIDE + self.seed

    def describe(self) -> str:
        draw = f" init draw {self.draw}" if self.draw else ""
        return (f"{self.split} {LABELS[self.method]} n={self.n} r={self.rank} seed {self.seed} "
                f"lr {self.lr:g}{draw}")  # fmt: skip


def job_key(split: str, method: str, n: int, rank: int, seed: int, lr: float,
            draw: int = 0) -> str:  # fmt: skip
    return (f"{split}|{method}|n{n}|r{rank}|s{seed}|lr{lr!r}"
            + (f"|d{draw}" if draw else ""))  # fmt: skip


def record_key(record: dict[str, Any]) -> str:
    return job_key(record["split"], record["method"], record["n"], record["rank"],
                   record["seed"], record["lr"], record.get("draw", 0))  # fmt: skip


def job_of(record: dict[str, Any]) -> Job:
    return Job(**{k: record[k] for k in ("split", "method", "n", "rank", "seed", "lr")},
               draw=record.get("draw", 0))  # fmt: skip


def selection_jobs(settings: Settings) -> list[Job]:
    return [Job("validation", method, n, settings.base_rank, SELECTION_SEED0 + s, lr)
            for method in settings.selected() for n in settings.ns
            for lr in settings.grid(method) for s in range(settings.selection_seeds)]  # fmt: skip


def cells(settings: Settings) -> list[tuple[int, int]]:
    """The (n, rank) cells: the n sweep at the base rank, then the rank sweep at rank_n."""
    out = [(n, settings.base_rank) for n in settings.ns]
    out += [(settings.rank_n, r) for r in settings.ranks if r != settings.base_rank]
    return out


def cell_seeds(settings: Settings) -> list[int]:
    first = SELECTION_SEED0 if settings.eval_split == "validation" else 0
    return [first + s for s in range(settings.seeds)]


def measured_jobs(
    settings: Settings, method: str, lrs: dict[int, float] | None = None
) -> list[Job]:
    """The scored runs of ``method`` (at ``lrs[n]`` when its lr is chosen on validation)."""
    jobs = []
    for n, rank in cells(settings):
        lr = (lrs or {})[n] if method in settings.selected() else settings.grid(method)[0]
        jobs += [Job(settings.eval_split, method, n, rank, s, lr, d)
                 for s in cell_seeds(settings) for d in range(settings.init_draws)]  # fmt: skip
    return jobs


def finetune_config(settings: Settings, job: Job) -> FinetuneConfig:
    """The :class:`FinetuneConfig` of one run: the task's columns, the recipe's settings for
    the method, then the job's."""
    method = "deep-lora" if job.method in DEEP else "lora"
    init = "compressed" if job.method == "compressed" else "orthogonal"
    fields: dict[str, Any] = {**recipe_settings(settings.recipe, method, init),
                              **settings.fewshot_task.config_fields()}  # fmt: skip
    if job.method in DEEP:
        fields["init"] = init
        if settings.eps is not None:
            fields["init_scale"] = settings.eps
    elif job.method == "vanilla-lora":
        fields["lora_init"] = "paper"
    else:
        fields["lora_alpha"] = settings.lora_alpha(job.rank)
    fields.update(n=job.n, model=settings.model, method=method, rank=job.rank, lr=job.lr,
                  steps=settings.run_steps, batch_size=settings.batch_size,
                  max_length=settings.max_length, seed=job.seed, init_seed=job.init_seed,
                  head_lr=settings.run_head_lr,
                  threads=1, progress=False, device=settings.device)  # fmt: skip
    return FinetuneConfig(**fields)


_TABLES: Tables | None = None
_SETTINGS: Settings | None = None


def _init_worker(settings: Settings, tables: Tables) -> None:
    global _TABLES, _SETTINGS
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(1)
    _TABLES, _SETTINGS = tables, settings


def _init_pool_worker(settings: Settings, tables: Tables, parent: int) -> None:
    exit_with_parent(parent)  # a killed benchmark takes its workers with it
    _init_worker(settings, tables)


def run_job(job: Job) -> dict[str, Any]:
    """One run in this (worker) process: its metrics as one JSON-able record; ``score`` is
    the task's metric (accuracy, or Pearson r)."""
    assert _TABLES is not None and _SETTINGS is not None, "call _init_worker first"
    config = finetune_config(_SETTINGS, job)
    task = _SETTINGS.fewshot_task
    evaluation = _TABLES.validation if job.split == "validation" else _TABLES.test
    start, cpu = time.perf_counter(), time.process_time()
    result = finetune(_TABLES.pool, config, evaluation=evaluation)
    metrics = result.metrics
    scores = metrics["eval"]
    return {
        **asdict(job),
        "score": scores[task.metric],
        "second": scores[task.second],
        **{k: v for k, v in scores.items()},
        "eval_loss": scores["loss"],
        "baseline_score": metrics["baseline"].get(task.metric),
        "final_train_loss": metrics["final_train_loss"],
        "lr_used": metrics["lr"],
        "head_lr": metrics["head_lr"],
        "init_scale": metrics["init_scale"],
        "init_seed": job.init_seed,
        "lora_alpha": config.lora_scaling_alpha if config.method == "lora" else None,
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
    with ctx.Pool(min(settings.workers, len(jobs)), initializer=_init_pool_worker,
                  initargs=(settings, tables, os.getpid())) as pool:  # fmt: skip
        for record in pool.imap_unordered(run_job, jobs):
            done(record)
        pool.close()  # a clean exit: the pool's terminate() leaks the workers' semaphores
        pool.join()


def all_jobs(settings: Settings) -> tuple[list[Job], int]:
    """The jobs of phase 1 (the lr selection, and the scored runs that need none) and the
    count of all the benchmark's runs (phase 2 at an lr not chosen yet counts the same)."""
    first = selection_jobs(settings)
    later = 0
    for method in settings.methods:
        jobs = measured_jobs(settings, method, {n: 1.0 for n in settings.ns})
        if method in settings.selected():
            later += len(jobs)
        else:
            first += jobs
    return first, len(first) + later


def pending(settings: Settings, log: RunLog) -> int:
    """How many of the benchmark's runs ``log`` does not hold yet (the runs at an lr still to
    be chosen count as pending unless a scored run of that cell and seed is logged)."""
    first, total = all_jobs(settings)
    done = len(first) - len(log.missing(first))
    seeds, keys = set(cell_seeds(settings)), set(cells(settings))
    for method in settings.selected():
        done += sum(1 for r in log.records.values()
                    if r["split"] == settings.eval_split and r["method"] == method
                    and (r["n"], r["rank"]) in keys and r["seed"] in seeds
                    and r.get("draw", 0) < settings.init_draws)  # fmt: skip
    return max(total - done, 0)


def run_benchmark(
    settings: Settings,
    tables: Tables,
    log: RunLog,
    done: Callable[[dict[str, Any]], None] | None = None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Run the benchmark's jobs that ``log`` does not hold yet, in two phases: the lr selection
    (validation) with the scored runs of methods at one lr, then the scored runs of the other
    methods at the lr chosen per n. Each finished run is added to ``log``, then passed to
    ``done``. Returns the selection (:func:`select_lrs`) and the records of this benchmark's
    jobs; records of other jobs in ``log`` are left out."""

    def logged(record: dict[str, Any]) -> None:
        log.add(record)
        if done is not None:
            done(record)

    first, _ = all_jobs(settings)
    execute(log.missing(first), settings, tables, logged)
    selection = select_lrs(log.records.values(), settings)
    second: list[Job] = []
    for method in settings.selected():
        chosen = {n: selection[method][str(n)]["chosen"] for n in settings.ns}
        second += measured_jobs(settings, method, chosen)
    execute(log.missing(second), settings, tables, logged)
    wanted = {j.key for j in first + second}
    return selection, [r for k, r in log.records.items() if k in wanted]


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
    """Per method whose lr is chosen, per n: the grid value with the best mean *validation*
    score at the base rank (ties: the smaller lr). Test records are ignored."""
    by: dict[tuple[str, int], dict[float, list[float]]] = {}
    for r in records:
        if r["split"] != "validation" or r["rank"] != settings.base_rank or r.get("draw", 0):
            continue
        if r["method"] in settings.selected() and r["n"] in settings.ns and \
                r["lr"] in settings.grid(r["method"]) and r["seed"] >= SELECTION_SEED0:
            by.setdefault((r["method"], r["n"]), {}).setdefault(r["lr"], []).append(score(r))
    out: dict[str, Any] = {}
    for method in settings.selected():
        grid = settings.grid(method)
        out[method] = {}
        for n in settings.ns:
            found = by.get((method, n), {})
            scores = {lr: mean_std(found.get(lr, [])[: settings.selection_seeds]) for lr in grid}
            ready = {lr: s["mean"] for lr, s in scores.items() if s["count"]}
            if len(ready) < len(grid):
                raise UserError(f"the lr selection of {LABELS[method]} at n = {n} is missing "
                                 f"runs: it has {sorted(ready)} of {list(grid)}")  # fmt: skip
            best = max(sorted(ready), key=lambda lr: (ready[lr], -lr))
            out[method][str(n)] = {"chosen": best,
                                   "validation_score": {repr(lr): s for lr, s in scores.items()}}
    return out


def score(record: dict[str, Any]) -> float:
    """A run's score (records of format 1 have only ``accuracy``)."""
    return float(record["score"] if "score" in record else record["accuracy"])

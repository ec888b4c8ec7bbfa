"""The paper's experiments as commands: ``deeplora reproduce EXPERIMENT``.

Each experiment is one module with a ``run(ctx: Context) -> dict`` function that computes its
numbers at the size ``ctx.size`` asks for, writes its figures through ``ctx.figure(name)``
(PNG and SVG) and returns a JSON-ready dict with a ``"summary"`` list of short lines to print.
:func:`run_experiment` times it and writes ``OUT/NAME/results.json`` atomically, last.

Sizes: ``smoke`` (seconds; the test suite runs it), ``default`` (CPU-sized;
docs/REPRODUCTION.md gives the times), ``full`` (the paper's sizes).
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from .._io import FORMAT_VERSION, write_json
from ..errors import UserError

Size = Literal["smoke", "default", "full"]
SIZES: tuple[Size, ...] = ("smoke", "default", "full")
RESULTS = "results.json"
RESULTS_KIND = "deeplora.experiment"


@dataclass(frozen=True)
class Context:
    """What an experiment is asked to do: its size, its output folder, seed, progress bars."""

    size: Size
    out: Path  # this experiment's folder
    seed: int = 0
    progress: bool = False

    def figure(self, name: str) -> Path:
        """The path stem of a figure (plots write ``stem.png`` and ``stem.svg``)."""
        self.out.mkdir(parents=True, exist_ok=True)
        return self.out / name

    def pick(self, smoke: Any, default: Any, full: Any) -> Any:
        """The value for this context's size."""
        return {"smoke": smoke, "default": default, "full": full}[self.size]


@dataclass(frozen=True)
class Experiment:
    """One experiment of the paper: its command name, title and where the paper states it."""

    name: str
    title: str
    paper: str
    module: str  # the module under deeplora.experiments holding run(ctx)

    def runner(self) -> Callable[[Context], dict[str, Any]]:
        mod = importlib.import_module(f"{__name__}.{self.module}")
        fn: Callable[[Context], dict[str, Any]] = mod.run
        return fn


EXPERIMENTS: dict[str, Experiment] = {
    e.name: e
    for e in (
        Experiment("invariance", "Only 2r singular values of each layer move (factorization)",
                   "docs/METHOD.md 2", "invariance"),
        Experiment("trajectories", "Wide vs compressed trajectories, with and without gamma",
                   "docs/METHOD.md 3.1, 3.3", "trajectories"),
        Experiment("rank-sweep", "r_hat sweep: compressed vs a narrow random-init network",
                   "docs/METHOD.md 3.3", "rank_sweep"),
        Experiment("depth-width", "Depth 2 vs depth 3 across widths", "docs/METHOD.md 3.3",
                   "depth_width"),
        Experiment("fewshot", "Deep LoRA vs LoRA against examples and rank", "docs/METHOD.md 4.1",
                   "fewshot"),
        Experiment("effective-rank", "Effective rank of the learned updates", "docs/METHOD.md 4.1",
                   "effective_rank"),
        Experiment("intro", "Singular values and subspace alignment of each dW (MiniLM)",
                   "docs/METHOD.md 2, 4", "intro"),
    )
}


def run_experiment(
    name: str, size: Size, out: Path, *, seed: int = 0, progress: bool = False
) -> dict[str, Any]:
    """Run one experiment into ``out / name`` and write its ``results.json`` (atomically,
    after its figures). Returns what was written."""
    if name not in EXPERIMENTS:
        raise UserError(f"unknown experiment {name!r}; choose from {', '.join(EXPERIMENTS)}")
    if size not in SIZES:
        raise UserError(f"size must be one of {', '.join(SIZES)}, got {size!r}")
    exp = EXPERIMENTS[name]
    ctx = Context(size=size, out=Path(out) / name, seed=seed, progress=progress)
    ctx.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    results = exp.runner()(ctx)
    seconds = time.perf_counter() - start
    from ..harness.machine import machine_info

    record = {
        "kind": RESULTS_KIND,
        "format_version": FORMAT_VERSION,
        "experiment": name,
        "title": exp.title,
        "paper": exp.paper,
        "size": size,
        "seed": seed,
        "seconds": seconds,
        "machine": machine_info(),
        "figures": sorted(p.name for p in ctx.out.iterdir() if p.suffix in (".png", ".svg")),
        **results,
    }
    write_json(ctx.out / RESULTS, record)
    return record

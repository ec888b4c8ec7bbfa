"""Experiment 5 (docs/METHOD.md 4.1): Deep LoRA against PEFT's LoRA as the number of training
examples n and the rank change, through the few-shot benchmark harness
(:mod:`deeplora.harness.fewshot`: the same data split, cells, lr selection, workers, run log and
aggregation as ``deeplora bench fewshot``).

Task: all-MiniLM-L6-v2 on the Amazon fine-food reviews (great / other), test accuracy; the
paper's numbers are for BERT-base on GLUE's STS-B (Pearson correlation), so the values do not
compare, only the trends do: Deep LoRA ahead with few examples, and Deep LoRA's accuracy
nearly independent of the rank while LoRA's falls at high rank.

Deep LoRA runs at the library defaults (depth 3, eps 3e-2, lr 1e-3); PEFT LoRA has
``lora_alpha = 2 * rank`` and its learning rate chosen per n on a validation split held out of
the training reviews (the bench's protocol, :mod:`deeplora.harness.fewshot`). Reported per cell:
test accuracy and macro-F1, mean ± std over seeds, the spread of the mean accuracy across
ranks (max - min) and the bench's two targets.

Sizes: ``smoke`` (n 8, rank 8, one seed, 3 steps, 32 test reviews, in-process: 4 runs),
``default`` (n 16 and 64, ranks 8 / 16 / 64 at n = 16 (three of the paper's four), 2 seeds,
the bench's 3-value lr grid with 1 selection seed, 100 steps, 500 test reviews, 2
single-threaded workers: 22 runs, 18 minutes measured on 2 cores) and ``full`` (the bench's
``--full``: n 16 / 64 / 256, ranks 4-64, 10 seeds, 2 selection seeds, all 1,000 test reviews:
158 runs, hours).

The seeds are the bench's (0 .. S-1 per cell, 1000 + i for the lr selection); ``ctx.seed``
(``--seed``) does not apply here.

The runs are logged to ``runs-SIZE.jsonl`` in the output folder (as the bench's run log); a
rerun into the same folder with the same settings reuses the runs already there (so a killed
``--full`` run continues where it stopped) and says how many it reused.
"""

from __future__ import annotations

import os
import time
from dataclasses import replace
from typing import Any

from ..harness.fewshot import (
    FULL as BENCH_FULL,
)
from ..harness.fewshot import (
    LABELS,
    SPREAD_TARGET,
    Settings,
    job_of,
    run_benchmark,
)
from ..harness.fewshot_log import RunLog
from ..harness.fewshot_report import aggregate, render
from ..harness.fewshot_tasks import load_tables
from . import Context

SMOKE = Settings(ns=(8,), ranks=(8,), base_rank=8, rank_n=8, seeds=1, lrs={"lora": (5e-4, 2e-3)},
                 selection_seeds=1, steps=3, max_length=32, val_size=16, test_size=32,
                 workers=1)  # fmt: skip
DEFAULT = Settings(ns=(16, 64), ranks=(8, 16, 64), seeds=2, selection_seeds=1,
                   test_size=500, workers=2)  # fmt: skip
FULL = replace(Settings(), **BENCH_FULL)  # type: ignore[arg-type]

# docs/METHOD.md 4.1 (BERT-base, STS-B Pearson correlation, mean ± std over seeds)
PAPER_BY_N: dict[int, dict[str, tuple[float, float]]] = {
    16: {"lora": (0.529, 0.122), "deep-lora": (0.598, 0.103)},
    64: {"lora": (0.735, 0.037), "deep-lora": (0.751, 0.035)},
    256: {"lora": (0.814, 0.012), "deep-lora": (0.828, 0.007)},
}
PAPER_RANK_N = 16
PAPER_BY_RANK: dict[int, dict[str, float]] = {
    8: {"lora": 0.539, "deep-lora": 0.635},
    16: {"lora": 0.524, "deep-lora": 0.652},
    32: {"lora": 0.456, "deep-lora": 0.660},
    64: {"lora": 0.175, "deep-lora": 0.667},
}


def settings_for(ctx: Context) -> Settings:
    """The benchmark settings of this context's size."""
    settings: Settings = ctx.pick(SMOKE, DEFAULT, FULL)
    return settings


def _paper() -> dict[str, Any]:
    def spread(method: str) -> float:
        values = [v[method] for v in PAPER_BY_RANK.values()]
        return max(values) - min(values)

    return {
        "source": "docs/METHOD.md 4.1: BERT-base on STS-B, Pearson correlation (not accuracy)",
        "by_n": {str(n): {m: {"mean": v[0], "std": v[1]} for m, v in d.items()}
                 for n, d in PAPER_BY_N.items()},
        "by_rank": {"n": PAPER_RANK_N, **{str(r): d for r, d in PAPER_BY_RANK.items()}},
        "rank_spread": {"deep-lora": spread("deep-lora"), "lora": spread("lora")},
    }


def _ms(stats: dict[str, Any]) -> str:
    if stats["mean"] is None:
        return "-"
    return f"{stats['mean']:.3f}" + ("" if stats["std"] is None else f" ± {stats['std']:.3f}")


def _summary(summary: dict[str, Any], settings: Settings, smoke: bool) -> list[str]:
    by = {(c["method"], c["n"], c["rank"]): c for c in summary["cells"]}
    lines = [f"MiniLM, Amazon reviews, test accuracy, mean ± std over {settings.seeds} seed(s) "
             "(paper: BERT-base, STS-B Pearson: another task and model, compare trends only)"]
    for n in settings.ns:
        d, lo = by[("deep-lora", n, settings.base_rank)], by[("lora", n, settings.base_rank)]
        lr = "" if lo["lr"] is None else f" (lr {lo['lr']:g})"
        line = (f"n={n} rank {settings.base_rank}: Deep LoRA {_ms(d['score'])} vs PEFT LoRA "
                f"{_ms(lo['score'])}{lr}")  # fmt: skip
        if n in PAPER_BY_N:
            p = PAPER_BY_N[n]
            line += (f"; paper n={n}: {p['deep-lora'][0]:.3f} ± {p['deep-lora'][1]:.3f} vs "
                     f"{p['lora'][0]:.3f} ± {p['lora'][1]:.3f}")  # fmt: skip
        lines.append(line)
    spread = summary["spread"]
    for method in ("deep-lora", "lora"):
        means = "/".join("-" if m is None else f"{m:.3f}" for m in spread[method]["mean_score"])
        width = spread[method]["max_minus_min"]
        paper = "/".join(f"{PAPER_BY_RANK[r][method]:.3f}" for r in PAPER_BY_RANK)
        lines.append(f"{LABELS[method]} at ranks {'/'.join(map(str, settings.ranks))} "
                     f"(n={settings.rank_n}): {means}, spread "
                     f"{'-' if width is None else f'{width:.3f}'}; paper ranks "
                     f"{'/'.join(map(str, PAPER_BY_RANK))} (n={PAPER_RANK_N}): {paper}, spread "
                     f"{_paper()['rank_spread'][method]:.3f}")  # fmt: skip
    t = summary["targets"]["lora"]
    verdict = {True: "met", False: "missed", None: "undecided"}
    rs = t["rank_spread"]
    lines.append(f"targets: Deep LoRA mean >= LoRA's at every n: "
                 f"{verdict[t['mean_at_every_n']['met']]}; Deep LoRA's spread across ranks <= "
                 f"{SPREAD_TARGET:g} x LoRA's: {verdict[rs['met']]}"
                 + ("" if rs["ratio"] is None else f" (ratio {rs['ratio']:.2f})"))
    if smoke:
        lines.append("smoke size: a few steps on a few reviews; the numbers say nothing about "
                     "the methods")  # fmt: skip
    return lines


def run(ctx: Context) -> dict[str, Any]:
    """Run (or continue) the few-shot comparison at this context's size; write the figure
    ``fewshot`` (accuracy vs n, accuracy vs rank) and a text report ``fewshot.txt``."""
    from ..diagnostics.plots import plot_fewshot

    settings = settings_for(ctx)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # also in the spawned workers
    log_path = ctx.out / f"runs-{ctx.size}.jsonl"
    try:
        log = RunLog(log_path, settings, resume=True, overwrite=False)
    except ValueError:  # a log of other settings (or not a run log): start it again
        log = RunLog(log_path, settings, resume=False, overwrite=True)
    reused = len(log.records)
    tables = load_tables(settings.fewshot_task, settings.val_size, settings.test_size,
                         max(settings.ns))  # fmt: skip
    majority = tables.baseline(settings.fewshot_task)
    start = time.perf_counter()
    count = 0

    def done(record: dict[str, Any]) -> None:
        nonlocal count
        count += 1
        if ctx.progress:
            print(f"   [{count}] {job_of(record).describe()}: accuracy {record['score']:.3f} "
                  f"({record['seconds']:.0f} s; {time.perf_counter() - start:.0f} s elapsed)",
                  flush=True)  # fmt: skip

    selection, records = run_benchmark(settings, tables, log, done)
    summary = aggregate(records, settings)
    report = render(summary, selection, settings)
    (ctx.out / "fewshot.txt").write_text(report + "\n", encoding="utf-8")
    plot_fewshot(summary, ctx.figure("fewshot"), ns=settings.ns, ranks=settings.ranks,
                 base_rank=settings.base_rank, rank_n=settings.rank_n, majority=majority)
    return {
        "settings": settings.to_dict(),
        "data": {"pool": len(tables.pool), "validation": len(tables.validation),
                 "test": len(tables.test), "test_total": tables.test_total,
                 "test_majority": majority},
        "selection": selection,
        **summary,
        "paper": _paper(),
        "runs_done": count,
        "runs_reused": reused,
        "run_seconds": sum(r["seconds"] for r in records),
        "runs": sorted(records, key=lambda r: (r["split"], r["method"], r["n"], r["rank"],
                                               r["seed"], r["lr"] or 0.0)),
        "summary": _summary(summary, settings, smoke=ctx.size == "smoke"),
    }

"""The few-shot study's results: mean and spread per cell, the targets, the table and the
figure (:mod:`deeplora.harness.fewshot` runs it)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from .fewshot import (
    BASELINES,
    LABELS,
    SPREAD_TARGET,
    TIE,
    Settings,
    cell_seeds,
    cells,
    mean_std,
    score,
)
from .fewshot_tasks import METRIC_LABELS
from .machine import fmt, table
from .targets import Target

VERDICT = {True: "met", False: "MISSED", None: "undecided"}


def aggregate(records: Iterable[dict[str, Any]], settings: Settings) -> dict[str, Any]:
    """Per-cell mean and std of the score and the second metric over the seeds (the seed's own
    init), the spread across ranks, the init draws and the targets, from per-run records of
    the scored split."""
    task = settings.fewshot_task
    seeds = set(cell_seeds(settings))
    scored = [r for r in records if r["split"] == settings.eval_split and r["seed"] in seeds]
    table_: list[dict[str, Any]] = []
    draws: list[dict[str, Any]] = []
    for method in settings.methods:
        for n, rank in cells(settings):
            mine = [r for r in scored if (r["method"], r["n"], r["rank"]) == (method, n, rank)]
            runs = sorted((r for r in mine if not r.get("draw", 0)), key=lambda r: r["seed"])
            table_.append({
                "method": method, "n": n, "rank": rank,
                "seeds": [r["seed"] for r in runs],
                "lr": runs[0]["lr_used"] if runs else None,
                "score": mean_std([score(r) for r in runs]),
                "second": mean_std([float(r.get("second", r.get("macro_f1", np.nan)))
                                    for r in runs]),
            })  # fmt: skip
            if settings.init_draws > 1:
                draws.append(_init_draws(mine, method, n, rank))

    def cell(method: str, n: int, rank: int) -> dict[str, Any]:
        return next(c for c in table_ if (c["method"], c["n"], c["rank"]) == (method, n, rank))

    spread: dict[str, Any] = {}
    for method in settings.methods:
        means = [cell(method, settings.rank_n, r)["score"]["mean"] for r in settings.ranks]
        known = [m for m in means if m is not None]
        full = len(known) == len(means)
        spread[method] = {
            "ranks": list(settings.ranks),
            "mean_score": means,
            "max_minus_min": float(max(known) - min(known)) if full else None,
            "std_of_means": float(np.std(known)) if full else None,
        }
    targets: dict[str, Any] = {}
    if "deep-lora" in settings.methods:
        for baseline in (b for b in BASELINES if b in settings.methods):
            per_n = []
            for n in settings.ns:
                deep = cell("deep-lora", n, settings.base_rank)["score"]["mean"]
                other = cell(baseline, n, settings.base_rank)["score"]["mean"]
                # equal correct counts are a tie, whatever the float sums' last bits say
                met = None if deep is None or other is None else bool(deep >= other - TIE)
                per_n.append({"n": n, "deep_lora": deep, "baseline": other, "met": met})
            mean_met = (None if any(p["met"] is None for p in per_n)
                        else all(p["met"] for p in per_n))  # fmt: skip
            deep_s = spread["deep-lora"]["max_minus_min"]
            other_s = spread[baseline]["max_minus_min"]
            spread_met = (None if deep_s is None or other_s is None or len(settings.ranks) < 2
                          else bool(deep_s <= SPREAD_TARGET * other_s + TIE))  # fmt: skip
            targets[baseline] = {
                "mean_at_every_n": {"met": mean_met, "rank": settings.base_rank, "per_n": per_n},
                "rank_spread": {"met": spread_met, "n": settings.rank_n, "deep_lora": deep_s,
                                "baseline": other_s, "limit": SPREAD_TARGET,
                                "ratio": deep_s / other_s if deep_s is not None and other_s
                                else None},
            }  # fmt: skip
    return {"task": task.name, "metric": task.metric, "second_metric": task.second,
            "split": settings.eval_split, "cells": table_, "spread": spread,
            "init_draws": draws, "targets": targets}  # fmt: skip


def _init_draws(runs: list[dict[str, Any]], method: str, n: int, rank: int) -> dict[str, Any]:
    """How much redrawing the adapter init alone moves the score: per seed (sample), the range
    and std over its draws; pooled, the root mean within-sample variance."""
    by_seed: dict[int, list[float]] = {}
    for r in runs:
        by_seed.setdefault(r["seed"], []).append(score(r))
    per_seed = [{"seed": s, "scores": v, "range": float(max(v) - min(v)),
                 "std": float(np.std(v, ddof=1)) if len(v) > 1 else None}
                for s, v in sorted(by_seed.items())]  # fmt: skip
    variances = [float(np.var(v, ddof=1)) for v in by_seed.values() if len(v) > 1]
    return {"method": method, "n": n, "rank": rank, "per_seed": per_seed,
            "pooled_std": float(np.sqrt(np.mean(variances))) if variances else None}


def declared_targets(summary: dict[str, Any], settings: Settings) -> list[Target]:
    """The summary's targets as rows of the declared table (:mod:`deeplora.harness.targets`):
    per baseline, Deep LoRA's mean minus the baseline's at each n (at least 0), and Deep LoRA's
    spread across ranks over the baseline's (at most ``SPREAD_TARGET``)."""
    metric = METRIC_LABELS[summary["metric"]]
    rows = []
    for baseline, t in summary["targets"].items():
        for p in t["mean_at_every_n"]["per_n"]:
            gap = (None if p["deep_lora"] is None or p["baseline"] is None
                   else round(p["deep_lora"] - p["baseline"], 9))  # equal counts are a tie
            rows.append(Target(f"{metric} Deep LoRA - {LABELS[baseline]}, n = {p['n']}, rank "
                               f"{settings.base_rank}", gap, 0.0, at_most=False, digits=".3f"))
        rs = t["rank_spread"]
        rows.append(Target(f"spread across ranks (n = {rs['n']}), Deep LoRA / "
                           f"{LABELS[baseline]}", rs["ratio"], SPREAD_TARGET, digits=".2f"))
    return rows


# =========================================================================== report
def _cell_text(stats: dict[str, Any]) -> str:
    if stats["mean"] is None:
        return "-"
    std = "" if stats["std"] is None else f" ± {stats['std']:.3f}"
    return f"{stats['mean']:.3f}{std}"


def render(summary: dict[str, Any], selection: dict[str, Any], settings: Settings) -> str:
    """The selection tables, the results tables, the spreads, the init draws and the target
    verdicts, as text."""
    metric, second = METRIC_LABELS[summary["metric"]], METRIC_LABELS[summary["second_metric"]]
    lines = []
    for method, chosen in selection.items():
        grid = settings.grid(method)
        lines.append(f"{LABELS[method]} learning rate, chosen on the validation split (mean "
                     f"{metric}, rank {settings.base_rank}, {settings.selection_seeds} seed(s); "
                     "* chosen):")  # fmt: skip
        rows = []
        for n in settings.ns:
            sel = chosen[str(n)]
            rows.append([f"n={n}"] + [
                fmt(sel["validation_score"][repr(lr)]["mean"], ".3f")
                + ("*" if lr == sel["chosen"] else " ") for lr in grid])  # fmt: skip
        lines.append(table(["", *(f"lr {lr:g}" for lr in grid)], rows))
        lines.append("")
    by = {(c["method"], c["n"], c["rank"]): c for c in summary["cells"]}
    names = [LABELS[m] for m in settings.methods]
    for key, label in (("score", metric), ("second", second)):
        lines.append(f"{summary['split']} {label}, mean ± std over seeds:")
        rows = [[str(n), str(rank), str(by[(settings.methods[0], n, rank)]["score"]["count"])]
                + [_cell_text(by[(m, n, rank)][key]) for m in settings.methods]
                for n, rank in cells(settings)]  # fmt: skip
        lines.append(table(["n", "rank", "seeds", *names], rows, left=0))
        lines.append("")
    lines.append("learning rate used: " + "; ".join(
        f"{LABELS[m]} " + ", ".join(f"n={n} {fmt(by[(m, n, settings.base_rank)]['lr'], 'g')}"
                                    for n in settings.ns) for m in settings.methods))
    sp = summary["spread"]
    lines.append(f"spread of the mean {metric} across ranks {list(settings.ranks)} at n = "
                 f"{settings.rank_n}: max - min (std of the per-rank means)")  # fmt: skip
    for method in settings.methods:
        lines.append(f"  {LABELS[method]:<21} {fmt(sp[method]['max_minus_min'], '.4f')} "
                     f"({fmt(sp[method]['std_of_means'], '.4f')})")  # fmt: skip
    for d in summary["init_draws"]:
        ranges = ", ".join(f"seed {p['seed']} {p['range']:.3f}" for p in d["per_seed"])
        lines.append(f"init draws, {LABELS[d['method']]} n={d['n']} r={d['rank']}: range per "
                     f"sample {ranges}; pooled within-sample std "
                     f"{fmt(d['pooled_std'], '.3f')}")  # fmt: skip
    for baseline, t in summary["targets"].items():
        per_n = ", ".join(f"n={p['n']} {fmt(p['deep_lora'], '.3f')} vs "
                          f"{fmt(p['baseline'], '.3f')}" for p in t["mean_at_every_n"]["per_n"])
        lines.append(f"target Deep LoRA mean >= {LABELS[baseline]} mean at every n (rank "
                     f"{settings.base_rank}): {VERDICT[t['mean_at_every_n']['met']]} ({per_n})")
        rs = t["rank_spread"]
        lines.append(f"target Deep LoRA spread across ranks <= {SPREAD_TARGET:g} x "
                     f"{LABELS[baseline]}'s: {VERDICT[rs['met']]} ({fmt(rs['deep_lora'], '.4f')}"
                     f" vs {fmt(rs['baseline'], '.4f')}, ratio {fmt(rs['ratio'], '.2f')})")
    return "\n".join(lines)


def plot(summary: dict[str, Any], settings: Settings, path: Path,
         majority: float | None = None) -> list[Path]:  # fmt: skip
    """Score vs n (at the base rank) and score vs rank (at rank_n), every method with std
    error bars, written to ``path`` (PNG) and the same name with ``.svg``
    (:func:`deeplora.diagnostics.plots.plot_fewshot`)."""
    from ..diagnostics.plots import plot_fewshot

    return plot_fewshot(summary, path.with_suffix(""), ns=settings.ns, ranks=settings.ranks,
                        base_rank=settings.base_rank, rank_n=settings.rank_n,
                        majority=majority, labels=LABELS)  # fmt: skip

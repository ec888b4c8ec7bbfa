"""The process group: start it from the launcher's variables, talk through it with errors a
user can act on, and stop it.

Launchers set the variables ``torch.distributed`` reads: ``torchrun`` sets ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``; under SLURM (``srun``)
:func:`environment` also reads ``SLURM_PROCID``, ``SLURM_NTASKS`` and ``SLURM_LOCALID`` when
``MASTER_ADDR`` / ``MASTER_PORT`` are exported by the batch script.

Faults: every collective goes through :func:`all_reduce`, :func:`broadcast` or :func:`barrier`.
A peer that died makes the collective fail at once (its connection closes); a peer that hangs
makes it fail after the group's ``timeout``. Either way the surviving ranks raise
:class:`PeerError`, which names the rank, the operation and how to resume, instead of
hanging.
"""

from __future__ import annotations

import datetime
import os
import sys
from dataclasses import dataclass
from typing import Any, NoReturn

import torch
import torch.distributed as dist

from ..errors import UserError

DEFAULT_TIMEOUT = 300.0  # seconds a collective waits for a silent peer


class PeerError(RuntimeError):
    """Another rank died or stopped answering: the job cannot go on."""


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits in the job."""

    rank: int
    world_size: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def environment() -> DistEnv | None:
    """The job this process was launched in (torchrun or SLURM variables), or ``None`` for a
    single process."""
    env = os.environ
    if "WORLD_SIZE" in env and "RANK" in env:
        rank, world, local = int(env["RANK"]), int(env["WORLD_SIZE"]), int(
            env.get("LOCAL_RANK", env["RANK"]))
    elif "SLURM_NTASKS" in env and "SLURM_PROCID" in env and "MASTER_ADDR" in env:
        rank, world = int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"])
        local = int(env.get("SLURM_LOCALID", 0))
    else:
        return None
    if world < 1 or not 0 <= rank < world:
        raise UserError(f"launcher variables give rank {rank} of world size {world}; check "
                         "the launcher's settings")
    return DistEnv(rank, world, local) if world > 1 else None


def initialize(env: DistEnv, *, timeout: float = DEFAULT_TIMEOUT,
               backend: str | None = None) -> None:
    """Join the process group: ``gloo`` on CPU, ``nccl`` when CUDA is there (unless
    ``backend`` says otherwise). ``timeout`` bounds how long a collective waits for a peer."""
    if timeout <= 0:
        raise UserError(f"the distributed timeout must be > 0 seconds, got {timeout}")
    if dist.is_initialized():
        return
    if "MASTER_ADDR" not in os.environ or "MASTER_PORT" not in os.environ:
        raise UserError("MASTER_ADDR and MASTER_PORT are not set; launch with torchrun, or "
                         "export them in the SLURM script (see docs/DISTRIBUTED.md)")
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    if backend == "nccl":
        torch.cuda.set_device(env.local_rank)
    dist.init_process_group(backend, rank=env.rank, world_size=env.world_size,
                            timeout=datetime.timedelta(seconds=timeout))


_lost_peer = False  # set when a collective failed: the group cannot be torn down cleanly


def shutdown() -> None:
    """Leave the process group (no-op when there is none, or when a peer was lost)."""
    if dist.is_initialized() and not _lost_peer:
        dist.destroy_process_group()


def exit_after_lost_peer(code: int) -> NoReturn:
    """End this process at once with ``code``, after flushing its output.

    A process group whose peer died cannot be torn down cleanly: its communication threads
    may abort the interpreter at exit. Skipping the teardown keeps the exit status (and the
    one-line error printed before) what the user sees."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def active() -> bool:
    """True inside a process group of more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def _fail(what: str, error: Exception) -> PeerError:
    global _lost_peer
    _lost_peer = True
    return PeerError(
        f"rank {rank()} of {world_size()}: {what} failed, so another rank died or stopped "
        f"answering ({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}); "
        "the job stops here. Restart it with --resume to continue from the last checkpoint."
    )


def all_reduce(tensor: torch.Tensor, what: str = "all-reduce") -> torch.Tensor:
    """Sum ``tensor`` over the ranks in place (and return it); a lone process returns it."""
    if active():
        try:
            dist.all_reduce(tensor)
        except (RuntimeError, OSError) as e:  # DistBackendError is a RuntimeError
            raise _fail(what, e) from e
    return tensor


def broadcast(tensor: torch.Tensor, src: int = 0, what: str = "broadcast") -> torch.Tensor:
    """Copy rank ``src``'s ``tensor`` to every rank, in place."""
    if active():
        try:
            dist.broadcast(tensor, src)
        except (RuntimeError, OSError) as e:
            raise _fail(what, e) from e
    return tensor


def barrier(what: str = "barrier") -> None:
    """Wait for every rank."""
    if active():
        try:
            dist.barrier()
        except (RuntimeError, OSError) as e:
            raise _fail(what, e) from e


def all_gather_object(obj: Any, what: str = "all-gather") -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order; ``[obj]`` for a lone process."""
    if not active():
        return [obj]
    out: list[Any] = [None] * world_size()
    try:
        dist.all_gather_object(out, obj)
    except (RuntimeError, OSError) as e:
        raise _fail(what, e) from e
    return out


def broadcast_object(obj: Any, src: int = 0, what: str = "broadcast") -> Any:
    """Rank ``src``'s ``obj`` (picklable) on every rank."""
    if not active():
        return obj
    box = [obj]
    try:
        dist.broadcast_object_list(box, src)
    except (RuntimeError, OSError) as e:
        raise _fail(what, e) from e
    return box[0]


def collective_failure(error: BaseException) -> bool:
    """Whether ``error`` (raised inside a collective a library ran for us, such as
    DistributedDataParallel's gradient all-reduce) means a peer was lost."""
    text = str(error)
    return active() and isinstance(error, (RuntimeError, OSError)) and any(
        mark in text for mark in ("gloo", "NCCL", "nccl", "Connection closed", "Timed out",
                                  "timed out", "Connection reset", "Broken pipe"))


def peer_error(what: str, error: BaseException) -> PeerError:
    """The :class:`PeerError` for a failed collective ``what``."""
    return _fail(what, error if isinstance(error, Exception) else RuntimeError(str(error)))

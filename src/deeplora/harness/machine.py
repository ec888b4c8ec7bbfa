"""What the benchmarks and the experiments share to measure: machine facts, timing, peak
memory, isolated runs and plain-text tables.

Peak memory is the resident set size (RSS) of the process, which sees torch's CPU
allocations (``tracemalloc`` does not). On Linux the high-water mark is reset before a
measurement (``/proc/self/clear_refs``, value 5) and read back from ``VmHWM`` in
``/proc/self/status``; elsewhere ``resource.getrusage(...).ru_maxrss`` is used, which cannot
be reset, so a measurement is only meaningful in a fresh process (:func:`run_isolated`).
"""

from __future__ import annotations

import gc
import multiprocessing as mp
import os
import platform
import re
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

MB = 1024 * 1024


# --------------------------------------------------------------------------- machine
def machine_info() -> dict[str, Any]:
    """What the numbers depend on: CPU, cores, threads, library versions."""
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        found = re.search(r"^model name\s*:\s*(.+)$", cpuinfo.read_text(), re.MULTILINE)
        if found:
            cpu = found.group(1).strip()
    affinity = getattr(os, "sched_getaffinity", None)
    return {
        "cpu": cpu,
        "cores_available": len(affinity(0)) if affinity else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "gpu_used": False,
    }


def describe_machine(info: dict[str, Any]) -> str:
    return (f"{info['cpu']}, {info['cores_available']} cores available, torch "
            f"{info['torch']} on {info['torch_threads']} thread(s), Python {info['python']}")


# --------------------------------------------------------------------------- timing
def seconds_per_call(fn: Callable[[], Any], *, repeats: int, warmup: int = 2) -> float:
    """Median over 5 rounds of the mean time of ``repeats`` calls of ``fn``."""
    for _ in range(warmup):
        fn()
    rounds = []
    per_round = max(1, repeats // 5)
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(per_round):
            fn()
        rounds.append((time.perf_counter() - start) / per_round)
    rounds.sort()
    return rounds[len(rounds) // 2]


def interleaved_seconds(
    tasks: Mapping[str, Callable[[], Callable[[], Any]]], *, repeats: int, warmup: int = 1
) -> dict[str, list[float]]:
    """Seconds of each task over ``repeats`` rounds, measured side by side.

    Every round runs every task once, in an order rotated by one each round, so that neither
    a drift in the machine's speed nor the position in a round favours a task. ``tasks[name]``
    is called untimed before each run and returns the callable that is timed (per-run setup,
    such as a fresh copy of a model, is not counted). Garbage is collected before each run
    and the collector is off while it runs. The first ``warmup`` rounds are not recorded.
    """
    names = list(tasks)
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(warmup + repeats):
        shift = round_ % len(names) if names else 0
        for name in names[shift:] + names[:shift]:
            fn = tasks[name]()
            collecting = gc.isenabled()
            gc.collect()
            gc.disable()
            try:
                start = time.perf_counter()
                fn()
                elapsed = time.perf_counter() - start
            finally:
                if collecting:
                    gc.enable()
            del fn  # what its setup made is freed before the next one is made
            if round_ >= warmup:
                times[name].append(elapsed)
    return times


# --------------------------------------------------------------------------- memory
def _status_kb(field: str) -> int | None:
    status = Path("/proc/self/status")
    if not status.is_file():
        return None
    found = re.search(rf"^{field}:\s+(\d+)\s+kB", status.read_text(), re.MULTILINE)
    return int(found.group(1)) if found else None


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


def _maxrss_bytes() -> int:
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024


class PeakMemory:
    """Peak RSS while the ``with`` block runs, and its increase over the RSS at entry.

    >>> with PeakMemory() as mem:      # doctest: +SKIP
    ...     work()
    >>> mem.result()["increase_mb"]    # doctest: +SKIP
    """

    def __init__(self) -> None:
        self.method = ""
        self.baseline = 0
        self.peak = 0

    def __enter__(self) -> PeakMemory:
        gc.collect()
        rss = _status_kb("VmRSS")
        if rss is not None and _reset_peak():
            self.method = "VmHWM (Linux high-water mark, reset at the start)"
            self.baseline = rss * 1024
        else:
            self.method = "ru_maxrss (peak since the process started)"
            self.baseline = _maxrss_bytes()
        return self

    def __exit__(self, *exc: object) -> None:
        hwm = _status_kb("VmHWM") if self.method.startswith("VmHWM") else None
        self.peak = hwm * 1024 if hwm is not None else _maxrss_bytes()

    def result(self) -> dict[str, Any]:
        return {
            "peak_rss_mb": self.peak / MB,
            "baseline_rss_mb": self.baseline / MB,
            "increase_mb": max(self.peak - self.baseline, 0) / MB,
            "method": self.method,
        }


# --------------------------------------------------------------------------- isolation
def _child(
    conn: Any, parent: int, threads: int, fn: Callable[..., Any], args: tuple[Any, ...]
) -> None:
    exit_with_parent(parent)
    torch.set_num_threads(threads)
    try:
        conn.send(("ok", fn(*args)))
    except BaseException as e:  # sent back and re-raised in the parent
        conn.send(("error", e))
    finally:
        conn.close()


def exit_with_parent(parent: int, poll_s: float = 2.0) -> None:
    """End this (worker) process within ``poll_s`` seconds of the death of ``parent`` (the
    pid its parent passed it, so a parent that died before this call counts). A worker
    whose benchmark was killed would otherwise finish its current run, up to many minutes
    of CPU, and slow the benchmark's resumed run beside it."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_s)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def run_isolated(fn: Callable[..., Any], *args: Any, isolate: bool = True) -> Any:
    """``fn(*args)`` in a fresh 'spawn' process with this process's torch thread count (so
    its peak memory is its own), or here when ``isolate`` is false. ``fn`` must be a
    module-level function; an exception it raises is raised here."""
    if not isolate:
        return fn(*args)
    ctx = mp.get_context("spawn")
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(send, os.getpid(), torch.get_num_threads(), fn, args))
    proc.start()
    send.close()
    try:
        status, payload = recv.recv()
    except EOFError:
        proc.join()
        raise RuntimeError(
            f"the benchmark subprocess died (exit code {proc.exitcode}); out of memory?"
        ) from None
    proc.join()
    if status == "error":
        raise payload
    return payload


# --------------------------------------------------------------------------- tables
def fmt(value: Any, spec: str = ".3g", missing: str = "-") -> str:
    """A number for a table cell; ``None`` and NaN as ``missing``."""
    if value is None:
        return missing
    if isinstance(value, float) and value != value:
        return missing
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return format(value, spec)
    return str(value)


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], left: int = 1) -> str:
    """A plain-text table: the first ``left`` columns left-aligned, the others right-aligned."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) if i < left else c.rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths)))

    return "\n".join([line(headers), line(["-" * w for w in widths]), *map(line, rows)])

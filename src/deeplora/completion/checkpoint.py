"""Checkpoints of a solver, and the check that a resume continues the same run
(docs/RELIABILITY.md 3).

A checkpoint folder holds the solver's tensors in a file named by the step
(``state-1000.safetensors``) and ``state.json``, which names that file and holds the rest of the
state, the solver's settings and a fingerprint of the data. The tensors are written first, then
``state.json``, then older tensor files are removed, each atomically, so a kill at any point
leaves a ``state.json`` and the tensor file it names, from the same step.
"""

from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .._io import FORMAT_VERSION, check_version, read_json, read_tensors, write_json, write_tensors
from ..errors import UserError

if TYPE_CHECKING:
    from .solver import GradientDescent

KIND = "deeplora.checkpoint"
#: Settings a resumed run may change: the run may be extended or watched differently.
FREE = ("max_steps", "progress")


def save(solver: GradientDescent, folder: str | os.PathLike[str]) -> None:
    """Write ``solver.state()`` to ``folder`` as described above."""
    folder = Path(folder)
    tensors, meta = solver.state()
    name = f"state-{solver.t}.safetensors"
    write_tensors(folder / name, tensors)
    write_json(folder / "state.json", {
        "kind": KIND, "format_version": FORMAT_VERSION, "solver": type(solver).__name__,
        "config": asdict(solver.config), "tensors": name, "data": solver.fingerprint(), **meta,
    })
    for old in folder.glob("state-*.safetensors"):
        if old.name != name:
            old.unlink(missing_ok=True)


def load(solver: GradientDescent, folder: str | os.PathLike[str]) -> None:
    """Continue ``solver`` from the checkpoint in ``folder``; refuse one written by another
    solver, with other settings (but :data:`FREE`), for other data or for other shapes."""
    folder = Path(folder)
    meta = read_json(folder / "state.json", "checkpoint")
    check_version(meta, "checkpoint", KIND)
    saved = {k: v for k, v in meta["config"].items() if k not in FREE}
    mine = {k: v for k, v in asdict(solver.config).items() if k not in FREE}
    if meta["solver"] != type(solver).__name__ or saved != mine:
        changed = sorted(k for k in set(saved) | set(mine) if saved.get(k) != mine.get(k))
        raise UserError(
            f"checkpoint in {folder} was written by {meta['solver']} with other settings "
            f"({', '.join(changed) or 'solver'}); resume with the same settings or use a "
            "new checkpoint folder"
        )
    if not same_fingerprint(meta.get("data", []), solver.fingerprint()):
        raise UserError(
            f"checkpoint in {folder} was written for other data (another input, split, "
            "centering or validation part); resume with the same data or use a new "
            "checkpoint folder"
        )
    if meta["step"] > solver.config.max_steps:
        raise UserError(f"checkpoint in {folder} is at step {meta['step']}, beyond max_steps "
                        f"{solver.config.max_steps}; resume with a larger step budget")
    tensors = read_tensors(folder / meta["tensors"], "checkpoint")
    for name, value in solver.parameters().items():
        key = f"param.{name}"
        if key not in tensors or tensors[key].shape != value.shape:
            raise UserError(f"checkpoint in {folder} does not match this problem ({name})")
    solver.load_state(tensors, meta)


def same_fingerprint(saved: list[float], mine: list[float]) -> bool:
    """Equal up to the rounding of sums taken in another order (another process count)."""
    a, b = np.asarray(saved, dtype=np.float64), np.asarray(mine, dtype=np.float64)
    if a.shape != b.shape:
        return False
    return bool(np.allclose(a, b, rtol=1e-9, atol=1e-9 * float(np.abs(b).max(initial=1.0))))

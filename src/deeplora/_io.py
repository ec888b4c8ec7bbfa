"""Atomic file writes and the versioned safetensors + JSON format shared by every saved object.

A file is written to a temporary name in the same folder and moved into place with
``os.replace``, so a crash never leaves half a file behind.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .errors import MissingFileError, UserError

FORMAT_VERSION = 1


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success move it onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 -> what open() would have given
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it: put it straight back
    os.umask(mask)
    return mask


@contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "w") -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path`` for writing; move it into place on success."""
    with atomic_path(path) as tmp, open(tmp, mode, encoding=None if "b" in mode else "utf-8") as f:
        yield f


def json_safe(value: Any) -> Any:
    """``value`` made JSON-ready: NaN and infinities become ``None``, numpy scalars and
    arrays Python values, dict keys strings (nested dicts, lists and tuples)."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, np.ndarray):
        return json_safe(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def first_non_utf8_line(path: str | os.PathLike[str]) -> int:
    """The number of the first line of ``path`` that is not UTF-8 text (1 if none is)."""
    with open(path, "rb") as f:
        for number, line in enumerate(f, start=1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError:
                return number
    return 1


def write_json(path: str | os.PathLike[str], data: dict[str, Any]) -> None:
    with atomic_open(path) as f:
        json.dump(data, f, indent=2)
        f.write("\n")


def read_json(path: str | os.PathLike[str], what: str) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"{what}: {path} does not exist; check the path or save it first")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{what}: {path} is not valid JSON ({e}); the file is corrupt") from e
    if not isinstance(data, dict):
        raise UserError(f"{what}: {path} should hold a JSON object; the file is corrupt")
    return data


def write_tensors(path: str | os.PathLike[str], tensors: dict[str, torch.Tensor]) -> None:
    with atomic_path(path) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp))


def read_tensors(path: str | os.PathLike[str], what: str) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"{what}: {path} does not exist; check the path or save it first")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise UserError(f"{what}: {path} is not a readable safetensors file ({e})") from e


def check_version(meta: dict[str, Any], what: str, kind: str) -> None:
    """Refuse files of another kind or a newer format than this library reads."""
    if meta.get("kind") != kind:
        raise UserError(f"{what}: expected a '{kind}' file, found kind={meta.get('kind')!r}")
    version = meta.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise UserError(
            f"{what}: format_version {version!r} is not supported (this deeplora reads up to "
            f"{FORMAT_VERSION}); upgrade deeplora"
        )


def check_output_folder(out: str | os.PathLike[str], outputs: tuple[str, ...], *,
                        finished: str, checkpoint: str, resume: bool, overwrite: bool) -> None:
    """Refuse an output folder that would lose something, before any work.

    ``outputs`` are the names a run writes there (``finished`` marks a completed run,
    ``checkpoint`` an interrupted one; without either, files of those names are the user's).
    Refused: a path that is a file or cannot be written; a folder holding other files, or a
    previous run, unless ``overwrite``; an interrupted run unless ``resume`` (to continue it)
    or ``overwrite``; ``resume`` of a finished run that left no checkpoint. ``resume`` into a
    folder without a run starts one (so that a launch line can always carry ``--resume``).
    """
    from .errors import UserError

    out = Path(out)
    if resume and overwrite:
        raise UserError("--resume continues a run and --overwrite starts it again: choose one")
    if out.is_symlink() and not out.exists():
        raise UserError(f"--out {out} is a link to {os.readlink(out)}, which does not exist; "
                        "create that folder or choose another --out")
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a folder; choose another --out")
    present = sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) \
        if out.is_dir() else []
    # a command's file names count as its own only beside the mark of one of its runs
    ran = finished in present or checkpoint in present
    foreign = [name for name in present if name not in outputs or not ran]
    if foreign and not overwrite:
        raise UserError(
            f"--out {out} holds files this command did not write ({', '.join(foreign[:3])}"
            f"{', ...' if len(foreign) > 3 else ''}); choose another --out, or pass --overwrite "
            + ("to replace those named like its outputs and write beside the others"
               if set(foreign) & set(outputs) else "to write beside them")
        )
    if resume and finished in present and checkpoint not in present:
        raise UserError(f"--out {out} holds a finished run and no checkpoint: there is nothing "
                        "to resume; pass --overwrite to run it again or choose another --out")
    if finished in present and not (overwrite or resume):
        raise UserError(f"--out {out} holds a finished run ({finished}); pass --overwrite to "
                        "replace it or choose another --out")
    if checkpoint in present and not (overwrite or resume):
        raise UserError(f"--out {out} holds an interrupted run ({checkpoint}/); pass --resume "
                        "to continue it or --overwrite to start again")
    # writable? (nothing is created: a run refused later leaves no empty folder behind)
    existing = out
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        if not existing.is_dir():
            raise NotADirectoryError(0, "not a folder")
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as e:
        where = "" if existing == out else f": {existing} is not a writable folder"
        raise UserError(f"--out {out} cannot be written ({e.strerror}{where}); choose "
                        "another --out") from None


def remove_outputs(out: str | os.PathLike[str], names: tuple[str, ...]) -> None:
    """Remove the files and folders ``names`` from ``out`` (a previous run's outputs)."""
    for name in names:
        path = Path(out) / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()

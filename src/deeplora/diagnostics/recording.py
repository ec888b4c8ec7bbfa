"""What a :class:`~deeplora.diagnostics.recorder.SubspaceRecorder` produced: one
:class:`LayerTrace` per tracked matrix, kept in a :class:`Recording` that saves to and loads
from ``.npz`` or ``.json`` (versioned, written atomically)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .._io import FORMAT_VERSION, atomic_open, check_version, json_safe, read_json, write_json
from ..errors import MissingFileError, UserError

if TYPE_CHECKING:
    pass

KIND = "deeplora.recording"
_FIELDS = ("singular_values", "factor_singular_values", "cosines_left", "cosines_right",
           "rank_atol", "rank_rtol", "outside")


# ----------------------------------------------------------------------------- results


@dataclass
class LayerTrace:
    """What was recorded for one matrix over ``T`` records (nan where a value does not exist,
    e.g. the 9th singular value of a rank-8 factorization)."""

    singular_values: np.ndarray  # [T, k] top-k singular values of M (nan-padded)
    factor_singular_values: np.ndarray  # [T, L, k] top-k of each factor (L = 1 for dense)
    cosines_left: np.ndarray  # [T, k] principal-angle cosines, descending, left subspaces
    cosines_right: np.ndarray  # [T, k] and right subspaces, against the reference
    rank_atol: np.ndarray  # [T] int: #{s_i > rank_atol}
    rank_rtol: np.ndarray  # [T] int: #{s_i > rank_rtol * s_1}
    outside: np.ndarray | None = None  # [T] ||D - P_U D P_V||_F / ||D||_F, D = M(t) - M0


def _jsonable(a: np.ndarray) -> Any:
    """Nested lists with nan (and inf) as null."""
    if a.dtype.kind in "iub":
        return a.tolist()
    out = a.astype(object)
    out[~np.isfinite(a)] = None
    return out.tolist()



def _from_json(data: Any, dtype: type) -> np.ndarray:
    if dtype is float:
        arr = np.array(data, dtype=object)
        arr[arr == None] = np.nan  # noqa: E711 (element-wise)
        return arr.astype(np.float64)
    return np.asarray(data, dtype=np.int64)


@dataclass
class Recording:
    """The recorded series: one :class:`LayerTrace` per tracked matrix, aligned with ``steps``.

    ``seconds`` is the wall time since the recorder was built minus the recorder's own time
    (so it measures training alone). :meth:`save` writes ``.npz`` (exact) or ``.json``
    (nested lists, nan as null) by the suffix, atomically, with a format version.
    """

    steps: np.ndarray  # [T] int
    seconds: np.ndarray  # [T]
    layers: dict[str, LayerTrace]
    k: int
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.steps)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write to ``path`` (``.npz`` or ``.json``), atomically."""
        path = Path(path)
        suffix = path.suffix.lower()
        names = list(self.layers)
        header = {"kind": KIND, "format_version": FORMAT_VERSION, "k": int(self.k),
                  "meta": json_safe(self.meta)}
        if suffix == ".json":
            layers = {}
            for name, tr in self.layers.items():
                layers[name] = {f: (None if getattr(tr, f) is None else _jsonable(getattr(tr, f)))
                                for f in _FIELDS}
            write_json(path, {**header, "layer_order": names,
                              "steps": np.asarray(self.steps, np.int64).tolist(),
                              "seconds": _jsonable(np.asarray(self.seconds, np.float64)),
                              "layers": layers})
        elif suffix == ".npz":
            arrays: dict[str, np.ndarray] = {
                "header": np.array(json.dumps({**header, "layers": names})),
                "steps": np.asarray(self.steps, np.int64),
                "seconds": np.asarray(self.seconds, np.float64),
            }
            for i, tr in enumerate(self.layers.values()):
                for f in _FIELDS:
                    value = getattr(tr, f)
                    if value is not None:
                        arrays[f"{i}.{f}"] = np.asarray(value)
            with atomic_open(path, "wb") as fh:
                np.savez(fh, **arrays)  # type: ignore[arg-type]
        else:
            raise UserError(f"Recording.save: {path} must end in .json or .npz")

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Recording:
        """Read a recording written by :meth:`save` (``.npz`` or ``.json``)."""
        path = Path(path)
        suffix = path.suffix.lower()
        what = f"recording {path}"
        if suffix == ".json":
            data = read_json(path, "recording")
            check_version(data, what, KIND)
            try:
                layers = {}
                for name in data["layer_order"]:
                    raw = data["layers"][name]
                    layers[name] = LayerTrace(
                        singular_values=_from_json(raw["singular_values"], float),
                        factor_singular_values=_from_json(raw["factor_singular_values"], float),
                        cosines_left=_from_json(raw["cosines_left"], float),
                        cosines_right=_from_json(raw["cosines_right"], float),
                        rank_atol=_from_json(raw["rank_atol"], int),
                        rank_rtol=_from_json(raw["rank_rtol"], int),
                        outside=None if raw["outside"] is None else _from_json(raw["outside"],
                                                                               float),
                    )
                return cls(np.asarray(data["steps"], np.int64), _from_json(data["seconds"], float),
                           layers, int(data["k"]), dict(data["meta"]))
            except (KeyError, TypeError, ValueError) as e:
                raise UserError(f"{what} is incomplete or corrupt ({e!r})") from e
        if suffix == ".npz":
            if not path.is_file():
                raise MissingFileError(f"recording: {path} does not exist; check the path")
            try:
                with np.load(path, allow_pickle=False) as npz:
                    files = {k: npz[k] for k in npz.files}
            except (OSError, ValueError) as e:
                raise UserError(f"{what} is not a readable .npz file ({e})") from e
            if "header" not in files:
                raise UserError(f"{what}: not a deeplora recording (no header); "
                                 "expected a file written by Recording.save")
            try:
                header = json.loads(str(files["header"]))
            except json.JSONDecodeError as e:
                raise UserError(f"{what}: its header is not valid JSON; the file is corrupt") \
                    from e
            if not isinstance(header, dict):
                raise UserError(f"{what}: its header is not a JSON object; the file is corrupt")
            check_version(header, what, KIND)
            try:
                layers = {}
                for i, name in enumerate(header["layers"]):
                    def get(f: str, i: int = i) -> np.ndarray:
                        return files[f"{i}.{f}"]

                    layers[name] = LayerTrace(
                        get("singular_values"), get("factor_singular_values"),
                        get("cosines_left"), get("cosines_right"), get("rank_atol"),
                        get("rank_rtol"),
                        files.get(f"{i}.outside"),
                    )
                return cls(files["steps"], files["seconds"], layers, int(header["k"]),
                           dict(header["meta"]))
            except KeyError as e:
                raise UserError(f"{what} is incomplete ({e!r} missing); the file is corrupt") \
                    from e
        raise UserError(f"Recording.load: {path} must end in .json or .npz")



"""A fitted completion: predictions by ID, top-k recommendations, save and load.

    prediction(i, j) = offset + row_bias[i] + col_bias[j] + left[i] . right[j],

clipped to ``clip`` when given. ``left @ right.T`` is the end-to-end matrix of the deep
factorization (never formed unless :meth:`CompletionModel.to_dense` is asked for);
``offset`` and the biases are what centering removed before fitting.
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from .._io import FORMAT_VERSION, check_version, read_json, read_tensors, write_json, write_tensors
from ..errors import UserError
from .data import Observations, _lookup
from .results import FitHistory

DENSE_LIMIT = 50_000_000  # entries: to_dense refuses more unless told otherwise


def _ids(ids: Sequence[Hashable]) -> np.ndarray:
    out = np.empty(len(ids), dtype=object)
    out[:] = ids
    return out


@dataclass(eq=False)
class CompletionModel:
    """A completed matrix in factored form, with the IDs of its rows and columns."""

    left: torch.Tensor
    right: torch.Tensor
    row_ids: list[Hashable]
    col_ids: list[Hashable]
    offset: float = 0.0
    row_bias: np.ndarray | None = None
    col_bias: np.ndarray | None = None
    clip: tuple[float, float] | None = None
    observed_rows: np.ndarray | None = None  # training entries, excluded from top-k
    observed_cols: np.ndarray | None = None
    history: FitHistory = field(default_factory=FitHistory)
    info: dict[str, Any] = field(default_factory=dict)  # settings and outcome of the fit

    @property
    def shape(self) -> tuple[int, int]:
        return (len(self.row_ids), len(self.col_ids))

    # ---------------------------------------------------------------- predictions
    def predict_index(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """Predictions at index pairs ``(rows[k], cols[k])``."""
        r = torch.as_tensor(np.asarray(rows, dtype=np.int64))
        c = torch.as_tensor(np.asarray(cols, dtype=np.int64))
        if r.shape != c.shape:
            raise UserError(f"rows and cols differ in length: {len(r)} and {len(c)}")
        m, n = self.shape
        if len(r) and (r.min() < 0 or r.max() >= m or c.min() < 0 or c.max() >= n):
            raise UserError(f"index out of range for a {m} x {n} model")
        out = (self.left[r] * self.right[c]).sum(1).double().numpy() + self.offset
        if self.row_bias is not None:
            out += self.row_bias[r.numpy()]
        if self.col_bias is not None:
            out += self.col_bias[c.numpy()]
        return self._clip(out)

    def predict(self, row_ids: Sequence[Hashable] | np.ndarray,
                col_ids: Sequence[Hashable] | np.ndarray) -> np.ndarray:
        """Predictions for pairs of row and column IDs; an unknown ID raises ``KeyError``."""
        if len(row_ids) != len(col_ids):
            raise UserError(f"row and column IDs differ in length: {len(row_ids)} and "
                             f"{len(col_ids)}")
        rows = _lookup(self.row_ids, row_ids, "row")
        cols = _lookup(self.col_ids, col_ids, "column")
        return self.predict_index(rows, cols)

    def _clip(self, values: np.ndarray) -> np.ndarray:
        return values if self.clip is None else np.clip(values, *self.clip)

    def _score_block(self, rows: np.ndarray) -> torch.Tensor:
        scores = (self.left[torch.as_tensor(rows)] @ self.right.T).double() + self.offset
        if self.row_bias is not None:
            scores += torch.as_tensor(self.row_bias[rows])[:, None]
        if self.col_bias is not None:
            scores += torch.as_tensor(self.col_bias)[None, :]
        return scores

    def top_k(self, k: int, rows: Sequence[Hashable] | None = None,
              block_entries: int = 20_000_000) -> pd.DataFrame:
        """Each row's ``k`` best columns not observed in training, as a table
        ``row_id, rank, col_id, prediction``; rows are scored in blocks of at most
        ``block_entries`` entries."""
        m, n = self.shape
        if k < 1:
            raise UserError(f"k must be >= 1, got {k}")
        index = np.arange(m) if rows is None else _lookup(self.row_ids, rows, "row")
        observed = self.observed_rows is not None and self.observed_cols is not None
        if observed:
            assert self.observed_rows is not None and self.observed_cols is not None
            order = np.argsort(self.observed_rows, kind="stable")
            o_rows, o_cols = self.observed_rows[order], self.observed_cols[order]
            starts = np.searchsorted(o_rows, index)
            ends = np.searchsorted(o_rows, index, side="right")
        kk = min(k, n)
        block = max(1, block_entries // n)
        frames = []
        for s in range(0, len(index), block):
            rows_b = index[s:s + block]
            scores = self._score_block(rows_b)
            if observed:
                first, counts = starts[s:s + block], ends[s:s + block] - starts[s:s + block]
                local = np.repeat(np.arange(len(rows_b)), counts)
                pos = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
                pos += np.repeat(first, counts)
                scores[torch.as_tensor(local, dtype=torch.int64),
                       torch.as_tensor(o_cols[pos.astype(np.int64)])] = -np.inf
            values, cols = torch.topk(scores, kk, dim=1)
            frames.append(pd.DataFrame({
                "row": np.repeat(rows_b, kk),
                "rank": np.tile(np.arange(1, kk + 1), len(rows_b)),
                "col": cols.reshape(-1).numpy(),
                "prediction": values.reshape(-1).numpy(),
            }))
        out = pd.concat(frames, ignore_index=True)
        out = out[np.isfinite(out["prediction"])]  # rows with fewer than k unobserved columns
        return pd.DataFrame({
            "row_id": _ids(self.row_ids)[out["row"].to_numpy()],
            "rank": out["rank"].to_numpy(),
            "col_id": _ids(self.col_ids)[out["col"].to_numpy()],
            "prediction": self._clip(out["prediction"].to_numpy()),
        })

    def recommend(self, row_id: Hashable, k: int = 10) -> pd.DataFrame:
        """The ``k`` best unobserved columns of one row."""
        return self.top_k(k, rows=[row_id]).drop(columns="row_id")

    def to_dense(self, max_entries: int = DENSE_LIMIT) -> np.ndarray:
        """The whole m x n completed matrix; refused above ``max_entries`` entries."""
        m, n = self.shape
        if m * n > max_entries:
            raise UserError(
                f"a dense {m} x {n} matrix has {m * n:,} entries, above max_entries="
                f"{max_entries:,}; use predict/top_k, or raise max_entries if it fits in memory"
            )
        return self._clip(self._score_block(np.arange(m)).numpy())

    def rmse(self, obs: Observations) -> float:
        """Root mean squared error on observed entries (indexed like this model)."""
        if obs.shape != self.shape:
            raise UserError(f"observations are {obs.shape}, the model {self.shape}")
        pred = self.predict_index(obs.rows, obs.cols)
        return float(np.sqrt(np.mean((pred - obs.values) ** 2)))

    # ---------------------------------------------------------------- files
    def save(self, folder: str | os.PathLike[str]) -> Path:
        """``model.safetensors`` (factors, biases, observed entries) and ``model.json``
        (IDs, settings, history), each written atomically."""
        folder = Path(folder)
        tensors = {"left": self.left, "right": self.right}
        for name in ("row_bias", "col_bias", "observed_rows", "observed_cols"):
            value = getattr(self, name)
            if value is not None:
                tensors[name] = torch.from_numpy(np.ascontiguousarray(value))
        write_tensors(folder / "model.safetensors", tensors)
        write_json(folder / "model.json", {
            "kind": "deeplora.completion", "format_version": FORMAT_VERSION,
            "shape": list(self.shape), "row_ids": list(self.row_ids),
            "col_ids": list(self.col_ids), "offset": self.offset,
            "clip": None if self.clip is None else list(self.clip),
            "info": self.info, "history": self.history.to_dict(),
        })
        return folder

    @classmethod
    def load(cls, folder: str | os.PathLike[str]) -> CompletionModel:
        folder = Path(folder)
        meta = read_json(folder / "model.json", "completion model")
        check_version(meta, "completion model", "deeplora.completion")
        t = read_tensors(folder / "model.safetensors", "completion model")
        m, n = meta["shape"]
        for name, rows in (("left", m), ("right", n)):
            if name not in t or t[name].shape[0] != rows:
                raise UserError(f"completion model in {folder}: tensor '{name}' is missing or "
                                 f"does not have {rows} rows; the files do not belong together")

        def arr(name: str) -> np.ndarray | None:
            return t[name].numpy() if name in t else None

        clip = meta.get("clip")
        return cls(
            left=t["left"], right=t["right"], row_ids=list(meta["row_ids"]),
            col_ids=list(meta["col_ids"]), offset=float(meta["offset"]),
            row_bias=arr("row_bias"), col_bias=arr("col_bias"),
            clip=None if clip is None else (float(clip[0]), float(clip[1])),
            observed_rows=arr("observed_rows"), observed_cols=arr("observed_cols"),
            history=FitHistory.from_dict(meta.get("history", {})), info=meta.get("info", {}),
        )

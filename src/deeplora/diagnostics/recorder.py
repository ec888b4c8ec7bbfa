"""Record how the learned low-rank updates evolve: spectra, subspace alignment, effective rank,
and the part of each change outside the predicted slice (docs/METHOD.md 2 and 4.1).

A *source* returns the current factors ``[W_1, ..., W_L]`` of one tracked matrix
``M = W_L ... W_1`` (a Deep LoRA ``dW``, a PEFT LoRA ``scaling * B A``, one layer or the
end-to-end map of a deep factorization, ``W(t) - W(0)`` under full fine-tuning). At each
scheduled step :class:`SubspaceRecorder` reads every source and stores, per matrix:

- the top-k singular values ``s_1 >= ... >= s_k`` of ``M`` (exact, float64) and the top-k of
  each factor ``W_l``;
- the principal-angle cosines between the top-k left / right singular subspaces ``span(U_k)``,
  ``span(V_k)`` and a reference pair ``(U_ref, V_ref)``: with orthonormal bases ``Q_a, Q_b``
  they are the singular values of ``Q_a^T Q_b``, descending, 1 for a shared direction, 0 for
  an orthogonal one. The reference is the last record's top-k (``"final"``: how early the
  final subspace is found), the first record's (``"first"``), a given pair per matrix (e.g. the
  slice predicted at init), or ``"predicted"`` (the ``slices`` below);
- the effective rank (docs/METHOD.md 4.1: in the authors' runs most Deep LoRA updates had spectral
  norm <= 1e-3 or rank 1-4): ``#{i : s_i > rank_atol}`` and ``#{i : s_i > rank_rtol * s_1}``;
- optionally, with a slice ``(M0, U, V)`` (orthonormal ``U``, ``V``), the relative part of the
  change ``D = M(t) - M0`` outside ``span(U) x span(V)``:
  ``outside = ||D - U U^T D V V^T||_F / ||D||_F`` (0 when ``D = 0``). The theorem of
  docs/METHOD.md 2 says that under gradient descent on a deep factorization from an
  eps-orthogonal init only the 2 r_hat-wide slice of each layer moves,
  ``W_l(t) = U_l diag(Wt_l(t), eps I) V_l^T``:
  ``outside`` stays near zero (for factorization only the common scale of the eps block
  drifts, by O(lr eps^5) per step: ~5e-10 of the change in our 12 x 12, eps = 1e-3 test; for
  completion the slice is invariant only approximately), and all but 2 r_hat singular values
  of each layer stay at eps.
  :meth:`SubspaceRecorder.from_solver` with ``r_hat`` builds these slices from the init
  (:func:`predicted_bases`, docs/METHOD.md 3.1).

Cost of one record, per matrix with factors of sizes ``d_l x d_{l-1}`` and narrowest inner
width ``w``: when ``w < min(d_out, d_in)`` (LoRA-like) the SVD never forms ``M``: two thin QRs
and a ``w x w`` SVD, ``O(sum_l d_l d_{l-1} w + (d_out + d_in) w^2)``; otherwise one dense SVD
``O(d_out d_in min(d_out, d_in))``. Plus one small SVD per factor, ``O(k^2 (d_out + d_in))`` for
the cosines and ``O(d_out d_in w)`` for ``outside`` (dense, only with a slice).
:attr:`SubspaceRecorder.seconds_per_record` measures it on your run. Memory:
``reference="final"`` keeps the top-k vectors of every record until
:meth:`SubspaceRecorder.finish`, in float32: ``4 (d_out + d_in) k`` bytes per matrix per record
(record less often with ``every`` / ``steps``, or use ``reference="first"`` or a given
reference, which keep only the numbers, ``O(k L)`` per matrix per record).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from ..errors import UserError
from ..subspace import (
    as_float64,
    chain,
    chain_grads,
    check_chain,
    factored_svd,
    orth,
)
from .recording import LayerTrace, Recording
from .sources import (
    Source,
    model_sources,
    predicted_bases,
    solver_sources,
    weight_sources,
)

if TYPE_CHECKING:
    from ..completion.solver import GradientDescent

__all__ = [
    "LayerTrace",
    "Recording",
    "Source",
    "SubspaceRecorder",
    "factored_svd",
    "model_sources",
    "predicted_bases",
    "solver_sources",
    "weight_sources",
]

REFERENCES = ("final", "first", "predicted")


# ----------------------------------------------------------------------------- linear algebra


def _cosines(a: torch.Tensor, q_ref: torch.Tensor) -> torch.Tensor:
    """Principal-angle cosines between ``span(a)`` and ``span(q_ref)``, both orthonormal."""
    if a.shape[1] == 0 or q_ref.shape[1] == 0:
        return a.new_zeros(0)
    return torch.linalg.svdvals(a.T @ q_ref).clamp(max=1.0)


def _pad(values: torch.Tensor | np.ndarray, k: int) -> np.ndarray:
    """The first ``k`` values as float64, nan-padded to length ``k`` (last axis)."""
    v = values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else values
    v = np.asarray(v, dtype=np.float64)[..., :k]
    if v.shape[-1] == k:
        return v.copy()
    out = np.full((*v.shape[:-1], k), np.nan)
    out[..., : v.shape[-1]] = v
    return out


# ----------------------------------------------------------------------------- the recorder


class _Track:
    """Per-matrix accumulator."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []  # one per record
        self.shape: tuple[int, int] | None = None
        self.factor_shapes: list[tuple[int, int]] | None = None
        self.first: tuple[torch.Tensor, torch.Tensor] | None = None  # "first" reference
        self.last: tuple[torch.Tensor, torch.Tensor] | None = None  # float64 top-k, last record


def _orthonormal_pair(name: str, pair: Any, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    if not (isinstance(pair, tuple | list) and len(pair) == 2):
        raise UserError(f"{what}[{name!r}] must be a pair (U, V) of matrices")
    out = []
    for side, m in zip("UV", pair):
        m = torch.as_tensor(m)
        if m.ndim != 2 or m.shape[1] < 1 or m.shape[1] > m.shape[0]:
            raise UserError(
                f"{what}[{name!r}]: {side} must be a 2-D basis with 1 <= columns <= rows, got "
                f"shape {tuple(m.shape)}"
            )
        out.append(orth(as_float64(m)).cpu())
    return out[0], out[1]


def _check_keys(given: Mapping[str, Any], sources: Mapping[str, Any], what: str) -> None:
    missing = sorted(set(sources) - set(given))
    extra = sorted(set(given) - set(sources))
    if missing or extra:
        raise UserError(
            f"{what} keys must match the sources: missing {missing[:5]}, unknown {extra[:5]} "
            f"(the sources are {sorted(sources)[:8]}{'...' if len(sources) > 8 else ''})"
        )


class SubspaceRecorder:
    """Samples spectra and subspaces of every source at chosen steps (see the module docstring).

    Use it from any loop: ``recorder.maybe_record(step)`` after each step (or ``record`` to
    force one), then ``recording = recorder.finish()``. Hooks: ``on_step`` for
    ``deeplora.finetune.Trainer.run(on_step=...)``, the instance itself as
    ``GradientDescent.run(callback=...)``, :class:`deeplora.diagnostics.hf.RecorderCallback`
    for a Hugging Face Trainer.

    Args:
        sources: name -> :data:`Source`.
        k: how many singular values / directions to keep per matrix.
        every: record at steps divisible by ``every`` (step 0 included).
        steps: an explicit schedule (overrides ``every``).
        reference: ``"final"`` (the last record's top-k), ``"first"`` (the first record's),
            ``"predicted"`` (each slice's ``(U, V)``; needs ``slices`` for every source), or a
            mapping name -> ``(U_ref, V_ref)`` for every source.
        rank_atol: effective rank counts ``s_i > rank_atol`` (docs/METHOD.md 4.1 uses 1e-3).
        rank_rtol: and ``s_i > rank_rtol * s_1``.
        slices: name -> ``(M0, U, V)``: also record ``outside`` for those matrices.
    """

    def __init__(
        self,
        sources: Mapping[str, Source],
        *,
        k: int = 8,
        every: int = 1,
        steps: Iterable[int] | None = None,
        reference: str | Mapping[str, tuple[torch.Tensor, torch.Tensor]] = "final",
        rank_atol: float = 1e-3,
        rank_rtol: float = 1e-2,
        slices: Mapping[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] | None = None,
    ) -> None:
        self._start = time.perf_counter()
        if not isinstance(sources, Mapping) or not sources:
            raise UserError("SubspaceRecorder needs at least one source (name -> callable)")
        for name, src in sources.items():
            if not callable(src):
                raise UserError(f"source {name!r} must be a callable returning factors")
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise UserError(f"k must be an integer >= 1, got {k!r}")
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise UserError(f"every must be an integer >= 1, got {every!r}")
        if rank_atol < 0 or rank_rtol < 0:
            raise UserError(f"rank_atol and rank_rtol must be >= 0, got {rank_atol}, {rank_rtol}")
        self.sources = dict(sources)
        self.k = k
        self.every = every
        self.steps: frozenset[int] | None = None
        if steps is not None:
            schedule = [int(s) for s in steps]
            if any(s < 0 for s in schedule):
                raise UserError("steps must be >= 0")
            self.steps = frozenset(schedule)
        self.rank_atol = float(rank_atol)
        self.rank_rtol = float(rank_rtol)

        self.slices: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        for name, value in (slices or {}).items():
            if name not in self.sources:
                raise UserError(f"slices has {name!r}, which is not a source "
                                 f"(sources: {sorted(self.sources)[:8]})")
            if not (isinstance(value, tuple | list) and len(value) == 3):
                raise UserError(f"slices[{name!r}] must be a triple (M0, U, V)")
            m0 = as_float64(torch.as_tensor(value[0]))
            u, v = _orthonormal_pair(name, tuple(value[1:]), "slices")
            if m0.ndim != 2 or m0.shape != (u.shape[0], v.shape[0]):
                raise UserError(
                    f"slices[{name!r}]: M0 {tuple(m0.shape)} must be rows(U) x rows(V) = "
                    f"{u.shape[0]} x {v.shape[0]}"
                )
            self.slices[name] = (m0, u, v)

        self.reference_kind: str
        self._ref: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None
        if isinstance(reference, str):
            if reference not in REFERENCES:
                raise UserError(
                    f"reference must be one of {REFERENCES} or a mapping name -> (U, V), got "
                    f"{reference!r}"
                )
            self.reference_kind = reference
            if reference == "predicted":
                if set(self.slices) != set(self.sources):
                    raise UserError(
                        "reference='predicted' needs a slice for every source; pass slices= "
                        "(or SubspaceRecorder.from_solver(..., r_hat=...))"
                    )
                self._ref = {n: (u, v) for n, (_, u, v) in self.slices.items()}
        elif isinstance(reference, Mapping):
            _check_keys(reference, self.sources, "reference")
            self.reference_kind = "given"
            self._ref = {n: _orthonormal_pair(n, p, "reference") for n, p in reference.items()}
        else:
            raise UserError(f"reference must be a string or a mapping, got "
                             f"{type(reference).__name__}")

        self._tracks = {name: _Track() for name in self.sources}
        self._steps: list[int] = []
        self._seconds: list[float] = []
        self._own = 0.0  # the recorder's own time
        self._count = 0  # records made (dropped ones included)
        self._dropped = 0
        self.seconds_per_record: float = math.nan

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_model(
        cls, model: nn.Module, adapter_name: str = "default", **kw: Any
    ) -> SubspaceRecorder:
        """Track every Deep LoRA / PEFT LoRA update of ``model`` (:func:`model_sources`)."""
        return cls(model_sources(model, adapter_name), **kw)

    @classmethod
    def from_solver(
        cls, solver: GradientDescent, *, r_hat: int | None = None, **kw: Any
    ) -> SubspaceRecorder:
        """Track a deep-factorization solver (:func:`solver_sources`).

        With ``r_hat`` (a :class:`~deeplora.completion.WideSolver` at its eps-orthogonal init,
        before any step) each layer ``W_l`` and the end-to-end map also get the predicted slice
        (:func:`predicted_bases` from the current weights and the init gradient), so ``outside``
        is recorded; ``reference="predicted"`` then compares against that slice.
        """
        sources = solver_sources(solver)
        if r_hat is not None:
            from ..completion.wide import WideSolver

            if "slices" in kw:
                raise UserError("give r_hat or slices, not both")
            if not isinstance(solver, WideSolver):
                raise UserError("r_hat (the predicted slice) applies to a WideSolver only")
            if solver.config.init != "orthogonal":
                raise UserError("r_hat needs the eps-orthogonal init (WideConfig(init="
                                 "'orthogonal')), the theorem's setting")
            if solver.t != 0:
                raise UserError(
                    f"the predicted slice is read off the init, but the solver is at step "
                    f"{solver.t}; build the recorder before running the solver"
                )
            weights = [w.detach().to(torch.float64) for w in solver.weights]
            _, grad_f = solver.objective.to(torch.float64).dense(chain(weights))
            grad_first = chain_grads(weights, grad_f)[0]
            bases = predicted_bases(weights, grad_first, r_hat, solver.init_scale)
            slices = {f"W{i + 1}": (w.clone(), u, v)
                      for i, (w, (u, v)) in enumerate(zip(weights, bases))}
            slices["end_to_end"] = (chain(weights), bases[-1][0], bases[0][1])
            kw["slices"] = slices
        return cls(sources, **kw)

    # ------------------------------------------------------------------ schedule
    @property
    def recorded_steps(self) -> list[int]:
        return list(self._steps)

    def due(self, step: int) -> bool:
        """Whether ``step`` is on the schedule and after the last recorded step."""
        if self._steps and step <= self._steps[-1]:
            return False
        if self.steps is not None:
            return step in self.steps
        return step % self.every == 0

    def maybe_record(self, step: int) -> bool:
        """Record if :meth:`due`; returns whether it did."""
        if not self.due(step):
            return False
        self.record(step)
        return True

    def on_step(self, step: int, *_: Any) -> None:
        """Hook for ``deeplora.finetune.Trainer.run(on_step=recorder.on_step)``."""
        self.maybe_record(step)

    def __call__(self, solver: GradientDescent) -> None:
        """Hook for ``GradientDescent.run(callback=recorder)``: records ``solver.t`` if due,
        after dropping records the solver rewound past (automatic-step back-off)."""
        self.truncate(solver.t)
        self.maybe_record(solver.t)

    def truncate(self, step: int) -> None:
        """Drop the records at ``step`` and later."""
        keep = sum(1 for s in self._steps if s < step)
        if keep == len(self._steps):
            return
        self._dropped += len(self._steps) - keep
        del self._steps[keep:]
        del self._seconds[keep:]
        for tr in self._tracks.values():
            del tr.rows[keep:]
            tr.last = None  # fall back to the float32 copy of the new last record
            if keep == 0:
                tr.first = None

    # ------------------------------------------------------------------ recording
    def record(self, step: int) -> None:
        """Read every source now and store the numbers for ``step``."""
        t0 = time.perf_counter()
        step = int(step)
        if self._steps and step <= self._steps[-1]:
            raise UserError(
                f"step {step} is not after the last recorded step {self._steps[-1]}; steps "
                "must increase (truncate(step) drops later records after a rewind)"
            )
        rows = {name: self._measure(name, self._tracks[name]) for name in self.sources}
        for name, row in rows.items():  # commit only once every source was read
            tr = self._tracks[name]
            if "first" in row:
                tr.first = row.pop("first")
            if "last" in row:
                tr.last = row.pop("last")
            tr.rows.append(row)
        self._steps.append(step)
        self._seconds.append(t0 - self._start - self._own)
        self._count += 1
        self._own += time.perf_counter() - t0
        self.seconds_per_record = self._own / self._count

    @torch.no_grad()
    def _measure(self, name: str, tr: _Track) -> dict[str, Any]:
        factors = self.sources[name]()
        if isinstance(factors, torch.Tensor):
            factors = [factors]
        check_chain(factors, f"source {name!r}")
        fs = [as_float64(f) for f in factors]
        shapes = [(int(f.shape[0]), int(f.shape[1])) for f in fs]
        if tr.factor_shapes is None:
            tr.factor_shapes = shapes
            tr.shape = (shapes[-1][0], shapes[0][1])
        elif len(shapes) != len(tr.factor_shapes) or tr.shape != (shapes[-1][0], shapes[0][1]):
            raise UserError(
                f"source {name!r} changed shape: {tr.factor_shapes} before, {shapes} now"
            )
        k = self.k
        u, s, v = factored_svd(fs)
        ke = min(k, int(s.numel()))
        uk, vk = u[:, :ke], v[:, :ke]
        row: dict[str, Any] = {"sv": _pad(s, k)}
        if len(fs) == 1:
            row["fsv"] = row["sv"][None]
        else:
            row["fsv"] = np.stack([_pad(torch.linalg.svdvals(f), k) for f in fs])
        s_np = s.cpu().numpy()
        row["ra"] = int((s_np > self.rank_atol).sum())
        row["rr"] = int((s_np > self.rank_rtol * s_np[0]).sum()) if s_np.size and s_np[0] > 0 \
            else 0
        ref: tuple[torch.Tensor, torch.Tensor] | None = None
        if self._ref is not None:
            ref = self._ref[name]
        elif self.reference_kind == "first":
            ref = tr.first
            if ref is None:  # this record becomes the reference (kept once it is committed)
                ref = row["first"] = (uk.cpu(), vk.cpu())
        if ref is not None:
            qu, qv = ref
            if qu.shape[0] != uk.shape[0] or qv.shape[0] != vk.shape[0]:
                raise UserError(
                    f"reference for {name!r} has bases of {qu.shape[0]} and {qv.shape[0]} rows, "
                    f"the matrix is {uk.shape[0]} x {vk.shape[0]}"
                )
            dev = uk.device
            row["cl"] = _pad(_cosines(uk, qu.to(dev)), k)
            row["cr"] = _pad(_cosines(vk, qv.to(dev)), k)
        else:  # "final": keep the vectors, compare at finish()
            row["u32"] = uk.to(torch.float32).cpu()
            row["v32"] = vk.to(torch.float32).cpu()
            row["last"] = (uk.cpu(), vk.cpu())
        if name in self.slices:
            m0, su, sv = (x.to(fs[0].device) for x in self.slices[name])
            if m0.shape != tr.shape:
                raise UserError(
                    f"slices[{name!r}]: M0 is {tuple(m0.shape)}, the matrix {tr.shape}")
            d = chain(fs) - m0
            norm = float(torch.linalg.matrix_norm(d))
            inside = su @ ((su.T @ d) @ sv) @ sv.T
            row["out"] = 0.0 if norm == 0 else float(torch.linalg.matrix_norm(d - inside)) / norm
        return row

    def finish(self) -> Recording:
        """The recording so far (call again after more records for an updated one)."""
        if not self._steps:
            schedule = (f"steps={sorted(self.steps)[:5]}" if self.steps is not None
                        else f"every={self.every}")
            raise UserError(
                "nothing was recorded: call record(step) or maybe_record(step) during training "
                f"(the schedule is {schedule})"
            )
        t0 = time.perf_counter()
        k = self.k
        layers: dict[str, LayerTrace] = {}
        for name, tr in self._tracks.items():
            rows = tr.rows
            if self.reference_kind == "final":
                cl, cr = self._final_cosines(tr)
            else:
                cl = np.stack([r["cl"] for r in rows])
                cr = np.stack([r["cr"] for r in rows])
            layers[name] = LayerTrace(
                singular_values=np.stack([r["sv"] for r in rows]),
                factor_singular_values=np.stack([r["fsv"] for r in rows]),
                cosines_left=cl,
                cosines_right=cr,
                rank_atol=np.array([r["ra"] for r in rows], dtype=np.int64),
                rank_rtol=np.array([r["rr"] for r in rows], dtype=np.int64),
                outside=np.array([r["out"] for r in rows]) if name in self.slices else None,
            )
        finish_seconds = time.perf_counter() - t0
        meta = {
            "reference": self.reference_kind,
            "k": k,
            "rank_atol": self.rank_atol,
            "rank_rtol": self.rank_rtol,
            "every": self.every if self.steps is None else None,
            "schedule": None if self.steps is None else sorted(self.steps),
            "seconds_per_record": self.seconds_per_record,
            "finish_seconds": finish_seconds,
            "records": self._count,
            "dropped": self._dropped,
            "shapes": {n: list(tr.shape or ()) for n, tr in self._tracks.items()},
            "factor_shapes": {n: [list(s) for s in tr.factor_shapes or []]
                              for n, tr in self._tracks.items()},
            "slices": sorted(self.slices),
        }
        return Recording(np.array(self._steps, dtype=np.int64),
                         np.array(self._seconds, dtype=np.float64), layers, k, meta)

    def _final_cosines(self, tr: _Track, chunk: int = 256) -> tuple[np.ndarray, np.ndarray]:
        rows = tr.rows
        last = tr.last or (rows[-1]["u32"].double(), rows[-1]["v32"].double())
        out = []
        for key, ref in (("u32", last[0]), ("v32", last[1])):
            parts = []
            for i in range(0, len(rows), chunk):
                stack = torch.stack([r[key] for r in rows[i:i + chunk]]).double()
                if stack.shape[2] == 0:
                    parts.append(np.full((stack.shape[0], self.k), np.nan))
                    continue
                cos = torch.linalg.svdvals(stack.transpose(1, 2) @ ref).clamp(max=1.0)
                parts.append(_pad(cos, self.k))
            out.append(np.concatenate(parts))
        return out[0], out[1]

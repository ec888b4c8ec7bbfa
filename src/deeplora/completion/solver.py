"""Full-batch gradient descent shared by the wide and the compressed deep factorization:
the configuration, the loop with its stopping rules, divergence guard, progress bar, history
and checkpoints (:mod:`deeplora.completion.checkpoint`); docs/METHOD.md 5.

The defaults are free of the data's units and size:

- ``init_scale=None``: every factor starts at ``eps = init_relative * s^(1/L)``, where ``s``
  estimates the target's top singular value, so the end-to-end init ``eps^L`` is the fraction
  ``init_relative^L`` of ``s`` whatever the scale of the values; the paper's absolute
  ``eps = 1e-3`` is ``init_scale=1e-3`` (:meth:`SolverConfig.paper`).
- ``lr=None``: the inverse of the loss's largest curvature at a balanced solution
  (:func:`auto_lr`), which scales as ``s^(2/L - 2)``.
- ``momentum``: heavy-ball momentum, reset whenever the loss rises (adaptive restart);
  ``0`` is plain gradient descent, the paper's.

Stopping rules, checked every ``eval_every`` steps (and at the last step):

- ``max_steps`` reached;
- ``tol``: relative training residual ``||P(f - Phi)|| / ||P(Phi)|| <= tol``;
- ``target_error``: relative error ``||f - Phi||_F / ||Phi||_F <= target_error`` (needs the
  truth);
- ``patience``: validation RMSE has not improved clearly for ``patience`` evaluations and for
  ``patience_ratio`` times the steps it took to reach its last clear improvement, and the
  training loss has left its initial plateau; the factors of the best evaluation are restored.
  The wait grows with the run because incremental learning does: the k-th singular value is
  learned after about ``(s_1 / s_k) / init_relative`` steps, so the plateau before the next
  one is as long as the run so far when consecutive singular values differ by 2x.

Divergence: a loss that is not finite or exceeds ``blowup`` times its start raises
:class:`DivergenceError` when the step was given. With the automatic step (``lr=None``) the
loop backs off instead: it returns to the last evaluated state, halves the step and goes
on, up to ``backoffs`` times; a loss above ``blowup`` times the lowest one seen so far
(gradient descent bouncing out of a valley) counts too (with momentum: at an evaluation).
The automatic step rests on an estimate of the target's scale that sparse, unevenly sampled
data can throw off; the back-off makes the estimate a starting point rather than a promise.
"""

from __future__ import annotations

import math
import os
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..errors import UserError
from . import checkpoint
from .config import SolverConfig
from .data import LowRankMatrix, Observations
from .objectives import Objective, entries_fingerprint, make_objective
from .offsets import Offsets
from .results import FitHistory, FitResult, relative_error

#: The training loss must have fallen below this fraction of its start before patience can
#: stop a run: until then the factorization sits at its init and validation cannot improve.
LEFT_INIT = 0.95
#: A singular value below PENDING_BELOW times the top one that grew more than PENDING_GROWTH
#: times since the last clear improvement is on its way: patience then waits, up to PENDING_WAIT
#: times its usual wait.
PENDING_BELOW, PENDING_GROWTH, PENDING_WAIT = 1e-2, 2.0, 4.0


class DivergenceError(RuntimeError):
    """Gradient descent blew up: the step is too large for this problem."""


def _target_scale(objective: Objective) -> float:
    s = objective.target_scale()
    if not math.isfinite(s) or s <= 0:
        raise UserError("the target is zero (after its offsets, if any): there is nothing to "
                         "fit")
    return s


def auto_lr(objective: Objective, depth: int, factor: float = 1.0) -> float:
    """``factor / (p L s^(2 - 2/L))``: the inverse of the largest curvature of the loss at a
    balanced solution, where ``s`` estimates the target's top singular value and ``p`` is the
    sampling rate. Gradient descent is stable below twice that. (The compressed solver also
    caps it by ``factor / (gamma p s^2)``, the curvature its outer factors see.)"""
    s = _target_scale(objective)
    return factor / (objective.sampling_rate * depth * s ** (2 - 2 / depth))


class GradientDescent(ABC):
    """A deep factorization trained by full-batch gradient descent on an :class:`Objective`.

    Subclasses hold the parameters and implement :meth:`gradients`, :meth:`factors` and
    :meth:`parameters`; :meth:`step` applies the update (with momentum, when set).
    """

    config: SolverConfig

    def __init__(
        self,
        problem: Any,
        config: SolverConfig,
        *,
        truth: LowRankMatrix | np.ndarray | torch.Tensor | None = None,
        validation: Observations | None = None,
    ) -> None:
        self.config = config
        self.objective = make_objective(problem, config.torch_dtype)
        offsets = getattr(self.objective, "offsets", None)
        if offsets is not None:  # a solver before on the same objective moved them
            offsets.reset()
        self.shape = self.objective.shape
        self._obj = self.objective  # the objective the steps use (a subclass may transpose)
        self.transposed = False
        self.truth = truth
        self.validation = validation
        if truth is not None and tuple(truth.shape) != self.shape:
            raise UserError(f"truth has shape {tuple(truth.shape)}, the problem {self.shape}")
        if validation is not None and validation.shape != self.shape:
            raise UserError(
                f"validation entries are for shape {validation.shape}, the problem is "
                f"{self.shape}; split both from the same Observations"
            )
        self.init_scale = config.init_scale if config.init_scale is not None else (
            config.init_relative * _target_scale(self.objective) ** (1 / config.depth))
        self.lr = config.lr if config.lr is not None else auto_lr(
            self.objective, config.depth, config.lr_factor)
        self.t = 0
        self.history = FitHistory()
        self._initial_loss: float | None = None
        self._ref_norm = self._reference_norm()
        self._best: tuple[float, dict[str, torch.Tensor]] | None = None
        self._t_clear = 0  # step of the last clear improvement of the validation RMSE
        self._left_init = False  # the training loss has fallen below LEFT_INIT of its start
        self._spectra: list[tuple[int, list[float]]] = []  # (step, spectrum) per evaluation
        self._elapsed = 0.0
        self._auto = config.lr is None  # the automatic step may back off on divergence
        self._low = math.inf  # the lowest loss so far
        # the last evaluated state whose loss has been seen to be sane (the next step measures
        # it): (t, history rows, lowest loss then, parameters); the newest one waits as a
        # candidate until then
        self._good: tuple[int, int, float, dict[str, torch.Tensor]] | None = None
        self._candidate: tuple[int, int, float, dict[str, torch.Tensor]] | None = None
        self.backoff_steps: list[int] = []  # steps at which the automatic step was halved
        self._velocity: dict[str, torch.Tensor] = {}  # momentum buffers
        self._last_loss: float | None = None  # the loss before the previous step
        self._fingerprint = self.objective.fingerprint()  # every process, at the same point

    # ---------------------------------------------------------------- to implement
    @abstractmethod
    def gradients(self) -> tuple[float, dict[str, torch.Tensor]]:
        """The loss at the current parameters and the descent direction of each trained
        tensor (its gradient, times its step factor; by the names of :meth:`parameters`)."""

    @abstractmethod
    def factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(left, right)`` with end-to-end ``f = left @ right.T`` (m x k, n x k)."""

    @abstractmethod
    def parameters(self) -> dict[str, torch.Tensor]:
        """Every tensor of the state by name (what a checkpoint holds), the offsets
        included (:meth:`_offset_parameters`)."""

    # ---------------------------------------------------------------- shared
    def step(self) -> float:
        """One gradient-descent step (heavy ball with ``config.momentum``, restarted when the
        loss rose); returns the loss before it."""
        loss, directions = self.gradients()
        params = self.parameters()
        beta = self.config.momentum
        if beta and self._last_loss is not None and loss > self._last_loss:
            self._velocity.clear()  # adaptive restart: the last step went uphill
        self._last_loss = loss if beta else None
        for name, direction in directions.items():
            if beta:
                velocity = self._velocity.get(name)
                if velocity is None:
                    velocity = self._velocity[name] = direction.clone()
                else:
                    velocity.mul_(beta).add_(direction)
                direction = velocity
            params[name].sub_(self.lr * direction)
        return loss

    def offsets(self) -> Offsets | None:
        """The offsets learned jointly with the factorization (problem orientation), if any."""
        off = getattr(self._obj, "offsets", None)
        return None if off is None else (off.transpose() if self.transposed else off)

    def _offset_parameters(self) -> dict[str, torch.Tensor]:
        off = getattr(self._obj, "offsets", None)
        return {} if off is None else {f"offset.{k}": v for k, v in off.state().items()}

    def end_to_end(self) -> torch.Tensor:
        """The dense m x n end-to-end matrix (small problems only; offsets not included)."""
        left, right = self.factors()
        return left @ right.T

    def predict(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """Predictions at index pairs, offsets included."""
        left, right = self.factors()
        r, c = torch.as_tensor(rows), torch.as_tensor(cols)
        pred = (left[r] * right[c]).sum(1).double()
        off = self.offsets()
        if off is not None:
            pred = pred + off.at(r, c)
        return pred.numpy()

    def model_factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(left, right)`` of the whole prediction, the offsets appended as the columns
        ``[b + mu, 1]`` and ``[1, c]``."""
        left, right = self.factors()
        off = self.offsets()
        if off is None:
            return left, right
        ones_l = torch.ones(left.shape[0], 1, dtype=torch.float64)
        ones_r = torch.ones(right.shape[0], 1, dtype=torch.float64)
        return (torch.cat([left.double(), (off.row + off.mu)[:, None], ones_l], 1),
                torch.cat([right.double(), ones_r, off.col[:, None]], 1))

    def _reference_norm(self) -> float:
        from .objectives import Completion

        if isinstance(self.objective, Completion):
            return self.objective.observed_norm()
        zero = torch.zeros(self.shape[0], 1, dtype=self.config.torch_dtype)
        loss, _, _ = self.objective.low_rank(zero, torch.zeros(self.shape[1], 1,
                                                               dtype=zero.dtype))
        return math.sqrt(2 * float(loss))

    def _diverged(self, loss: float) -> bool:
        if self._initial_loss is None:
            self._initial_loss = max(loss, 1e-300)
        blowup = self.config.blowup
        if not math.isfinite(loss) or loss > blowup * self._initial_loss:
            return True
        # Bouncing out of a valley (automatic step only). With momentum the loss may rise for
        # a few steps after a singular value arrives (the restart then takes over): only a
        # rise that lasts until the next evaluation counts.
        bounce = self._auto and loss > blowup * self._low
        if self.config.momentum:
            bounce = bounce and (self.t + 1) % self.config.eval_every == 0
        return bounce

    def _back_off(self, loss: float) -> None:
        """Return to the last evaluated state with half the step, or raise."""
        if not self._auto or self._good is None or len(self.backoff_steps) >= self.config.backoffs:
            tried = (f" after {len(self.backoff_steps)} halvings of the automatic step"
                     if self._auto else "")
            raise DivergenceError(
                f"gradient descent diverged at step {self.t} (loss {loss:.3g}, started at "
                f"{self._initial_loss:.3g}) with lr={self.lr:.3g}{tried}; lower the step, e.g. "
                f"lr={self.lr / 4:.3g} (--lr {self.lr / 4:.3g})"
            )
        self.backoff_steps.append(self.t)
        self.t, rows, self._low, params = self._good
        self._candidate = None  # the state that diverged
        self._restore(params)
        self.history.truncate(rows)
        self._spectra = [(t, s) for t, s in self._spectra if t <= self.t]
        self.lr /= 2
        self._velocity.clear()
        self._last_loss = None

    def _snapshot(self) -> tuple[int, int, float, dict[str, torch.Tensor]] | None:
        if not self._auto:
            return None
        return (self.t, len(self.history.step), self._low,
                {k: v.clone() for k, v in self.parameters().items()})

    def evaluate(self, loss: float) -> dict[str, float]:
        row = {"step": float(self.t), "loss": loss, "seconds": self._elapsed, "lr": self.lr}
        row["train_rmse"] = math.sqrt(2 * loss / len(self.objective))
        row["val_rmse"] = math.nan
        row["rel_error"] = math.nan
        if self.validation is not None:
            pred = self.predict(self.validation.rows, self.validation.cols)
            row["val_rmse"] = float(np.sqrt(np.mean((pred - self.validation.values) ** 2)))
        if self.truth is not None:
            left, right = self.model_factors()
            row["rel_error"] = relative_error(left, right, self.truth)
        return row

    def run(
        self,
        *,
        checkpoint: str | os.PathLike[str] | None = None,
        checkpoint_every: int = 1000,
        resume: bool = False,
        callback: Callable[[GradientDescent], None] | None = None,
    ) -> FitResult:
        """Iterate until a stopping rule fires (see the module docstring).

        With ``checkpoint``, the state is written there atomically every
        ``checkpoint_every`` steps; ``resume=True`` continues from it, and the run ends as an
        uninterrupted one would.

        ``callback(solver)`` is called after every completed step (``solver.t`` is then the
        number of steps done, before that step's evaluation), e.g. a
        :class:`deeplora.diagnostics.SubspaceRecorder`. Its time is not counted in the
        history's ``seconds``. After an automatic-step back-off ``solver.t`` goes back: the
        next call sees a step it has seen before (the recorder drops its later records).
        """
        cfg = self.config
        if resume and checkpoint is not None and Path(checkpoint).is_dir():
            self.load_checkpoint(checkpoint)
        bar = tqdm(total=cfg.max_steps, initial=self.t, disable=not cfg.progress or None,
                   desc=type(self).__name__, unit="step", dynamic_ncols=True)
        stopped = "max_steps"
        if self._good is None:
            self._good = self._snapshot()
        try:
            while self.t < cfg.max_steps:
                start = time.perf_counter()
                loss = self.step()
                self._elapsed += time.perf_counter() - start
                if self._diverged(loss):
                    self._back_off(loss)
                    bar.reset(total=cfg.max_steps)
                    bar.update(self.t)
                    continue
                self._low = min(self._low, loss)
                if self._candidate is not None:  # its loss was just measured: sane
                    self._good, self._candidate = self._candidate, None
                self.t += 1
                bar.update(1)
                if callback is not None:
                    callback(self)
                if self.t % cfg.eval_every == 0 or self.t == cfg.max_steps or self.t == 1:
                    row = self.evaluate(loss)
                    self.history.append(**row)
                    self._record_spectrum()
                    self._candidate = self._snapshot()
                    bar.set_postfix({k: f"{v:.3g}" for k, v in row.items()
                                     if k in ("train_rmse", "val_rmse", "rel_error")
                                     and not math.isnan(v)})
                    reason = self._should_stop(row)
                    if reason:
                        stopped = reason
                        break
                if checkpoint is not None and self.t % checkpoint_every == 0:
                    self.save_checkpoint(checkpoint)
        finally:
            bar.close()
        if checkpoint is not None:  # the last state, so that a longer run can resume from it
            self.save_checkpoint(checkpoint)
        if self._best is not None and stopped in ("patience", "max_steps"):
            self._restore(self._best[1])
        left, right = self.factors()
        off = self.offsets()
        offsets = None if off is None else (float(off.mu), off.row.numpy().copy(),
                                            off.col.numpy().copy())
        return FitResult(left.detach().clone(), right.detach().clone(), self.history, stopped,
                         self.t, self.lr, offsets)

    def _should_stop(self, row: dict[str, float]) -> str | None:
        cfg = self.config
        if cfg.tol > 0 and math.sqrt(2 * row["loss"]) <= cfg.tol * self._ref_norm:
            return "tol"
        if cfg.target_error is not None and row["rel_error"] <= cfg.target_error:
            return "target_error"
        if self._initial_loss is not None and row["loss"] <= LEFT_INIT * self._initial_loss:
            self._left_init = True
        if self.validation is not None and not math.isnan(row["val_rmse"]):
            val = row["val_rmse"]
            # the best factors are kept; only a clear improvement resets the patience
            if self._best is None or val < self._best[0] * (1 - cfg.min_improvement):
                self._t_clear = self.t
            if self._best is None or val < self._best[0]:
                self._best = (val, {k: v.clone() for k, v in self.parameters().items()})
            if cfg.patience is not None and self._left_init and self._waited_enough():
                return "patience"
        return None

    def _waited_enough(self) -> bool:
        """Patience is spent: no clear improvement for ``patience`` evaluations and for
        ``patience_ratio`` times the steps to the last one, and no singular value on its way
        (then up to ``PENDING_WAIT`` times longer)."""
        cfg = self.config
        assert cfg.patience is not None
        window = cfg.patience * cfg.eval_every
        waited = self.t - self._t_clear
        wait = max(window, cfg.patience_ratio * self._t_clear)
        if waited < wait:
            return False
        return waited >= PENDING_WAIT * wait or not self._pending(self._t_clear)

    def spectrum(self) -> torch.Tensor | None:
        """The end-to-end map's singular values, descending, if cheap to get (else None)."""
        return None

    def _record_spectrum(self) -> None:
        spectrum = self.spectrum()
        if spectrum is not None:
            self._spectra.append((self.t, [float(x) for x in spectrum]))
            # keep the last spectrum at or before the last clear improvement, and the newest
            before = [i for i, (t, _) in enumerate(self._spectra) if t <= self._t_clear]
            first = before[-1] if before else 0
            self._spectra = [self._spectra[first], *self._spectra[first + 1:][-1:]]

    def _pending(self, since: int) -> bool:
        """Whether a singular value still far below the top one has grown by more than
        ``PENDING_GROWTH`` times since step ``since``: in incremental learning, the next one on
        its way (the loss and the validation error stay flat until it arrives)."""
        before = [s for t, s in self._spectra if t <= since]
        if not before or not self._spectra:
            return False
        then, now = np.asarray(before[-1]), np.asarray(self._spectra[-1][1])
        small = now < PENDING_BELOW * now[0]
        return bool(np.any(small & (now > PENDING_GROWTH * then)))

    def _restore(self, params: dict[str, torch.Tensor]) -> None:
        for name, value in params.items():
            self.parameters()[name].copy_(value)

    # ---------------------------------------------------------------- checkpoints
    def fingerprint(self) -> list[float]:
        """Sums that identify the data (the problem's and the validation entries'), so that a
        resume can refuse a checkpoint of another table."""
        marks = list(self._fingerprint)
        if self.validation is not None:
            marks += entries_fingerprint(self.validation.rows, self.validation.cols,
                                         self.validation.values)
        return marks

    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Everything a resume needs: the tensors (parameters, momentum, the best and the last
        sane evaluated parameters) by name, and the rest as JSON-ready values."""
        tensors = {f"param.{k}": v for k, v in self.parameters().items()}
        tensors.update({f"velocity.{k}": v for k, v in self._velocity.items()})
        if self._best is not None:
            tensors.update({f"best.{k}": v for k, v in self._best[1].items()})
        if self._good is not None:
            tensors.update({f"good.{k}": v for k, v in self._good[3].items()})
        meta = {
            "step": self.t, "lr": self.lr, "elapsed": self._elapsed,
            "initial_loss": self._initial_loss,
            "best_val": None if self._best is None else self._best[0],
            "t_clear": self._t_clear, "left_init": self._left_init, "spectra": self._spectra,
            "last_loss": self._last_loss, "history": self.history.to_dict(),
            "low_loss": None if math.isinf(self._low) else self._low,
            "good": None if self._good is None else [
                *self._good[:2], None if math.isinf(self._good[2]) else self._good[2]],
            "backoff_steps": self.backoff_steps, "candidate": self._candidate is not None,
        }
        return tensors, meta

    def load_state(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        """Continue from a :meth:`state` (the parameters' shapes checked by the caller)."""
        params = self.parameters()
        for name, value in params.items():
            value.copy_(tensors[f"param.{name}"])
        self._velocity = {k[len("velocity."):]: v.clone() for k, v in tensors.items()
                          if k.startswith("velocity.")}
        if meta["best_val"] is not None:
            self._best = (meta["best_val"], {k: tensors[f"best.{k}"] for k in params})
        self.t, self.lr = meta["step"], meta["lr"]
        self._elapsed, self._initial_loss = meta["elapsed"], meta["initial_loss"]
        self._t_clear, self._left_init = meta["t_clear"], meta["left_init"]
        self._spectra = [(int(t), list(v)) for t, v in meta["spectra"]]
        self._last_loss = meta["last_loss"]
        self.history = FitHistory.from_dict(meta["history"])
        self._low = math.inf if meta["low_loss"] is None else meta["low_loss"]
        if meta["good"] is not None:
            t, rows, low = meta["good"]
            self._good = (t, rows, math.inf if low is None else low,
                          {k: tensors[f"good.{k}"] for k in params})
        self.backoff_steps = list(meta["backoff_steps"])
        self._candidate = self._snapshot() if meta.get("candidate") else None

    def save_checkpoint(self, folder: str | os.PathLike[str]) -> None:
        """Write :meth:`state` to ``folder`` (:func:`deeplora.completion.checkpoint.save`)."""
        checkpoint.save(self, folder)

    def load_checkpoint(self, folder: str | os.PathLike[str]) -> None:
        """Continue from the checkpoint in ``folder``, if it is of this run
        (:func:`deeplora.completion.checkpoint.load`)."""
        checkpoint.load(self, folder)

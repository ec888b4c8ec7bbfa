"""The training loop: AdamW at a constant rate, batches in a seeded order, evaluations at an
interval, checkpoints that a killed run resumes from bit for bit.

Data order: step ``s`` trains on positions ``s * b ... s * b + b - 1`` of an endless stream
that visits the training examples in a fresh permutation every epoch (epoch ``e`` uses
``numpy.random.default_rng([seed, e])``), so the order is a function of the seed and the step
alone.

A checkpoint (a folder) holds every trained parameter, the optimizer's state, the torch,
numpy and Python random states (dropout draws from torch's), the step, the stream position,
the loss history and a fingerprint of the training data: ``state-<step>.safetensors``
(written first) and ``state.json`` (written atomically after it, naming that file), so a crash
while writing leaves the previous checkpoint usable. Resuming with other settings or other data is
refused (``steps``, the evaluation settings, ``checkpoint_every``, ``threads`` and
``progress`` may change).

Several processes (``torchrun``; :mod:`deeplora.distributed`): the model is wrapped in
``DistributedDataParallel`` and rank ``r`` of ``W`` trains on positions ``r, r + W, ...`` of
each step's batch, so the global batch is the one a single process would use and the
averaged gradient is its mean gradient (for causal LM, where the loss is a mean over tokens,
each rank's share is weighted equally instead of by its token count). The batch size must
be divisible by ``W``. Rank 0 alone evaluates and writes checkpoints (with every rank's random
states); all ranks resume from them, with the same number of processes.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .. import _io
from ..distributed import runtime
from ..errors import UserError
from .config import FinetuneConfig
from .hardware import autocast, compiled, grad_scaler, to_device
from .methods import Adapted
from .tasks import Features, FinetuneTask, collate

CHECKPOINT_KIND = "deeplora.finetune-checkpoint"
STATE_JSON = "state.json"
# Settings a resumed run may change: they do not alter what the training steps compute.
FREE = ("steps", "eval_every", "checkpoint_every", "threads", "progress", "eval_batch_size",
        "generations", "max_new_tokens")

StepHook = Callable[[int, np.ndarray, float], None]  # (step done, example indices, loss)


def batch_indices(count: int, batch_size: int, step: int, seed: int) -> np.ndarray:
    """The training examples of step ``step`` (0-based): see the module docstring."""
    start = step * batch_size
    out: list[int] = []
    while len(out) < batch_size:
        epoch, offset = divmod(start + len(out), count)
        perm = np.random.default_rng([seed, epoch]).permutation(count)
        out.extend(perm[offset : offset + batch_size - len(out)].tolist())
    return np.array(out, dtype=np.int64)


@dataclass
class History:
    """Training loss per step and the evaluations made along the way."""

    loss: list[float] = field(default_factory=list)
    evals: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"loss": list(self.loss), "evals": list(self.evals)}


class Trainer:
    """Trains ``adapted`` on ``features`` for ``config.steps`` steps (see the module
    docstring); ``evaluate()`` is called every ``config.eval_every`` steps."""

    def __init__(
        self,
        adapted: Adapted,
        task: FinetuneTask,
        features: list[Features],
        config: FinetuneConfig,
        pad_id: int,
        *,
        evaluate: Callable[[], dict[str, Any]] | None = None,
        checkpoint: Path | None = None,
        fingerprint: str = "",
        device: torch.device | None = None,
    ) -> None:
        self.adapted, self.task, self.features = adapted, task, features
        self.device = torch.device("cpu") if device is None else device
        self.config, self.pad_id, self.evaluate = config, pad_id, evaluate
        self.checkpoint, self.fingerprint = checkpoint, fingerprint
        self.batch_size = min(config.batch_size, len(features))
        self.rank, self.world = runtime.rank(), runtime.world_size()
        if self.batch_size % self.world:
            raise UserError(
                f"a batch of {self.batch_size} examples cannot be shared evenly by "
                f"{self.world} processes; choose a batch size divisible by {self.world}"
            )
        self.net: nn.Module = adapted.model
        if self.world > 1:
            import inspect

            from torch.nn.parallel import DistributedDataParallel

            # the frozen model's buffers never change: no broadcast before each forward
            # (the option's name changed in torch 2.13; older releases know only the first)
            known = inspect.signature(DistributedDataParallel.__init__).parameters
            option = ("forward_sync_buffers" if "forward_sync_buffers" in known
                      else "broadcast_buffers")
            sync: dict[str, Any] = {option: False}
            self.net = DistributedDataParallel(adapted.model, **sync)
        if config.compile:
            self.net = compiled(self.net)
        self.optimizer = torch.optim.AdamW(
            adapted.groups, betas=config.betas, eps=config.adam_eps
        )
        self.scaler = grad_scaler(config, self.device)
        self.step = 0
        self.history = History()

    def batch(self, step: int) -> tuple[np.ndarray, dict[str, torch.Tensor]]:
        """The step's batch (its global indices) and this rank's share of it, collated."""
        idx = batch_indices(len(self.features), self.batch_size, step, self.config.seed)
        mine = idx[self.rank :: self.world]
        return idx, to_device(collate([self.features[i] for i in mine], self.pad_id), self.device)

    def run(self, *, resume: bool = False, on_step: StepHook | None = None) -> History:
        """Train to ``config.steps``; with ``resume`` continue from the checkpoint if any."""
        cfg, model = self.config, self.adapted.model
        if resume and self.checkpoint is not None and (self.checkpoint / STATE_JSON).is_file():
            self.load()
        bar = tqdm(total=cfg.steps, initial=self.step, disable=not cfg.progress or None,
                   desc=f"finetune {self.adapted.method}", unit="step", dynamic_ncols=True)
        try:
            model.train()
            while self.step < cfg.steps:
                idx, batch = self.batch(self.step)
                self.optimizer.zero_grad(set_to_none=True)
                value = self._forward_backward(batch)
                self.scaler.step(self.optimizer)  # optimizer.step() unless fp16 scales
                self.scaler.update()
                self.step += 1
                self.history.loss.append(value)
                bar.update(1)
                recent = self.history.loss[-10:]
                bar.set_postfix(loss=f"{sum(recent) / len(recent):.4f}")
                if on_step is not None:
                    on_step(self.step, idx, value)
                if cfg.eval_every and self.step % cfg.eval_every == 0 and self.step < cfg.steps:
                    if self.evaluate is not None and self.rank == 0:
                        self.history.evals.append({"step": self.step, **self.evaluate()})
                    model.train()
                if self.checkpoint is not None and (
                    self.step % cfg.checkpoint_every == 0 or self.step == cfg.steps
                ):
                    self.save()
        finally:
            bar.close()
        model.eval()
        return self.history

    def _forward_backward(self, batch: dict[str, torch.Tensor]) -> float:
        """Loss and gradients of one batch; returns the loss averaged over the ranks. A
        finite check comes before the backward pass, so that every rank stops together."""
        try:
            with autocast(self.config, self.device):
                loss = self.task.loss(self.net, batch)
            mean = runtime.all_reduce(loss.detach().double().reshape(1).clone(),
                                      "averaging the loss") / self.world
            value = float(mean)
            if not math.isfinite(value):
                raise UserError(
                    f"the training loss became {value} at step {self.step + 1}; lower the "
                    f"learning rate (it is {self.config.learning_rate:g})"
                )
            self.scaler.scale(loss).backward()  # DDP averages the gradients here
        except (RuntimeError, OSError) as e:
            if runtime.collective_failure(e):  # raised inside DistributedDataParallel
                raise runtime.peer_error("the gradient all-reduce", e) from e
            raise
        return value

    # ------------------------------------------------------------------ checkpoints
    def save(self) -> None:
        """Write the checkpoint (see the module docstring); under several processes rank 0
        writes it, with every rank's random states, and the others wait."""
        assert self.checkpoint is not None
        states = runtime.all_gather_object(_random_states(self.device),
                                           "sharing the random states")  # fmt: skip
        if self.rank == 0:
            self._write(states)
        runtime.barrier("writing the checkpoint")

    def _write(self, states: list[dict[str, Any]]) -> None:
        assert self.checkpoint is not None
        folder = self.checkpoint
        tensors: dict[str, torch.Tensor] = {
            f"param.{n}": p for n, p in self.adapted.trainable().items()
        }
        state = self.optimizer.state_dict()["state"]
        scalars: dict[str, Any] = {}
        for index, entries in state.items():
            for key, value in entries.items():
                if isinstance(value, torch.Tensor):
                    tensors[f"optim.{index}.{key}"] = value
                else:
                    scalars[f"{index}.{key}"] = value
        for r, rng in enumerate(states):
            suffix = "" if r == 0 else f".{r}"  # rank 0 keeps the one-process names
            tensors[f"rng.torch{suffix}"] = rng["torch"]
            tensors[f"rng.numpy{suffix}"] = rng["numpy_keys"]
            if "cuda" in rng:
                tensors[f"rng.cuda{suffix}"] = rng["cuda"]
        name = f"state-{self.step:08d}.safetensors"
        _io.write_tensors(folder / name, tensors)
        _io.write_json(folder / STATE_JSON, {
            "kind": CHECKPOINT_KIND,
            "format_version": _io.FORMAT_VERSION,
            "tensors": name,
            "step": self.step,
            "position": self.step * self.batch_size,
            "config": self.config.to_dict(),
            "fingerprint": self.fingerprint,
            "optimizer_scalars": scalars,
            "processes": len(states),
            "rng_numpy": states[0]["numpy"],
            "rng_python": states[0]["python"],
            "rng_ranks": [{"numpy": r["numpy"], "python": r["python"]} for r in states[1:]],
            "history": self.history.to_dict(),
            "grad_scaler": self.scaler.state_dict(),
        })  # fmt: skip
        for old in folder.glob("state-*.safetensors"):
            if old.name != name:
                old.unlink(missing_ok=True)

    def load(self) -> None:
        """Restore everything :meth:`save` wrote; refuse another run's checkpoint."""
        assert self.checkpoint is not None
        folder = self.checkpoint
        what = f"checkpoint {folder}"
        meta = _io.read_json(folder / STATE_JSON, what)
        _io.check_version(meta, what, CHECKPOINT_KIND)
        saved = {k: v for k, v in meta["config"].items() if k not in FREE}
        mine = {k: v for k, v in self.config.to_dict().items() if k not in FREE}
        changed = sorted(k for k in set(saved) | set(mine) if saved.get(k) != mine.get(k))
        if changed:
            raise UserError(
                f"{what} was written with other settings ({', '.join(changed)}); resume with "
                "the same settings, or start again without --resume (--overwrite)"
            )
        processes = int(meta.get("processes", 1))
        if processes != self.world:
            raise UserError(
                f"{what} was written by {processes} process(es); resume with the same number "
                f"(this run has {self.world})"
            )
        if meta["fingerprint"] != self.fingerprint:
            raise UserError(
                f"{what} was written for other training data; resume with the same data, or "
                "start again without --resume (--overwrite)"
            )
        tensors = _io.read_tensors(folder / meta["tensors"], what)
        params = self.adapted.trainable()
        with torch.no_grad():
            for name, p in params.items():
                value = tensors.get(f"param.{name}")
                if value is None or value.shape != p.shape:
                    raise UserError(f"{what} does not match this model (parameter {name!r})")
                p.copy_(value)
        state: dict[int, dict[str, Any]] = {}
        for key, value in tensors.items():
            if key.startswith("optim."):
                index, entry = key[len("optim."):].split(".", 1)
                state.setdefault(int(index), {})[entry] = value
        for key, value in meta["optimizer_scalars"].items():
            index, entry = key.split(".", 1)
            state.setdefault(int(index), {})[entry] = value
        groups = self.optimizer.state_dict()["param_groups"]
        self.optimizer.load_state_dict({"state": state, "param_groups": groups})
        suffix = "" if self.rank == 0 else f".{self.rank}"
        mine = meta if self.rank == 0 else meta["rng_ranks"][self.rank - 1]
        torch.set_rng_state(tensors[f"rng.torch{suffix}"])
        if f"rng.cuda{suffix}" in tensors and self.device.type == "cuda":
            torch.cuda.set_rng_state(tensors[f"rng.cuda{suffix}"], self.device)
        if meta.get("grad_scaler"):
            self.scaler.load_state_dict(meta["grad_scaler"])
        np_kind, np_pos, np_has_gauss, np_gauss = mine["rng_numpy" if self.rank == 0 else "numpy"]
        keys = tensors[f"rng.numpy{suffix}"].numpy().astype(np.uint32)
        np.random.set_state((np_kind, keys, np_pos, np_has_gauss, np_gauss))  # noqa: NPY002
        py_version, py_state, py_gauss = mine["rng_python" if self.rank == 0 else "python"]
        random.setstate((py_version, tuple(py_state), py_gauss))
        self.step = int(meta["step"])
        self.history = History(list(meta["history"]["loss"]), list(meta["history"]["evals"]))


def _random_states(device: torch.device) -> dict[str, Any]:
    """This process's torch (and its GPU's), numpy and Python random states (what a checkpoint
    keeps)."""
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state(legacy=True)  # noqa: NPY002
    py_version, py_state, py_gauss = random.getstate()
    states = {
        "torch": torch.get_rng_state(),
        "numpy_keys": torch.from_numpy(np.asarray(np_keys, dtype=np.int64)),
        "numpy": [np_kind, np_pos, np_has_gauss, np_gauss],
        "python": [py_version, list(py_state), py_gauss],
    }
    if device.type == "cuda":
        states["cuda"] = torch.cuda.get_rng_state(device)
    return states

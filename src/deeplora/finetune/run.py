"""One fine-tuning run end to end: data, model, method, training, evaluation, output folder.

Output folder (every file written atomically; the whole set is staged in a hidden folder
inside it and moved into place with ``metrics.json`` last, so a folder with ``metrics.json``
holds a complete run):

``adapter/``
    the trained weights: a Deep LoRA adapter (:func:`deeplora.adapters.save_adapter`, head
    included), a PEFT LoRA adapter (``save_pretrained``), or ``model.safetensors`` (full);
``peft/``
    with ``export_peft``: the Deep LoRA adapter as a standard PEFT LoRA adapter;
``metrics.json``
    evaluation metrics, the zero-training baseline, the loss history, counts and timing;
``predictions.csv`` / ``predictions.jsonl``
    one row per evaluation example (causal-lm: JSON lines with per-example loss and greedy
    generation);
``config.json``
    the settings used, the resolved learning rates and model, the classes or score scaling,
    and which rows of the training table were trained on;
``checkpoint/``
    only while a run is going (or was killed): what ``resume`` continues from.

Everything the user can get wrong (data, columns, labels, ``n``, the model, the output
folder) is checked before anything is written.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from .. import _io
from ..adapters import count_parameters
from ..distributed import runtime
from ..errors import UserError
from .config import FinetuneConfig
from .data import Examples, TableSource, prepare_examples
from .hardware import autocast, enable_gradient_checkpointing, resolve_device, to_device
from .methods import Adapted, attach
from .metrics import (
    classification_metrics,
    finite_or_none,
    generation_metrics,
    regression_metrics,
)
from .models import load_pretrained, pad_token_id, resolve_model
from .tasks import CausalLMTask, Features, FinetuneTask, TextTask, collate, fingerprint, make_task
from .trainer import History, StepHook, Trainer, batch_indices

RUN_KIND = "deeplora.finetune-run"
OUTPUTS = ("adapter", "peft", "metrics.json", "predictions.csv", "predictions.jsonl",
           "config.json")  # fmt: skip
CHECKPOINT = "checkpoint"


@dataclass
class FinetuneResult:
    """What a run produced (``metrics`` is what ``metrics.json`` holds)."""

    metrics: dict[str, Any]
    predictions: pd.DataFrame
    adapted: Adapted
    tokenizer: Any
    task: FinetuneTask
    history: History
    train: Examples
    evaluation: Examples

    @property
    def model(self) -> nn.Module:
        return self.adapted.model


# --------------------------------------------------------------------------- evaluation
def evaluate(
    model: nn.Module,
    task: FinetuneTask,
    features: list[Features],
    examples: Examples,
    config: FinetuneConfig,
    pad_id: int,
    *,
    tokenizer: Any = None,
    generator: nn.Module | None = None,
    device: torch.device | None = None,
) -> tuple[dict[str, Any], pd.DataFrame]:
    """Metrics and per-example predictions of ``model`` on ``examples`` (batches sorted by
    length, results in the examples' order). Causal-lm, with ``generator`` (the model to call
    ``generate`` on): greedy completions of every prompt (or of ``config.generations``
    sampled ones) in left-padded batches, scored by exact match and token-level F1 against
    the reference completions."""
    was_training = model.training
    model.eval()
    device = torch.device("cpu") if device is None else device
    order = np.argsort([len(f["input_ids"]) for f in features], kind="stable")
    parts: list[torch.Tensor] = []
    with torch.no_grad(), autocast(config, device):
        for start in range(0, len(order), config.eval_batch_size):
            chunk = order[start : start + config.eval_batch_size]
            batch = to_device(collate([features[i] for i in chunk], pad_id), device)
            if isinstance(task, CausalLMTask):
                sums, counts = task.token_losses(model, batch)
                parts.append(torch.stack([sums, counts.to(sums.dtype)], 1).float().cpu())
            else:
                out = task.outputs_of(model, batch).float().cpu()
                parts.append(out if out.dim() == 2 else out[:, None])
    values = torch.cat(parts).double().numpy()[np.argsort(order, kind="stable")]
    table = pd.DataFrame({"row": examples.rows})
    if isinstance(task, CausalLMTask):
        nll, tokens = values[:, 0], values[:, 1]
        loss = float(nll.sum() / max(tokens.sum(), 1))
        metrics: dict[str, Any] = {"loss": loss, "perplexity": math.exp(min(loss, 700.0))}
        table["prompt"], table["completion"] = examples.text, examples.completion
        table["loss"] = nll / np.maximum(tokens, 1)
        table["tokens"] = tokens.astype(np.int64)
        if generator is not None and config.generations != 0:
            chosen = np.arange(len(examples))
            if config.generations is not None and config.generations < len(examples):
                rng = np.random.default_rng([config.seed, 3])
                chosen = np.sort(rng.choice(len(examples), size=config.generations,
                                            replace=False))  # fmt: skip
            with autocast(config, device):
                texts = task.generate(generator, tokenizer, [examples.text[i] for i in chosen],
                                      config.max_new_tokens, max_length=config.max_length,
                                      batch_size=config.eval_batch_size)  # fmt: skip
            table["generation"] = None
            for i, text in zip(chosen, texts, strict=True):
                table.loc[i, "generation"] = text
            references = examples.completion
            assert references is not None
            metrics.update(generation_metrics([references[i] for i in chosen], texts))
            metrics["generated"] = len(chosen)
    else:
        _text_columns(table, examples)
        assert examples.label is not None
        if task.kind == "classification":
            pred = values.argmax(1)
            true_p = values[np.arange(len(values)), examples.label]
            metrics = classification_metrics(examples.label, pred)
            metrics["loss"] = float(-np.log(np.clip(true_p, 1e-12, None)).mean())
            table["label"] = [task.classes[i] for i in examples.label]
            table["prediction"] = [task.classes[i] for i in pred]
            for c, name in enumerate(task.classes):
                table[f"prob_{name}"] = values[:, c]
        else:
            scores = values[:, 0]
            metrics = regression_metrics(examples.label, scores)
            metrics["loss"] = float(np.mean(((scores - examples.label) / task.scale) ** 2))
            table["label"], table["prediction"] = examples.label, scores
    model.train(was_training)
    return metrics, table


def _text_columns(table: pd.DataFrame, examples: Examples) -> None:
    table["text"] = examples.text
    if examples.pair is not None:
        table["pair"] = examples.pair


def constant_baseline(task: TextTask, train: Examples, evaluation: Examples) -> dict[str, Any]:
    """The zero-training baseline of a text task: always the training sample's most frequent
    class (classification) or its mean score (regression)."""
    assert train.label is not None and evaluation.label is not None
    if task.kind == "classification":
        counts = np.bincount(train.label, minlength=len(task.classes))
        majority = int(np.argmax(counts))
        constant = np.full(len(evaluation), majority)
        return {"kind": f"majority class {task.classes[majority]!r}",
                **classification_metrics(evaluation.label, constant)}  # fmt: skip
    constant_scores = np.full(len(evaluation), float(train.label.mean()))
    return {"kind": "mean training score",
            **regression_metrics(evaluation.label, constant_scores)}  # fmt: skip


# --------------------------------------------------------------------------- output folder
def _check_out(out: Path | None, resume: bool, overwrite: bool) -> None:
    """The output folder rule shared with ``deeplora complete`` (:func:`_io.check_output_folder`):
    a folder holding files this command did not write, a finished or an interrupted run is
    refused unless ``overwrite`` (or ``resume``, for an interrupted run)."""
    if out is None:
        if resume:
            raise UserError("resume needs the output folder that holds the checkpoint")
        return
    _io.check_output_folder(out, (*OUTPUTS, CHECKPOINT), finished="metrics.json",
                            checkpoint=CHECKPOINT, resume=resume, overwrite=overwrite)


def _publish(out: Path, write: Callable[[Path], None]) -> None:
    """Let ``write`` fill a staging folder inside ``out``, then move its entries into place
    (``metrics.json`` last)."""
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=out))
    try:
        write(staging)
        for entry in sorted(staging.iterdir(), key=lambda p: p.name == "metrics.json"):
            target = out / entry.name
            if target.is_dir():
                shutil.rmtree(target)
            os.replace(entry, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _clear(out: Path) -> None:
    """Remove a previous run's outputs and checkpoint (``overwrite``)."""
    for name in (*OUTPUTS, CHECKPOINT):
        path = out / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


# --------------------------------------------------------------------------- the run
def finetune(
    train: TableSource,
    config: FinetuneConfig | None = None,
    *,
    evaluation: TableSource | None = None,
    out: str | Path | None = None,
    resume: bool = False,
    overwrite: bool = False,
    export_peft: bool = False,
    on_step: StepHook | None = None,
    on_attach: Callable[[Adapted], None] | None = None,
) -> FinetuneResult:
    """Fine-tune a pretrained model on ``train`` (a CSV/TSV/JSONL file or a DataFrame) and
    evaluate it on ``evaluation`` (or a held-out ``config.eval_fraction`` of ``train``).

    With ``out``, writes the output folder (see the module docstring) and checkpoints every
    ``config.checkpoint_every`` steps; ``resume=True`` continues a killed run to the same
    result as an uninterrupted one. ``on_step(step, example_indices, loss)`` is called after
    every optimizer step. ``on_attach(adapted)`` is called once with the model prepared for
    training (adapter attached, head built) before the first step, and before a checkpoint
    is loaded with ``resume``: e.g. to build a
    :class:`deeplora.diagnostics.recorder.SubspaceRecorder` on ``adapted.model`` and record
    step 0, then pass its ``on_step`` as ``on_step``.

    Under ``torchrun`` (a process group of several ranks, :mod:`deeplora.distributed`) every
    rank calls this with the same arguments: each trains on its share of every batch through
    DistributedDataParallel, rank 0 alone evaluates and writes the folder, and every rank
    returns the same ``metrics`` (``predictions`` only on rank 0).
    """
    start = time.perf_counter()
    config = FinetuneConfig() if config is None else config
    out_dir = None if out is None else Path(out)
    _check_out(out_dir, resume, overwrite)
    if export_peft and config.method != "deep-lora":
        raise UserError(
            f"export_peft writes a Deep LoRA adapter as a PEFT one; method {config.method!r} "
            + ("already saves a PEFT adapter" if config.method == "lora" else "has no adapter")
        )
    device = resolve_device(config)
    train_ex, eval_ex = prepare_examples(train, config, evaluation)
    source = resolve_model(config.model, config.task)
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    pretrained, tokenizer = load_pretrained(source, config.task)
    positions = getattr(pretrained.config, "max_position_embeddings", None)
    if isinstance(positions, int) and config.max_length > positions:
        raise UserError(f"max_length={config.max_length} is more than the {positions} positions "
                        f"of {source}; use --max-length {positions} or less")
    task = make_task(train_ex, tokenizer, config.chat_template)
    pad_id = pad_token_id(tokenizer)
    train_features = task.encode(train_ex, tokenizer, config.max_length)
    eval_features = task.encode(eval_ex, tokenizer, config.max_length)
    if isinstance(task, CausalLMTask) and not any(
        v != -100 for f in train_features for v in f["labels"]
    ):
        raise UserError("no training example has a completion token left; check the data")
    torch.manual_seed(config.seed)  # the head's init
    model = task.build(pretrained).to(device)

    def run_eval(
        m: nn.Module, generator: nn.Module | None = None
    ) -> tuple[dict[str, Any], pd.DataFrame]:
        return evaluate(m, task, eval_features, eval_ex, config, pad_id,
                        tokenizer=tokenizer, generator=generator, device=device)  # fmt: skip

    base_table: pd.DataFrame | None = None  # causal-lm: the base model's generations
    if isinstance(task, TextTask):
        baseline = constant_baseline(task, train_ex, eval_ex)
    else:  # the base model's loss and greedy generations, before any adapter exists
        base_metrics, base_table = run_eval(model, model)
        baseline = {"kind": "pretrained model, no training", **base_metrics}
    batch_size = min(config.batch_size, len(train_features))

    def first_batch_loss(m: nn.Module) -> torch.Tensor:
        idx = batch_indices(len(train_features), batch_size, 0, config.seed)
        return task.loss(m, to_device(collate([train_features[i] for i in idx], pad_id), device))

    adapted = attach(model, config, task.head, first_batch_loss)
    adapted.model.to(device)
    if config.gradient_checkpointing:
        enable_gradient_checkpointing(adapted.inner)
    main = runtime.rank() == 0  # under torchrun rank 0 alone evaluates and writes
    if out_dir is not None and overwrite and main:
        _clear(out_dir)
    runtime.barrier("clearing the output folder")
    if on_attach is not None:
        on_attach(adapted)
    trainer = Trainer(
        adapted, task, train_features, config, pad_id,
        evaluate=lambda: run_eval(adapted.model)[0],
        checkpoint=None if out_dir is None else out_dir / CHECKPOINT,
        fingerprint=fingerprint(train_features, getattr(task, "classes", ())),
        device=device,
    )  # fmt: skip
    history = trainer.run(resume=resume, on_step=on_step)
    if main:
        final, predictions = run_eval(adapted.model, adapted.inner)
        if base_table is not None and "generation" in base_table:
            predictions["baseline_generation"] = base_table["generation"]
    else:
        final, predictions = {}, pd.DataFrame()
    final = runtime.broadcast_object(final, 0, "sharing the final evaluation")
    counts = count_parameters(adapted.model)
    trained = sum(p.numel() for g in adapted.groups if g["lr"] > 0 for p in g["params"])
    metrics: dict[str, Any] = {
        "task": config.task,
        "method": config.method,
        "model": str(source),
        "eval": final,
        "baseline": baseline,
        "train_examples": len(train_ex),
        "eval_examples": len(eval_ex),
        "steps": trainer.step,
        "batch_size": trainer.batch_size,
        "lr": config.learning_rate,
        "head_lr": config.head_learning_rate if task.head else None,
        "init_scale": config.factor_scale if config.method == "deep-lora" else None,
        "trainable_parameters": trained,  # a head at head_lr 0 stays at its init
        "total_parameters": counts.total,
        "final_train_loss": float(np.mean(history.loss[-10:])) if history.loss else None,
        "history": history.to_dict(),
        "threads": torch.get_num_threads(),
        "device": str(device),
        "precision": config.precision,
        "processes": runtime.world_size(),
        "seconds": time.perf_counter() - start,
    }
    metrics = finite_or_none(metrics)
    if out_dir is not None and main:
        run_config = {
            "kind": RUN_KIND,
            "format_version": _io.FORMAT_VERSION,
            "config": config.to_dict(),
            "model": str(source),
            "lr": config.learning_rate,
            "head_lr": metrics["head_lr"],
            "init_scale": metrics["init_scale"],
            "batch_size": trainer.batch_size,
            "task": task.summary(),
            "train": _describe(train),
            "evaluation": _describe(evaluation) if evaluation is not None else None,
            "train_rows": [int(r) for r in (train_ex.rows if train_ex.rows is not None else [])],
            "eval_rows": [int(r) for r in (eval_ex.rows if eval_ex.rows is not None else [])],
        }

        def write(folder: Path) -> None:
            adapted.save(folder / "adapter")
            if export_peft:
                adapted.export_peft(folder / "peft")
            if isinstance(task, CausalLMTask):
                with _io.atomic_open(folder / "predictions.jsonl") as f:
                    predictions.to_json(f, orient="records", lines=True, force_ascii=False)
            else:
                with _io.atomic_open(folder / "predictions.csv") as f:
                    predictions.to_csv(f, index=False, float_format="%.6g")
            _io.write_json(folder / "config.json", run_config)
            _io.write_json(folder / "metrics.json", metrics)

        _publish(out_dir, write)
        shutil.rmtree(out_dir / CHECKPOINT, ignore_errors=True)
    runtime.barrier("writing the outputs")
    return FinetuneResult(metrics, predictions, adapted, tokenizer, task, history, train_ex,
                          eval_ex)  # fmt: skip


def _describe(source: TableSource) -> str:
    return "a DataFrame" if isinstance(source, pd.DataFrame) else str(source)

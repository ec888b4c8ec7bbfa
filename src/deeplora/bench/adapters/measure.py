"""The two methods side by side: training steps, inference, peak memory, saved size."""

from __future__ import annotations

import copy
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ...adapters import (
    DeepLoraConfig,
    DeepLoraLayer,
    TrainedModule,
    count_parameters,
    merge_and_unload,
    parameter_groups,
    save_adapter,
    unload,
    wrap,
)
from ...adapters.config import InitKind
from ...harness.machine import (
    PeakMemory,
    interleaved_seconds,
    run_isolated,
)
from .settings import ADAM_EPS, BETAS, DEEP_LR, LORA_ALPHA, LORA_LR, RANK, Case, Plan
from .workloads import Workload, load_workload


# =========================================================================== the two methods
def _lora_config(work: Workload) -> Any:
    from peft import LoraConfig

    return LoraConfig(
        r=RANK,
        lora_alpha=LORA_ALPHA,
        lora_dropout=0.0,
        bias="none",
        target_modules=list(work.targets),
        modules_to_save=work.head or None,
        task_type=work.task_type,
    )


def _deep_config(work: Workload, init: InitKind = "orthogonal") -> DeepLoraConfig:
    return DeepLoraConfig(
        rank=RANK,
        init=init,
        target_modules=list(work.targets),
        modules_to_train=list(work.head),
    )


def _with_lora(work: Workload, model: nn.Module) -> tuple[Any, torch.optim.Optimizer]:
    from peft import get_peft_model

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lora = get_peft_model(model, _lora_config(work))
    params = [p for p in lora.parameters() if p.requires_grad]
    return lora, torch.optim.AdamW(params, lr=LORA_LR, betas=BETAS, eps=ADAM_EPS)


def _with_deep_lora(work: Workload, model: nn.Module) -> tuple[nn.Module, torch.optim.Optimizer]:
    deep = wrap(model, _deep_config(work))
    groups = parameter_groups(deep, DEEP_LR)
    return deep, torch.optim.AdamW(groups, betas=BETAS, eps=ADAM_EPS)


def _sync(model: nn.Module) -> None:
    """Wait for a GPU's queued work, so that a timer sees it done."""
    device = next(model.parameters()).device
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _train_step(
    model: nn.Module, optimizer: torch.optim.Optimizer, loss_fn: Callable[[nn.Module], torch.Tensor]
) -> Callable[[], None]:
    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss_fn(model).backward()
        optimizer.step()
        _sync(model)

    return step


def _outputs(model: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    out = model(**inputs)
    logits = out if isinstance(out, torch.Tensor) else out.logits
    assert isinstance(logits, torch.Tensor)
    return logits


def _forward(model: nn.Module, inputs: dict[str, torch.Tensor]) -> Callable[[], None]:
    def run() -> None:
        with torch.no_grad():
            model(**inputs)
        _sync(model)

    return run


# =========================================================================== peak memory
# Module-level functions so that a 'spawn' subprocess can run them.
def peak_step(case: Case, method: str) -> dict[str, Any]:
    """Peak memory increase of one train step of ``method`` ("lora" or "deeplora") on the full
    batch, after an untimed step on a small one (lazy code, the optimizer's state)."""
    work = load_workload(case)
    model, optimizer = (_with_lora if method == "lora" else _with_deep_lora)(work, work.model)
    _train_step(model, optimizer, work.warmup_loss)()
    step = _train_step(model, optimizer, work.loss)
    with _peak(case) as mem:
        step()
    return mem.result()


def peak_compressed_init(case: Case) -> dict[str, Any]:
    """Peak RSS increase of the compressed init (``wrap(..., loss_fn=...)``) on the full
    batch."""
    work = load_workload(case)
    config = _deep_config(work, init="compressed")
    unload(wrap(work.model, config, loss_fn=work.warmup_loss))  # lazy code (eigh, hooks)
    with _peak(case) as mem:
        wrap(work.model, config, loss_fn=work.loss)
    return mem.result()


class _GpuPeak:
    """Peak GPU memory allocated while the ``with`` block runs, over the amount at entry."""

    def __init__(self, device: str) -> None:
        self.device = torch.device(device)
        self.baseline = self.peak = 0

    def __enter__(self) -> _GpuPeak:
        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        self.baseline = torch.cuda.memory_allocated(self.device)
        return self

    def __exit__(self, *exc: object) -> None:
        torch.cuda.synchronize(self.device)
        self.peak = torch.cuda.max_memory_allocated(self.device)

    def result(self) -> dict[str, Any]:
        mb = 1024 * 1024
        return {"peak_mb": self.peak / mb, "baseline_mb": self.baseline / mb,
                "increase_mb": max(self.peak - self.baseline, 0) / mb,
                "method": "torch.cuda.max_memory_allocated (reset at the start)"}


def _peak(case: Case) -> PeakMemory | _GpuPeak:
    return _GpuPeak(case.device) if case.device.startswith("cuda") else PeakMemory()


# =========================================================================== measuring
def _ratios(num: Sequence[float], den: Sequence[float]) -> dict[str, Any]:
    """Median and quartiles of the per-round ratios ``num[i] / den[i]``."""
    per_round = [a / b for a, b in zip(num, den, strict=True)]
    q1, q3 = per_round[0], per_round[0]
    if len(per_round) > 1:
        q1, _, q3 = statistics.quantiles(per_round, n=4, method="inclusive")
    return {"median": statistics.median(per_round), "q1": q1, "q3": q3, "per_round": per_round}


def _times(seconds: Sequence[float]) -> dict[str, Any]:
    return {"median": statistics.median(seconds), "min": min(seconds), "all": list(seconds)}


def _folder_bytes(folder: Path) -> dict[str, Any]:
    files = {p.name: p.stat().st_size for p in sorted(folder.iterdir()) if p.is_file()}
    return {"total": sum(files.values()), "files": files}


def _adapter_modules(model: nn.Module) -> int:
    return sum(isinstance(m, DeepLoraLayer | TrainedModule) for m in model.modules())


def _training_phase(work: Workload, plan: Plan) -> tuple[dict[str, Any], nn.Module, nn.Module]:
    """Train steps of both methods and compressed inits, side by side; the adapter files and
    parameter counts. Returns the figures and both models (trained a few steps)."""
    base = work.model
    lora, lora_opt = _with_lora(work, copy.deepcopy(base))
    deep, deep_opt = _with_deep_lora(work, copy.deepcopy(base))
    lora_step = _train_step(lora, lora_opt, work.loss)
    deep_step = _train_step(deep, deep_opt, work.loss)
    compressed_config = _deep_config(work, init="compressed")

    def compressed_init() -> Callable[[], Any]:
        fresh = copy.deepcopy(base)  # untimed
        return partial(wrap, fresh, compressed_config, loss_fn=work.loss)

    times = interleaved_seconds(
        {
            "lora_step": lambda: lora_step,
            "deeplora_step": lambda: deep_step,
            "compressed_init": compressed_init,
        },
        repeats=plan.repeats,
        warmup=plan.warmup,
    )

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        save_adapter(deep, folder / "deeplora")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            lora.save_pretrained(str(folder / "peft"))
        compressed = wrap(copy.deepcopy(base), compressed_config, loss_fn=work.loss)
        save_adapter(compressed, folder / "deeplora_compressed")
        files = {
            name: _folder_bytes(folder / name)
            for name in ("peft", "deeplora", "deeplora_compressed")
        }
    figures = {
        "trainable_parameters": {
            "lora": count_parameters(lora).trainable,
            "deeplora": count_parameters(deep).trainable,
        },
        "train_step_seconds": {
            "lora": _times(times["lora_step"]),
            "deeplora": _times(times["deeplora_step"]),
        },
        "train_step_ratio": _ratios(times["deeplora_step"], times["lora_step"]),
        "compressed_init_seconds": _times(times["compressed_init"]),
        "compressed_init_in_steps": _ratios(times["compressed_init"], times["deeplora_step"]),
        "adapter_bytes": files,
    }
    return figures, deep, lora


def _inference_phase(work: Workload, deep: nn.Module, lora: nn.Module,
                     plan: Plan) -> dict[str, Any]:
    """Forward passes side by side: the base model, both adapters unmerged, and the merged
    Deep LoRA model. The target is Deep LoRA's unmerged forward against PEFT LoRA's (a third
    factor and no merged weight); merged against base is the same network, a check."""
    base, inputs = work.model.eval(), work.inputs
    deep.eval()
    lora.eval()
    with torch.no_grad():
        wrapped_out = _outputs(deep, inputs)
    forwards = {"base": _forward(base, inputs), "lora": _forward(lora, inputs),
                "deeplora": _forward(deep, inputs)}
    def timed(run: Callable[[], None]) -> Callable[[], Callable[[], None]]:
        return lambda: run

    times = interleaved_seconds({k: timed(f) for k, f in forwards.items()},
                                repeats=plan.inference_repeats, warmup=plan.warmup)
    merged = merge_and_unload(deep)
    with torch.no_grad():
        merged_out = _outputs(merged, inputs)
    merged_times = interleaved_seconds(
        {"base": lambda: forwards["base"], "merged": lambda: _forward(merged, inputs)},
        repeats=plan.inference_repeats, warmup=plan.warmup)
    return {
        "inference_seconds": {k: _times(v) for k, v in times.items()}
                             | {"merged": _times(merged_times["merged"])},
        "inference_ratio": _ratios(times["deeplora"], times["lora"]),
        "merged_over_base": _ratios(merged_times["merged"], merged_times["base"]),
        "merged_max_abs_diff": float((merged_out - wrapped_out).abs().max()),
        "merged_adapter_modules_left": _adapter_modules(merged),
    }


def measure(case: Case, plan: Plan) -> dict[str, Any]:
    """Every figure of one model; see the module docstring."""
    t0 = time.perf_counter()

    def progress(what: str) -> None:
        print(f"  {case.model}: {what}, {time.perf_counter() - t0:.0f} s so far", flush=True)

    work = load_workload(case)
    result: dict[str, Any] = {
        "case": asdict(case),
        "description": load_description(case),
        "load_seconds": time.perf_counter() - t0,
    }
    progress(f"loaded ({work.description()})")
    training, deep, lora = _training_phase(work, plan)
    result.update(training)
    progress(f"{plan.repeats} rounds of train steps and compressed inits")
    result.update(_inference_phase(work, deep, lora, plan))
    progress(f"{plan.inference_repeats} rounds of inference")
    del work, deep, lora  # free this process's models before the subprocesses run

    memory = {
        "lora_step": run_isolated(peak_step, case, "lora", isolate=plan.isolate),
        "compressed_init": run_isolated(peak_compressed_init, case, isolate=plan.isolate),
    }
    lora_mb = memory["lora_step"]["increase_mb"]
    init_mb = memory["compressed_init"]["increase_mb"]
    big = plan.memory_case(case)
    steps = {f"{m}_step": run_isolated(peak_step, big, m, isolate=plan.isolate)
             for m in ("lora", "deeplora")}
    step_lora_mb = steps["lora_step"]["increase_mb"]
    progress("peak memory " + ("in fresh subprocesses" if plan.isolate else "in this process"))
    result.update(
        peak_memory=memory,
        memory_ratio=init_mb / lora_mb if lora_mb > 0 else None,
        step_memory={"case": asdict(big), **steps,
                     "ratio": (steps["deeplora_step"]["increase_mb"] / step_lora_mb
                               if step_lora_mb > 0 else None)},
        seconds=time.perf_counter() - t0,
    )
    return result


def load_description(case: Case) -> str:
    name = {
        "minilm": "all-MiniLM-L6-v2 + mean-pool head",
        "smollm": "SmolLM2-135M-Instruct (GGUF Q4_1, dequantised to float32)",
    }[case.model]
    if case.quick:
        name = {"minilm": "tiny 2-layer BERT + mean-pool head", "smollm": "tiny 2-layer Llama"}[
            case.model
        ]
    return f"{name}, batch {case.batch_size} x {case.seq_len} tokens"

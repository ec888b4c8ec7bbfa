"""Cases, sizes and fixed settings of ``deeplora bench adapters``."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Any

from ...adapters.config import DEFAULT_LR
from ...errors import UserError

MODELS = ("minilm", "smollm")
RANK = 8  # width of both adapters
LORA_ALPHA = 8  # alpha / r = 1: PEFT LoRA without scaling, as the paper's vanilla LoRA
LORA_LR = 5e-4
DEEP_LR = DEFAULT_LR  # the library's defaults (the learning rate does not change the timing)
BETAS = (0.9, 0.999)
ADAM_EPS = 1e-6
TARGET_MODULES = {"minilm": ["query", "value"], "smollm": ["q_proj", "v_proj"]}
# Deep LoRA / PEFT LoRA, at most: step time, unmerged inference time, peak memory of a step
TARGETS = {"train_step": 1.10, "inference": 1.05, "step_memory": 1.05}
WARMUP_SHAPE = (1, 8)  # rows x tokens of the warm-up batch before a memory measurement
QUICK_VOCAB = 128
LoraKwargs = dict[str, Any]


@dataclass(frozen=True)
class Case:
    """One model's workload, small enough to send to a subprocess."""

    model: str  # "minilm" or "smollm"
    batch_size: int
    seq_len: int
    quick: bool = False  # a tiny model built from a config, random tokens
    seed: int = 0
    device: str = "cpu"  # where the model and its batch live


@dataclass
class Plan:
    """What one run measures (the defaults or ``--quick``)."""

    cases: list[Case]
    repeats: int  # timed rounds of train steps and compressed inits
    inference_repeats: int  # timed rounds of base / merged forward passes
    warmup: int  # untimed rounds before each
    isolate: bool  # peak memory in fresh subprocesses
    memory_sizes: dict[str, tuple[int, int]] = field(default_factory=dict)  # rows x tokens
    notes: list[str] = field(default_factory=list)

    def memory_case(self, case: Case) -> Case:
        """The case whose train steps' peak memory is measured (a larger batch)."""
        rows, tokens = self.memory_sizes.get(case.model, (case.batch_size, case.seq_len))
        return Case(case.model, rows, tokens, quick=case.quick, seed=case.seed,
                    device=case.device)


def resolve_device(name: str) -> str:
    """``--device``: "auto" is the first GPU if torch sees one, else the CPU."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {name}: torch sees no GPU here (torch.cuda.is_available() "
                        "is False); use --device cpu or auto")  # fmt: skip
    return name


def make_plan(args: argparse.Namespace) -> Plan:
    quick = bool(args.quick)
    device = resolve_device(args.device)
    sizes = (
        {"minilm": (16, 64), "smollm": (4, 64)}
        if not quick
        else {"minilm": (4, 16), "smollm": (2, 16)}
    )
    repeats = args.repeats if args.repeats is not None else (2 if quick else 10)
    plan = Plan(
        cases=[Case(m, *sizes[m], quick=quick, device=device) for m in MODELS
               if m in args.models],
        repeats=repeats,
        inference_repeats=2 * repeats,
        warmup=1,
        isolate=not (quick or args.no_isolate),
        # a step of 8 x 256 tokens on SmolLM2: where activations, not weights, set the peak
        memory_sizes={"minilm": (16, 64), "smollm": (8, 256)} if not quick else {},
    )
    if quick:
        plan.notes.append(
            "--quick: tiny models built from configs on random tokens; the "
            "numbers only show that it runs"
        )
    return plan

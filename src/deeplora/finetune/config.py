"""Settings of one few-shot fine-tuning run, validated on creation.

The optimizer is the paper's (docs/METHOD.md 4): AdamW, betas (0.9, 0.999), eps 1e-6, no weight
decay, a constant learning rate. The default learning rates are not the paper's 1e-4 (set for
BERT-base over 200-1000 steps), nor is Deep LoRA's default eps the paper's 1e-3: both were
measured on MiniLM and the Amazon reviews, on validation splits of the training data; see
:data:`DEFAULT_LR`, :data:`DEFAULT_INIT_SCALE` and the README's "Few-shot fine-tuning"
section.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

from ..adapters.config import DEFAULT_COMPRESSED_LR, PAPER_INIT_SCALE, PAPER_LR
from ..adapters.config import DEFAULT_INIT_SCALE as ADAPTER_INIT_SCALE
from ..adapters.config import DEFAULT_LR as ADAPTER_LR
from ..errors import UserError

Task = Literal["classification", "regression", "causal-lm"]
Method = Literal["deep-lora", "lora", "full"]
FinetuneInit = Literal["orthogonal", "compressed"]
LoraInit = Literal["peft", "paper"]
Precision = Literal["fp32", "bf16", "fp16"]
Recipe = Literal["library", "paper"]

TASKS: tuple[str, ...] = ("classification", "regression", "causal-lm")
METHODS: tuple[str, ...] = ("deep-lora", "lora", "full")
ADAPTER_INITS: tuple[str, ...] = ("orthogonal", "compressed")
LORA_INITS: tuple[str, ...] = ("peft", "paper")
RECIPES: tuple[str, ...] = ("library", "paper")
PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "fp16")

# Learning rate of the adapter (or of every weight, for "full") when ``lr`` is None: the best
# validation accuracy of grids on MiniLM and the Amazon reviews, 100 steps (README, "Few-shot
# fine-tuning": defaults and why). Deep LoRA's, and its eps per init, are the adapter's own
# defaults (docs/METHOD.md 4.3).
DEFAULT_LR: dict[str, float] = {"deep-lora": ADAPTER_LR, "lora": 5e-4, "full": 2e-5}
# Deep LoRA's eps when ``init_scale`` is None, per init.
DEFAULT_INIT_SCALE: dict[str, float] = {k: ADAPTER_INIT_SCALE[k] for k in ADAPTER_INITS}
# Learning rate of the new task head when ``head_lr`` is None, the same for every adapter
# method: the head starts at random and must train (at 1e-4 it hardly moves in 100 steps).
# ``head_lr = 0`` keeps it at its random init, so only the adapter learns.
DEFAULT_HEAD_LR = 1e-3

# The paper's few-shot recipe (docs/METHOD.md 4.1), for every method: every dense layer of the
# transformer blocks adapted (attention and MLP), Deep LoRA at eps 1e-3, lr 1e-4, 1000 AdamW
# steps of batch 16, only the adapter trained (the task head stays at its random init, as in
# the authors' runs); compressed Deep LoRA's inner factors at lr 1e-2 and its outer ones at
# gamma = 1e-2 times that.
PAPER_RECIPE: dict[str, Any] = {"target_modules": "attention-mlp", "lr": PAPER_LR,
                                "steps": 1000, "batch_size": 16, "head_lr": 0.0}  # fmt: skip
PAPER_DEEP = {"init_scale": PAPER_INIT_SCALE}
PAPER_COMPRESSED = {"init_scale": PAPER_INIT_SCALE, "lr": 1e-2, "gamma": 1e-2}


@dataclass
class FinetuneConfig:
    """What to train, on what, and how. Every field has a default; see the comments."""

    # --- task and data
    task: Task = "classification"  # "classification", "regression" or "causal-lm"
    text_column: str = "text"  # classification / regression: the (first) text
    pair_column: str | None = None  # the second text of sentence pairs
    label_column: str = "label"  # class name or numeric score
    prompt_column: str = "prompt"  # causal-lm: the prompt (no loss on it)
    completion_column: str = "completion"  # causal-lm: the completion (the loss is on it)
    n: int | None = None  # few-shot: train on n examples sampled without replacement
    balanced: bool = False  # classification: the same number of examples per class
    eval_fraction: float = 0.2  # held out for evaluation when no evaluation data is given
    max_length: int = 128  # tokens per example (longer ones are cut)
    # --- model and method
    model: str | None = None  # folder, .gguf file, "minilm" or "smollm2"; None: by task
    method: Method = "deep-lora"  # "deep-lora", "lora" (PEFT's) or "full" fine-tuning
    target_modules: str | list[str] = "query-value"  # as DeepLoraConfig.target_modules
    rank: int = 8  # width of the adapter (both methods)
    depth: int = 3  # Deep LoRA: number of factors
    init: FinetuneInit = "orthogonal"  # Deep LoRA: "orthogonal" (the paper's) or "compressed"
    init_scale: float | None = None  # Deep LoRA: eps of the factors; None: DEFAULT_INIT_SCALE
    # compressed Deep LoRA: lr is given at rank 8 (the inner factors train at lr * 8 / rank)
    # and the outer factors train at gamma times that
    gamma: float = 1e-2
    lora_alpha: float = 8.0  # LoRA: PEFT's default; scaling lora_alpha / rank
    # LoRA: "peft" (PEFT's: A kaiming-uniform, B = 0, scaling lora_alpha / rank) or "paper"
    # (the paper's vanilla LoRA: A ~ N(0, 1), B = 0, scaling 1)
    lora_init: LoraInit = "peft"
    # --- optimizer and loop (docs/METHOD.md 4)
    lr: float | None = None  # None: DEFAULT_LR[method] (DEFAULT_COMPRESSED_LR if compressed)
    head_lr: float | None = None  # None: DEFAULT_HEAD_LR (or lr, for "full"); 0: frozen
    betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-6
    weight_decay: float = 0.0
    steps: int = 100  # optimizer steps
    batch_size: int = 16  # examples per step (at most the number of training examples)
    eval_batch_size: int = 32
    eval_every: int = 0  # evaluate every this many steps as well as at the end (0: end only)
    checkpoint_every: int = 25  # write a checkpoint every this many steps (with an output)
    # causal-lm: evaluation prompts completed greedily and scored (None: all; 0: none), and
    # whether prompts go through the tokenizer's chat template (as a user turn)
    generations: int | None = None
    chat_template: bool = False
    max_new_tokens: int = 32  # causal-lm: length of those completions
    seed: int = 0  # sampling, held-out split, head and adapter init, data order, dropout
    init_seed: int | None = None  # the adapter's init alone (None: seed)
    threads: int | None = None  # torch threads (None: torch's choice)
    # --- hardware (finetune.hardware)
    device: str = "auto"  # "auto" (a GPU if torch sees one), "cpu", "cuda", "cuda:N"
    precision: Precision = "fp32"  # autocast of the forward passes: "bf16", "fp16" (GPU)
    gradient_checkpointing: bool = False  # recompute the base model's activations in backward
    compile: bool = False  # torch.compile the model for the training steps
    progress: bool = True  # tqdm bar with the running loss (off when not a terminal)

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)  # type: ignore[assignment]
        _choice("task", self.task, TASKS)
        _choice("method", self.method, METHODS)
        _choice("init", self.init, ADAPTER_INITS)
        _choice("lora_init", self.lora_init, LORA_INITS)
        _choice("precision", self.precision, PRECISIONS)
        if not isinstance(self.device, str) or not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?",
                                                                self.device):
            raise UserError(f"device must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        for name in ("text_column", "label_column", "prompt_column", "completion_column"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise UserError(f"{name} must be a non-empty column name, got {value!r}")
        if self.pair_column is not None and (
            not isinstance(self.pair_column, str) or not self.pair_column
        ):
            raise UserError(f"pair_column must be a column name or None, got {self.pair_column!r}")
        if self.pair_column is not None and self.task == "causal-lm":
            raise UserError(
                "pair_column applies to classification and regression; causal-lm reads "
                "prompt_column and completion_column"
            )
        _integer("n", self.n, low=1, allow_none=True)
        if self.balanced and self.task != "classification":
            raise UserError("balanced sampling needs classes: use it with task='classification'")
        if self.balanced and self.n is None:
            raise UserError("balanced sampling needs n, the number of training examples")
        _number("eval_fraction", self.eval_fraction, low=0.0, high=1.0, open_low=True)
        if self.eval_fraction >= 1:
            raise UserError(f"eval_fraction must be > 0 and < 1, got {self.eval_fraction}; "
                            "try 0.2")
        for name, low in (("max_length", 2), ("rank", 1), ("depth", 2), ("steps", 0),
                          ("batch_size", 1), ("eval_batch_size", 1), ("eval_every", 0),
                          ("checkpoint_every", 1), ("max_new_tokens", 1),
                          ("seed", 0)):  # fmt: skip
            _integer(name, getattr(self, name), low=low)
        _integer("threads", self.threads, low=1, allow_none=True)
        _integer("init_seed", self.init_seed, low=0, allow_none=True)
        _integer("generations", self.generations, low=0, allow_none=True)
        _number("init_scale", self.init_scale, low=0.0, open_low=True, allow_none=True)
        _number("gamma", self.gamma, low=0.0)
        _number("lora_alpha", self.lora_alpha, low=0.0, open_low=True)
        _number("lr", self.lr, low=0.0, open_low=True, allow_none=True)
        _number("head_lr", self.head_lr, low=0.0, allow_none=True)
        _number("adam_eps", self.adam_eps, low=0.0, open_low=True)
        _number("weight_decay", self.weight_decay, low=0.0)
        if len(self.betas) != 2:
            raise UserError(f"betas must be two numbers, got {self.betas!r}")
        for beta in self.betas:
            _number("betas", beta, low=0.0, high=1.0)
            if beta >= 1:
                raise UserError(
                    f"betas must be in [0, 1), got {self.betas}; the paper's: 0.9, 0.999"
                )
        if self.init == "compressed" and self.rank % 2:
            raise UserError(
                f"init='compressed' needs an even rank (2 r_hat), got {self.rank}; "
                f"use {self.rank + 1}"
            )
        if self.init == "compressed" and self.method != "deep-lora":
            raise UserError(
                "init='compressed' is a Deep LoRA init: use it with method='deep-lora'"
            )
        if self.model is not None and (not isinstance(self.model, str) or not self.model):
            raise UserError(f"model must be a path or a name, got {self.model!r}")
        self._check_applies()

    def _check_applies(self) -> None:
        """Refuse a setting changed from its default under a method or task that ignores it,
        and one column named for two roles."""
        deep, lm = self.method == "deep-lora", self.task == "causal-lm"
        by_method = {"rank": self.method != "full", "target_modules": self.method != "full",
                     "depth": deep, "init": deep, "init_scale": deep,
                     "gamma": deep and self.init == "compressed",
                     "lora_alpha": self.method == "lora" and self.lora_init == "peft",
                     "lora_init": self.method == "lora", "init_seed": self.method != "full"}
        by_task = {"generations": lm, "max_new_tokens": lm, "chat_template": lm,
                   "head_lr": not lm,
                   "text_column": not lm, "label_column": not lm, "prompt_column": lm,
                   "completion_column": lm}
        defaults = {f.name: f.default for f in fields(self)}
        for applies, where in ((by_method, f"method={self.method!r}"
                                + (f", init={self.init!r}" if deep else "")
                                + (f", lora_init={self.lora_init!r}"
                                   if self.method == "lora" else "")),
                               (by_task, f"task={self.task!r}")):
            for name, used in applies.items():
                if not used and getattr(self, name) != defaults[name]:
                    raise UserError(f"{name}={getattr(self, name)!r} has no effect with "
                                    f"{where}; drop it or choose one that uses it")
        roles = ([("prompt_column", self.prompt_column),
                  ("completion_column", self.completion_column)] if lm else
                 [("text_column", self.text_column), ("label_column", self.label_column),
                  ("pair_column", self.pair_column)])
        named = [(role, column) for role, column in roles if column is not None]
        for i, (role, column) in enumerate(named):
            for other, same in named[i + 1:]:
                if column == same:
                    raise UserError(f"{role} and {other} are both {column!r}: a column "
                                    "serves one role; name each its own")

    @property
    def learning_rate(self) -> float:
        """``lr``, or the default for the method (and init)."""
        if self.lr is not None:
            return self.lr
        if self.method == "deep-lora" and self.init == "compressed":
            return DEFAULT_COMPRESSED_LR
        return DEFAULT_LR[self.method]

    @property
    def factor_scale(self) -> float:
        """``init_scale``, or the default eps for the Deep LoRA init."""
        return self.init_scale if self.init_scale is not None else DEFAULT_INIT_SCALE[self.init]

    @property
    def adapter_seed(self) -> int:
        """``init_seed``, or ``seed``: the seed of the adapter's init."""
        return self.seed if self.init_seed is None else self.init_seed

    @property
    def lora_scaling_alpha(self) -> float:
        """PEFT's ``lora_alpha``: as set, or ``rank`` (scaling 1) for the paper's LoRA."""
        return float(self.rank) if self.lora_init == "paper" else self.lora_alpha

    @property
    def head_learning_rate(self) -> float:
        """``head_lr``, or the default (``lr`` for full fine-tuning)."""
        if self.head_lr is not None:
            return self.head_lr
        return self.learning_rate if self.method == "full" else DEFAULT_HEAD_LR

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["betas"] = list(self.betas)
        return data


def recipe_settings(recipe: str, method: str = "deep-lora",
                    init: str = "orthogonal") -> dict[str, Any]:  # fmt: skip
    """The :class:`FinetuneConfig` fields a recipe sets for ``method`` (and Deep LoRA's
    ``init``): none for ``"library"`` (the defaults), :data:`PAPER_RECIPE` and, for Deep LoRA,
    :data:`PAPER_DEEP` or :data:`PAPER_COMPRESSED` for ``"paper"``. Explicit settings go on
    top: ``FinetuneConfig(**{**recipe_settings("paper", "lora"), "steps": 200})``."""
    _choice("recipe", recipe, RECIPES)
    _choice("method", method, METHODS)
    if recipe == "library":
        return {}
    if method == "full":
        raise UserError("the paper's recipe is for adapters: use it with method='deep-lora' or "
                        "'lora'")  # fmt: skip
    if method == "lora":
        return dict(PAPER_RECIPE)
    return {**PAPER_RECIPE, **(PAPER_COMPRESSED if init == "compressed" else PAPER_DEEP)}


def _choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise UserError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")


def _integer(name: str, value: Any, *, low: int, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise UserError(f"{name} must be an integer, got {value!r}")
    if value < low:
        raise UserError(f"{name} must be >= {low}, got {value}")


def _number(
    name: str,
    value: Any,
    *,
    low: float,
    high: float | None = None,
    open_low: bool = False,
    allow_none: bool = False,
) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise UserError(f"{name} must be a finite number, got {value!r}")
    if value < low or (open_low and value == low) or (high is not None and value > high):
        bound = f"> {low}" if open_low else f">= {low}"
        if high is not None:
            bound += f" and <= {high}"
        raise UserError(f"{name} must be {bound}, got {value}")

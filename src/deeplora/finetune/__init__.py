"""Few-shot fine-tuning of pretrained models with Deep LoRA (or PEFT's LoRA, or fully).

Text classification (single texts or pairs), regression (a score) and causal-LM fine-tuning
(prompt -> completion, the loss on the completion only), from CSV / TSV / JSONL files or
DataFrames::

    from deeplora.finetune import FinetuneConfig, finetune

    config = FinetuneConfig(task="classification", text_column="review", label_column="score",
                            n=64, method="deep-lora")            # model: all-MiniLM-L6-v2
    result = finetune("train.csv", config, evaluation="test.csv", out="runs/reviews")
    result.metrics["eval"]     # accuracy, macro_f1, mcc, loss
    result.predictions         # one row per evaluation example

The command is ``deeplora finetune`` (see :mod:`deeplora.cli`).
"""

from .config import DEFAULT_HEAD_LR, DEFAULT_INIT_SCALE, DEFAULT_LR, FinetuneConfig
from .data import (
    Examples,
    examples_from_table,
    few_shot,
    hold_out,
    load_reviews,
    load_sts_b,
    read_table,
)
from .methods import Adapted, attach
from .metrics import accuracy, classification_metrics, macro_f1, mcc, regression_metrics
from .models import ModelSource, load_pretrained, resolve_model
from .run import FinetuneResult, evaluate, finetune
from .tasks import CausalLMTask, PooledModel, TextTask, collate
from .trainer import History, Trainer, batch_indices

__all__ = [
    "DEFAULT_HEAD_LR",
    "DEFAULT_INIT_SCALE",
    "DEFAULT_LR",
    "Adapted",
    "CausalLMTask",
    "Examples",
    "FinetuneConfig",
    "FinetuneResult",
    "History",
    "ModelSource",
    "PooledModel",
    "TextTask",
    "Trainer",
    "accuracy",
    "attach",
    "batch_indices",
    "classification_metrics",
    "collate",
    "evaluate",
    "examples_from_table",
    "few_shot",
    "finetune",
    "hold_out",
    "load_pretrained",
    "load_reviews",
    "load_sts_b",
    "macro_f1",
    "mcc",
    "read_table",
    "regression_metrics",
    "resolve_model",
]

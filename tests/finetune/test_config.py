"""FinetuneConfig: defaults, the learning rates they resolve to, and refused values."""

from __future__ import annotations

import pytest

from deeplora.finetune import DEFAULT_HEAD_LR, DEFAULT_INIT_SCALE, DEFAULT_LR, FinetuneConfig
from deeplora.finetune.config import DEFAULT_COMPRESSED_LR, recipe_settings


def test_defaults_are_the_papers_optimizer() -> None:
    config = FinetuneConfig()
    assert (config.betas, config.adam_eps, config.weight_decay) == ((0.9, 0.999), 1e-6, 0.0)
    assert (config.batch_size, config.rank, config.depth) == (16, 8, 3)
    assert config.method == "deep-lora" and config.task == "classification"


def test_learning_rates_resolve_by_method() -> None:
    assert FinetuneConfig().learning_rate == DEFAULT_LR["deep-lora"]
    assert FinetuneConfig(method="lora").learning_rate == DEFAULT_LR["lora"]
    assert FinetuneConfig(init="compressed").learning_rate == DEFAULT_COMPRESSED_LR
    assert FinetuneConfig(lr=3e-4).learning_rate == 3e-4
    assert FinetuneConfig(lr=3e-4).head_learning_rate == DEFAULT_HEAD_LR
    assert FinetuneConfig(method="full", lr=2e-5).head_learning_rate == 2e-5
    assert FinetuneConfig(head_lr=5e-3).head_learning_rate == 5e-3


def test_init_scales_resolve_by_init() -> None:
    assert FinetuneConfig().init_scale is None
    assert FinetuneConfig().factor_scale == DEFAULT_INIT_SCALE["orthogonal"] == 3e-2
    assert FinetuneConfig(init="compressed").factor_scale == DEFAULT_INIT_SCALE["compressed"]
    assert FinetuneConfig(init="compressed").factor_scale == 1e-3  # its lr was set at it
    assert FinetuneConfig(init_scale=0.2, init="compressed").factor_scale == 0.2


def test_the_papers_recipe_sets_every_method_apart_from_the_library_defaults() -> None:
    assert recipe_settings("library", "lora") == {}
    lora = FinetuneConfig(method="lora", **recipe_settings("paper", "lora"))
    assert (lora.target_modules, lora.learning_rate, lora.steps, lora.batch_size) == (
        "attention-mlp", 1e-4, 1000, 16)
    assert lora.head_learning_rate == 0.0  # only the adapter trains, as in the authors' runs
    deep = FinetuneConfig(**recipe_settings("paper"))
    assert (deep.factor_scale, deep.learning_rate, deep.steps, deep.head_learning_rate) == (
        1e-3, 1e-4, 1000, 0.0)
    compressed = FinetuneConfig(init="compressed", **recipe_settings("paper", init="compressed"))
    assert (compressed.factor_scale, compressed.learning_rate, compressed.gamma) == (
        1e-3, 1e-2, 1e-2)
    with pytest.raises(ValueError, match="the paper's recipe is for adapters"):
        recipe_settings("paper", "full")
    with pytest.raises(ValueError, match="recipe must be one of library, paper"):
        recipe_settings("authors")


def test_the_papers_lora_has_scaling_one_and_the_adapter_seed_defaults_to_the_seed() -> None:
    assert FinetuneConfig(method="lora", rank=16).lora_scaling_alpha == 8.0
    assert FinetuneConfig(method="lora", rank=16, lora_init="paper").lora_scaling_alpha == 16.0
    assert FinetuneConfig(seed=3).adapter_seed == 3
    assert FinetuneConfig(seed=3, init_seed=7).adapter_seed == 7


def test_round_trip() -> None:
    config = FinetuneConfig(task="regression", n=16, target_modules=["query"], lr=1e-3)
    assert FinetuneConfig(**config.to_dict()) == config


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"task": "translation"}, "task must be one of classification, regression, causal-lm"),
        ({"method": "adapter"}, "method must be one of deep-lora, lora, full"),
        ({"n": 0}, "n must be >= 1"),
        ({"n": 2.5}, "n must be an integer"),
        ({"balanced": True}, "balanced sampling needs n"),
        ({"balanced": True, "n": 4, "task": "regression"}, "balanced sampling needs classes"),
        ({"eval_fraction": 0}, "eval_fraction must be > 0"),
        ({"eval_fraction": 1}, "eval_fraction must be > 0 and < 1"),
        ({"lr": 0}, "lr must be > 0"),
        ({"lr": float("nan")}, "lr must be a finite number"),
        ({"head_lr": -1}, "head_lr must be >= 0"),
        ({"steps": -1}, "steps must be >= 0"),
        ({"batch_size": 0}, "batch_size must be >= 1"),
        ({"depth": 1}, "depth must be >= 2"),
        ({"betas": (0.9, 1.0)}, "betas must be in \\[0, 1\\)"),
        ({"init": "compressed", "rank": 7}, "needs an even rank"),
        ({"init": "compressed", "method": "lora"}, "use it with method='deep-lora'"),
        ({"text_column": ""}, "text_column must be a non-empty column name"),
        ({"task": "causal-lm", "pair_column": "b"}, "pair_column applies to classification"),
        ({"threads": 0}, "threads must be >= 1"),
        ({"lora_init": "gaussian", "method": "lora"}, "lora_init must be one of peft, paper"),
        ({"lora_init": "paper"}, "lora_init='paper' has no effect with method='deep-lora'"),
        ({"method": "lora", "lora_init": "paper", "lora_alpha": 16.0},
         "lora_alpha=16.0 has no effect with method='lora', lora_init='paper'"),
        ({"method": "full", "init_seed": 1}, "init_seed=1 has no effect with method='full'"),
        ({"init_seed": -1}, "init_seed must be >= 0"),
    ],
)
def test_bad_values_name_the_problem(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        FinetuneConfig(**kwargs)

"""DeepLoraConfig: the measured defaults, the paper's one call away, and a clear ValueError for
every bad value."""

from __future__ import annotations

import re

import pytest

from deeplora.adapters import DEFAULT_LR, PAPER_INIT_SCALE, PAPER_LR, DeepLoraConfig


def test_defaults_are_the_measured_ones_and_the_papers_one_call_away() -> None:
    c = DeepLoraConfig()
    assert (c.rank, c.depth, c.init_scale, c.init) == (8, 3, 3e-2, "orthogonal")
    assert c.gamma == 1e-2 and c.dropout == 0.0 and c.target_modules == "query-value"
    assert c.r_hat == 4 and c.eps == 3e-2
    assert DeepLoraConfig(init="compressed").init_scale == 1e-3
    paper = DeepLoraConfig.paper(rank=4)
    assert (paper.init_scale, paper.rank, paper.depth) == (PAPER_INIT_SCALE, 4, 3) == (1e-3, 4, 3)
    assert (DEFAULT_LR, PAPER_LR) == (1e-3, 1e-4)


def test_round_trip_through_dict() -> None:
    c = DeepLoraConfig(rank=6, init="compressed", target_modules=["q", "v"], dropout=0.1)
    assert DeepLoraConfig.from_dict(c.to_dict()) == c


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"rank": 0}, "rank must be >= 1"),
        ({"rank": 2.0}, "rank must be an integer"),
        ({"depth": 1}, "depth must be >= 2"),
        ({"init_scale": 0.0}, "init_scale must be finite and > 0"),
        ({"init_scale": float("nan")}, "init_scale must be finite"),
        ({"gamma": -1.0}, "gamma must be finite and >= 0"),
        ({"init": "kaiming"}, "init must be one of"),
        ({"factor_init": "random"}, "factor_init must be one of"),
        ({"dropout": 1.0}, "dropout must be in [0, 1)"),
        ({"target_modules": "("}, "neither a preset"),
        ({"target_modules": []}, "target_modules is empty"),
        ({"target_modules": ["q", ""]}, "non-empty module names"),
        ({"target_modules": 3}, "target_modules must be"),
        ({"modules_to_train": "classifier"}, "write ['classifier']"),
        ({"init": "compressed", "rank": 7}, "rank must be even (got 7); use rank=6 or 8"),
    ],
)
def test_bad_values_say_what_to_fix(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        DeepLoraConfig(**kwargs)


def test_unknown_fields_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown DeepLoraConfig fields"):
        DeepLoraConfig.from_dict({"rank": 8, "alpha": 16})

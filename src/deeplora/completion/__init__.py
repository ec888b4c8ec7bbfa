"""Deep overparameterized matrix completion, factorization and sensing (docs/METHOD.md 1-3).

>>> from deeplora.completion import Observations, CompressedConfig, complete
>>> obs = Observations.from_csv("ratings.csv")                  # doctest: +SKIP
>>> train, val = obs.split(0.1, seed=0)                         # doctest: +SKIP
>>> model = complete(train, CompressedConfig(r_hat=8), validation=val)  # doctest: +SKIP
>>> model.predict(["user 1"], ["item 7"])                       # doctest: +SKIP
"""

from .baselines import LowRankModel, MeanBaseline, als, rmse, soft_impute
from .compressed import CompressedConfig, CompressedSolver
from .config import SolverConfig
from .data import LowRankMatrix, Observations, load_movielens, random_low_rank, sample_entries
from .fit import complete
from .model import CompletionModel
from .objectives import Completion, Factorization, Objective, Sensing
from .results import FitHistory, FitResult, relative_error
from .solver import DivergenceError
from .wide import WideConfig, WideSolver


def __getattr__(name: str) -> object:
    """``DeepImputer`` is imported on first use: it needs scikit-learn (an optional extra)."""
    if name == "DeepImputer":
        try:
            from .imputer import DeepImputer
        except ImportError as e:
            raise ImportError("DeepImputer needs scikit-learn: pip install 'deeplora[sklearn]'"
                              ) from e
        return DeepImputer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "Completion",
    "CompletionModel",
    "CompressedConfig",
    "CompressedSolver",
    "DeepImputer",
    "DivergenceError",
    "Factorization",
    "FitHistory",
    "FitResult",
    "LowRankMatrix",
    "LowRankModel",
    "MeanBaseline",
    "Objective",
    "Observations",
    "Sensing",
    "SolverConfig",
    "WideConfig",
    "WideSolver",
    "als",
    "complete",
    "load_movielens",
    "random_low_rank",
    "relative_error",
    "rmse",
    "sample_entries",
    "soft_impute",
]

"""Baselines for matrix completion: what a user would otherwise pick.

- :class:`MeanBaseline`: the global mean, optionally plus regularised row and column offsets
  ("user and item biases", Koren, Bell & Volinsky 2009, "Matrix factorization techniques for
  recommender systems", IEEE Computer), fitted by alternating closed-form updates.
- :func:`soft_impute`: nuclear-norm regularised completion by iterated singular-value
  soft-thresholding (Mazumder, Hastie & Tibshirani 2010, "Spectral regularization algorithms
  for learning large incomplete matrices", JMLR 11). Each step takes the top singular triplets
  of ``P_Omega(X - Z) + Z`` for the current low-rank ``Z``: a sparse matrix plus a low-rank one,
  applied as a ``LinearOperator``, so no ``m x n`` array is ever formed. The triplets come
  from warm-started randomized subspace iteration (Halko, Martinsson & Tropp 2011, "Finding
  structure with randomness", SIAM Review) or from ``scipy.sparse.linalg.svds``.
- :func:`als`: alternating least squares on ``X ~ left @ right.T`` with ridge penalties scaled
  by the number of observations of each row and column ("weighted-lambda regularisation",
  Zhou, Wilkinson, Schreiber & Pan 2008, "Large-scale parallel collaborative filtering for the
  Netflix prize", AAIM; Koren et al. 2009). All rows' ``r x r`` systems are built and solved
  in stacked form.

Every fitted model has ``predict(rows, cols)`` on index arrays (not IDs); the low-rank ones
also expose ``left`` (m x k) and ``right`` (n x k) with
``prediction = offset + row_bias[rows] + col_bias[cols] + <left[rows], right[cols]>``.

``center`` (for :func:`soft_impute` and :func:`als`) chooses what the low-rank part models:

- ``"none"``: the values themselves (offset 0, no biases);
- ``"mean"``: values minus their global mean (the mean becomes ``offset``);
- ``"biases"``: the residuals of ``MeanBaseline(biases=True)`` (its mean and offsets are kept
  in the model). Best on ratings data, where most of the signal is in the offsets.
"""

from .alternating import als
from .common import (
    DEFAULT_ALS_REG,
    DEFAULT_BIAS_REG,
    DEFAULT_SHRINKAGE_FRACTION,
    Center,
    Centering,
    LowRankModel,
    MeanBaseline,
    Predictor,
    rmse,
)
from .spectral import soft_impute, soft_impute_validated

__all__ = [
    "DEFAULT_ALS_REG",
    "DEFAULT_BIAS_REG",
    "DEFAULT_SHRINKAGE_FRACTION",
    "Center",
    "Centering",
    "LowRankModel",
    "MeanBaseline",
    "Predictor",
    "als",
    "rmse",
    "soft_impute",
    "soft_impute_validated",
]

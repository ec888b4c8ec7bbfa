"""``DeepImputer``: deep matrix completion as a scikit-learn imputer, for data that is a
matrix with holes (docs/METHOD.md; needs ``pip install 'deeplora[sklearn]'``).

    >>> from deeplora.completion import DeepImputer            # doctest: +SKIP
    >>> filled = DeepImputer().fit_transform(X_with_nan)        # doctest: +SKIP

``fit`` completes the matrix with :func:`~deeplora.completion.complete` at its defaults (a
validation part of the observed entries stops it early; offsets, init, step and r_hat follow
from the data). ``transform`` of the fitted matrix returns its completion; of new rows (a test
set in a :class:`~sklearn.pipeline.Pipeline`) it fits each row's offset and coordinates in the
learned column space to its observed entries by least squares ("folding in"), and predicts the
rest. Observed entries are returned unchanged.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted

from ..errors import UserError
from .compressed import CompressedConfig
from .data import Observations
from .fit import complete

#: Ridge penalty of a folded-in row, relative to the mean energy of its features.
FOLD_IN_RIDGE = 1e-6
#: Folding in uses the fitted matrix's singular directions above this fraction of the top one.
FOLD_IN_RANK_TOL = 1e-3


class DeepImputer(TransformerMixin, BaseEstimator):
    """Fill the missing entries of a matrix by deep matrix completion.

    Parameters follow :func:`~deeplora.completion.complete` and
    :class:`~deeplora.completion.CompressedConfig` (``None``: the library's default, which
    calibrates itself to the data): ``rank`` (r_hat), ``depth``, ``center``,
    ``max_steps``, ``val_fraction`` (observed entries held out for early stopping),
    ``clip``, ``missing_values`` (NaN, or a number that marks a missing entry),
    ``random_state`` (an int: the split and init seed) and ``verbose`` (a progress bar).

    Attributes after ``fit``: ``model_`` (the :class:`~deeplora.completion.CompletionModel`),
    ``n_features_in_`` and, for a DataFrame, ``feature_names_in_``.
    """

    def __init__(self, rank: int | None = None, depth: int = 3, center: str = "joint",
                 max_steps: int = 20_000, val_fraction: float = 0.1,
                 clip: tuple[float, float] | None = None, missing_values: float = np.nan,
                 random_state: int = 0, verbose: bool = False) -> None:
        self.rank = rank
        self.depth = depth
        self.center = center
        self.max_steps = max_steps
        self.val_fraction = val_fraction
        self.clip = clip
        self.missing_values = missing_values
        self.random_state = random_state
        self.verbose = verbose

    # ------------------------------------------------------------------ scikit-learn API
    def fit(self, X: Any, y: Any = None) -> DeepImputer:
        """Complete ``X`` (2-D, with missing entries); returns ``self``."""
        values, missing = self._check(X, fitting=True)
        rows, cols = np.nonzero(~missing)
        obs = Observations.from_arrays(rows, cols, values[rows, cols], values.shape)
        config = CompressedConfig(r_hat=self.rank, depth=self.depth, max_steps=self.max_steps,
                                  seed=self.random_state, progress=bool(self.verbose))
        self.model_ = complete(obs, config, val_fraction=self.val_fraction,
                               center=self.center, clip=self.clip)  # type: ignore[arg-type]
        self.model_.observed_rows, self.model_.observed_cols = rows, cols
        self._fitted = (values, missing)
        return self

    def transform(self, X: Any) -> np.ndarray:
        """``X`` with its missing entries filled (the fitted matrix: from its completion; new
        rows: folded in)."""
        check_is_fitted(self, "model_")
        values, missing = self._check(X, fitting=False)
        fit_values, fit_missing = self._fitted
        if values.shape == fit_values.shape and np.array_equal(missing, fit_missing) and \
                np.array_equal(values[~missing], fit_values[~fit_missing]):
            filled = self.model_.to_dense()
        else:
            filled = self._fold_in(values, missing)
        return np.where(missing, filled, values)

    def fit_transform(self, X: Any, y: Any = None, **fit_params: Any) -> np.ndarray:
        return self.fit(X, y).transform(X)

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        """The input's feature names (an imputer keeps its columns)."""
        check_is_fitted(self, "n_features_in_")
        if input_features is not None:
            return np.asarray(input_features, dtype=object)
        names = getattr(self, "feature_names_in_", None)
        if names is not None:
            return np.asarray(names, dtype=object)
        return np.asarray([f"x{i}" for i in range(self.n_features_in_)], dtype=object)

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = True
        return tags

    # ------------------------------------------------------------------ internals
    def _check(self, X: Any, fitting: bool) -> tuple[np.ndarray, np.ndarray]:
        """``(values, missing)`` of a validated 2-D numeric ``X``."""
        names = getattr(X, "columns", None)
        try:
            values = np.array(X, dtype=np.float64)
        except (TypeError, ValueError) as e:
            raise UserError(f"X must be a 2-D array of numbers with missing entries, got "
                             f"values that are not numbers ({e})") from None
        if values.ndim != 2:
            raise UserError(f"X must be 2-D (rows x features), got an array of shape "
                             f"{values.shape}; reshape a single row with X.reshape(1, -1)")
        if values.size == 0:
            raise UserError(f"X is empty (shape {values.shape})")
        marker = self.missing_values
        missing = np.isnan(values) if _is_nan(marker) else values == marker
        if np.isinf(values[~missing]).any():
            raise UserError("X holds infinite values; replace them (or mark them missing)")
        if fitting:
            self.n_features_in_ = values.shape[1]
            if names is not None:
                self.feature_names_in_ = np.asarray(names, dtype=object)
            if not missing.any():
                raise UserError(f"X has no missing entries ({marker!r}): there is nothing to "
                                 "impute; fit on data with holes")
            for axis, what in ((1, "row"), (0, "column")):
                empty = np.flatnonzero(missing.all(axis=axis))
                if empty.size:
                    raise UserError(
                        f"{what} {empty[0]} of X has no observed entry ({empty.size} such "
                        f"{what}s): a completion cannot say anything about it; drop or fill "
                        f"it before fitting")
        elif values.shape[1] != self.n_features_in_:
            raise UserError(f"X has {values.shape[1]} features, but DeepImputer was fitted "
                             f"with {self.n_features_in_}")
        return values, missing

    def _fold_in(self, values: np.ndarray, missing: np.ndarray) -> np.ndarray:
        """Each row's offset and coordinates in the fitted column space, by least squares on
        its observed entries; the prediction everywhere (a row with no observed entry gets
        the column offsets)."""
        model = self.model_
        q, r = np.linalg.qr(model.right.double().numpy())  # f = left r^T q^T
        _, s, wt = np.linalg.svd(model.left.double().numpy() @ r.T, full_matrices=False)
        # the row space of f, without the directions still near their eps-sized init
        features = (q @ wt.T)[:, s > FOLD_IN_RANK_TOL * s.max(initial=0.0)]
        col = model.offset + (model.col_bias if model.col_bias is not None else 0.0)
        col = np.broadcast_to(col, (values.shape[1],))
        out = np.empty_like(values)
        design = np.hstack([np.ones((len(features), 1)), features])
        for i in range(len(values)):
            seen = ~missing[i]
            if not seen.any():
                out[i] = col
                continue
            a = design[seen]
            ridge = FOLD_IN_RIDGE * max(float(np.mean(a * a)), 1e-300) * len(a)
            coef = np.linalg.solve(a.T @ a + ridge * np.eye(a.shape[1]),
                                   a.T @ (values[i, seen] - col[seen]))
            out[i] = col + design @ coef
        return out if model.clip is None else np.clip(out, *model.clip)


def _is_nan(x: Any) -> bool:
    return isinstance(x, float) and np.isnan(x)

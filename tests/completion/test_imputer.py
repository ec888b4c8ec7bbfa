"""DeepImputer: a scikit-learn imputer that fills holes by deep matrix completion."""

import numpy as np
import pandas as pd
import pytest

sklearn = pytest.importorskip("sklearn")

from sklearn.base import clone  # noqa: E402
from sklearn.exceptions import NotFittedError  # noqa: E402
from sklearn.linear_model import Ridge  # noqa: E402
from sklearn.pipeline import Pipeline  # noqa: E402

from deeplora.completion import DeepImputer  # noqa: E402


def _low_rank_with_holes(m=80, n=30, rank=3, missing=0.3, seed=0):
    rng = np.random.default_rng(seed)
    full = rng.standard_normal((m, rank)) @ rng.standard_normal((rank, n)) + 2.0
    holes = rng.random((m, n)) < missing
    return full, np.where(holes, np.nan, full), holes


def test_fit_transform_fills_the_holes_and_keeps_the_observed_entries():
    full, x, holes = _low_rank_with_holes()
    filled = DeepImputer().fit_transform(x)
    assert filled.shape == x.shape and not np.isnan(filled).any()
    np.testing.assert_array_equal(filled[~holes], full[~holes])
    error = np.linalg.norm(filled[holes] - full[holes]) / np.linalg.norm(full[holes])
    assert error < 1e-3


def test_new_rows_are_folded_into_the_learned_column_space():
    full, x, holes = _low_rank_with_holes(m=120, seed=1)
    imputer = DeepImputer().fit(x[:100])
    filled = imputer.transform(x[100:])
    new = holes[100:]
    error = np.linalg.norm(filled[new] - full[100:][new]) / np.linalg.norm(full[100:][new])
    assert error < 1e-3
    np.testing.assert_array_equal(filled[~new], full[100:][~new])
    empty = np.full((1, x.shape[1]), np.nan)  # a row with nothing seen: the column offsets
    assert np.isfinite(imputer.transform(empty)).all()


def test_works_in_a_pipeline_and_with_clone():
    full, x, _ = _low_rank_with_holes(m=100, seed=2)
    y = full @ np.linspace(-1, 1, full.shape[1])
    pipe = Pipeline([("impute", DeepImputer(max_steps=3000)), ("model", Ridge(alpha=1e-3))])
    pipe.fit(x[:80], y[:80])
    pred = pipe.predict(x[80:])
    assert np.corrcoef(pred, y[80:])[0, 1] > 0.99
    imputer = DeepImputer(rank=4, center="none", random_state=3)
    copy = clone(imputer)
    assert copy.get_params() == imputer.get_params()
    assert copy.set_params(max_steps=10).max_steps == 10
    with pytest.raises(NotFittedError):
        copy.transform(x)


def test_dataframes_keep_their_feature_names_and_a_number_can_mark_missing():
    full, _x, holes = _low_rank_with_holes(m=60, n=12, seed=3)
    frame = pd.DataFrame(np.where(holes, -999.0, full), columns=[f"f{j}" for j in range(12)])
    imputer = DeepImputer(missing_values=-999.0).set_output(transform="pandas")
    filled = imputer.fit_transform(frame)
    assert list(filled.columns) == list(frame.columns)
    assert (filled.to_numpy()[holes] != -999.0).all()


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda x: np.where(np.arange(x.shape[0])[:, None] == 4, np.nan, x), "row 4 of X"),
        (lambda x: np.where(np.arange(x.shape[1])[None, :] == 7, np.nan, x), "column 7 of X"),
        (lambda x: np.nan_to_num(x), "no missing entries"),
        (lambda x: x[0], "must be 2-D"),
        (lambda x: x[None], "must be 2-D"),
        (lambda x: np.where(np.isnan(x), np.nan, np.inf), "infinite"),
        (lambda x: [["a", "b"], ["c", np.nan]], "not numbers"),
    ],
)
def test_bad_input_gets_a_clear_error(make, message):
    _, x, _ = _low_rank_with_holes(m=20, n=10)
    with pytest.raises(ValueError, match=message):
        DeepImputer(max_steps=5).fit(make(x))


def test_transform_checks_the_feature_count():
    _, x, _ = _low_rank_with_holes(m=20, n=10)
    imputer = DeepImputer(max_steps=5).fit(x)
    with pytest.raises(ValueError, match="X has 9 features, but DeepImputer was fitted with 10"):
        imputer.transform(x[:, :9])

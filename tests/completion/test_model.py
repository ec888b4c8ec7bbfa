"""The fitted model: predictions by ID, top-k, dense guard, save/load, centering."""

import numpy as np
import pytest
import torch

from deeplora.completion import (
    CompletionModel,
    CompressedConfig,
    Observations,
    WideConfig,
    complete,
    random_low_rank,
    rmse,
    sample_entries,
)


@pytest.fixture(scope="module")
def ratings():
    """A small ratings-like table keyed by string IDs: offsets plus a rank-2 signal."""
    rng = np.random.default_rng(0)
    target = random_low_rank(40, 60, 2, seed=0)
    obs = sample_entries(target, fraction=0.5, seed=0)
    values = 3 + obs.values + 0.3 * rng.standard_normal(len(obs))
    users = np.array([f"user{i}" for i in range(40)])
    items = np.array([f"item{j}" for j in range(60)])
    return Observations.from_ids(users[obs.rows], items[obs.cols], values)


@pytest.fixture(scope="module")
def fitted(ratings):
    train, val = ratings.split(0.2, seed=0)
    cfg = CompressedConfig(r_hat=3, init_scale=0.05, max_steps=5000, patience=5, eval_every=50,
                           progress=False)
    return complete(train, cfg, validation=val, center="biases", clip=(0.0, 6.0)), train, val


def test_complete_beats_the_mean_and_stops_early(fitted):
    from deeplora.completion import MeanBaseline

    model, train, val = fitted
    assert model.rmse(val) < 0.85 * rmse(MeanBaseline().fit(train), val)
    assert model.history.val_rmse and not np.isnan(model.history.val_rmse[-1])
    assert model.info["stopped"] in ("patience", "max_steps")


def test_predict_by_id_matches_index_predictions(fitted):
    model, train, _ = fitted
    rows, cols = train.rows[:10], train.cols[:10]
    by_index = model.predict_index(rows, cols)
    by_id = model.predict([train.row_ids[i] for i in rows], [train.col_ids[j] for j in cols])
    np.testing.assert_allclose(by_id, by_index)
    with pytest.raises(KeyError, match="unknown column ID"):
        model.predict(["user1"], ["no such item"])


def test_save_load_round_trip_gives_identical_predictions(fitted, tmp_path):
    model, _, val = fitted
    model.save(tmp_path / "m")
    again = CompletionModel.load(tmp_path / "m")
    np.testing.assert_array_equal(again.predict_index(val.rows, val.cols),
                                  model.predict_index(val.rows, val.cols))
    assert again.row_ids == model.row_ids and again.clip == model.clip
    assert again.history.val_rmse == model.history.val_rmse
    assert not list((tmp_path / "m").glob(".*.tmp"))  # atomic writes leave nothing behind


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        CompletionModel.load(tmp_path / "missing")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "model.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        CompletionModel.load(tmp_path / "bad")


def test_top_k_skips_observed_columns(fitted):
    model, train, _ = fitted
    top = model.top_k(5)
    assert set(top.columns) == {"row_id", "rank", "col_id", "prediction"}
    assert len(top) == 5 * model.shape[0]
    seen = set(zip([train.row_ids[i] for i in train.rows], [train.col_ids[j] for j in train.cols]))
    assert not seen & set(zip(top["row_id"], top["col_id"]))
    dense = model.to_dense()
    first = top[top["row_id"] == "user0"]
    j = model.col_ids.index(first["col_id"].iloc[0])
    assert first["prediction"].iloc[0] == pytest.approx(dense[0, j])
    assert list(first["prediction"]) == sorted(first["prediction"], reverse=True)
    one = model.recommend("user0", k=3)
    assert list(one["col_id"]) == list(first["col_id"][:3])


def test_to_dense_is_guarded(fitted):
    model, _, _ = fitted
    with pytest.raises(ValueError, match="max_entries"):
        model.to_dense(max_entries=100)


def test_wide_solver_through_complete_on_a_small_table():
    target = random_low_rank(15, 20, 1, seed=0)
    obs = sample_entries(target, fraction=0.6, seed=0)
    model = complete(obs, WideConfig(max_steps=20_000, target_error=1e-4, progress=False),
                     truth=target)
    assert model.history.rel_error[-1] <= 1e-4
    assert model.info["solver"] == "WideSolver"
    assert isinstance(model.left, torch.Tensor)

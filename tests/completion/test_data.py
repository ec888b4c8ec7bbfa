"""Observations: constructors, validation at the boundary, splits, synthetic targets."""

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from deeplora.completion import LowRankMatrix, Observations, random_low_rank, sample_entries


def test_from_ids_keeps_id_maps_and_lookup():
    obs = Observations.from_ids(["u1", "u2", "u1"], [7, 7, 9], [1.0, 2.0, 3.0])
    assert obs.shape == (2, 2)
    assert obs.row_ids == ["u1", "u2"] and obs.col_ids == [7, 9]
    rows, cols = obs.index_of(["u2", "u1"], ["9", 7])  # integer IDs asked as text work too
    assert rows.tolist() == [1, 0] and cols.tolist() == [1, 0]
    with pytest.raises(KeyError, match="unknown row ID"):
        obs.index_of(["nobody"], [7])


def test_csv_with_header_and_string_ids(tmp_path):
    path = tmp_path / "r.csv"
    path.write_text("user,item,rating\n007,a,4\n7,b,3.5\n007,b,1\n")
    obs = Observations.from_csv(path)
    assert obs.row_ids == ["007", "7"] and obs.col_ids == ["a", "b"]
    np.testing.assert_allclose(obs.values, [4, 3.5, 1])
    tsv = tmp_path / "r.tsv"
    tsv.write_text("1\t2\t0.5\n")
    assert Observations.from_csv(tsv).values.tolist() == [0.5]


def test_from_scipy_and_dataframe_round_trip():
    mat = sp.random(20, 30, density=0.1, random_state=0, format="csr")
    obs = Observations.from_scipy(mat)
    np.testing.assert_allclose(obs.to_scipy().toarray(), mat.toarray())
    df = obs.to_dataframe()
    again = Observations.from_dataframe(df)
    assert len(again) == len(obs)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(rows=[0, 1], cols=[0, 1], values=[1.0, np.nan]), "NaN or infinite"),
        (dict(rows=[0, 1], cols=[0, 1], values=[1.0, np.inf]), "NaN or infinite"),
        (dict(rows=[0, -1], cols=[0, 1], values=[1.0, 2.0]), "negative row index"),
        (dict(rows=[0, 5], cols=[0, 1], values=[1.0, 2.0], shape=(3, 3)), "out of range"),
        (dict(rows=[0, 0], cols=[1, 1], values=[1.0, 2.0]), r"duplicate .* \(0, 1\)"),
        (dict(rows=[], cols=[], values=[]), "no observed entries"),
        (dict(rows=[0, 1], cols=[0], values=[1.0, 2.0]), "same length"),
        (dict(rows=[0.5], cols=[0], values=[1.0]), "integers"),
    ],
)
def test_bad_input_is_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Observations.from_arrays(**kwargs)


def test_duplicate_ids_are_named():
    with pytest.raises(ValueError, match=r"\('alice', 'film'\)"):
        Observations.from_ids(["alice", "alice"], ["film", "film"], [1, 2])


def test_a_spreadsheet_byte_order_mark_is_not_part_of_the_first_id(tmp_path):
    path = tmp_path / "bom.csv"
    path.write_bytes("a,x,1\nb,y,2\n".encode("utf-8-sig"))
    assert Observations.from_csv(path).row_ids == ["a", "b"]


def test_csv_errors(tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(ValueError, match="empty"):
        Observations.from_csv(empty)
    two = tmp_path / "two.csv"
    two.write_text("a,b\n")
    with pytest.raises(ValueError, match="line 1: expected 3 fields"):
        Observations.from_csv(two)
    words = tmp_path / "words.csv"
    words.write_text("a,b,1\n\nc,d,many\n")
    with pytest.raises(ValueError, match=r"words.csv line 3: the value 'many' is not a number"):
        Observations.from_csv(words)
    with pytest.raises(FileNotFoundError):
        Observations.from_csv(tmp_path / "missing.csv")


def test_split_is_a_seeded_partition():
    obs = sample_entries(random_low_rank(30, 40, 2), fraction=0.5, seed=0)
    train, val = obs.split(0.2, seed=3)
    assert len(train) + len(val) == len(obs)
    both = set(zip(train.rows, train.cols)) | set(zip(val.rows, val.cols))
    assert both == set(zip(obs.rows, obs.cols))
    again, _ = obs.split(0.2, seed=3)
    np.testing.assert_array_equal(again.values, train.values)
    with pytest.raises(ValueError, match="val_fraction"):
        obs.split(1.5)


def test_sample_entries_and_low_rank_helpers():
    target = random_low_rank(50, 60, 3, seed=1)
    obs = sample_entries(target, count=500, seed=2)
    assert len(obs) == 500 and obs.shape == (50, 60)
    dense = target.to_dense()
    np.testing.assert_allclose(obs.values, dense[obs.rows, obs.cols])
    assert np.isclose(target.frobenius_norm(), np.linalg.norm(dense))
    assert isinstance(target.transpose(), LowRankMatrix)
    big = sample_entries(random_low_rank(10**5, 10**5, 2), count=1000, seed=0)
    assert len(set(zip(big.rows, big.cols))) == 1000


def test_dataframe_missing_column_lists_columns():
    df = pd.DataFrame({"a": [1], "b": [2], "c": [3.0]})
    with pytest.raises(ValueError, match=r"\['a', 'b', 'c'\]"):
        Observations.from_dataframe(df, row="user", col="b", value="c")

"""Embedding tables, covariates and the subject join."""

import json

import numpy as np
import pandas as pd
import pytest

from brainlm.integrate import (
    encode_covariates,
    join_modalities,
    read_covariates,
    read_embedding_table,
    write_embedding_table,
)


@pytest.fixture
def table():
    rng = np.random.default_rng(0)
    return np.array([f"s{i}" for i in range(6)]), rng.standard_normal((6, 4)).astype(np.float32)


@pytest.mark.parametrize("suffix", [".parquet", ".csv", ".tsv", ".npy"])
def test_write_read_round_trip(tmp_path, table, suffix):
    ids, X = table
    path = write_embedding_table(tmp_path / f"emb{suffix}", ids, X)
    ids2, X2 = read_embedding_table(path)
    assert ids2.tolist() == ids.tolist()
    assert X2.dtype == np.float32 and X2.shape == (6, 4)
    np.testing.assert_allclose(X2, X, rtol=1e-6)


def test_list_column_and_npy_indexes(tmp_path, table):
    ids, X = table
    pd.DataFrame({"subject_id": ids, "embedding": list(X)}).to_parquet(tmp_path / "list.parquet")
    np.testing.assert_allclose(read_embedding_table(tmp_path / "list.parquet")[1], X)
    np.save(tmp_path / "a.npy", X)
    (tmp_path / "a.json").write_text(json.dumps(ids.tolist()))
    assert read_embedding_table(tmp_path / "a.npy")[0].tolist() == ids.tolist()
    np.save(tmp_path / "b.npy", X)
    pd.DataFrame({"subject_id": ids}).to_csv(tmp_path / "b.csv", index=False)
    assert read_embedding_table(tmp_path / "b.npy")[0].tolist() == ids.tolist()


def test_emb_columns_sorted_numerically(tmp_path):
    frame = pd.DataFrame({"subject_id": ["a", "b"], "emb_10": [10.0, 10.0], "emb_2": [2.0, 2.0], "emb_0": [0.0, 0.0]})
    frame.to_csv(tmp_path / "t.csv", index=False)
    np.testing.assert_array_equal(read_embedding_table(tmp_path / "t.csv")[1][0], [0, 2, 10])


def test_rows_per_window_are_averaged(tmp_path):
    frame = pd.DataFrame({
        "subject_id": ["a", "a", "b", "b", "b"], "window": [0, 1, 0, 1, 2],
        "emb_0": [1.0, 3.0, 0.0, 3.0, 6.0], "emb_1": [0.0, 0.0, 1.0, 1.0, 1.0],
    })
    frame.to_parquet(tmp_path / "w.parquet")
    ids, X = read_embedding_table(tmp_path / "w.parquet")
    assert ids.tolist() == ["a", "b"]
    np.testing.assert_allclose(X, [[2.0, 0.0], [3.0, 1.0]])
    with pytest.raises(ValueError, match="duplicated subject IDs"):
        read_embedding_table(tmp_path / "w.parquet", aggregate="none")


def test_duplicated_ids_are_an_error(tmp_path):
    pd.DataFrame({"subject_id": ["a", "a", "b"], "emb_0": [1.0, 2.0, 3.0]}).to_csv(tmp_path / "d.csv", index=False)
    with pytest.raises(ValueError, match="duplicated subject IDs.*aggregate='mean'"):
        read_embedding_table(tmp_path / "d.csv")
    assert read_embedding_table(tmp_path / "d.csv", aggregate="mean")[1][:, 0].tolist() == [1.5, 3.0]


def test_nan_rows_and_ragged_embeddings_are_errors(tmp_path):
    pd.DataFrame({"subject_id": ["a", "b"], "emb_0": [1.0, np.nan]}).to_csv(tmp_path / "n.csv", index=False)
    with pytest.raises(ValueError, match="1 rows contain NaN.*subjects b"):
        read_embedding_table(tmp_path / "n.csv")
    pd.DataFrame({"subject_id": ["a", "b"], "embedding": [[1.0, 2.0], [1.0]]}).to_parquet(tmp_path / "r.parquet")
    with pytest.raises(ValueError, match="different lengths"):
        read_embedding_table(tmp_path / "r.parquet")


def test_missing_files_and_index(tmp_path, table):
    with pytest.raises(FileNotFoundError, match="not found"):
        read_embedding_table(tmp_path / "nope.parquet")
    np.save(tmp_path / "noindex.npy", table[1])
    with pytest.raises(FileNotFoundError, match="no index beside it"):
        read_embedding_table(tmp_path / "noindex.npy")
    (tmp_path / "x.csv").write_text("id,emb_0\na,1\n")
    with pytest.raises(ValueError, match="no subject column 'subject_id'"):
        read_embedding_table(tmp_path / "x.csv")


def test_join_reports_unmatched_ids():
    rng = np.random.default_rng(1)
    cov = pd.DataFrame({"age": [30.0, 40, 50, 60], "site": ["x", "y", "x", "y"]}, index=["a", "b", "c", "e"])
    joined = join_modalities(
        ["a", "b", "c", "d"], rng.standard_normal((4, 3)), ["c", "b", "a", "z"], rng.standard_normal((4, 2)),
        encode_covariates(cov),
    )
    assert joined.ids.tolist() == ["a", "b", "c"]
    assert joined.A.shape == (3, 3) and joined.B.shape == (3, 2) and joined.covariates.shape == (3, 2)
    assert joined.unmatched == {"brain": ["d"], "genetic": ["z"], "covariate": ["e"]}
    assert "1 genetic subjects without a match: z" in joined.summary()


def test_join_aligns_rows_by_id():
    joined = join_modalities(["a", "b"], [[1.0], [2.0]], ["b", "a"], [[20.0], [10.0]])
    np.testing.assert_array_equal(joined.B[:, 0] / joined.A[:, 0], [10, 10])


def test_join_bad_inputs():
    with pytest.raises(ValueError, match="no overlapping subject IDs"):
        join_modalities(["a", "b"], np.ones((2, 2)), ["c", "d"], np.ones((2, 2)))
    with pytest.raises(ValueError, match="duplicated subject IDs \\(a\\)"):
        join_modalities(["a", "a"], np.ones((2, 2)), ["a", "b"], np.ones((2, 2)))
    with pytest.raises(ValueError, match="NaN"):
        join_modalities(["a", "b"], [[1.0], [np.nan]], ["a", "b"], np.ones((2, 2)))
    with pytest.raises(ValueError, match="3 subject IDs but 2 embedding rows"):
        join_modalities(["a", "b", "c"], np.ones((2, 2)), ["a", "b"], np.ones((2, 2)))


def test_read_covariates(tmp_path):
    (tmp_path / "c.tsv").write_text("subject_id\tage\tsex\tsite\n1\t30\tF\tA\n2\t40\tM\tB\n3\t50\tF\tC\n")
    cov = read_covariates(tmp_path / "c.tsv")
    assert cov.index.tolist() == ["1", "2", "3"]
    assert cov.columns.tolist() == ["age", "sex_M", "site_B", "site_C"]
    (tmp_path / "m.tsv").write_text("subject_id\tage\n1\t30\n2\t\n")
    with pytest.raises(ValueError, match="missing covariate values \\(subjects 2\\)"):
        read_covariates(tmp_path / "m.tsv")

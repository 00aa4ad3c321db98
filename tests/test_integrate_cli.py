"""`brainlm integrate ...` end to end on small synthetic tables, and the synthetic generator."""

import numpy as np
import pandas as pd
import pytest

from brainlm.cli import main
from brainlm.integrate import (
    make_null_cohort,
    make_synthetic_cohort,
    read_embedding_table,
    write_embedding_table,
)


def test_generator_is_seeded_and_documented_shapes():
    a = make_synthetic_cohort(n_subjects=50, brain_dim=7, genetic_dim=5, n_shared=2, seed=3)
    b = make_synthetic_cohort(n_subjects=50, brain_dim=7, genetic_dim=5, n_shared=2, seed=3)
    np.testing.assert_array_equal(a.brain, b.brain)
    assert a.brain.shape == (50, 7) and a.genetic.shape == (50, 5) and a.shared.shape == (50, 2)
    assert set(np.unique(a.target)) == {0.0, 1.0} and a.target.mean() == 0.5
    assert list(a.covariates.columns) == ["age", "sex", "site"]
    null = make_null_cohort(n_subjects=2000, brain_dim=3, genetic_dim=3, covariate_strength=0.0, seed=1)
    assert np.abs(np.corrcoef(null.brain.T, null.genetic.T)[:3, 3:]).max() < 0.1
    with pytest.raises(ValueError, match="target must be"):
        make_synthetic_cohort(target="ordinal")


@pytest.fixture
def tables(tmp_path):
    c = make_synthetic_cohort(n_subjects=60, brain_dim=8, genetic_dim=6, n_shared=4, shared_strength=1.0, seed=2)
    write_embedding_table(tmp_path / "brain.parquet", c.ids, c.brain)
    # The genetic table misses two subjects and has one extra: the report must list them.
    ids_g = np.r_[c.ids[2:], ["sub-extra"]]
    write_embedding_table(tmp_path / "genetic.csv", ids_g, np.vstack([c.genetic[2:], np.zeros((1, 6))]))
    c.covariates.reset_index().to_csv(tmp_path / "cov.tsv", sep="\t", index=False)
    pd.DataFrame({"subject_id": c.ids, "label": c.target}).to_csv(tmp_path / "pheno.tsv", sep="\t", index=False)
    return tmp_path


def test_cli_cca(tables, capsys):
    out = tables / "cca"
    argv = ["integrate", "cca", "--brain", str(tables / "brain.parquet"), "--genetic", str(tables / "genetic.csv"),
            "--covariates", str(tables / "cov.tsv"), "--out", str(out), "--folds", "3", "--permutations", "50"]
    assert main(argv) == 0
    report = (out / "report.md").read_text()
    # subject IDs are read as text without the BIDS "sub-" prefix, as everywhere
    assert "2 brain subjects without a match: 0000, 0001" in report
    assert "1 genetic subjects without a match: extra" in report
    assert (out / "cca.png").exists() and len(pd.read_csv(out / "cca.csv")) == 2
    assert "held-out r1" in capsys.readouterr().out


def test_cli_fusion(tables):
    out = tables / "fusion"
    argv = ["integrate", "fusion", "--brain", str(tables / "brain.parquet"), "--genetic", str(tables / "genetic.csv"),
            "--phenotypes", str(tables / "pheno.tsv"), "--target", "label", "--out", str(out), "--folds", "3",
            "--bootstrap", "50", "--models", "linear"]
    assert main(argv) == 0
    assert "Fusion minus best single modality" in (out / "report.md").read_text()
    assert set(pd.read_csv(out / "fusion.csv").features) == {"genetic", "brain", "fusion"}


def test_cli_contrastive_exports_shared_space(tables):
    out = tables / "con"
    argv = ["integrate", "contrastive", "--brain", str(tables / "brain.parquet"), "--genetic", str(tables / "genetic.csv"),
            "--out", str(out), "--folds", "3", "--null", "50", "--epochs", "5"]
    assert main(argv) == 0
    ids, Z = read_embedding_table(out / "brain_shared.parquet")
    assert Z.shape == (58, 512) and "sub-extra" not in ids
    assert (out / "contrastive.png").exists() and "recall@1" in (out / "report.md").read_text()


def test_cli_errors_are_one_line(tables, tmp_path, capsys):
    write_embedding_table(tmp_path / "other.parquet", ["x", "y", "z"], np.ones((3, 2)))
    argv = ["integrate", "cca", "--brain", str(tables / "brain.parquet"), "--genetic", str(tmp_path / "other.parquet"),
            "--out", str(tmp_path / "o")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("brainlm integrate: error: no overlapping subject IDs") and "\n" not in err

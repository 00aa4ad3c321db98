"""Two-tower contrastive alignment: shapes, gradients, retrieval above chance only with a shared factor."""

import numpy as np
import pytest
import torch

from brainlm.integrate import (
    ContrastiveAligner,
    ContrastiveAnalysis,
    Projector,
    TwoTower,
    info_nce,
    make_null_cohort,
    make_synthetic_cohort,
    read_embedding_table,
    retrieval_metrics,
)

SMALL = dict(hidden_dim=256, out_dim=128, max_epochs=60, patience=5)


def test_projector_shape_and_layers():
    proj = Projector(40)
    assert proj(torch.randn(7, 40)).shape == (7, 512)
    kinds = [type(m).__name__ for m in proj.net]
    assert kinds == ["Linear", "GELU", "Dropout", "Linear", "LayerNorm"]
    assert proj.net[0].out_features == 1024


def test_every_parameter_gets_a_gradient():
    torch.manual_seed(0)
    model = TwoTower(6, 5, hidden_dim=32, out_dim=16)
    zb, zg = model(torch.randn(8, 6), torch.randn(8, 5))
    assert zb.shape == (8, 16)
    torch.testing.assert_close(zb.norm(dim=-1), torch.ones(8))
    loss = info_nce(zb, zg, model.temperature)
    loss.backward()
    assert torch.isfinite(loss)
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_info_nce_is_symmetric_and_low_for_matched_pairs():
    z = torch.nn.functional.normalize(torch.randn(16, 8), dim=-1)
    matched = info_nce(z, z, torch.tensor(0.05))
    shuffled = info_nce(z, z[torch.randperm(16)], torch.tensor(0.05))
    assert matched < 0.1 < shuffled
    zg = torch.nn.functional.normalize(torch.randn(16, 8), dim=-1)
    torch.testing.assert_close(info_nce(z, zg, torch.tensor(0.1)), info_nce(zg, z, torch.tensor(0.1)))


def test_retrieval_metrics():
    z = np.eye(12)
    perfect = retrieval_metrics(z, z)["brain->genetic"]
    assert perfect == {"recall@1": 1.0, "recall@5": 1.0, "recall@10": 1.0, "median_rank": 1.0, "mrr": 1.0}
    perm = np.r_[np.arange(6), np.arange(6, 12)[::-1]]  # 6 subjects matched, 6 swapped
    assert retrieval_metrics(z, z[perm])["genetic->brain"]["recall@1"] == 0.5
    collapsed = retrieval_metrics(np.ones((12, 3)), np.ones((12, 3)))["brain->genetic"]
    assert collapsed["recall@1"] == 0.0 and collapsed["median_rank"] == 12


def test_planted_factor_gives_recall_far_above_chance():
    cohort = make_synthetic_cohort(n_subjects=120, brain_dim=32, genetic_dim=16, n_shared=8, shared_strength=1.0, seed=5)
    con = ContrastiveAnalysis(n_splits=3, n_null=200, **SMALL).fit(cohort.brain, cohort.genetic)
    m = con.metrics_.set_index("direction")
    assert np.allclose(m["chance_recall@1"], 1 / 40)
    assert (m["recall@1"] > 0.5).all()
    assert (m["p_recall@1"] <= 1 / 201 + 1e-12).all() and (m["p_mrr"] <= 1 / 201 + 1e-12).all()
    assert (m["median_rank"] <= 2).all()
    # Towers trained on shuffled pairs find nothing on the true held-out pairs.
    assert (m["shuffled_fit_recall@1"] < 0.15).all()


def test_no_shared_factor_gives_chance_recall():
    recall, p = [], []
    for s in range(3):
        cohort = make_null_cohort(n_subjects=120, brain_dim=32, genetic_dim=16, n_shared=8, seed=10 + s)
        m = ContrastiveAnalysis(n_splits=3, n_null=200, random_state=s, **SMALL).fit(cohort.brain, cohort.genetic).metrics_
        recall += m["recall@1"].tolist() + m["shuffled_fit_recall@1"].tolist()
        p += m["p_mrr"].tolist()
    assert np.mean(recall) < 0.08  # chance is 0.025; planted cohorts reach > 0.5
    assert min(p) > 0.01


def test_default_projectors_export_512_tables(tmp_path):
    cohort = make_synthetic_cohort(n_subjects=30, brain_dim=10, genetic_dim=6, seed=7)
    al = ContrastiveAligner(max_epochs=3, patience=2).fit(cohort.brain, cohort.genetic)
    assert al.model_.brain.net[0].out_features == 1024 and 0 <= al.best_epoch_ < 3
    paths = al.export(tmp_path, cohort.ids, cohort.brain, cohort.genetic)
    ids, Z = read_embedding_table(paths["brain"])
    assert Z.shape == (30, 512) and ids.tolist() == [i.removeprefix("sub-") for i in cohort.ids]  # read back without "sub-"
    assert read_embedding_table(paths["genetic"])[1].shape == (30, 512)
    assert len(al.history_) <= 3 and {"train_loss", "val_loss"} <= set(al.history_.columns)


def test_early_stopping_restores_best_epoch():
    cohort = make_null_cohort(n_subjects=40, brain_dim=8, genetic_dim=4, seed=8)
    al = ContrastiveAligner(hidden_dim=32, out_dim=16, max_epochs=100, patience=3).fit(cohort.brain, cohort.genetic)
    assert len(al.history_) <= al.best_epoch_ + 1 + 3
    assert al.history_.val_loss.min() == pytest.approx(al.history_.val_loss.iloc[al.best_epoch_])


def test_bad_inputs():
    rng = np.random.default_rng(0)
    X, Y = rng.standard_normal((10, 3)), rng.standard_normal((10, 2))
    with pytest.raises(ValueError, match="different numbers of subjects"):
        ContrastiveAnalysis().fit(X, Y[:8])
    with pytest.raises(ValueError, match="fewer subjects \\(3\\) than folds \\(5\\)"):
        ContrastiveAnalysis().fit(X[:3], Y[:3])
    with pytest.raises(ValueError, match="too few to train"):
        ContrastiveAligner().fit(X[:3], Y[:3])

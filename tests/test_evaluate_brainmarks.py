"""Brainmarks' logistic protocol and bins (brainlm.evaluate.brainmarks) against Brainmarks itself.

The reference in ``tests/data/brainmarks_logistic/`` was written by brainmarks 0.1.1's own
``main_logistic`` (``make_reference.py`` there); the protocol here must give the same numbers to
the last bit. A second test runs brainmarks' ``evaluate`` directly when it is installed.
"""

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score
from sklearn.utils import check_random_state, resample

from brainlm.errors import UserError
from brainlm.evaluate.brainmarks import (
    BINNINGS,
    LogisticProtocol,
    bootstrap_indices,
    brainmarks_bins,
    classification_scores,
    logistic_protocol,
    paired_comparison,
    summary_table,
)
from brainlm.evaluate.verdict import Verdict

REFERENCE = Path(__file__).parent / "data" / "brainmarks_logistic"
COLUMNS = ["C", "acc", "acc_std", "f1", "f1_std", "bacc", "bacc_std"]
SPLITS = ("train", "validation", "test")


def _reference_features():
    d = np.load(REFERENCE / "features.npz")
    X = np.concatenate([d[f"{s}_X"] for s in SPLITS])
    y = np.concatenate([d[f"{s}_y"] for s in SPLITS])
    split = np.concatenate([[s] * len(d[f"{s}_y"]) for s in SPLITS])
    order = np.concatenate([np.arange(len(d[f"{s}_y"])) for s in SPLITS])
    return X, y, split, order


def test_reproduces_brainmarks_main_logistic_exactly():
    X, y, split, order = _reference_features()
    result = logistic_protocol(X, y, split, order=order, protocol=LogisticProtocol(n_trials=1, engine="brainlm"))
    reference = pd.read_csv(REFERENCE / "eval_table.csv")
    assert result.engine == "brainlm" and len(result.table) == 4  # fixed splits and trial 1, train and test rows
    assert list(result.table["split"]) == list(reference["split"][:4])
    np.testing.assert_array_equal(result.table[COLUMNS].to_numpy(), reference[COLUMNS][:4].to_numpy())
    assert result.counts == {"train": 90, "validation": 24, "test": 36}


def test_same_numbers_as_brainmarks_own_evaluate():
    # brainmarks is part of the test environment; the fixed splits only, for time (the re-splits
    # run the same evaluate, and ours are checked against the recorded table above)
    X, y, split, order = _reference_features()
    ours = logistic_protocol(X, y, split, order=order, protocol=LogisticProtocol(n_trials=0, engine="brainlm"))
    theirs = logistic_protocol(X, y, split, order=order, protocol=LogisticProtocol(n_trials=0, engine="brainmarks"))
    assert theirs.engine == "brainmarks"
    np.testing.assert_array_equal(ours.table[COLUMNS].to_numpy(), theirs.table[COLUMNS].to_numpy())
    np.testing.assert_array_equal(ours.test_predictions, theirs.test_predictions)


def test_shuffled_rows_give_the_same_result():
    X, y, split, order = _reference_features()
    protocol = LogisticProtocol(n_trials=0, engine="brainlm")
    first = logistic_protocol(X, y, split, order=order, protocol=protocol)
    perm = np.random.default_rng(5).permutation(len(y))
    again = logistic_protocol(X[perm], y[perm], split[perm], order=order[perm], protocol=protocol)
    pd.testing.assert_frame_equal(first.table, again.table)
    # class labels as text and rows without a target change nothing either
    text = np.array([f"class-{v}" for v in y], dtype=object)
    text_nan = np.concatenate([text, [None]])
    extra = logistic_protocol(np.vstack([X, X[:1]]), text_nan, np.append(split, "train"), order=np.append(order, 999),
                              protocol=protocol)
    np.testing.assert_array_equal(extra.table[COLUMNS].to_numpy(), first.table[COLUMNS].to_numpy())
    assert list(extra.labels) == ["class-0", "class-1", "class-2"]


@pytest.mark.parametrize("targets", [np.repeat([0, 1, 2], [7, 11, 18]), np.array(list("abcabcaab")),
                                     np.repeat([3, 5], [1, 30])])
def test_bootstrap_indices_are_sklearn_resample(targets):
    rng = check_random_state(4466)
    rows = np.arange(len(targets))
    expected = np.stack([resample(rows, targets, random_state=rng, stratify=targets)[0] for _ in range(40)])
    np.testing.assert_array_equal(bootstrap_indices(targets, 4466, 40), expected)


def test_scores_are_sklearn_to_the_bit():
    rng = np.random.default_rng(0)
    for _ in range(200):
        n, k = rng.integers(3, 40), rng.integers(2, 6)
        y_true, y_pred = rng.integers(0, k, n), rng.integers(0, k + 1, n)  # may predict a class never true
        got = classification_scores(y_true, y_pred)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "y_pred contains classes not in y_true"
            assert got["acc"] == accuracy_score(y_true, y_pred)
            assert got["f1"] == f1_score(y_true, y_pred, average="macro")
            assert got["bacc"] == balanced_accuracy_score(y_true, y_pred)


def test_bins_follow_brainmarks_curation():
    ages = np.array(["22-25", "26-30", "31-35", "36+", None], dtype=object)
    np.testing.assert_array_equal(brainmarks_bins(ages, "hcpya_age"), [0, 1, 2, 2, np.nan])
    np.testing.assert_array_equal(brainmarks_bins([22, 25, 26, 30, 31, 40], "hcpya_rest1lr_age"), [0, 0, 1, 1, 2, 2])
    scores = np.random.default_rng(1).normal(100, 15, 200)
    np.testing.assert_array_equal(brainmarks_bins(scores, "qcut3"), pd.qcut(scores, 3, labels=False))
    # AABC / ADNI: np.nanquantile edges rounded to 3 decimals, np.digitize(right=True)
    edges = np.round(np.nanquantile(scores, [0.25, 0.5, 0.75]), 3)
    np.testing.assert_array_equal(brainmarks_bins(scores, "aabc_age"), np.digitize(scores, edges, right=True))
    mmse = np.arange(0, 31)
    expected = pd.cut(mmse, bins=[-1, 23, 27, 30], labels=range(3), include_lowest=True).astype(int)
    np.testing.assert_array_equal(brainmarks_bins(mmse, "adni_mmse"), expected)
    cdrsb = np.array([0, 0.5, 1, 4.5, 5, 12])
    np.testing.assert_array_equal(brainmarks_bins(cdrsb, "adni_cdrsb"), [0, 0, 1, 1, 2, 2])
    skewed = np.concatenate([np.zeros(50), np.arange(1, 51)])  # a quarter bin would hold under 20%
    assert np.nanmax(brainmarks_bins(skewed, "quantile4_balanced")) == 2
    assert np.nanmax(brainmarks_bins(np.arange(100.0), "quantile4_balanced")) == 3
    assert set(BINNINGS) >= {"hcpya_age", "qcut3", "quantile4", "adni_mmse"}
    with pytest.raises(UserError, match="neither a binning rule"):
        brainmarks_bins([1, 2], "deciles")


def test_bad_inputs_are_refused():
    X, y, split, order = _reference_features()
    protocol = LogisticProtocol(n_trials=0, engine="brainlm")
    with pytest.raises(UserError, match=r"none in \['validation'\]"):
        logistic_protocol(X, y, np.where(split == "validation", "train", split), protocol=protocol)
    with pytest.raises(UserError, match="needs two"):
        logistic_protocol(X, np.zeros(len(y)), split, protocol=protocol)
    with pytest.raises(UserError, match="NaN or Inf"):
        logistic_protocol(np.full_like(X, np.nan), y, split, protocol=protocol)
    with pytest.raises(UserError, match="cv_metric"):
        LogisticProtocol(cv_metric="auroc")


def test_paired_comparison_and_summary():
    X, y, split, order = _reference_features()
    protocol = LogisticProtocol(n_trials=0, engine="brainlm")
    good = logistic_protocol(X, y, split, order=order, protocol=protocol)
    noise = logistic_protocol(np.random.default_rng(2).normal(size=X.shape), y, split, order=order, protocol=protocol)
    same = paired_comparison(good, good)
    assert (same.diff_lo, same.diff_hi) == (0.0, 0.0) and same.within_noise
    c = paired_comparison(good, noise)
    verdict = Verdict("model", 0.6, "noise", 0.3, "balanced accuracy", c)
    assert verdict.outcome in ("wins", "level (within noise)") and c.p_boot < 0.5
    table = summary_table({"brainlm:cls": good, "fc": noise}, dataset="toy")
    assert list(table["model"]) == ["brainlm", "fc"] and set(table["splits"]) == {"fixed"}
    assert table.loc[0, "bacc"] == good.table.query("split == 'test'")["bacc"].iloc[0]

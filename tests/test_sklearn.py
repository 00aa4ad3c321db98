"""BrainLMEmbedder: the scikit-learn API, window averaging, pipelines, bad input."""

import numpy as np
import pytest
from downstream_synth import R, T_REC, WINDOW, subject_series, synthetic_store, tiny_model
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils import estimator_checks

from brainlm import BrainLMEmbedder
from brainlm.checkpoint import save_pretrained
from brainlm.downstream import embed_windows, open_recordings

# The API checks that do not fit the estimator on a 2-D table (module docstring of brainlm.sklearn).
API_CHECKS = ["check_estimator_cloneable", "check_estimator_tags_renamed", "check_valid_tag_types",
              "check_estimator_repr", "check_no_attributes_set_in_init", "check_estimators_unfitted",
              "check_do_not_raise_errors_in_init_or_set_params", "check_mixin_order", "check_get_params_invariance",
              "check_set_params", "check_parameters_default_constructible"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return save_pretrained(tiny_model(), tmp_path_factory.mktemp("model") / "tiny")


@pytest.fixture(scope="module")
def coords():
    return np.random.default_rng(0).normal(size=(R, 3)).astype(np.float32) * 40


@pytest.fixture(scope="module")
def data():
    """24 subjects, (T, R) each; label = subject parity (see ``subject_series``)."""
    y = np.arange(24) % 2
    return np.stack([subject_series(i, label) for i, label in enumerate(y)]), y


@pytest.mark.parametrize("name", API_CHECKS)
def test_sklearn_api_checks_that_apply(name, folder, coords):
    getattr(estimator_checks, name)("BrainLMEmbedder", BrainLMEmbedder(model=str(folder), coords=coords))


def test_check_estimator_skips_its_2d_data_checks_by_the_tags():
    with pytest.warns(estimator_checks.SkipTestWarning, match="three_d_array=True"):
        estimator_checks.check_estimator(BrainLMEmbedder())


def test_transform_is_the_mean_of_the_sliding_window_embeddings(folder, coords, data):
    X = data[0][:3]
    emb = BrainLMEmbedder(model=folder, coords=coords, stride=10).fit(X)
    assert emb.num_regions_ == R and emb.window_ == WINDOW and not hasattr(emb, "n_features_in_")
    out = emb.transform(X)
    assert out.shape == (3, 16) and out.dtype == np.float32
    starts = range(0, T_REC - WINDOW + 1, 10)
    for x, row in zip(X, out):
        windows = np.stack([x[t0 : t0 + WINDOW].T for t0 in starts])  # (B, R, T)
        np.testing.assert_allclose(row, embed_windows(emb.model_, windows, coords).mean(0), atol=1e-5)
    # Recordings of different lengths, as a list; the mean pooling; a loaded model as the parameter.
    ragged = [X[0], X[1][:40]]
    mean = BrainLMEmbedder(model=tiny_model(), coords=coords, pooling="mean").fit_transform(ragged)
    assert mean.shape == (2, 16) and not np.allclose(mean, out[:2])


def test_a_loaded_model_parameter_is_not_modified(coords, data):
    model = tiny_model().train()
    emb = BrainLMEmbedder(model=model, coords=coords).fit(data[0][:2])
    assert model.training and not emb.model_.training
    assert clone(emb).model is not model  # clone copies the parameter, as for any object


def test_a_store_folder_is_embedded_with_its_own_coordinates(tmp_path, folder):
    store = synthetic_store(tmp_path / "store")
    recordings = open_recordings(store)
    X = np.stack([recordings.load(i) for i in range(len(recordings))])
    emb = BrainLMEmbedder(model=folder).fit()
    np.testing.assert_allclose(emb.transform(store.path),
                               BrainLMEmbedder(model=folder, coords=recordings.coords).fit(X).transform(X), atol=1e-6)


def test_pipeline_with_cross_validation(folder, coords, data):
    X, y = data
    pipe = Pipeline([("embed", BrainLMEmbedder(model=str(folder), coords=coords)), ("scale", StandardScaler()),
                     ("clf", LogisticRegression(max_iter=1000))])
    scores = cross_val_score(pipe, X, y, cv=StratifiedKFold(3, shuffle=True, random_state=0))
    assert scores.shape == (3,)
    # Label 1 shifts every region by +2, which the embedding of even a random model carries.
    assert scores.mean() > 0.8


def test_bad_input(folder, coords, data):
    X = data[0][:2]
    with pytest.raises(NotFittedError):
        BrainLMEmbedder(model=folder, coords=coords).transform(X)
    with pytest.raises(ValueError, match="needs model="):
        BrainLMEmbedder().fit(X)
    with pytest.raises(ValueError, match="pooling must be 'cls' or 'mean'"):
        BrainLMEmbedder(model=folder, pooling="region_time").fit(X)
    emb = BrainLMEmbedder(model=folder, coords=coords).fit()
    with pytest.raises(ValueError, match=r"\(n_recordings, T, R\) array.*shape \(2, 720\)"):
        emb.transform(X.reshape(2, -1))
    with pytest.raises(ValueError, match=r"recording 0 has shape \(6, 120\).*transpose it to \(T, R\)"):
        emb.transform(X.transpose(0, 2, 1))
    with pytest.raises(ValueError, match=r"shape \(120, 5\), but the model's regions expect \(T, 6\)"):
        emb.transform(X[:, :, :5])
    with pytest.raises(ValueError, match=r"coordinates expect \(T, 5\)"):
        BrainLMEmbedder(model=folder, coords=coords[:5]).fit(X)
    with pytest.raises(ValueError, match="recordings 1 of 2 arrays are shorter than one window"):
        emb.transform([X[0], X[1][:10]])
    with pytest.raises(ValueError, match="coords=: the model has 6 regions"):
        BrainLMEmbedder(model=folder).fit(X)
    with pytest.raises(FileNotFoundError, match="no checkpoint folder"):
        BrainLMEmbedder(model="./absent").fit(X)

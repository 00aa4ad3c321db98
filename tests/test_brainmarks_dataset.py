"""A Brainmarks dataset as it is: its splits, its flat regions, and Brainmarks' BrainLM input.

The dataset is written with ``datasets`` the way Brainmarks writes them (``brainmarks_synth``).
The reference for ``--normalization brainmarks-brainlm`` is Brainmarks' own BrainLM transform
(brainmarks 0.1.1, ``models/brainlm.py``): unscale, pooled float32 quantiles of the training
split, robust scaling, linear resampling to 0.735 s, windows of 200, regions ordered by Y.
"""

import numpy as np
import pytest

from brainlm.data import InputOptions, StoreOptions, open_source, write_store
from brainlm.data.brainmarks import BRAINMARKS_INDEX, BRAINMARKS_SPLIT

pytest.importorskip("datasets")
torch = pytest.importorskip("torch")

from brainmarks_synth import brainmarks_brainlm_transform, brainmarks_samples, write_brainmarks_dataset  # noqa: E402


def _store(root, out, **options):
    options = StoreOptions(window=100, dtype="float32", progress=False, **options)
    return write_store(open_source([root], InputOptions(kind="brainmarks")), out, options)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    samples = brainmarks_samples((6, 3, 3), length=220)
    return write_brainmarks_dataset(tmp_path_factory.mktemp("eval") / "toy.a424.arrow", samples), samples


def test_prepare_keeps_every_sample_every_split_and_the_flat_region(dataset, tmp_path):
    root, samples = dataset
    store = _store(root, tmp_path / "store")
    table = store.recordings
    assert len(table) == sum(len(rows) for rows in samples.values())  # nothing dropped
    for split, rows in samples.items():
        got = table[table["split"] == split]
        assert sorted(got["subject_id"]) == sorted(r["sub"] for r in rows)  # its own split, not ours
        assert (got[BRAINMARKS_SPLIT] == split).all()
        assert sorted(got[BRAINMARKS_INDEX].astype(int)) == list(range(len(rows)))
    flat = store.manifest["flat_regions"]
    assert [f["regions"] for f in flat["recordings"]] == [[7]] and "zeros" in flat["note"]
    flat_id = flat["recordings"][0]["recording_id"]
    assert table.set_index("recording_id").loc[flat_id, "subject_id"] == samples["train"][1]["sub"]
    assert store.manifest["split_source"]["phenotype"] == BRAINMARKS_SPLIT
    assert store.manifest["split_source"]["subjects_in_several_splits"] == []

    resplit = _store(root, tmp_path / "resplit", resplit=True, split=(0.5, 0.25, 0.25))
    assert "split_source" not in resplit.manifest
    moved = (resplit.recordings.set_index("subject_id")["split"]
             != resplit.recordings.set_index("subject_id")[BRAINMARKS_SPLIT]).sum()
    assert moved > 0  # --resplit makes our own subject split


@pytest.fixture(scope="module")
def brainmarks_transform(tmp_path_factory):
    return brainmarks_brainlm_transform(tmp_path_factory.mktemp("brainmarks"))


def _brainmarks_brainlm_input(transform_class, train, sample, window=200):
    """Brainmarks' own BrainLM transform of ``sample``, fitted on ``train``: ``(W, 424, window)``
    float32 in its region order (by Y), and that order. Its division by 5.6430855 is left out (by 1)."""
    def loaded(row):
        return {k: torch.tensor(v, dtype=torch.float32) if isinstance(v, (np.ndarray, float)) else v
                for k, v in row.items()}

    transform = transform_class(num_timepoints=window, max_val_to_scale=1.0, repeat_channels=False)
    transform.fit([loaded(r) for r in train])
    return transform(loaded(sample))["bold"][:, 0], np.asarray(transform.reorder_indices)


@pytest.mark.parametrize("tr", [0.72, 2.0])
def test_brainmarks_brainlm_normalisation_is_brainmarks_transform(tr, tmp_path, brainmarks_transform):
    samples = brainmarks_samples((4, 2, 2), length=260, tr=tr, seed=3)
    root = write_brainmarks_dataset(tmp_path / "eval" / "toy.a424.arrow", samples)
    store = _store(root, tmp_path / "store", normalization="brainmarks-brainlm")
    assert store.normalization["method"] == "brainmarks-brainlm"
    table = store.recordings.reset_index(drop=True)
    for split, rows in samples.items():
        for k, sample in enumerate(rows):
            i = int(np.flatnonzero((table[BRAINMARKS_SPLIT] == split) & (table[BRAINMARKS_INDEX] == k))[0])
            expected, order = _brainmarks_brainlm_input(brainmarks_transform, samples["train"], sample)
            ours = store.get(i)  # (T', 424) in A424 label order, before the ViT-MAE's own scaling
            assert table.loc[i, "tr"] == pytest.approx(0.735 if tr == 2.0 else tr)
            assert len(ours) == (round(tr * 260 / 0.735) if tr == 2.0 else 260) == table.loc[i, "num_timepoints"]
            n = len(ours) // 200
            windows = ours[: n * 200].reshape(n, 200, -1).transpose(0, 2, 1)[:, order]
            np.testing.assert_array_equal(windows, expected.numpy())  # to the last bit

"""``brainlm benchmark --protocol brainmarks``: the model, the FC baseline and feature tables through
Brainmarks' protocol, on a store prepared from a Brainmarks-format dataset."""

import copy
import dataclasses
import json

import numpy as np
import pandas as pd
import pytest
import torch

from brainlm.cli import main
from brainlm.data import InputOptions, StoreOptions, open_source, write_store
from brainlm.downstream import embed, write_embeddings
from brainlm.pipelines.brainmarks import BrainmarksOptions, brainmarks_benchmark
from brainlm.errors import UserError
from brainlm.evaluate.brainmarks import LogisticProtocol, brainmarks_connectome
from brainlm.model import BrainLMForPretraining, brainlm_tiny

pytest.importorskip("datasets")

from brainmarks_synth import brainmarks_samples, write_brainmarks_dataset  # noqa: E402

FAST = dict(protocol="brainmarks", trials=0, engine="brainlm")
QUICK = LogisticProtocol(max_iter=50)  # the tests' features are separable: large C would run 1000 iterations


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bm")
    root = write_brainmarks_dataset(tmp / "eval" / "toy.a424.arrow", brainmarks_samples((16, 6, 8), length=120,
                                                                                         signal=1.0, seed=1))
    options = StoreOptions(window=50, dtype="float32", progress=False)
    stores = [write_store(open_source([root], InputOptions(kind="brainmarks")), tmp / name, options)
              for name, options in (("store", options), ("resplit", dataclasses.replace(options, resplit=True)))]
    torch.manual_seed(0)
    model = BrainLMForPretraining(brainlm_tiny(num_brain_voxels=424, num_timepoints_per_voxel=50,
                                               timepoint_patching_size=25, hidden_size=16, intermediate_size=32,
                                               decoder_hidden_size=16, decoder_intermediate_size=32)).eval()
    model.save_pretrained(tmp / "model")
    return tmp, stores, model


def test_model_and_fc_through_the_protocol_with_a_verdict(setup, capsys):
    tmp, (store, _), model = setup
    out = tmp / "out"
    assert main(["benchmark", str(tmp / "model"), str(store.path), "--out", str(out), "--protocol", "brainmarks",
                 "--target", "gender", "--trials", "1", "--engine", "brainlm", "--heads", "linear",
                 "--baselines", "autocorr", "--precision", "fp32"]) == 0
    report = (out / "report.md").read_text()
    assert "## Logistic probe" in report and "## Trained probe heads" in report and "## Verdict" in report
    assert 'class="verdict v-' in (out / "report.html").read_text()
    assert "BrainLM (cls, logistic)" in report
    table = pd.read_csv(out / "eval_table.csv")
    # the model, the baseline, the model at initialisation (a saved model: a fresh one, named as such), the head
    assert set(table["features"]) == {"brainlm:cls", "autocorr", "initial:cls", "brainlm:tokens/linear"}
    assert "fresh random initialisation" in report
    assert len(table[table["features"] == "autocorr"]) == 4  # fixed and one re-split, train and test rows
    results = json.loads((out / "results.json").read_text())
    verdict = results["verdict"]
    assert verdict["kind"] in ("wins", "loses", "level (within noise)") and verdict["unit"] == "test samples"
    assert verdict["num_subjects"] == 8 and verdict["baseline"] in (
        "lag-1 autocorrelation per region (logistic)", "the same model at initialisation (cls, logistic)")
    assert {r["splits"] for r in results["summary"]} == {"fixed", "random"}
    assert "balanced accuracy" in capsys.readouterr().out


def test_fc_baseline_is_brainmarks_connectome(setup):
    _, (store, _), _ = setup
    flat = store.manifest["flat_regions"]["recordings"][0]["recording_id"]
    x = store.get(flat)
    assert (x.std(0) == 0).sum() == 1
    # Brainmarks' Connectome.forward, in torch: centre, normalise over time, x^T x, upper triangle
    t = torch.from_numpy(x)[None]
    t = torch.nn.functional.normalize(t - t.mean(dim=1, keepdim=True), dim=1, eps=1e-6)
    conn = t.transpose(1, 2) @ t
    row, col = torch.triu_indices(424, 424, offset=1)
    expected = conn[:, row, col].numpy()
    np.testing.assert_allclose(brainmarks_connectome([x]), expected, atol=1e-5)
    assert np.isfinite(brainmarks_connectome([x])).all()


def _shuffled(store, seed):
    """The same store with its recordings table in another row order."""
    view = copy.copy(store)
    perm = np.random.default_rng(seed).permutation(len(store.recordings))
    view.recordings = store.recordings.iloc[perm].reset_index(drop=True)
    view._shard_of, view._row_of, view._readers = store._shard_of[perm], store._row_of[perm], {}
    return view


@pytest.mark.parametrize("which", ["kept", "resplit"])
def test_store_row_order_does_not_change_the_result(setup, which):
    _, (store, resplit), model = setup
    store = store if which == "kept" else resplit
    options = BrainmarksOptions(**FAST, baselines=(), representations=("cls", "patch"))
    a = brainmarks_benchmark(model, store, "sex", options, precision="fp32", protocol=QUICK)  # the target map
    b = brainmarks_benchmark(model, _shuffled(store, 1), "sex", options, precision="fp32", protocol=QUICK)
    for name in ("brainlm:cls", "brainlm:patch"):
        pd.testing.assert_frame_equal(a["results"][name].table, b["results"][name].table)
    if which == "kept":
        assert list(a["samples"]["split"].value_counts().sort_index()) == [8, 16, 6]  # Brainmarks' own splits


def test_feature_tables_and_bins(setup, tmp_path):
    _, (store, _), model = setup
    emb = embed(model, store, pooling="cls", windows="average", precision="fp32", progress=False)
    write_embeddings(emb, tmp_path / "cls.parquet")
    options = BrainmarksOptions(**FAST, baselines=(), features=(f"table={tmp_path / 'cls.parquet'}",))
    out = brainmarks_benchmark(model, store, "age_q", options, precision="fp32", protocol=QUICK)
    # the same embeddings read back from the table give the same numbers as computed in place
    pd.testing.assert_frame_equal(out["results"]["table"].table, out["results"]["brainlm:cls"].table)
    assert list(out["results"]["table"].labels) == [0.0, 1.0, 2.0]  # class ids stay classes: 3 of them
    with pytest.raises(UserError, match="needs two"):  # every age_q (0..2) falls in MMSE's lowest bin
        brainmarks_benchmark(None, store, "age_q", BrainmarksOptions(**FAST, baselines=("autocorr",), bins="adni_mmse"))


def test_bad_inputs(setup, tmp_path):
    tmp, (store, _), model = setup
    with pytest.raises(UserError, match="only with --protocol brainmarks"):
        BrainmarksOptions(heads=("attentive",))
    with pytest.raises(UserError, match="--bins 'deciles'"):
        BrainmarksOptions(protocol="brainmarks", bins="deciles")
    with pytest.raises(UserError, match="NAME=FILE"):
        BrainmarksOptions(protocol="brainmarks", features=("nofile",))
    with pytest.raises(UserError, match="no phenotype column 'iq'"):
        brainmarks_benchmark(None, store, "iq", BrainmarksOptions(**FAST))
    with pytest.raises(Exception, match="embedding table not found"):
        brainmarks_benchmark(None, store, "gender", BrainmarksOptions(**FAST, features=(f"x={tmp_path / 'none.parquet'}",)))
    assert main(["benchmark", "-", str(store.path), "--out", str(tmp_path / "o"), "--protocol", "brainmarks"]) == 2

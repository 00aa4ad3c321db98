"""What training added, told from what initialisation gave: a run keeps its model at step 0
(``RUN/init``), and network identification credits the trained model only against the stronger of
the best rival and that model."""

import numpy as np
import pandas as pd
import pytest
from _train_helpers import tiny_config
from analysis_synth import network_table, planted_store

from brainlm.analysis import NetworksOptions, run_networks
from brainlm.analysis.identify import identify_networks, network_verdict
from brainlm.downstream import load_initial, load_model
from brainlm.hub import INIT_FOLDER, INIT_RECORD, find_initial
from brainlm.io import read_json
from brainlm.train import pretrain

R = 24


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A planted store and two one-step runs of a tiny model: region tables initialised from the
    train split's covariance, and at random."""
    root = tmp_path_factory.mktemp("init")
    store, labels = planted_store(root / "store", num_regions=R, n_subjects=12, T=200, split=(8, 2, 2))
    network_table(root / "networks.tsv", labels)
    out = {"root": root, "store": store, "labels": labels}
    for init in ("connectivity", "normal"):
        config = tiny_config(root / init, data=str(store.path), window=20, max_steps=1, eval_every=1, save_every=1,
                             model_overrides=dict(timepoint_patching_size=5, mask_ratio=0.5, time_encoding_dropout=0.0,
                                                  learned_region_embedding=True),
                             region_embedding_init=init)
        out[init] = pretrain(config).run_dir
    return out


def test_a_run_keeps_its_model_before_any_step(runs):
    run = runs["connectivity"]
    folder, record = find_initial(run / "best")
    assert folder == run / INIT_FOLDER and record == read_json(run / INIT_FOLDER / INIT_RECORD)
    assert record["kind"] == "connectivity" and record["source"] is None
    assert find_initial(run / "checkpoints" / "step_00000001")[0] == folder
    assert find_initial(run)[0] == folder and find_initial(folder)[0] == folder
    # a model folder saved inside a run folder is not one of its checkpoints: its initialisation is unknown
    assert find_initial(run / "exported") == (None, {})
    init, trained = load_model(folder), load_model(run / "best")
    # the region table the covariance gave, before the step changed it
    before = init.encoder.region_embedding.detach()
    assert not torch_equal(before, trained.encoder.region_embedding.detach())
    assert (folder / "manifest.json").is_file()
    initial = load_initial(run / "best", trained)
    assert initial.kind == "connectivity" and "covariance" in initial.description
    assert torch_equal(initial.model.encoder.region_embedding.detach(), before)


def test_a_model_outside_a_run_is_compared_with_a_fresh_initialisation(runs, tmp_path):
    from brainlm import save_pretrained

    model = load_model(runs["normal"] / "best")
    save_pretrained(model, tmp_path / "saved")
    initial = load_initial(tmp_path / "saved", model, seed=0)
    assert initial.kind == "unknown" and "no training record" in initial.description
    assert type(initial.model) is type(model)


def torch_equal(a, b) -> bool:
    return bool((a == b).all())


def test_connectivity_initialised_model_is_not_credited_with_learning_networks(runs):
    """One training step: the region tables are the covariance the run was given. The trained
    model identifies the planted networks, but so does the same model at initialisation, and the
    verdict is against it, so no win is claimed for training."""
    root = runs["root"]
    res = run_networks(NetworksOptions(checkpoint=str(runs["connectivity"]), store=str(runs["store"].path),
                                       out=str(root / "networks_conn"), networks=str(root / "networks.tsv"),
                                       permutations=20, bootstrap=200, figures=False, progress=False, echo=False))
    scores = pd.DataFrame(res["scores"]).set_index(["features", "classifier"])
    init, model = scores.loc["initial"]["accuracy"].max(), scores.loc["model"]["accuracy"].max()
    # the initialisation alone knows the networks (4 networks: chance about 0.2)...
    assert init > 2 * scores.loc["initial"]["chance_accuracy"].max() and scores.loc["initial"]["p_accuracy"].min() < 0.05
    assert abs(model - init) < 0.15  # ...and one step adds nothing that the report could credit to training
    assert res["initialisation"]["kind"] == "connectivity"
    assert res["verdict"]["kind"] != "wins"
    report = (root / "networks_conn" / "report.md").read_text()
    assert "the same model at initialisation" in report and "region_embedding_init=connectivity" in report
    assert "same model at initialisation" in res["headline"][0]


def test_the_verdict_is_against_the_initialised_model_when_it_is_the_stronger():
    """Model and initial embeddings identical and informative, the rivals noise: against the best
    rival the model would win; against its initialisation it is level."""
    rng = np.random.default_rng(0)
    codes = np.repeat(np.arange(4), 12)
    informative = np.eye(4)[codes] * 3 + rng.normal(0, 0.3, (48, 4))
    features = {"model": informative, "initial": informative.copy(), "coordinates": rng.normal(size=(48, 3))}
    table, predictions = identify_networks(features, codes, permutations=0, bootstrap=300)
    verdict, best_model, best_rival, best_initial = network_verdict(table, predictions, codes, table.attrs["boot"])
    assert best_rival.features == "coordinates" and best_initial.features == "initial"
    assert verdict.baseline.startswith("the same model at initialisation") and verdict.outcome == "level (within noise)"
    without = table[table["features"] != "initial"]
    before, *_ = network_verdict(without, predictions, codes, table.attrs["boot"])
    assert before.outcome == "wins"  # what the report said before the initialised model stood beside it


def test_a_randomly_initialised_model_does_not_know_the_networks_at_step_0(runs):
    root = runs["root"]
    res = run_networks(NetworksOptions(checkpoint=str(runs["normal"]), store=str(runs["store"].path),
                                       out=str(root / "networks_normal"), networks=str(root / "networks.tsv"),
                                       permutations=20, bootstrap=200, figures=False, progress=False, echo=False))
    scores = pd.DataFrame(res["scores"]).set_index(["features", "classifier"])
    assert res["initialisation"]["kind"] == "normal"
    assert scores.loc["initial"]["p_accuracy"].min() > 0.05  # at chance: the covariance gave the other one its networks

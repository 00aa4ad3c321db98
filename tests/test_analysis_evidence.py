"""The analyses never claim more than their evidence, on planted data (tests/analysis_synth.py):
a perturbation response's size beside its shape, and only from a model fine-tuned to forecast;
enrichment only when the attention map differs from uniform; estimated networks without
one-region networks; scores over recordings that leave out a recording's own subject."""

from __future__ import annotations

import json

import numpy as np
import pytest

from analysis_synth import (
    forecast_run,
    network_table,
    planted_store,
    quiet_model,
    uniform_attention_model,
)
from downstream_synth import tiny_model
from brainlm import save_pretrained
from brainlm.analysis import AttentionOptions, PerturbOptions, resolve_networks, run_attention, run_perturb
from brainlm.errors import UserError

R = 24


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """12 subjects (6 train, 3 validation, 3 test) of the planted VAR; the planted networks as a
    table; a model with a uniform attention map, a random one, one whose response is 1e-4 of the
    random one's, and the random one fine-tuned to forecast for two steps."""
    root = tmp_path_factory.mktemp("evidence")
    store, labels = planted_store(root / "store", n_subjects=12, T=200, split=(6, 3, 3))
    network_table(root / "networks.tsv", labels)
    save_pretrained(uniform_attention_model(R), root / "uniform")
    save_pretrained(tiny_model(num_regions=R, window=20), root / "tiny")
    save_pretrained(quiet_model(R, scale=1e-4), root / "quiet")
    run = forecast_run(store.path, root / "tiny", root / "forecast_run")
    return {"root": root, "store": store, "labels": labels, "networks": str(root / "networks.tsv"), "run": run}


def options(cls, planted, name, model, **kw):
    root = planted["root"]
    kw = {"networks": planted["networks"], "bootstrap": 200, "progress": False, "echo": False, "figures": False, **kw}
    return cls(checkpoint=str(model if "/" in str(model) else root / model), store=str(root / "store"),
               out=str(root / name), **kw)


def run_cli(*args):
    from brainlm.cli import main

    return main([str(a) for a in args])


def refused(capsys, out, code: int, command: str) -> str:
    """The error line of a refused command, checked: exit 2, one line, nothing written."""
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith(f"brainlm {command}: error: "), err
    assert not out.exists()
    return err


# --------------------------------------------------------------------------- perturb


def test_perturb_reports_how_large_the_response_is_beside_its_correlation(planted):
    res = run_perturb(options(PerturbOptions, planted, "perturb_quiet", "quiet", network="net1",
                              allow_untrained_forecaster=True))
    every = {row["cells"]: row for row in res["agreement"]}["every region"]
    # The model's response is 1e-4 of a random model's: far below the VAR's, with an interval.
    assert every["amplitude_ratio"] < 1e-2 and every["amplitude_ratio_ci_high"] < 1e-2
    assert 0 < every["amplitude_ratio_ci_low"] <= every["amplitude_ratio"] <= every["amplitude_ratio_ci_high"]
    assert "x the VAR's" in res["headline"][0] and "amplitude" in res["headline"][0]
    report = (planted["root"] / "perturb_quiet" / "report.md").read_text()
    assert "amplitude_ratio" in report and "not recorded as fine-tuned to forecast" in report


def test_perturb_holds_out_every_subject_outside_the_train_split_and_counts_them(planted):
    res = run_perturb(options(PerturbOptions, planted, "perturb_run", planted["run"], network="net1"))
    # validation and test: 6 subjects of 10 windows each, not the test split's 3
    assert res["subjects"] == 6 and res["windows"] == 60 and res["held_out"]
    assert "60 held-out windows" in res["headline"][0] and "of 6 subjects" in res["headline"][0]
    assert "fine-tuned to forecast" in res["model_training"] and "train_mask_scheme forecast" in res["model_training"]
    assert res["verdict"]["num_subjects"] == 6


def test_perturb_never_calls_the_train_split_held_out(planted):
    res = run_perturb(options(PerturbOptions, planted, "perturb_train", planted["run"], network="net1", split="train"))
    assert not res["held_out"] and "held-out" not in " ".join(res["headline"])
    assert "windows of the train split (not held out" in res["headline"][0]


def test_perturb_refuses_a_model_not_fine_tuned_to_forecast(planted, tmp_path, capsys):
    store, out = planted["root"] / "store", tmp_path / "out"
    code = run_cli("perturb", planted["root"] / "tiny", store, "--out", out, "--network", "net1",
                   "--networks", planted["networks"])
    err = refused(capsys, out, code, "perturb")
    assert str(planted["root"] / "tiny") in err and "--allow-untrained-forecaster" in err
    assert "not a model fine-tuned to forecast" in err


@pytest.mark.parametrize("amplitude", ["1e30", "0", "-101", "nan", "inf"])
def test_perturb_refuses_an_amplitude_out_of_range(planted, tmp_path, capsys, amplitude):
    out = tmp_path / "out"
    code = run_cli("perturb", planted["run"], planted["root"] / "store", "--out", out, "--network", "net1",
                   "--networks", planted["networks"], f"--amplitude={amplitude}")
    assert "--amplitude" in refused(capsys, out, code, "perturb")


def test_perturb_reports_no_number_for_forecasts_that_are_not_finite(planted, tmp_path):
    import torch

    model = quiet_model(R)
    with torch.no_grad():
        model.decoder.pred2.bias.fill_(float("nan"))
    save_pretrained(model, tmp_path / "broken")
    with pytest.raises(UserError, match="forecasts hold NaN or inf values"):
        run_perturb(options(PerturbOptions, planted, "perturb_broken", tmp_path / "broken", network="net1",
                            allow_untrained_forecaster=True))
    assert not (planted["root"] / "perturb_broken").exists()


def test_response_agreement_has_no_correlation_for_a_model_that_does_not_respond():
    from brainlm.analysis.perturb import PerturbationResult, _agreement_text, response_agreement

    rng = np.random.default_rng(0)
    var = rng.normal(size=(40, 6, 3))
    zero = np.zeros_like(var)
    result = PerturbationResult(zero, var, zero, zero, zero, np.repeat(np.arange(8), 5).astype(str))
    table = response_agreement(result, np.array([0]), bootstrap=50)
    assert np.isnan(table["correlation"]).all() and (table["amplitude_ratio"] == 0).all()
    text = _agreement_text(next(table.itertuples()))
    assert "nan" not in text and "no correlation" in text and "amplitude 0 [0, 0] x the VAR's" in text


# --------------------------------------------------------------------------- attention


def test_attention_names_no_enriched_network_for_a_uniform_map(planted):
    res = run_attention(options(AttentionOptions, planted, "attention_uniform", "uniform", permutations=200))
    line = res["headline"][0]
    assert "not distinguishable from uniform" in line and "most enriched" not in line and "nan" not in line
    assert res["uniformity"]["most_enriched"] is None and res["uniformity"]["networks"]["p"] > 0.05
    assert res["uniformity"]["subjects"] == 12
    saved = json.loads((planted["root"] / "attention_uniform" / "results.json").read_text())["uniformity"]
    assert saved["most_enriched"] is None and saved["networks"]["total_variation"] == 0.0


def test_attention_names_the_most_enriched_network_when_the_map_differs_from_uniform(planted):
    res = run_attention(options(AttentionOptions, planted, "attention_tiny", "tiny", permutations=200))
    u = res["uniformity"]
    assert u["networks"]["p"] < 0.05 and u["most_enriched"] in {f"net{k}" for k in range(4)}
    assert f"most enriched network {u['most_enriched']}" in res["headline"][0]
    enrichment = {r["network"]: r["enrichment"] for r in res["networks_attention"]}
    assert enrichment[u["most_enriched"]] == max(enrichment.values())


def test_distance_test_finds_a_consistent_deviation_and_not_noise():
    from brainlm.analysis.stats import distance_test

    rng = np.random.default_rng(0)
    expected = np.full(5, 0.2)
    noise_p = [distance_test(rng.dirichlet(np.full(5, 50.0), size=12), expected, permutations=200, seed=s)[1]
               for s in range(40)]
    assert np.mean(np.array(noise_p) < 0.05) <= 0.15  # about 5% under the null
    biased = rng.dirichlet(np.array([80.0, 50, 50, 50, 20]), size=12)
    distance, p = distance_test(biased, expected, permutations=200)
    assert p < 0.01 and 0.05 < distance < 0.25
    # Two subjects have two distinct sign patterns up to a global flip: p can never be small.
    assert distance_test(biased[:2], expected, permutations=200)[1] >= 0.45
    # Rounding that is the same in every subject is not a deviation.
    assert distance_test(np.full((12, 5), 0.2 + 1e-8), expected)[1] == 1.0


# --------------------------------------------------------------------------- estimated networks


@pytest.mark.parametrize("asked", [7, 20])
def test_estimated_networks_never_have_one_region_and_say_how_many_were_kept(planted, asked):
    from sklearn.metrics import adjusted_rand_score

    nets = resolve_networks(None, planted["store"], num_networks=asked, progress=False)
    assert nets.data_derived and nets.sizes().min() >= 2
    # On the planted data the rule finds the four planted networks.
    assert nets.num_networks == 4 and adjusted_rand_score(planted["labels"], nets.codes) == 1.0
    assert f"largest K up to --num-networks {asked}" in nets.note() and "K = 4" in nets.note()


def test_networks_too_small_are_refused_naming_the_flag_that_made_them(planted):
    from brainlm.analysis import estimate_networks
    from brainlm.analysis.networks import Networks
    from brainlm.downstream import open_recordings

    with pytest.raises(UserError, match="--num-networks 7: .* every K from 7 down to 2; give the networks with "
                                        "--networks"):
        estimate_networks(open_recordings(planted["store"], "train"), 7, min_regions=13, progress=False)
    labels = ("a",) + ("b",) * 5
    with pytest.raises(UserError, match=r"^--num-networks: networks a \(1\) have fewer than 2 regions"):
        Networks(labels, ("a", "b"), "estimated", data_derived=True).require(2, "this")
    with pytest.raises(UserError, match=r"^--networks: networks a \(1\)"):
        Networks(labels, ("a", "b"), "a table").require(2, "this")


def test_attention_contrast_refuses_a_one_region_network(planted, tmp_path, capsys):
    import pandas as pd

    names = planted["store"].region_names
    pd.DataFrame({"region": names, "network": ["b"] + ["a"] * (R - 1)}).to_csv(tmp_path / "single.csv", index=False)
    out = tmp_path / "out"
    code = run_cli("attention", planted["root"] / "tiny", planted["root"] / "store", "--out", out, "--group", "group",
                   "--networks", tmp_path / "single.csv")
    err = refused(capsys, out, code, "attention")
    assert "--networks: networks b (1) have fewer than 2 regions" in err


# --------------------------------------------------------------------------- latent


def _silhouette_by_hand(X, labels, subjects):
    """The definition, one recording at a time."""
    out = []
    for i in range(len(X)):
        other = [j for j in range(len(X)) if subjects[j] != subjects[i]]
        d = {j: float(np.sqrt(((X[i] - X[j]) ** 2).sum())) for j in other}
        a = np.mean([d[j] for j in other if labels[j] == labels[i]])
        b = min(np.mean([d[j] for j in other if labels[j] == lab]) for lab in set(labels) - {labels[i]})
        out.append((b - a) / max(a, b))
    return np.array(out)


def test_silhouette_leaves_out_a_recordings_own_subject():
    from sklearn.metrics import silhouette_samples

    from brainlm.analysis.latent import label_scores

    rng = np.random.default_rng(0)
    subjects = np.repeat(np.arange(10), 3).astype(str)  # three recordings per subject, close together
    labels = np.repeat(np.array(list("ab") * 5), 3)  # a label unrelated to the data
    X = np.repeat(rng.normal(size=(10, 4)) * 3, 3, axis=0) + 0.1 * rng.normal(size=(30, 4))
    ours = label_scores(X, labels, subjects, k=3)["silhouette"].to_numpy()
    np.testing.assert_allclose(ours, _silhouette_by_hand(X, labels, subjects), atol=1e-12)
    naive = silhouette_samples(X, labels)
    # A subject's own recordings made the unrelated label look clustered; left out, it does not.
    assert naive.mean() > 0.08 and abs(ours.mean()) < 0.05
    # One recording per subject: scikit-learn's silhouette.
    from brainlm.analysis.latent import subject_silhouette

    one = np.arange(0, 30, 3)
    np.testing.assert_allclose(subject_silhouette(X[one], labels[one], subjects[one]),
                               silhouette_samples(X[one], labels[one]), atol=1e-12)

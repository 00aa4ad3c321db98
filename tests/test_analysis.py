"""The analyses (brainlm.analysis) on planted data: networks of regions, attention contrasts,
network identification, latent maps and in-silico perturbation, each beside its rival."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from analysis_synth import (
    amplitude_attention_model,
    coupling,
    network_table,
    planted_store,
)
from downstream_synth import tiny_model
from brainlm import save_pretrained
from brainlm.analysis import (
    AttentionOptions,
    LatentOptions,
    NetworksOptions,
    Perturbation,
    PerturbOptions,
    perturb_windows,
    quick_analyses,
    run_attention,
    run_latent,
    run_networks,
    run_perturb,
)
from brainlm.evaluate.baselines import ForecastBaselines
from brainlm.evaluate.verdict import OUTCOMES

R = 24


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """24 subjects (12 patients with a stronger coupling in network 0), 30 windows each; the
    planted networks as a table; a model whose attention follows amplitude; a random tiny model."""
    root = tmp_path_factory.mktemp("planted")
    store, labels = planted_store(root / "store", n_subjects=24, T=600, split=(14, 5, 5))
    network_table(root / "networks.tsv", labels)
    save_pretrained(amplitude_attention_model(R, strength=0.5), root / "amplitude")
    save_pretrained(tiny_model(num_regions=R, window=20), root / "tiny")
    return {"root": root, "store": store, "labels": labels, "networks": str(root / "networks.tsv")}


def options(cls, planted, name, model="tiny", **kw):
    root = planted["root"]
    kw = {"networks": planted["networks"], "bootstrap": 200, "progress": False, "echo": False, **kw}
    return cls(checkpoint=str(root / model), store=str(root / "store"), out=str(root / name), **kw)


def planted_network(planted) -> str:
    return f"net{0}"  # the table names network k "net<k>"; network 0 is the boosted one


# --------------------------------------------------------------------------- attention


@pytest.fixture(scope="module")
def attention_group(planted):
    return run_attention(options(AttentionOptions, planted, "attention_group", "amplitude", group="group", layer=0))


def test_attention_contrast_finds_the_planted_network_and_says_amplitude_explains_it(planted, attention_group):
    rows = {r["network"]: r for r in attention_group["contrast"]["per_network"]}
    net0 = rows[planted_network(planted)]
    # The rivals find the planted coupling: stronger within-network FC and larger variance.
    assert net0["connectivity q"] < 0.05 and net0["connectivity d"] > 0
    assert net0["variance q"] < 0.05 and net0["variance d"] > 0
    # The model's attention follows amplitude, so it finds the network too, and the report says
    # that amplitude explains it: nothing is left once variance and autocorrelation are removed.
    assert net0["attention q"] < 0.05 and net0["attention d"] > 0
    assert net0["attention_adjusted q"] >= 0.05
    assert "amplitude explains it" in net0["reading"]
    assert planted_network(planted) in attention_group["contrast"]["explained_by_amplitude"]
    # Attention sums to 1: what network 0 gains the others lose, and that too is amplitude.
    assert all(r["reading"] != "attention differs beyond what variance and autocorrelation explain"
               for r in rows.values())
    assert attention_group["contrast"]["verdict"]["kind"] in OUTCOMES
    assert attention_group["contrast"]["design"] == "between"
    # The attention map follows variance across regions, and the report says so.
    assert attention_group["map_correlations"]["variance"]["ci_low"] > 0


def test_attention_writes_its_report_tables_and_figures(planted, attention_group):
    out = planted["root"] / "attention_group"
    for name in ("report.md", "results.json", "networks.tsv", "attention_regions.csv", "attention_networks.csv",
                 "attention_recordings.csv", "attention_contrasts.csv", "attention_map.png", "attention_networks.png",
                 "attention_contrast_map.png", "attention_contrast_networks.png"):
        assert (out / name).is_file(), name
    report = (out / "report.md").read_text()
    assert "CLS attention vs the strongest baseline" in report and "](attention_contrast_map.png)" in report
    recordings = pd.read_csv(out / "attention_recordings.csv")
    assert recordings.shape == (24, 2 + R)
    np.testing.assert_allclose(recordings.iloc[:, 2:].sum(axis=1), 1.0, atol=1e-4)
    assert json.loads((out / "results.json").read_text())["windows"] == 24 * 30
    regions = pd.read_csv(out / "attention_regions.csv")
    assert (regions["ci_low"] <= regions["attention"]).all() and (regions["attention"] <= regions["ci_high"]).all()


def test_attention_null_grouping_finds_nothing(planted):
    res = run_attention(options(AttentionOptions, planted, "attention_null", "amplitude", group="null", layer=0,
                                figures=False))
    assert res["contrast"]["networks_q05"] == []
    assert all(r["connectivity q"] >= 0.05 for r in res["contrast"]["per_network"])
    assert not list((planted["root"] / "attention_null").glob("*.png"))


def test_within_subject_contrast_flips_signs_of_subjects(tmp_path):
    """A state column that varies within subjects: each subject's difference, sign-flip permutations."""
    from brainlm.analysis.stats import group_contrast, resolve_groups

    rng = np.random.default_rng(0)
    subjects = np.repeat([f"s{i}" for i in range(16)], 2)
    state = np.tile(["rest", "task"], 16)
    values = 0.5 * rng.normal(size=(32, 3)) + np.where(state == "task", 2.0, 0.0)[:, None] * np.array([1.0, 0.0, 0.0])
    values += np.repeat(rng.normal(size=(16, 3)) * 3, 2, axis=0)  # large subject effects cancel in the differences
    groups = resolve_groups(state, subjects, "state")
    assert groups.design == "within" and groups.levels == ("rest", "task")
    table = group_contrast(values, groups, ["a", "b", "c"], permutations=2000, bootstrap=200)
    assert table["q"].iloc[0] < 0.05 and table["p"].iloc[0] == table["p"].min()
    assert abs(table["effect_size"].iloc[0]) > 2 * abs(table["effect_size"].iloc[1:]).max()
    np.testing.assert_allclose(table["difference"].iloc[0], (values[1::2, 0] - values[::2, 0]).mean())


def test_groups_split_numbers_at_the_median_and_choose_levels():
    from brainlm.analysis.stats import resolve_groups

    subjects = [f"s{i}" for i in range(6)]
    g = resolve_groups([1.0, 2.0, 3.0, 4.0, 5.0, 6.0], subjects, "score")
    assert g.levels == ("low", "high") and g.level.tolist() == [0, 0, 0, 1, 1, 1] and "median 3.5" in g.how
    g = resolve_groups(list("abcabc"), subjects, "site", ("a", "c"))
    assert g.level.tolist() == [0, -1, 1, 0, -1, 1]
    with pytest.raises(ValueError, match="has 3 levels .* choose two with --levels"):
        resolve_groups(list("abcabc"), subjects, "site")
    with pytest.raises(ValueError, match="--levels a,z: 'site' has no level 'z'"):
        resolve_groups(list("abcabc"), subjects, "site", ("a", "z"))


# --------------------------------------------------------------------------- networks


def test_networks_fc_profiles_recover_the_planted_networks_and_the_model_is_scored(planted):
    res = run_networks(options(NetworksOptions, planted, "networks", permutations=20, figures=False))
    scores = pd.DataFrame(res["scores"]).set_index(["features", "classifier"])
    fc = scores.loc[("fc_profile", "knn")]
    assert fc["accuracy"] >= 0.9 and fc["p_accuracy"] < 0.05
    assert 0.1 < fc["chance_accuracy"] < 0.45  # 4 networks of 6 regions
    model = scores.loc["model"]
    assert len(model) == 2 and model["accuracy"].between(0, 1).all() and model["p_accuracy"].between(0, 1).all()
    assert res["verdict"]["unit"] == "regions" and res["verdict"]["num_subjects"] == R
    assert res["verdict"]["kind"] in OUTCOMES
    predictions = pd.read_csv(planted["root"] / "networks" / "networks_predictions.csv")
    assert (predictions["network"] == [f"net{k}" for k in planted["labels"]]).all()


def test_estimated_networks_are_the_planted_ones_and_marked_data_derived(planted):
    from sklearn.metrics import adjusted_rand_score

    from brainlm.analysis import resolve_networks

    nets = resolve_networks(None, planted["store"], num_networks=4, progress=False)
    assert nets.data_derived and "Data-derived" in nets.note() and "training split" in nets.source
    assert adjusted_rand_score(planted["labels"], nets.codes) == 1.0


# --------------------------------------------------------------------------- latent


def test_latent_scores_every_label_beside_fc(planted):
    res = run_latent(options(LatentOptions, planted, "latent", color=("group", "score"), umap=False))
    scores = pd.DataFrame(res["scores"])
    assert set(scores["column"]) == {"group", "score"} and set(scores["space"]) == {"model", "initial", "FC", "autocorrelation"}
    fc = scores[(scores["column"] == "group") & (scores["space"] == "FC")]
    assert (fc["purity"] > fc["chance"] + 0.15).all()  # FC separates the planted groups
    assert set(res["verdicts"]) == {"group", "score"}
    out = planted["root"] / "latent"
    coords = pd.read_csv(out / "latent_coordinates.csv")
    assert {"model_PCA_1", "FC_PCA_2"} <= set(coords.columns) and not any("UMAP" in c for c in coords.columns)
    assert (out / "latent_maps.png").is_file() and (out / "latent_regions.png").is_file()
    assert res["region_purity"]["fc_profile"] > 0.9


def test_knn_purity_ignores_a_subjects_own_recordings():
    from brainlm.analysis import knn_purity

    X = np.array([[0.0], [0.1], [5.0], [5.1]])
    # Each subject's two recordings are close, but only other subjects count.
    purity, chance = knn_purity(X, np.array(["a", "a", "b", "b"]), np.array(["s1", "s1", "s2", "s2"]), 1)
    assert purity.tolist() == [0.0, 0.0, 0.0, 0.0] and chance.tolist() == [0.0, 0.0, 0.0, 0.0]


def test_two_d_maps_without_umap(monkeypatch):
    import builtins

    from brainlm.analysis.latent import two_d_maps

    real = builtins.__import__

    def no_umap(name, *args, **kwargs):
        if name == "umap":
            raise ImportError("no umap")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_umap)
    maps, note = two_d_maps(np.random.default_rng(0).normal(size=(10, 5)))
    assert set(maps) == {"PCA"} and maps["PCA"].shape == (10, 2) and "umap-learn is not installed" in note


@pytest.mark.slow
def test_two_d_maps_with_umap():
    pytest.importorskip("umap")
    from brainlm.analysis.latent import two_d_maps

    maps, note = two_d_maps(np.random.default_rng(0).normal(size=(20, 5)))
    assert maps["UMAP"].shape == (20, 2) and "umap-learn" in note


# --------------------------------------------------------------------------- perturbation


def test_var_response_is_the_true_systems_and_the_models_agreement_is_reported(planted):
    store, labels = planted["store"], planted["labels"]
    train = [store.get(int(i)) for i in store.split_index("train") if store.recordings["group"].iloc[i] == "control"]
    baselines = ForecastBaselines(order=3).fit(train)
    test = [store.get(int(i)) for i in store.split_index("test") if store.recordings["group"].iloc[i] == "control"]
    windows = np.concatenate([x[: 600].reshape(30, 20, R).transpose(0, 2, 1) for x in test])
    regions = np.flatnonzero(labels == 2)[:1]
    result = perturb_windows(tiny_model(num_regions=R, window=20), baselines, windows, store.coords,
                             np.zeros(len(windows)), Perturbation(regions, 2.0), 5)
    A = coupling(labels)  # the controls' system
    delta = np.zeros(R)
    delta[regions] = 1.0
    for h in range(1, 6):
        truth = np.linalg.matrix_power(A, h) @ delta
        assert np.corrcoef(result.var_response.mean(0)[:, h - 1], truth)[0, 1] > 0.9, h
    assert np.isfinite(result.model_response).all() and result.model_response.shape == (len(windows), R, 5)


def test_perturb_reports_the_agreement_and_the_verdict(planted):
    res = run_perturb(options(PerturbOptions, planted, "perturb", network="net1", kind="step", duration=3,
                              split="test", allow_untrained_forecaster=True))
    agreement = pd.DataFrame(res["agreement"]).set_index("cells")
    assert set(agreement.index) == {"every region", "unperturbed regions"}
    assert np.isfinite(agreement["correlation"]).all()
    assert res["perturbation"]["regions"] == [f"r{r:03d}" for r in np.flatnonzero(planted["labels"] == 1)]
    assert res["verdict"]["kind"] in OUTCOMES and res["windows"] == 5 * 30
    response = pd.read_csv(planted["root"] / "perturb" / "perturb_response.csv")
    assert len(response) == R * 5 and response["perturbed"].sum() == 6 * 5
    assert (planted["root"] / "perturb" / "perturb_map.png").is_file()
    assert (agreement["amplitude_ratio"] > 0).all() and res["subjects"] == 5 and res["held_out"]


# --------------------------------------------------------------------------- both model kinds


@pytest.fixture(scope="module")
def a424(tmp_path_factory):
    """A 424-region store (the released ViT-MAE models know only A424) and a small random ViT-MAE."""
    pytest.importorskip("transformers")
    from analysis_synth import tiny_vitmae

    root = tmp_path_factory.mktemp("a424")
    store, labels = planted_store(root / "store", num_regions=424, n_subjects=6, T=200, window=200, split=(4, 1, 1))
    network_table(root / "networks.tsv", labels)
    tiny_vitmae(root / "vit")
    return {"root": root, "store": store, "labels": labels, "networks": str(root / "networks.tsv")}


def test_vitmae_runs_through_attention_networks_and_latent(a424):
    kw = dict(model="vit", figures=False)
    att = run_attention(options(AttentionOptions, a424, "attention", group="group", permutations=50, **kw))
    attention = pd.read_csv(a424["root"] / "attention" / "attention_recordings.csv")
    assert attention.shape == (6, 2 + 424)
    np.testing.assert_allclose(attention.iloc[:, 2:].sum(axis=1), 1.0, atol=1e-4)
    assert att["contrast"]["verdict"]["kind"] in OUTCOMES
    net = run_networks(options(NetworksOptions, a424, "networks", permutations=3, **kw))
    assert {r["features"] for r in net["scores"]} == {"model", "initial", "fc_profile", "signal", "coordinates"}
    lat = run_latent(options(LatentOptions, a424, "latent", color=("group",), umap=False, **kw))
    assert {r["space"] for r in lat["scores"]} == {"model", "initial", "FC", "autocorrelation"} and "region_purity" in lat


# --------------------------------------------------------------------------- the demo's call


def test_quick_analyses_print_each_beside_its_rival(tmp_path):
    from analysis_synth import forecast_run

    store, _ = planted_store(tmp_path / "store", n_subjects=8, T=100, split=(4, 2, 2))
    save_pretrained(tiny_model(num_regions=R, window=20), tmp_path / "tiny")
    forecaster = forecast_run(store.path, tmp_path / "tiny", tmp_path / "forecast_run")
    lines = quick_analyses(tmp_path / "tiny", store.path, tmp_path / "quick", forecast_model=forecaster,
                           figures=False, permutations=5)
    text = "\n".join(lines)
    for words in ("attention (the last encoder layer)", "attention contrast, group", "vs the strongest baseline (",
                  "networks:", "latent, group", "perturb:", "reports:"):
        assert words in text, words
    assert (tmp_path / "quick" / "perturb" / "report.md").is_file()
    # No bundled grouping fits these regions: networks are estimated, and every report says so.
    assert "Data-derived" in (tmp_path / "quick" / "networks" / "report.md").read_text()


# --------------------------------------------------------------------------- signals and networks


def test_signals_are_the_plain_statistics():
    from brainlm.analysis.signals import (
        GroupConnectivity,
        correlation_matrix,
        fc_profiles,
        region_statistics,
        within_network_connectivity,
    )

    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 6))
    x[:, 1] += x[:, 0]
    corr = correlation_matrix(x)
    np.testing.assert_allclose(corr, np.corrcoef(x.T), atol=1e-6)
    stats = region_statistics(x)
    xc = x - x.mean(0)
    np.testing.assert_allclose(stats, [x.var(0), (xc[1:] * xc[:-1]).sum(0) / (xc ** 2).sum(0)], atol=1e-6)
    within = within_network_connectivity(corr, np.array([0, 0, 1, 1, 1, 2]), 3)
    np.testing.assert_allclose(within[:2], [corr[0, 1], corr[2:5, 2:5][np.triu_indices(3, 1)].mean()])
    assert np.isnan(within[2])  # one region: no pair
    group = GroupConnectivity()
    group.add(corr)
    group.add(np.corrcoef(rng.normal(size=(300, 6)).T))
    assert np.allclose(np.diag(group.matrix()), 1) and np.allclose(np.diag(fc_profiles(group.matrix())), 0)


def test_network_tables_by_index_or_name(tmp_path, planted):
    from brainlm.analysis import read_network_table

    names = planted["store"].region_names
    network_table(tmp_path / "by_name.tsv", planted["labels"], by="name")
    by_name = read_network_table(tmp_path / "by_name.tsv", names)
    by_index = read_network_table(planted["networks"], names)
    assert by_name.labels == by_index.labels and by_name.names == ("net" + str(planted["labels"][0]),) + tuple(
        n for n in by_name.names[1:])
    assert not by_name.data_derived and by_name.sizes().tolist() == [6, 6, 6, 6]
    table = by_index.table(names)
    table.to_csv(tmp_path / "again.csv", index=False)
    assert read_network_table(tmp_path / "again.csv", names).labels == by_index.labels


def test_network_label_image_gives_each_parcel_its_majority_network(tmp_path):
    import nibabel as nib

    from brainlm.analysis import networks_from_image

    parcels = np.zeros((4, 4, 2), dtype=np.int16)
    parcels[:2, :, 0], parcels[2:, :, 0], parcels[:, :2, 1], parcels[:, 2:, 1] = 1, 2, 3, 5  # 4 parcels
    nets = np.zeros_like(parcels)
    nets[:, :, 0] = 7  # parcels 1 and 2: network 7
    nets[0, 0, 0] = 9  # one voxel of parcel 1 elsewhere: the majority still wins
    nets[:, :2, 1] = 9  # parcel 3: network 9; parcel 5: nothing
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    nib.save(nib.Nifti1Image(parcels, affine), tmp_path / "atlas.nii.gz")
    nib.save(nib.Nifti1Image(nets, affine), tmp_path / "nets.nii.gz")
    found = networks_from_image(tmp_path / "nets.nii.gz", tmp_path / "atlas.nii.gz", 4, ("default", "visual"))
    assert found.labels == ("default", "default", "visual", "unassigned")
    assert found.names == ("default", "visual", "unassigned")
    nib.save(nib.Nifti1Image(nets, np.diag([3.0, 3.0, 3.0, 1.0])), tmp_path / "other_grid.nii.gz")
    with pytest.raises(ValueError, match="on another grid than the atlas"):
        networks_from_image(tmp_path / "other_grid.nii.gz", tmp_path / "atlas.nii.gz", 4)
    with pytest.raises(ValueError, match="--network-names gives 1 names but .* has 2 network labels"):
        networks_from_image(tmp_path / "nets.nii.gz", tmp_path / "atlas.nii.gz", 4, ("default",))
    with pytest.raises(ValueError, match="4 parcels, but the store has 5 regions"):
        networks_from_image(tmp_path / "nets.nii.gz", tmp_path / "atlas.nii.gz", 5)


def test_the_atlas_image_of_a_store(tmp_path):
    from types import SimpleNamespace

    from brainlm.analysis.networks import store_atlas_image

    a424 = SimpleNamespace(path=tmp_path, atlas="A424", manifest={"options": {"atlas": "A424"}})
    assert store_atlas_image(a424).name == "A424+2mm.nii.gz" and store_atlas_image(a424).is_file()
    (tmp_path / "mine.nii.gz").write_bytes(b"")
    custom = SimpleNamespace(path=tmp_path, atlas="mine", manifest={"options": {"atlas": str(tmp_path / "mine.nii.gz")}})
    assert store_atlas_image(custom) == tmp_path / "mine.nii.gz"
    assert store_atlas_image(a424, tmp_path / "mine.nii.gz") == tmp_path / "mine.nii.gz"
    with pytest.raises(FileNotFoundError, match="--atlas-image .*nope.nii.gz: file not found"):
        store_atlas_image(a424, tmp_path / "nope.nii.gz")
    # a store moved together with its atlas: the path recorded relative to the store is found
    moved = tmp_path / "elsewhere"
    (moved / "store").mkdir(parents=True)
    (tmp_path / "mine.nii.gz").rename(moved / "mine.nii.gz")
    travelled = SimpleNamespace(path=moved / "store", atlas="mine",
                                manifest={"options": {"atlas": str(tmp_path / "mine.nii.gz")},
                                          "relative_options": {"atlas": "../mine.nii.gz"}})
    assert store_atlas_image(travelled) == moved / "store" / "../mine.nii.gz"
    with pytest.raises(ValueError, match="does not say which atlas label image"):
        store_atlas_image(custom)  # neither path exists any more


def test_bundled_aal2_systems_cover_the_demo_regions():
    from brainlm.analysis import read_network_table
    from brainlm.data import aal2_94_regions
    from brainlm.data.atlas import bundled_path

    _, names = aal2_94_regions()
    systems = read_network_table(bundled_path("aal2_94_systems.tsv"), names)
    assert len(systems.labels) == 94 and systems.num_networks == 8
    assert dict(zip(systems.names, systems.sizes())) == {
        "sensorimotor": 10, "frontal": 12, "orbitofrontal": 14, "limbic": 14, "occipital": 14, "parietal": 10,
        "subcortical": 8, "temporal": 12}
    # Left and right homologues share their system.
    assert all(systems.labels[i] == systems.labels[i + 1] for i in range(0, 94, 2))


# --------------------------------------------------------------------------- bad input


def run_cli(*args):
    from brainlm.cli import main

    return main([str(a) for a in args])


@pytest.mark.parametrize("command, extra, message", [
    ("attention", ["--networks", "{missing}"], r"--networks .*missing.tsv: 1 of the store's 24 regions have no network"),
    ("networks", ["--networks", "{unknown}"], r"--networks .*unknown.tsv: 1 rows name regions the store does not have"),
    ("latent", ["--networks", "{image}"], r"does not say which atlas label image .* pass it with --atlas-image"),
    ("attention", ["--networks", "{image}", "--atlas-image", "{atlas}"], r"4 parcels, but the store has 24 regions"),
    ("networks", ["--networks", "{elsewhere}", "--atlas-image", "{atlas24}"],
     r"the label image is on another grid than the atlas .*atlas24.nii.gz"),
    ("attention", ["--group", "constant"], r"--group 'constant' has one level"),
    ("attention", ["--group", "lonely"], r"--group 'lonely': level 'b' has 1 subject"),
    ("attention", ["--group", "site"], r"--group 'site' has 3 levels .* choose two with --levels"),
    ("attention", ["--group", "nothing"], r"--group 'nothing': .* has no such phenotype column"),
    ("attention", ["--levels", "a,b"], r"--levels chooses two levels of --group: give --group too"),
    ("perturb", ["--regions", "99"], r"--regions 99: the store has no such region \(24 regions"),
    ("perturb", ["--regions", "r999"], r"--regions r999: the store has no such region"),
    ("perturb", ["--network", "net9"], r"--network 'net9' is not one of the networks"),
    ("perturb", [], r"give the regions to perturb: --regions .* or --network"),
    ("latent", ["--color", "constant"], r"--color 'constant' has fewer than two levels"),
    ("networks", ["--folds", "1"], r"--folds must be an integer >= 2"),
    ("networks", ["--networks", "{single}"], r"--networks: networks b \(1\) have fewer than 2 regions"),
    ("attention", ["--layer", "5"], r"--layer 5: the encoder has 2 layers"),
    ("attention", ["--split", "holdout"], r"no split 'holdout' \(--split\)"),
])
def test_bad_input_stops_with_one_line_and_writes_nothing(planted, tmp_path, capsys, command, extra, message):
    import nibabel as nib

    names = planted["store"].region_names
    pd.DataFrame({"region": names[:-1], "network": "a"}).to_csv(tmp_path / "missing.tsv", sep="\t", index=False)
    pd.DataFrame({"region": [*names, "nowhere"], "network": "a"}).to_csv(tmp_path / "unknown.tsv", sep="\t",
                                                                         index=False)
    pd.DataFrame({"region": names, "network": ["b"] + ["a"] * (len(names) - 1)}).to_csv(tmp_path / "single.csv",
                                                                                      index=False)
    grid = np.zeros((4, 4, 2), dtype=np.int16)
    grid[:2, :2], grid[2:, :2], grid[:2, 2:], grid[2:, 2:] = 1, 2, 3, 4
    nib.save(nib.Nifti1Image(grid, np.eye(4)), tmp_path / "atlas.nii.gz")
    nib.save(nib.Nifti1Image((grid > 2).astype(np.int16), np.eye(4)), tmp_path / "image.nii.gz")
    parcels24 = np.arange(1, 25, dtype=np.int16).reshape(4, 6, 1)  # one voxel per region
    nib.save(nib.Nifti1Image(parcels24, np.eye(4)), tmp_path / "atlas24.nii.gz")
    nib.save(nib.Nifti1Image((parcels24 % 2 + 1).astype(np.int16), np.diag([2.0, 2.0, 2.0, 1.0])),
             tmp_path / "elsewhere.nii.gz")
    paths = {"missing": tmp_path / "missing.tsv", "unknown": tmp_path / "unknown.tsv", "single": tmp_path / "single.csv",
             "image": tmp_path / "image.nii.gz", "atlas": tmp_path / "atlas.nii.gz",
             "atlas24": tmp_path / "atlas24.nii.gz", "elsewhere": tmp_path / "elsewhere.nii.gz"}
    extra = [e.format(**paths) for e in extra]
    if "--networks" not in extra:
        extra += ["--networks", planted["networks"]]
    if command == "perturb":  # the tiny model was never fine-tuned to forecast
        extra += ["--allow-untrained-forecaster"]
    out = tmp_path / "out"
    code = run_cli(command, planted["root"] / "tiny", planted["root"] / "store", "--out", out, *extra)
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith(f"brainlm {command}: error: ")
    assert pytest.importorskip("re").search(message, err), err
    assert not out.exists()  # nothing written, not even the folder


def test_an_existing_report_is_kept_without_overwrite(planted, tmp_path, capsys):
    out = tmp_path / "kept"
    out.mkdir()
    (out / "report.md").write_text("earlier\n")
    code = run_cli("attention", planted["root"] / "tiny", planted["root"] / "store", "--out", out,
                   "--networks", planted["networks"])
    assert code == 2 and "pass --overwrite to replace" in capsys.readouterr().err
    assert (out / "report.md").read_text() == "earlier\n"

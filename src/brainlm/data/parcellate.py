"""Parcellation of 4D BOLD images: nilearn's ``NiftiLabelsMasker`` at the speed of reading.

What nilearn does is kept: the atlas is resampled to the BOLD grid by nilearn (nearest
neighbour, as ``NiftiLabelsMasker(resampling_target="data")`` does), confounds come from
nilearn's fMRIPrep loaders and the region signals are cleaned by ``nilearn.signal.clean``
(detrending, band-pass, confound regression) with the masker's arguments. What is replaced is
the voxel -> region averaging: the masker loads the whole 4D array (and the old sub-voxel
fallback loaded it a second time) and averages with ``scipy.ndimage.mean`` one volume at a
time; here one sparse 0/1 ``(regions x voxels)`` matrix sums the image, streamed in blocks of
timepoints so memory stays bounded for long runs, and the sums are divided by the voxel counts.
The resampled atlas and that matrix are cached per BOLD grid (shape, affine).

Order of operations, as in nilearn 0.14 (``maskers/base_masker.py:filter_and_extract``):
region means of the raw voxels (non-finite voxels count as 0), then ``signal.clean`` on the
``(T, R)`` means; no spatial smoothing, ``standardize=None`` (cleaning leaves the scale alone).

Parcels smaller than a BOLD voxel, which vanish when the atlas is resampled (one A424 parcel
is a single 2 mm voxel), take the BOLD voxel at their centroid, as nilearn's
``NiftiSpheresMasker(radius=None)`` picks it, cleaned the same way. What is added around
nilearn: the atlas defaults to A424, the TR comes from the JSON sidecar or the header, fMRIPrep
confounds are found next to the image, and images that are not (x, y, z, time) or not in the
atlas's space are refused instead of silently giving nonsense or empty regions.

Default confound strategy: nilearn's ``load_confounds_strategy(img, "simple")`` (motion
parameters with derivatives and squares, mean white-matter and CSF signals, the cosine
high-pass regressors), applied when a ``*_desc-confounds_timeseries.tsv`` lies next to the
image; ``confound_strategy=None`` turns it off.
"""

from __future__ import annotations

import warnings
import zlib
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from brainlm.errors import InputError, MissingInputError, UserError

from .atlas import Atlas, load_atlas
from .readers import bold_sidecar, confounds_file, fmriprep_confounds

__all__ = ["Parcellator", "bold_tr"]

# Time-axis checks: no brain image spans more than this along one spatial axis ...
_MAX_EXTENT_MM = 400.0
# ... and none spans more than this (a head's field of view) when the 4th axis is not time.
_HEAD_EXTENT_MM = 260.0
# ... and no spatial axis spans this many times more than each of the other two: a brain is not a
# needle (a slab, thin along one axis, is fine), but time on an axis of a short run makes one.
_NEEDLE_RATIO = 3.0
_TR_RANGE_S = (0.05, 30.0)
_TIME_UNITS = {"sec": 1.0, "msec": 1e-3, "usec": 1e-6}


def bold_tr(img, sidecar: dict | None = None) -> float:
    """Repetition time in seconds: ``RepetitionTime`` of the sidecar, else the header's 4th zoom."""
    if sidecar and "RepetitionTime" in sidecar:
        return float(sidecar["RepetitionTime"])
    zooms = img.header.get_zooms()
    if len(zooms) < 4 or not zooms[3] > 0:
        return float("nan")
    unit = img.header.get_xyzt_units()[1]
    return float(zooms[3]) / 1000.0 if unit == "msec" else float(zooms[3])


def _voxel_sizes(affine) -> np.ndarray:
    """Step in mm along each of the three spatial array axes."""
    return np.sqrt((np.asarray(affine, float)[:3, :3] ** 2).sum(0))


def _check_time_last(img, source: str) -> None:
    """Refuse 4D images whose time axis is not the last one, from the header alone.

    An array axis ``i < 3`` looks like time when it spans more than any brain image does
    (``shape[i] x voxel size > 400 mm``), or more than a head (> 260 mm) while the 4th axis's
    step is not a plausible repetition time (0.05-30 s), or more than 3 times each of the other
    two spatial axes (a short run with time first: (60, 10, 10, 10) at 4 mm is a 240 x 40 x 40 mm
    needle, not a brain).
    """
    shape = tuple(int(n) for n in img.shape)
    extent = np.array(shape[:3]) * _voxel_sizes(img.affine)
    zooms = img.header.get_zooms()
    step = float(zooms[3]) if len(zooms) > 3 else float("nan")
    get_units = getattr(img.header, "get_xyzt_units", None)
    unit = get_units()[1] if get_units else "unknown"
    tr = step * _TIME_UNITS.get(unit, 1.0)
    tr_ok = bool(np.isfinite(tr) and _TR_RANGE_S[0] <= tr <= _TR_RANGE_S[1])
    suspects = [i for i in range(3) if extent[i] > _MAX_EXTENT_MM]
    why = f"more than {_MAX_EXTENT_MM:.0f} mm, too long for a brain"
    if not suspects and not tr_ok:
        suspects = [i for i in range(3) if extent[i] > _HEAD_EXTENT_MM]
        why = f"longer than a head while the 4th axis's step {step:g} is not a repetition time"
    if not suspects:
        suspects = [i for i in range(3) if all(extent[i] > _NEEDLE_RATIO * extent[j] for j in range(3) if j != i)]
        why = f"more than {_NEEDLE_RATIO:g} times the other two axes, a needle rather than a brain"
    if suspects:
        i = max(suspects, key=lambda a: extent[a])
        raise InputError(
            f"{source}: array axis {i} looks like time ({shape[i]} steps x {extent[i] / shape[i]:.3g} mm "
            f"= {extent[i]:.0f} mm, {why}; shape {shape}); images must be (x, y, z, time)"
        )


def _to_voxels(world: np.ndarray, affine: np.ndarray) -> np.ndarray:
    inv = np.linalg.inv(affine)
    return world @ inv[:3, :3].T + inv[:3, 3]


def _inside(vox: np.ndarray, shape) -> np.ndarray:
    return np.all((vox > -0.5) & (vox < np.array(shape[:3]) - 0.5), axis=1)


@dataclass(frozen=True)
class _GridPlan:
    """Everything about one BOLD grid (shape, affine) that does not depend on the data.

    ``matrix`` (0/1) sums the voxels ``voxels`` (flat, Fortran order, as NIfTI stores them)
    into ``mean_labels`` (the regions of the resampled atlas) followed by ``seed_labels``
    (sub-voxel parcels: the voxel nilearn's ``NiftiSpheresMasker`` picks); ``counts`` holds
    each row's number of voxels. Sum then divide, as ``scipy.ndimage.mean`` does: with
    ``1 / count`` weights a quarter of a percent of float32 means come out one ulp apart.
    """

    fov_fraction: float
    voxels: np.ndarray
    matrix: object  # scipy.sparse.csr_matrix
    counts: np.ndarray
    mean_labels: tuple[int, ...]
    seed_labels: tuple[int, ...]


def _sphere_voxels(seeds: np.ndarray, shape, affine) -> list[list[tuple[int, int, int]]]:
    """Voxels of ``NiftiSpheresMasker(seeds, radius=None, mask_img=<3x3x3 boxes>)``, per seed.

    nilearn (``maskers/nifti_spheres_masker.py:apply_mask_and_get_affinity``) takes the voxel
    nearest each seed and also the first masked voxel whose mm coordinates truncate to the
    seed's (the "voxel containing the seed"); with ``radius=None`` that is all. The mask is the
    union of 3 x 3 x 3 boxes around the nearest voxels, as the previous implementation passed it.
    """
    near = np.rint(_to_voxels(seeds, affine)).astype(int)
    near = np.clip(near, 0, np.array(shape[:3]) - 1)
    mask = np.zeros(shape[:3], bool)
    for i, j, k in near:
        mask[max(i - 1, 0):i + 2, max(j - 1, 0):j + 2, max(k - 1, 0):k + 2] = True
    ijk = np.argwhere(mask)  # the order of np.where, as nilearn searches it
    world = (ijk @ np.asarray(affine, float)[:3, :3].T + np.asarray(affine, float)[:3, 3]).astype(int)
    members = []
    for seed, nearest in zip(seeds, near):
        voxels = [tuple(int(v) for v in nearest)]
        hits = np.flatnonzero(np.all(world == np.array([int(c) for c in seed]), axis=1))
        if hits.size and tuple(int(v) for v in ijk[hits[0]]) not in voxels:
            voxels.append(tuple(int(v) for v in ijk[hits[0]]))
        members.append(voxels)
    return members


@contextmanager
def _opened(img, source: str):
    """The image to stream: paths are opened once and kept open, so that reading a gzipped file
    block after block decompresses it once (nibabel reopens and rewinds it per slice otherwise)."""
    import nibabel as nib

    if not isinstance(img, (str, Path)):
        yield img
        return
    try:
        image = nib.load(img, keep_file_open=True)
    except FileNotFoundError:
        raise MissingInputError(f"{source}: file not found") from None
    except Exception as err:
        raise InputError(f"{source}: unreadable or truncated image ({type(err).__name__}: {err})") from err
    try:
        yield image
    finally:
        # nibabel's ArrayProxy holds the open file as ``_opener`` when keep_file_open=True
        # and closes it in ``__del__``; close it now rather than at garbage collection.
        opener = getattr(image.dataobj, "_opener", None)
        if opener is not None and hasattr(opener, "close_if_mine"):
            opener.close_if_mine()


class Parcellator:
    """4D BOLD image -> ``(T, R)`` region-mean time series.

    Args:
        atlas: ``"A424"`` (default), a label NIfTI path, or an ``Atlas``.
        detrend: remove linear trends (nilearn).
        high_pass, low_pass: band-pass cut-offs in Hz, or None (nilearn; need a TR).
        confound_strategy: nilearn ``load_confounds_strategy`` name (``"simple"``, ``"scrubbing"``,
            ``"compcor"``, ``"ica_aroma"``) used when fMRIPrep confounds are found, or None.
        min_fov_fraction: smallest fraction of atlas voxels that must fall inside the image.
        block_mb: size of the blocks of timepoints the image is read in (MB of voxel data).

    Fitted attributes: ``atlas_`` (the loaded ``Atlas``). The atlas resampled to each BOLD grid
    and the averaging matrix built from it are cached (the last ``max_grids`` grids).
    """

    max_grids = 8

    def __init__(
        self,
        atlas: str | Path | Atlas = "A424",
        *,
        detrend: bool = False,
        high_pass: float | None = None,
        low_pass: float | None = None,
        confound_strategy: str | None = "simple",
        min_fov_fraction: float = 0.9,
        block_mb: float = 32.0,
    ):
        self.atlas = atlas
        self.detrend = detrend
        self.high_pass = high_pass
        self.low_pass = low_pass
        self.confound_strategy = confound_strategy
        self.min_fov_fraction = min_fov_fraction
        self.block_mb = block_mb

    def fit(self, imgs=None) -> "Parcellator":
        import nibabel as nib

        self.atlas_ = load_atlas(self.atlas)
        if self.atlas_.labels_img is None:
            raise UserError(f"atlas {self.atlas_.name!r} has no label image to parcellate with (--atlas)")
        self._atlas_img = nib.load(self.atlas_.labels_img)
        self._atlas_data = np.asanyarray(self._atlas_img.dataobj)
        ijk = np.argwhere(self._atlas_data != 0)
        ijk = ijk[:: max(1, len(ijk) // 20000)]  # a subsample is plenty for a coverage fraction
        self._atlas_world = ijk @ self._atlas_img.affine[:3, :3].T + self._atlas_img.affine[:3, 3]
        self._plans: OrderedDict = OrderedDict()
        return self

    # ------------------------------------------------------------------ grid plan (cached)

    def _plan(self, shape, affine, source: str) -> _GridPlan:
        key = (tuple(int(n) for n in shape[:3]), np.asarray(affine, np.float64).tobytes())
        plan = self._plans.get(key)
        if plan is None:
            plan = self._build_plan(tuple(int(n) for n in shape[:3]), np.asarray(affine, np.float64), source)
            self._plans[key] = plan
            while len(self._plans) > self.max_grids:
                self._plans.popitem(last=False)
        else:
            self._plans.move_to_end(key)
        if plan.fov_fraction < self.min_fov_fraction:
            self._fov_error(plan.fov_fraction, source)
        return plan

    @staticmethod
    def _fov_error(fraction: float, source: str):
        raise InputError(
            f"{source}: only {fraction:.0%} of the atlas lies inside the image's field of view; "
            "the image is not in the atlas's space (MNI152) or has a different orientation"
        )

    def _build_plan(self, shape, affine, source: str) -> _GridPlan:
        from nilearn.image import resample_img
        from scipy import sparse

        atlas_img, atlas_data = self._atlas_img, self._atlas_data
        fov = float(_inside(_to_voxels(self._atlas_world, affine), shape).mean())
        if fov < self.min_fov_fraction:
            self._fov_error(fov, source)
        # The atlas on the BOLD grid, as NiftiLabelsMasker(resampling_target="data") makes it
        # (maskers/nifti_labels_masker.py: _resample_labels; skipped when the grids match).
        if atlas_data.shape[:3] == shape and np.allclose(atlas_img.affine, affine):
            labels = atlas_data
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                labels = np.asanyarray(resample_img(atlas_img, interpolation="nearest", target_shape=shape,
                                                    target_affine=affine).dataobj)
        if labels.dtype.kind == "f":
            labels = np.where(np.isfinite(labels), labels, 0)  # safe_get_data(ensure_finite=True)
        flat = labels.reshape(-1, order="F")
        voxels = np.flatnonzero(flat != 0)  # background label 0
        values, rows, counts = np.unique(flat[voxels], return_inverse=True, return_counts=True)
        mean_labels = tuple(int(v) for v in values)

        # Labels removed by resampling: outside the field of view is an error, smaller than a
        # BOLD voxel takes the voxel at its centroid.
        missing = sorted(set(self.atlas_.label_values.tolist()) - set(mean_labels))
        seeds = []
        for value in missing:
            world = np.argwhere(atlas_data == value) @ atlas_img.affine[:3, :3].T + atlas_img.affine[:3, 3]
            inside = _inside(_to_voxels(world, affine), shape)
            seeds.append(world[inside].mean(0) if inside.any() else None)
        outside = [v for v, s in zip(missing, seeds) if s is None]
        if outside:
            raise InputError(
                f"{source}: {len(outside)} atlas regions have no voxel in the image's field of view "
                f"(labels {outside[:10]}{' ...' if len(outside) > 10 else ''}); is the image in the atlas's space?"
            )
        seed_rows, seed_cols, seed_counts = [], [], []
        if missing:
            for r, members in enumerate(_sphere_voxels(np.array(seeds), shape, affine)):
                seed_counts.append(len(members))
                for ijk in members:
                    seed_rows.append(len(mean_labels) + r)
                    seed_cols.append(np.ravel_multi_index(ijk, shape, order="F"))
        cols = np.concatenate([voxels, np.asarray(seed_cols, np.int64)])
        used = np.unique(cols)
        matrix = sparse.csr_matrix(
            (np.ones(len(cols)), (np.concatenate([rows, np.asarray(seed_rows, np.int64)]), np.searchsorted(used, cols))),
            shape=(len(mean_labels) + len(missing), len(used)),
        )
        return _GridPlan(fov_fraction=fov, voxels=used, matrix=matrix,
                         counts=np.concatenate([counts, seed_counts]).astype(np.float64),
                         mean_labels=mean_labels, seed_labels=tuple(missing))

    # ------------------------------------------------------------------ voxels -> regions

    def _region_means(self, image, plan: _GridPlan, source: str, whole: bool = False) -> np.ndarray:
        """``(T, rows of plan.matrix)`` means of the raw voxels, read in blocks of timepoints
        (in one piece when ``whole``).

        As nilearn's ``img_to_signals_labels``: non-finite voxels count as 0, sums in float64,
        the result float32 for float32 images and float64 otherwise.
        """
        shape = image.shape
        n_vox, n_time = int(np.prod(shape[:3])), int(shape[3])
        dataobj = image.dataobj
        itemsize = max(np.dtype(image.get_data_dtype()).itemsize, 4)
        step = max(1, int(self.block_mb * 2**20) // (n_vox * itemsize))
        if whole:
            step = n_time
        out = np.empty((plan.matrix.shape[0], n_time), np.float64)
        dtype = None
        warned = False
        for t0 in range(0, n_time, step):
            try:
                block = np.asanyarray(dataobj[..., t0:t0 + step])
            except (EOFError, OSError, zlib.error) as err:
                raise InputError(f"{source}: unreadable or truncated image ({type(err).__name__}: {err})") from err
            dtype = block.dtype
            sub = block.reshape(n_vox, -1, order="F")[plan.voxels]
            sums = plan.matrix @ sub
            if not np.isfinite(sums).all():
                sub = np.where(np.isfinite(sub), sub, 0)
                sums = plan.matrix @ sub
                if not warned:
                    warnings.warn(f"{source}: non-finite voxel values were replaced with zeros", stacklevel=3)
                    warned = True
            out[:, t0:t0 + sub.shape[1]] = sums
        out /= plan.counts[:, None]
        return out.T.astype(np.float32 if dtype == np.float32 else np.float64)

    def transform(self, img, *, confounds=None, sample_mask=None, t_r: float | None = None) -> np.ndarray:
        """Parcellate one image.

        Args:
            img: path of a 4D NIfTI (or a nibabel image), array ``(x, y, z, time)``.
            confounds: confound table ``(T, K)``; by default, fMRIPrep confounds found next to
                the image, loaded with ``confound_strategy``.
            sample_mask: timepoints to keep (from the confound strategy when found).
            t_r: repetition time; by default from the sidecar or header.

        Returns:
            ``(T, R)`` float32, columns in atlas region order.
        """
        import nibabel as nib
        from nilearn.signal import clean

        if not hasattr(self, "_plans"):
            self.fit()
        source = str(img) if isinstance(img, (str, Path)) else "<in-memory image>"
        with _opened(img, source) as image:
            if image.ndim != 4:
                raise InputError(f"{source}: expected a 4D BOLD image, got shape {image.shape}")
            _check_time_last(image, source)
            plan = self._plan(image.shape, image.affine, source)

            sidecar = bold_sidecar(Path(source)) if isinstance(img, (str, Path)) else {}
            t_r = t_r if t_r is not None else bold_tr(image, sidecar)
            if confounds is None and self.confound_strategy and isinstance(img, (str, Path)) \
                    and confounds_file(Path(source)):
                confounds, sample_mask = fmriprep_confounds(str(source), self.confound_strategy, source)
            # A gzipped image opened by the caller (not kept open) would be reopened and
            # decompressed from the start for every block: read it in one piece instead.
            filename = str(image.get_filename() or "") if hasattr(image, "get_filename") else ""
            whole = not isinstance(img, (str, Path)) and nib.is_proxy(image.dataobj) and filename.endswith(".gz")
            means = self._region_means(image, plan, source, whole=whole)

        # Cleaning, with the arguments NiftiLabelsMasker passes (maskers/base_masker.py:
        # filter_and_extract), once for the label means and once for the sub-voxel parcels,
        # as the two maskers did.
        kwargs = {"detrend": self.detrend, "standardize": None, "standardize_confounds": True,
                  "t_r": t_r if np.isfinite(t_r) else None, "low_pass": self.low_pass, "high_pass": self.high_pass,
                  "confounds": confounds, "runs": None}
        n_mean = len(plan.mean_labels)
        parts = [clean(means[:, :n_mean], sample_mask=_copy_mask(sample_mask), **kwargs)]
        if plan.seed_labels:
            parts.append(clean(means[:, n_mean:], sample_mask=_copy_mask(sample_mask), **kwargs))
        signals = np.concatenate(parts, axis=1)
        order = np.argsort(np.array(plan.mean_labels + plan.seed_labels), kind="stable")
        found = [(plan.mean_labels + plan.seed_labels)[i] for i in order]
        if found != self.atlas_.label_values.tolist():
            raise InputError(f"{source}: parcellation gave regions {found[:5]}..., not the atlas's {self.atlas_.num_regions}")
        return np.asarray(signals[:, order], np.float32)


def _copy_mask(sample_mask):
    """nilearn's ``signal.clean`` may shift a sample mask in place; give each call its own."""
    if sample_mask is None:
        return None
    if isinstance(sample_mask, (list, tuple)):
        return [np.array(m) for m in sample_mask]
    return np.array(sample_mask)

"""Parcellation of 4D BOLD images, a thin wrapper around nilearn's ``NiftiLabelsMasker``.

nilearn resamples the atlas to the BOLD grid (nearest neighbour), averages voxels per label
and cleans the signals (``nilearn.signal.clean``: detrending, band-pass, confound
regression). Parcels smaller than a BOLD voxel, which vanish when the atlas is resampled
(one A424 parcel is a single 2 mm voxel), take the BOLD voxel at their centroid
(``NiftiSpheresMasker``). What is added here: the atlas defaults to A424, the TR comes from the JSON
sidecar or the header, fMRIPrep confounds are found next to the image, and images that are not
in the atlas's space are refused instead of silently giving empty regions.

Default confound strategy: nilearn's ``load_confounds_strategy(img, "simple")`` (motion
parameters with derivatives and squares, mean white-matter and CSF signals, the cosine
high-pass regressors), applied when a ``*_desc-confounds_timeseries.tsv`` lies next to the
image; ``confound_strategy=None`` turns it off.
"""

from __future__ import annotations

import warnings
import zlib
from pathlib import Path

import numpy as np

from .atlas import Atlas, load_atlas
from .readers import InputError, bold_sidecar, confounds_file

__all__ = ["Parcellator", "bold_tr"]


def bold_tr(img, sidecar: dict | None = None) -> float:
    """Repetition time in seconds: ``RepetitionTime`` of the sidecar, else the header's 4th zoom."""
    if sidecar and "RepetitionTime" in sidecar:
        return float(sidecar["RepetitionTime"])
    zooms = img.header.get_zooms()
    if len(zooms) < 4 or not zooms[3] > 0:
        return float("nan")
    unit = img.header.get_xyzt_units()[1]
    return float(zooms[3]) / 1000.0 if unit == "msec" else float(zooms[3])


def _check_field_of_view(img, atlas_img, source: str, min_fraction: float) -> None:
    """Refuse images whose field of view misses most of the atlas (wrong space or orientation)."""
    labels = np.asanyarray(atlas_img.dataobj)
    ijk = np.argwhere(labels != 0)
    ijk = ijk[:: max(1, len(ijk) // 20000)]  # a subsample is plenty for a coverage fraction
    world = ijk @ atlas_img.affine[:3, :3].T + atlas_img.affine[:3, 3]
    inv = np.linalg.inv(img.affine)
    vox = world @ inv[:3, :3].T + inv[:3, 3]
    inside = np.all((vox > -0.5) & (vox < np.array(img.shape[:3]) - 0.5), axis=1).mean()
    if inside < min_fraction:
        raise InputError(
            f"{source}: only {inside:.0%} of the atlas lies inside the image's field of view; "
            "the image is not in the atlas's space (MNI152) or has a different orientation"
        )


def _label_in_view(img, atlas_img, value: int) -> tuple[bool, np.ndarray]:
    """Whether any voxel of one atlas label lies inside the image's field of view, and its centroid (mm)."""
    ijk = np.argwhere(np.asanyarray(atlas_img.dataobj) == value)
    world = ijk @ atlas_img.affine[:3, :3].T + atlas_img.affine[:3, 3]
    inv = np.linalg.inv(img.affine)
    vox = world @ inv[:3, :3].T + inv[:3, 3]
    inside = np.all((vox > -0.5) & (vox < np.array(img.shape[:3]) - 0.5), axis=1)
    return bool(inside.any()), world[inside].mean(0) if inside.any() else world.mean(0)


class Parcellator:
    """4D BOLD image -> ``(T, R)`` region-mean time series.

    Args:
        atlas: ``"A424"`` (default), a label NIfTI path, or an ``Atlas``.
        detrend: remove linear trends (nilearn).
        high_pass, low_pass: band-pass cut-offs in Hz, or None (nilearn; need a TR).
        confound_strategy: nilearn ``load_confounds_strategy`` name (``"simple"``, ``"scrubbing"``,
            ``"compcor"``, ``"ica_aroma"``) used when fMRIPrep confounds are found, or None.
        min_fov_fraction: smallest fraction of atlas voxels that must fall inside the image.

    Fitted attributes: ``atlas_`` (the loaded ``Atlas``).
    """

    def __init__(
        self,
        atlas: str | Path | Atlas = "A424",
        *,
        detrend: bool = False,
        high_pass: float | None = None,
        low_pass: float | None = None,
        confound_strategy: str | None = "simple",
        min_fov_fraction: float = 0.9,
    ):
        self.atlas = atlas
        self.detrend = detrend
        self.high_pass = high_pass
        self.low_pass = low_pass
        self.confound_strategy = confound_strategy
        self.min_fov_fraction = min_fov_fraction

    def fit(self, imgs=None) -> "Parcellator":
        self.atlas_ = load_atlas(self.atlas)
        if self.atlas_.labels_img is None:
            raise ValueError(f"atlas {self.atlas_.name!r} has no label image to parcellate with")
        return self

    @staticmethod
    def _extract(masker, image, confounds, sample_mask, source) -> tuple[np.ndarray, list[int]]:
        try:
            with warnings.catch_warnings():
                # Labels removed by resampling are handled by the caller.
                warnings.filterwarnings("ignore", message=".*labels were removed.*")
                warnings.filterwarnings("ignore", message="Resampling images at transform time")
                signals = masker.fit_transform(image, confounds=confounds, sample_mask=sample_mask)
        except (EOFError, OSError, zlib.error) as err:
            raise InputError(f"{source}: unreadable or truncated image ({type(err).__name__}: {err})") from err
        ids = getattr(masker, "region_ids_", {})
        found = [int(v) for k, v in ids.items() if k != "background"]
        return np.asarray(signals, np.float32), found

    def transform(self, img, *, confounds=None, sample_mask=None, t_r: float | None = None) -> np.ndarray:
        """Parcellate one image.

        Args:
            img: path of a 4D NIfTI (or a nibabel image).
            confounds: confound table ``(T, K)``; by default, fMRIPrep confounds found next to
                the image, loaded with ``confound_strategy``.
            sample_mask: timepoints to keep (from the confound strategy when found).
            t_r: repetition time; by default from the sidecar or header.

        Returns:
            ``(T, R)`` float32, columns in atlas region order.
        """
        import nibabel as nib
        from nilearn.maskers import NiftiLabelsMasker, NiftiSpheresMasker

        if not hasattr(self, "atlas_"):
            self.fit()
        source = str(img) if isinstance(img, (str, Path)) else "<in-memory image>"
        try:
            image = nib.load(img) if isinstance(img, (str, Path)) else img
        except FileNotFoundError:
            raise FileNotFoundError(f"{source}: file not found") from None
        except Exception as err:
            raise InputError(f"{source}: unreadable or truncated image ({type(err).__name__}: {err})") from err
        if image.ndim != 4:
            raise InputError(f"{source}: expected a 4D BOLD image, got shape {image.shape}")
        atlas_img = nib.load(self.atlas_.labels_img)
        _check_field_of_view(image, atlas_img, source, self.min_fov_fraction)

        sidecar = bold_sidecar(Path(source)) if isinstance(img, (str, Path)) else {}
        t_r = t_r if t_r is not None else bold_tr(image, sidecar)
        if confounds is None and self.confound_strategy and isinstance(img, (str, Path)) and confounds_file(Path(source)):
            from nilearn.interfaces.fmriprep import load_confounds_strategy

            try:
                confounds, sample_mask = load_confounds_strategy(str(source), denoise_strategy=self.confound_strategy)
            except Exception as err:
                raise InputError(f"{source}: cannot load confounds ({type(err).__name__}: {err})") from err
        kwargs = dict(detrend=self.detrend, high_pass=self.high_pass, low_pass=self.low_pass,
                      t_r=t_r if np.isfinite(t_r) else None, standardize=None)
        signals, found = self._extract(NiftiLabelsMasker(labels_img=atlas_img, resampling_target="data", **kwargs),
                                       image, confounds, sample_mask, source)
        missing = sorted(set(self.atlas_.label_values.tolist()) - set(found))
        if missing:
            view = {v: _label_in_view(image, atlas_img, v) for v in missing}
            outside = [v for v in missing if not view[v][0]]
            if outside:
                raise InputError(
                    f"{source}: {len(outside)} atlas regions have no voxel in the image's field of view "
                    f"(labels {outside[:10]}{' ...' if len(outside) > 10 else ''}); is the image in the atlas's space?"
                )
            # Parcels smaller than a BOLD voxel vanish when the atlas is resampled to the BOLD
            # grid; each of those takes the BOLD voxel at its centroid, cleaned the same way.
            seeds = np.array([view[v][1] for v in missing])
            # A small mask around the seeds keeps nilearn's voxel search cheap.
            inv = np.linalg.inv(image.affine)
            near = np.rint(seeds @ inv[:3, :3].T + inv[:3, 3]).astype(int)
            mask = np.zeros(image.shape[:3], np.int8)
            for i, j, k in near:
                mask[max(i - 1, 0):i + 2, max(j - 1, 0):j + 2, max(k - 1, 0):k + 2] = 1
            spheres = NiftiSpheresMasker([tuple(c) for c in seeds], radius=None,
                                         mask_img=nib.Nifti1Image(mask, image.affine), **kwargs)
            fine, _ = self._extract(spheres, image, confounds, sample_mask, source)
            columns = dict(zip(found, signals.T))
            columns.update({v: fine[:, i] for i, v in enumerate(missing)})
            found, signals = sorted(columns), np.stack([columns[v] for v in sorted(columns)], axis=1)
        if list(found) != self.atlas_.label_values.tolist():
            raise InputError(f"{source}: parcellation gave regions {found[:5]}..., not the atlas's {self.atlas_.num_regions}")
        return np.asarray(signals, np.float32)

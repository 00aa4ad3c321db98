"""Parcellation against reading the image: nibabel read vs the old masker path vs the new path.

    python benchmarks/bench_parcellate.py [--timepoints 100] [--repeats 5]

Builds a synthetic 61 x 73 x 61 x T float32 BOLD image on the 3 mm MNI grid (a head of low
values around a brain of parcel signals, drifts and voxel noise; zeros outside the head),
saves it gzipped, then times, interleaved so that other load on the machine hits all three
alike:

- read: the whole 4D array from the file (``np.asanyarray(img.dataobj)``, float32, and
  ``img.get_fdata()``, float64);
- old: what ``Parcellator.transform`` did before: ``NiftiLabelsMasker.fit_transform`` on the
  image (atlas resampled each call) plus ``NiftiSpheresMasker`` for the A424 parcel smaller than
  a 3 mm voxel;
- new: ``Parcellator.transform`` (atlas resampling cached per grid, blocks of timepoints
  through one sparse matrix, then ``nilearn.signal.clean``).

Prints medians (min-max) of the repeats, the ratio new / read and the largest difference
between the old and new outputs. Target: new within 1.5 x the read.
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def make_image(path: Path, timepoints: int, seed: int = 0) -> None:
    import nibabel as nib
    from nilearn.image import resample_img
    from scipy import ndimage

    from brainlm.data.atlas import bundled_path

    affine = np.diag([-3.0, 3.0, 3.0, 1.0])
    affine[:3, 3] = [90.4, -125.6, -71.6]
    shape = (61, 73, 61)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        labels = np.asarray(resample_img(nib.load(bundled_path("A424+2mm.nii.gz")), target_affine=affine,
                                         target_shape=shape, interpolation="nearest").dataobj).astype(np.int64)
    rng = np.random.default_rng(seed)
    brain = labels > 0
    head = ndimage.binary_dilation(brain, iterations=4) & ~brain
    level = ndimage.gaussian_filter(rng.normal(size=shape), 3)
    level = 900 + 300 * level / np.abs(level).max()  # smooth coil / tissue intensity, 600-1200
    t = np.arange(timepoints)
    parcel = rng.normal(size=(timepoints, labels.max() + 1)) * 8 + np.outer(t, rng.normal(size=labels.max() + 1)) * 0.05
    data = np.zeros(shape + (timepoints,), np.float32)
    data[brain] = level[brain, None] + parcel[:, labels[brain]].T + rng.normal(size=(brain.sum(), timepoints)) * 15
    data[head] = np.abs(rng.normal(size=(head.sum(), timepoints))) * 20
    img = nib.Nifti1Image(data, affine)
    img.header.set_xyzt_units("mm", "sec")
    img.header["pixdim"][4] = 2.0
    nib.save(img, path)


def old_masker_path(path: Path, atlas) -> np.ndarray:
    """The previous ``Parcellator.transform``: nilearn maskers on the whole image."""
    import nibabel as nib
    from nilearn.maskers import NiftiLabelsMasker, NiftiSpheresMasker

    image = nib.load(path)
    atlas_img = nib.load(atlas.labels_img)
    kwargs = {"detrend": False, "high_pass": None, "low_pass": None, "t_r": 2.0, "standardize": None}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        masker = NiftiLabelsMasker(labels_img=atlas_img, resampling_target="data", **kwargs)
        signals = masker.fit_transform(image)
    found = [int(v) for k, v in masker.region_ids_.items() if k != "background"]
    missing = sorted(set(atlas.label_values.tolist()) - set(found))
    if missing:
        seeds = []
        for v in missing:
            ijk = np.argwhere(np.asanyarray(atlas_img.dataobj) == v)
            seeds.append((ijk @ atlas_img.affine[:3, :3].T + atlas_img.affine[:3, 3]).mean(0))
        inv = np.linalg.inv(image.affine)
        near = np.rint(np.array(seeds) @ inv[:3, :3].T + inv[:3, 3]).astype(int)
        mask = np.zeros(image.shape[:3], np.int8)
        for i, j, k in near:
            mask[max(i - 1, 0):i + 2, max(j - 1, 0):j + 2, max(k - 1, 0):k + 2] = 1
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            spheres = NiftiSpheresMasker([tuple(c) for c in seeds], radius=None,
                                         mask_img=nib.Nifti1Image(mask, image.affine), **kwargs)
            fine = spheres.fit_transform(image)
        columns = dict(zip(found, np.asarray(signals).T))
        columns.update({v: fine[:, i] for i, v in enumerate(missing)})
        signals = np.stack([columns[v] for v in sorted(columns)], axis=1)
    return np.asarray(signals, np.float32)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timepoints", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats of read and new")
    parser.add_argument("--old-repeats", type=int, default=3, help="timed repeats of the old masker path")
    args = parser.parse_args(argv)

    import nibabel as nib
    import nilearn
    import scipy

    from brainlm.data import Parcellator

    print("command:", " ".join([Path(sys.executable).name, *sys.argv]))
    print(f"machine: {cpu_model()}, {platform.machine()}, python {platform.python_version()}, "
          f"numpy {np.__version__}, scipy {scipy.__version__}, nibabel {nib.__version__}, nilearn {nilearn.__version__}")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "sub-01_task-rest_bold.nii.gz"
        make_image(path, args.timepoints)
        raw_mb = 61 * 73 * 61 * args.timepoints * 4 / 2**20
        print(f"image  : 61 x 73 x 61 x {args.timepoints} float32, 3 mm MNI, {raw_mb:.0f} MB raw, "
              f"{path.stat().st_size / 2**20:.1f} MB gzipped")

        parcellator = Parcellator(confound_strategy=None).fit()
        t = time.perf_counter()
        new = parcellator.transform(path, t_r=2.0)  # first call: imports, atlas resampled to this grid
        first = time.perf_counter() - t
        old = old_masker_path(path, parcellator.atlas_)  # warm the masker's imports
        diff = float(np.abs(new - old).max())

        times = {"read dataobj (float32)": [], "read get_fdata (float64)": [], "old masker path": [], "new path": []}
        for r in range(max(args.repeats, args.old_repeats)):
            if r < args.repeats:
                t = time.perf_counter()
                np.asanyarray(nib.load(path).dataobj)
                times["read dataobj (float32)"].append(time.perf_counter() - t)
                t = time.perf_counter()
                nib.load(path).get_fdata()
                times["read get_fdata (float64)"].append(time.perf_counter() - t)
                t = time.perf_counter()
                parcellator.transform(path, t_r=2.0)
                times["new path"].append(time.perf_counter() - t)
            if r < args.old_repeats:
                t = time.perf_counter()
                old_masker_path(path, parcellator.atlas_)
                times["old masker path"].append(time.perf_counter() - t)

        # Peak Python-tracked memory of one call each (numpy buffers included), after the timings.
        import tracemalloc

        peaks = {}
        for name, call in [("read dataobj", lambda: np.asanyarray(nib.load(path).dataobj)),
                           ("old masker path", lambda: old_masker_path(path, parcellator.atlas_)),
                           ("new path", lambda: parcellator.transform(path, t_r=2.0))]:
            tracemalloc.start()
            call()
            peaks[name] = tracemalloc.get_traced_memory()[1] / 2**20
            tracemalloc.stop()

    med = {k: float(np.median(v)) for k, v in times.items()}
    print(f"{'':26s} {'median s':>9s} {'min-max s':>14s} {'repeats':>8s}")
    for k, v in times.items():
        print(f"{k:26s} {med[k]:9.3f} {min(v):6.3f}-{max(v):6.3f} {len(v):8d}")
    print(f"new path, first call (imports, atlas resampled to the grid): {first:.2f} s")
    read = med["read dataobj (float32)"]
    print(f"ratio new / read dataobj  : {med['new path'] / read:.2f} (target <= 1.5)")
    print(f"ratio new / read get_fdata: {med['new path'] / med['read get_fdata (float64)']:.2f}")
    print(f"speed-up new vs old       : {med['old masker path'] / med['new path']:.1f} x")
    print(f"largest |new - old|       : {diff:.3g} (outputs up to {np.abs(old).max():.0f})")
    print("peak memory (tracemalloc): " + ", ".join(f"{k} {v:.0f} MB" for k, v in peaks.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())

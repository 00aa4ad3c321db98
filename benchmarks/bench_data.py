"""Data pipeline throughput: store writing and window reading. Prints figures.

    python benchmarks/bench_data.py [--recordings 256] [--timepoints 490] [--workers 0 2]

1. writes a synthetic A424 store (R = 424 regions, float16) with ``write_store``;
2. reads random 424 x 200 windows from the warm store through ``WindowDataset`` +
   ``collate_windows`` in one process (one core), then through DataLoader workers;
(parcellation: ``benchmarks/bench_parcellate.py``; cohort scale: ``benchmarks/bench_cohort.py``).

Training consumes one batch per optimiser step; the loader's windows/s should be many times
the training rate (target: >= 1,000 windows/s on one core).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def _bench_store(root: Path, recordings: int, timepoints: int) -> tuple[object, float]:
    from brainlm.data import Recording, Source, StoreOptions, load_atlas, write_store

    atlas = load_atlas("A424")
    rng = np.random.default_rng(0)
    base = rng.normal(size=(timepoints, 424)).astype(np.float32)

    def make(i: int):
        return lambda: Recording(np.roll(base, i, axis=0) * (1 + 0.01 * i) + i, subject_id=f"{i:06d}", tr=0.735,
                                 source=f"synthetic-{i}")

    tasks = [(f"synthetic-{i}", make(i)) for i in range(recordings)]
    t = time.perf_counter()
    store = write_store(Source("synthetic", atlas, tasks), root / "store", StoreOptions(progress=False))
    return store, time.perf_counter() - t


def _bench_windows(store, batch_size: int, workers: int, epochs: int = 3) -> float:
    from brainlm.data import WindowDataset, collate_windows

    ds = WindowDataset(store, "train", window=200, mode="random")
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=True, num_workers=workers,
                                         collate_fn=collate_windows, persistent_workers=workers > 0)
    for _ in loader:  # warm: shards mapped, pages cached, workers started
        break
    n, t = 0, time.perf_counter()
    for epoch in range(epochs):
        ds.set_epoch(epoch)
        for batch in loader:
            n += batch["signal_vectors"].shape[0]
    return n / (time.perf_counter() - t)


def _bench_verification(store) -> str:
    """The cost of the integrity check of every shard: first open (SHA-256) and a later one (cache)."""
    import brainlm.data.store as store_module
    from brainlm.data import open_store

    times = []
    for cached in (False, True):
        store_module._VERIFIED.clear()
        if not cached:
            store_module._cache_file().unlink(missing_ok=True)
        s = open_store(store.path)
        t = time.perf_counter()
        for shard in dict.fromkeys(s.recordings["shard"]):
            s._reader(shard)
        times.append(time.perf_counter() - t)
    gb = sum(x["bytes"] for x in store.manifest["shards"]) / 1e9
    return (f"verify      : every shard ({gb:.2f} GB) checked on first open in {times[0]:.2f} s "
            f"({gb / max(times[0], 1e-9):.1f} GB/s); opened again (cached by size, mtime, inode): {times[1] * 1000:.1f} ms")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recordings", type=int, default=256)
    parser.add_argument("--timepoints", type=int, default=490)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, nargs="*", default=[0, 2])
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    print("command:", " ".join([Path(sys.executable).name, *sys.argv]))
    with tempfile.TemporaryDirectory() as tmp:
        store, dt = _bench_store(Path(tmp), args.recordings, args.timepoints)
        gb = sum(s["bytes"] for s in store.manifest["shards"]) / 1e9
        print(f"store write : {args.recordings} recordings x {args.timepoints} x 424 float16 ({gb:.2f} GB) "
              f"in {dt:.1f} s = {args.recordings / dt:.0f} recordings/s")
        print(_bench_verification(store), flush=True)
        for workers in args.workers:
            rate = _bench_windows(store, args.batch_size, workers)
            label = "1 process (one core)" if workers == 0 else f"{workers} DataLoader workers"
            print(f"windows     : {rate:,.0f} windows/s of 424 x 200, batch {args.batch_size}, {label}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

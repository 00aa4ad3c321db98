"""WindowDataset / collate_windows: shapes, window modes, epochs, workers and rank sharding."""

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from brainlm.data import PrepareConfig, WindowDataset, collate_windows, open_store, prepare

R, W = 5, 16


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("loader")
    rng = np.random.default_rng(0)
    inputs = []
    for i in range(10):
        path = root / f"sub-{i:02d}_task-rest.npy"
        np.save(path, rng.normal(size=(40 + 3 * i, R)).astype(np.float32))
        inputs.append(str(path))
    np.savetxt(root / "c.dat", np.c_[np.arange(1, R + 1), rng.normal(size=(R, 3))], delimiter="\t")
    return prepare(PrepareConfig(inputs=inputs, out_dir=str(root / "store"), coords=str(root / "c.dat"), window=W,
                                 split=(6, 2, 2), normalization="zscore", dtype="float32", progress=False))


def test_batch_shapes(store):
    ds = WindowDataset(store, "train", window=W)
    batch = collate_windows([ds[i] for i in range(4)])
    assert batch["signal_vectors"].shape == (4, R, W) and batch["signal_vectors"].dtype == torch.float32
    assert batch["xyz_vectors"].shape == (4, R, 3) and batch["xyz_vectors"].dtype == torch.float32
    np.testing.assert_allclose(batch["xyz_vectors"][0].numpy(), store.coords)
    assert batch["window_start"].shape == (4,) and len(batch["subject_id"]) == 4
    assert {"recording_id", "session_id", "run_id", "phenotypes"} <= batch.keys()


def test_random_windows_per_epoch(store):
    ds = WindowDataset(store, "train", window=W, seed=1)
    assert len(ds) == 6
    first = [ds[i]["window_start"] for i in range(len(ds))]
    assert first == [ds[i]["window_start"] for i in range(len(ds))]  # deterministic within an epoch
    ds.set_epoch(1)
    assert first != [ds[i]["window_start"] for i in range(len(ds))]
    for i in range(len(ds)):
        item = ds[i]
        full = store.get(item["recording_id"])
        t0 = item["window_start"]
        assert 0 <= t0 <= len(full) - W
        np.testing.assert_array_equal(item["signal_vectors"].numpy(), full[t0:t0 + W].T)


def test_fixed_and_sliding(store):
    fixed = WindowDataset(store, "validation", window=W, mode="fixed", start=2)
    assert len(fixed) == 2 and all(fixed[i]["window_start"] == 2 for i in range(2))
    sliding = WindowDataset(store, "validation", window=W, mode="sliding", stride=8)
    lengths = store.recordings.set_index("recording_id")["num_timepoints"]
    expected = sum((lengths[r] - W) // 8 + 1 for r in store.recordings.query("split == 'validation'")["recording_id"])
    assert len(sliding) == expected
    starts = [sliding[i]["window_start"] for i in range(len(sliding))]
    assert starts[:3] == [0, 8, 16]
    with pytest.raises(ValueError, match="mode"):
        WindowDataset(store, "train", mode="middle")
    with pytest.raises(ValueError, match="fewer than start"):
        WindowDataset(store, "train", window=1000)


def test_rank_sharding_disjoint_and_even(store):
    parts = [WindowDataset(store, "train", window=W, mode="fixed", rank=r, world_size=4) for r in range(4)]
    assert len({len(p) for p in parts}) == 1  # 6 items over 4 ranks: padded to 2 each
    seen = [p[i]["recording_id"] for p in parts for i in range(len(p))]
    assert set(seen) == set(store.recordings.query("split == 'train'")["recording_id"])
    two = [WindowDataset(store, "train", window=W, mode="fixed", rank=r, world_size=2) for r in range(2)]
    assert not {two[0][i]["recording_id"] for i in range(3)} & {two[1][i]["recording_id"] for i in range(3)}


def test_multiworker_dataloader(store):
    ds = WindowDataset(store, "train", window=W, mode="fixed")
    loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=2, collate_fn=collate_windows)
    batches = list(loader)
    got = torch.cat([b["signal_vectors"] for b in batches])
    ref = torch.stack([ds[i]["signal_vectors"] for i in range(len(ds))])
    torch.testing.assert_close(got, ref)


def _rank_main(rank, world, path, port, out):
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    ds = WindowDataset(open_store(path), "train", window=W, mode="fixed")
    ids = [ds[i]["recording_id"] for i in range(len(ds))]
    gathered = [None] * world
    torch.distributed.all_gather_object(gathered, (ds.rank, ids))
    if rank == 0:
        out.put(gathered)
    torch.distributed.destroy_process_group()


def test_torch_distributed_ranks_see_different_data(store):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("fork")
    out = ctx.Queue()
    procs = [ctx.Process(target=_rank_main, args=(r, 2, str(store.path), port, out)) for r in range(2)]
    for p in procs:
        p.start()
    gathered = out.get(timeout=60)
    for p in procs:
        p.join(timeout=60)
    (r0, ids0), (r1, ids1) = gathered
    assert (r0, r1) == (0, 1) and len(ids0) == len(ids1) == 3 and not set(ids0) & set(ids1)


def test_random_mode_reassigns_recordings_to_ranks_each_epoch(store):
    parts = [WindowDataset(store, "train", window=W, rank=r, world_size=2, seed=5) for r in range(2)]

    def owned(epoch):
        for p in parts:
            p.set_epoch(epoch)
        sets = [{p[i]["recording_id"] for i in range(len(p))} for p in parts]
        assert not sets[0] & sets[1] and len(sets[0] | sets[1]) == 6
        return sets[0]

    assert owned(0) == owned(0)
    assert any(owned(e) != owned(0) for e in range(1, 5))

"""WindowDataset / collate_windows: shapes, window modes, epochs, workers and rank sharding."""

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from brainlm.data import (
    InputOptions,
    StoreOptions,
    WindowDataset,
    collate_windows,
    open_store,
    prepare,
)

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
    return prepare(inputs, root / "store", InputOptions(coords=str(root / "c.dat")),
                   StoreOptions(window=W, split=(6, 2, 2), normalization="zscore", dtype="float32", progress=False))


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


def test_recording_balance_gives_every_recording_as_many_windows_as_the_longest(store):
    plain = WindowDataset(store, "train", window=W, mode="sliding", stride=4)
    balanced = WindowDataset(store, "train", window=W, mode="sliding", stride=4, balance="recording")

    def windows(ds):
        out = {}
        for i in range(len(ds)):
            item = ds[i]
            out.setdefault(item["recording_id"], []).append(item["window_start"])
        return out

    a, b = windows(plain), windows(balanced)
    longest = max(len(s) for s in a.values())
    assert min(len(s) for s in a.values()) < longest  # the recordings differ in length
    assert {len(s) for s in b.values()} == {longest}
    for rec, starts in a.items():  # each recording's own windows, in order, cycled
        assert b[rec] == [starts[i % len(starts)] for i in range(longest)]
    with pytest.raises(ValueError, match="balance must be 'window' or 'recording'"):
        WindowDataset(store, "train", window=W, mode="sliding", balance="subject")


def test_sampler_evaluation_order_is_disjoint_and_even():
    from brainlm.data import WindowSampler

    parts = [list(WindowSampler(6, 2, rank=r, world_size=4)) for r in range(4)]
    assert {len(p) for p in parts} == {1}  # 6 items over 4 ranks: padded to 2 each, one batch
    flat = [i for p in parts for batch in p for i in batch]
    assert sorted(i for i in flat if i >= 0) == list(range(6)) and flat.count(-1) == 2
    assert list(WindowSampler(5, 2, rank=0, world_size=1)) == [[0, 1], [2, 3], [4]]


def test_sampler_training_order_matches_one_process_with_the_global_batch():
    from brainlm.data import WindowSampler

    one = list(WindowSampler(20, 4, rank=0, world_size=1, shuffle=True, seed=7, epoch=2))
    two = [list(WindowSampler(20, 2, rank=r, world_size=2, shuffle=True, seed=7, epoch=2)) for r in range(2)]
    assert len(one) == 5 and [a + b for a, b in zip(*two)] == one
    assert one != list(WindowSampler(20, 4, shuffle=True, seed=7, epoch=3))  # a new order every epoch
    resumed = list(WindowSampler(20, 4, shuffle=True, seed=7, epoch=2, start_batch=3))
    assert resumed == one[3:]  # resumes exactly where a run stopped
    assert len(list(WindowSampler(21, 4, shuffle=True))) == 5  # the incomplete tail is dropped


def test_multiworker_dataloader(store):
    ds = WindowDataset(store, "train", window=W, mode="fixed")
    loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=2, collate_fn=collate_windows)
    batches = list(loader)
    got = torch.cat([b["signal_vectors"] for b in batches])
    ref = torch.stack([ds[i]["signal_vectors"] for i in range(len(ds))])
    torch.testing.assert_close(got, ref)


def _rank_main(rank, world, path, port, out):
    from brainlm.data import WindowSampler
    from brainlm.data.sampler import IndexedDataset

    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    ds = WindowDataset(open_store(path), "train", window=W, mode="fixed")
    sampler = WindowSampler(len(ds), 2)  # rank and world size from torch.distributed
    loader = torch.utils.data.DataLoader(IndexedDataset(ds), batch_sampler=sampler, collate_fn=collate_windows)
    ids = [rid for batch in loader for rid, i in zip(batch["recording_id"], batch["index"]) if i >= 0]
    gathered = [None] * world
    torch.distributed.all_gather_object(gathered, (sampler.rank, ids))
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
    assert set(ids0) | set(ids1) == set(store.recordings.query("split == 'train'")["recording_id"])


def test_training_settings_balance_the_train_split_only(store):
    from brainlm.train import TrainConfig, build_datasets

    config = TrainConfig(model="tiny", window=W, model_overrides={"timepoint_patching_size": 4}, data=str(store.path),
                         train_mode="sliding", train_stride=4, eval_stride=4, train_balance="recording")
    train, val = build_datasets(config, ("train", "validation"))
    assert train.mode == "sliding" and len(train) == len(WindowDataset(store, "train", window=W, mode="sliding",
                                                                       stride=4, balance="recording"))
    assert len(val) == len(WindowDataset(store, "validation", window=W, mode="sliding", stride=4))
    assert len(train) > len(build_datasets(config.replace(train_balance="window"), ("train",))[0])
    with pytest.raises(ValueError, match="--train_balance must be 'window' or 'recording'"):
        config.replace(train_balance="subject")

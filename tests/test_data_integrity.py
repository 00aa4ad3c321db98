"""A store that was damaged, truncated or replaced stops every reader with one line naming the file."""

import shutil

import numpy as np
import pytest

from brainlm.cli import main
from brainlm.data import InputOptions, StoreOptions, WindowDataset, open_store, prepare
from brainlm.errors import CorruptFileError

R = 5


@pytest.fixture
def store_path(tmp_path, monkeypatch):
    monkeypatch.setenv("BRAINLM_CACHE", str(tmp_path / "cache"))
    rng = np.random.default_rng(0)
    inputs = []
    for i in range(6):
        path = tmp_path / "in" / f"sub-{i:02d}_task-rest.npy"
        path.parent.mkdir(exist_ok=True)
        np.save(path, rng.normal(size=(60, R)).astype(np.float32))
        inputs.append(path)
    np.savetxt(tmp_path / "c.dat", np.c_[np.arange(1, R + 1), rng.normal(size=(R, 3))], delimiter="\t")
    prepare(inputs, tmp_path / "store", InputOptions(coords=str(tmp_path / "c.dat")),
            StoreOptions(window=20, split=(4, 1, 1), dtype="float32", progress=False))
    return tmp_path / "store"


def _first_shard(path):
    store = open_store(path)
    return path / store.recordings["shard"].iloc[0]


def _flip_byte(path, offset):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def test_flipped_bytes_are_refused_by_every_reader(store_path, capsys):
    shard = _first_shard(store_path)
    _flip_byte(shard, shard.stat().st_size // 2)  # inside the values: pyarrow itself would not notice
    with pytest.raises(CorruptFileError, match=rf"{shard.name}: contents do not match the SHA-256"):
        open_store(store_path).get(0)
    with pytest.raises(CorruptFileError, match="SHA-256"):
        WindowDataset(store_path, "train", window=20)[0]
    assert main(["verify", str(store_path)]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]  # after the progress lines: the one-line error
    assert last.startswith("brainlm verify: error:") and shard.name in last


def test_truncated_shard_and_damaged_footer(store_path):
    shard = _first_shard(store_path)
    good = shard.read_bytes()
    shard.write_bytes(good[:-50])
    with pytest.raises(CorruptFileError, match=rf"{shard.name}: \d+ bytes, the manifest says \d+ \(truncated"):
        open_store(store_path).get(0)
    shard.write_bytes(good[:-8] + b"XXXXXXXX")  # same size, damaged footer
    with pytest.raises(CorruptFileError, match=shard.name):
        open_store(store_path).get(0)


def test_damaged_tables_and_missing_shard(store_path):
    store = open_store(store_path)
    table = store_path / store.manifest["files"]["recordings"]
    backup = table.read_bytes()
    _flip_byte(table, 100)
    with pytest.raises(CorruptFileError, match=rf"{table.name}: contents do not match"):
        open_store(store_path)
    table.write_bytes(backup)
    shard = _first_shard(store_path)
    shard.unlink()
    with pytest.raises(CorruptFileError, match="shard is missing"):
        open_store(store_path).get(0)


def test_verification_is_cached_per_file_state(store_path, monkeypatch):
    import brainlm.io as store_module  # the one per-file verifier and its cache

    calls = []
    real = store_module.sha256_file
    monkeypatch.setattr(store_module, "sha256_file", lambda p: calls.append(p) or real(p))
    store_module._VERIFIED.clear()
    open_store(store_path).get(0)
    n = len(calls)
    assert n >= 1
    store_module._VERIFIED.clear()  # a new process: the on-disk cache still knows the files
    open_store(store_path).get(0)
    assert len(calls) == n
    shard = _first_shard(store_path)
    shutil.copy(shard, shard.with_suffix(".bak"))
    shutil.copy(shard.with_suffix(".bak"), shard)  # same bytes, new modification time: checked again
    shard.with_suffix(".bak").unlink()
    store_module._VERIFIED.clear()
    open_store(store_path).get(0)
    assert len(calls) > n


def test_verify_command_reports_a_good_store(store_path, capsys):
    assert main(["verify", str(store_path)]) == 0
    assert "store OK" in capsys.readouterr().out

"""brainlm.io: subject tables, embedding tables, atomic writes, locks, the overwrite policy."""

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from brainlm.cli import main
from brainlm.errors import CorruptFileError, OutputExistsError, OutputLockedError, UserError
from brainlm.io import (
    MARKER,
    Embeddings,
    OutputLock,
    atomic_write,
    atomic_write_json,
    claim_file,
    claim_folder,
    folder_kind,
    json_line,
    output_folder,
    read_embeddings,
    read_subject_table,
    subject_matrix,
    write_embeddings,
)


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".parquet"])
def test_subject_ids_stay_text_and_lose_sub_prefix(tmp_path, suffix):
    frame = pd.DataFrame({"participant_id": ["sub-0012", "0013", "sub-7"], "age": [30, 40, 50]})
    path = tmp_path / f"p{suffix}"
    {".csv": lambda: frame.to_csv(path, index=False), ".tsv": lambda: frame.to_csv(path, sep="\t", index=False),
     ".parquet": lambda: frame.to_parquet(path)}[suffix]()
    table = read_subject_table(path)
    assert table.index.tolist() == ["0012", "0013", "7"]
    assert table["age"].tolist() == [30, 40, 50]


def test_subject_table_bad_inputs(tmp_path):
    with pytest.raises(FileNotFoundError, match="--targets .*nope.csv: file not found"):
        read_subject_table(tmp_path / "nope.csv", flag="--targets")
    pd.DataFrame({"subject_id": ["a", "a"], "y": [1, 2]}).to_csv(tmp_path / "dup.csv", index=False)
    with pytest.raises(UserError, match="subject 'a' appears more than once"):
        read_subject_table(tmp_path / "dup.csv")
    pd.DataFrame({"subject_id": ["a", None], "y": [1, 2]}).to_csv(tmp_path / "empty.csv", index=False)
    with pytest.raises(UserError, match="1 rows have no subject ID"):
        read_subject_table(tmp_path / "empty.csv")
    with pytest.raises(UserError, match="no column 'age'"):
        read_subject_table(tmp_path / "dup.csv", columns=["age"], unique=False)


@pytest.mark.parametrize("suffix", [".parquet", ".npy", ".csv", ".tsv"])
def test_embedding_round_trip_every_format(tmp_path, suffix):
    rng = np.random.default_rng(0)
    index = pd.DataFrame({"recording_id": ["r1", "r2", "r3"], "subject_id": ["0012", "0012", "0100"],
                          "session_id": ["", "2", ""], "run_id": ["1", "1", "1"], "window": [-1, -1, -1],
                          "window_start": [-1, -1, -1]})
    emb = Embeddings(rng.normal(size=(3, 5)).astype(np.float32), index, pooling="cls")
    paths = write_embeddings(emb, tmp_path / f"e{suffix}")
    back = read_embeddings(paths[0])
    np.testing.assert_allclose(back.X, emb.X, rtol=1e-6)
    assert back.index["subject_id"].tolist() == ["0012", "0012", "0100"]
    assert back.index["session_id"].tolist() == ["", "2", ""]
    ids, X = subject_matrix(back)  # rows of one subject told apart by recording_id: averaged
    assert ids.tolist() == ["0012", "0100"]
    np.testing.assert_allclose(X[0], emb.X[:2].mean(0), rtol=1e-6)
    with pytest.raises(OutputExistsError, match="pass --overwrite"):
        write_embeddings(emb, tmp_path / f"e{suffix}")


def test_embed_npy_output_is_read_by_integrate(tmp_path):
    """``embed --out x.npy`` writes ``x.index.tsv``; the integration reader finds it."""
    from brainlm.integrate import read_embedding_table

    index = pd.DataFrame({"recording_id": ["a", "b"], "subject_id": ["001", "002"]})
    write_embeddings(Embeddings(np.eye(2, dtype=np.float32), index), tmp_path / "x.npy")
    assert (tmp_path / "x.index.tsv").is_file()
    ids, X = read_embedding_table(tmp_path / "x.npy")
    assert ids.tolist() == ["001", "002"] and X.shape == (2, 2)


def test_integrate_keeps_leading_zeros_in_every_table(tmp_path):
    """IDs like 0012 join across brain, genetic, covariate and phenotype CSV/TSV tables."""
    rng = np.random.default_rng(0)
    ids = [f"{i:04d}" for i in range(30)]
    pd.DataFrame({"subject_id": ids, **{f"emb_{j}": rng.normal(size=30) for j in range(4)}}).to_csv(
        tmp_path / "brain.csv", index=False)
    pd.DataFrame({"subject_id": [f"sub-{i}" for i in ids], **{f"emb_{j}": rng.normal(size=30) for j in range(3)}}).to_csv(
        tmp_path / "gen.tsv", sep="\t", index=False)
    pd.DataFrame({"subject_id": ids, "age": rng.normal(size=30)}).to_csv(tmp_path / "cov.csv", index=False)
    pd.DataFrame({"subject_id": ids, "y": rng.normal(size=30)}).to_csv(tmp_path / "ph.csv", index=False)
    out = tmp_path / "fusion"
    argv = ["integrate", "fusion", "--brain", str(tmp_path / "brain.csv"), "--genetic", str(tmp_path / "gen.tsv"),
            "--covariates", str(tmp_path / "cov.csv"), "--phenotypes", str(tmp_path / "ph.csv"), "--target", "y",
            "--out", str(out), "--folds", "3", "--bootstrap", "20", "--models", "linear"]
    assert main(argv) == 0
    assert "30 subjects in the join" in (out / "report.md").read_text()


def test_integrate_refuses_to_replace_reports_without_overwrite(tmp_path, capsys):
    rng = np.random.default_rng(1)
    ids = [f"s{i}" for i in range(12)]
    for name, d in (("b", 4), ("g", 3)):
        pd.DataFrame({"subject_id": ids, **{f"emb_{j}": rng.normal(size=12) for j in range(d)}}).to_csv(
            tmp_path / f"{name}.csv", index=False)
    argv = ["integrate", "cca", "--brain", str(tmp_path / "b.csv"), "--genetic", str(tmp_path / "g.csv"),
            "--out", str(tmp_path / "cca"), "--folds", "3", "--permutations", "5", "--components", "1"]
    assert main(argv) == 0
    before = (tmp_path / "cca" / "report.md").stat().st_mtime_ns
    assert main(argv) == 2
    assert "pass --overwrite to replace" in capsys.readouterr().err
    assert (tmp_path / "cca" / "report.md").stat().st_mtime_ns == before
    assert main([*argv, "--overwrite"]) == 0


def test_atomic_write_leaves_old_file_when_writer_fails(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("old")

    def broken(tmp):
        tmp.write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(path, broken)
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_json_is_strict():
    assert json_line({"a": float("nan"), "b": [1.0, float("inf")]}) == '{"a": null, "b": [1.0, null]}'


def test_atomic_json(tmp_path):
    atomic_write_json(tmp_path / "m.json", {"x": float("nan"), "y": np.float32(2.0)})
    assert json.loads((tmp_path / "m.json").read_text()) == {"x": None, "y": 2.0}


def test_lock_refuses_a_second_writer_and_takes_over_a_dead_one(tmp_path):
    out = tmp_path / "run"
    with OutputLock(out, what="run folder"):
        with pytest.raises(OutputLockedError, match=rf"run: this run folder is being written by process {os.getpid()}"):
            OutputLock(out, what="run folder").acquire()
    # a lock left by a process that died is stale: taken over
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    lock = tmp_path / ".run.lock"
    lock.write_text(json.dumps({"host": os.uname().nodename, "pid": int(dead.stdout), "since": "earlier"}))
    with OutputLock(out):
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert not lock.exists()
    # a lock from another host cannot be checked: refused, with how to remove it
    lock.write_text(json.dumps({"host": "elsewhere", "pid": 1, "since": "earlier"}))
    with pytest.raises(OutputLockedError, match="if that process is gone, delete"):
        OutputLock(out).acquire()


def test_output_folder_bad_targets_and_cleanup(tmp_path, monkeypatch):
    (tmp_path / "ro").mkdir()
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="--out .*file is a file, not a folder"):
        with output_folder(tmp_path / "file"):
            pass
    with pytest.raises(UserError, match="--out .*file/sub: .*file is not writable|is a file"):
        with output_folder(tmp_path / "file" / "sub"):
            pass
    # a read-only parent (simulated: the tests may run as root, for whom permissions do not apply)
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    with pytest.raises(UserError, match="--out .*ro/out: .*ro is not writable"):
        with output_folder(tmp_path / "ro" / "out"):
            pass


def test_output_folder_removes_a_new_empty_folder_on_failure(tmp_path):
    with pytest.raises(RuntimeError):
        with output_folder(tmp_path / "new"):
            raise RuntimeError("boom")
    assert not (tmp_path / "new").exists() and not (tmp_path / ".new.lock").exists()


def test_one_rule_decides_which_folders_a_command_may_write(tmp_path):
    # a new or an empty folder is claimed, and marked with what it holds
    assert claim_folder(tmp_path / "new", "run") == tmp_path / "new"
    assert json.loads((tmp_path / "new" / MARKER).read_text()) == {"kind": "run"}
    (tmp_path / "empty").mkdir()
    assert folder_kind(claim_folder(tmp_path / "empty", "report")) == "report"
    # the same kind again is the command's to continue or replace; another kind is refused
    claim_folder(tmp_path / "new", "run")
    with pytest.raises(OutputExistsError, match="--out .*new holds a brainlm run, not a store"):
        claim_folder(tmp_path / "new", "store")
    # a folder of an earlier version (no marker) is recognised by its signature files
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (legacy / "manifest.json").write_text('{"format": "brainlm-store/1"}')
    assert folder_kind(legacy) == "store" and claim_folder(legacy, "store") and (legacy / MARKER).is_file()
    (tmp_path / "old_report").mkdir()
    (tmp_path / "old_report" / "report.md").write_text("# old\n")
    with pytest.raises(OutputExistsError, match="not overwriting .*report.md"):
        claim_folder(tmp_path / "old_report", "report", outputs=["report.md"])
    claim_folder(tmp_path / "old_report", "report", outputs=["report.md"], overwrite=True)
    # someone else's files: refused with or without overwrite, and left alone
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine\n")
    for overwrite in (False, True):
        with pytest.raises(OutputExistsError, match="--out .*mine is not empty and was not written by brainlm"):
            claim_folder(mine, "report", outputs=["report.md"], overwrite=overwrite)
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]
    # a file is not a folder, a folder not a file; a marker that is not one is named
    with pytest.raises(UserError, match="--out .*notes.txt is a file, not a folder"):
        claim_folder(mine / "notes.txt", "report")
    with pytest.raises(UserError, match="--out .*mine is a folder, not a file"):
        claim_file(mine)
    with pytest.raises(OutputExistsError, match="not overwriting .*notes.txt"):
        claim_file(mine / "notes.txt")
    (tmp_path / "empty" / MARKER).write_text('{"kind": "spaceship"}')
    with pytest.raises(CorruptFileError, match="not a brainlm folder marker"):
        claim_folder(tmp_path / "empty", "report")

"""What the hostile-input tests share: tiny inputs, and the one assertion every refusal makes.

A refused command exits with its status (2, or 130 for Ctrl-C), prints exactly one line on
standard error that names the file or the flag, and leaves every file that existed before it
exactly as it was (checksums before and after), with nothing new beside them.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from downstream_synth import synthetic_store, tiny_model

from brainlm.checkpoint import save_pretrained
from brainlm.cli import main
from brainlm.io import write_manifest

R = 6
# pretrain on the tiny synthetic store (6 regions, windows of 20): a few seconds per run
PRETRAIN = ["--preset=tiny", "--max_steps=2", "--eval_every=2", "--save_every=2", "--log_every=1", "--batch_size=2",
            "--eval_max_batches=1", "--plots=false", "--window=20", "--model.num_timepoints_per_voxel=20",
            "--model.timepoint_patching_size=5", "--model.hidden_size=16", "--model.intermediate_size=32",
            "--model.decoder_hidden_size=16", "--model.decoder_intermediate_size=32", "--num_workers=0"]


def tree(root: Path) -> dict[str, str]:
    """Every file under ``root`` (hidden ones too): relative path -> SHA-256."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(root).rglob("*")) if p.is_file()}


def refused(capsys, root: Path, argv: list[str], *names: str, status: int = 2) -> str:
    """Run ``brainlm ARGV``; assert the refusal (module docstring); return its one line."""
    capsys.readouterr()
    before = tree(root)
    assert main([str(a) for a in argv]) == status
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"brainlm {argv[0]}"), lines[0]
    assert all(str(n) in lines[0] for n in names), (names, lines[0])
    assert tree(root) == before
    return lines[0]


def series(i: int, T: int = 60, seed: int = 0) -> np.ndarray:
    """A (T, R) recording of smooth sources and noise; no region is constant."""
    rng = np.random.default_rng((seed, i))
    t = np.arange(T)[:, None]
    return (np.sin(2 * np.pi * rng.uniform(0.02, 0.2, R) * t + rng.uniform(0, 6, R)) + 0.3 * rng.normal(size=(T, R))
            ).astype(np.float32)


def write_inputs(folder: Path, n: int = 6, T: int = 60) -> list[Path]:
    """``n`` parcellated recordings ``sub-XX.npy`` and ``coords.csv`` beside them."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        np.save(folder / f"sub-{i:02d}.npy", series(i, T))
        paths.append(folder / f"sub-{i:02d}.npy")
    coords = np.random.default_rng(0).normal(size=(R, 3)) * 40
    (folder.parent / "coords.csv").write_text("x,y,z\n" + "".join(f"{a},{b},{c}\n" for a, b, c in coords))
    return paths


@pytest.fixture(autouse=True)
def no_progress_bars(monkeypatch):
    """Standard error then holds only what the command says (import it into a test module)."""
    monkeypatch.setenv("BRAINLM_PROGRESS", "0")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Read-only material of a test module: six inputs and ``coords.csv``, a store, and a checkpoint
    with a manifest (as training writes them)."""
    root = tmp_path_factory.mktemp("hostile")
    write_inputs(root / "inputs", n=6)
    synthetic_store(root / "store")
    save_pretrained(tiny_model(), root / "ckpt")
    write_manifest(root / "ckpt")
    return root

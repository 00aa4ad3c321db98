"""kill -9 at a random moment, and in the middle of a checkpoint write: resume gives the same weights."""

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from brainlm.train import read_metrics
from brainlm.hub import find_checkpoints
from brainlm.io import verify_manifest

TESTS = Path(__file__).parent
SRC = TESTS.parent / "src"
SETTINGS = dict(max_steps=60, save_every=5, keep_last=3, eval_every=0, log_every=1)


def _start(out: Path, env_extra: dict | None = None, resume: bool = False) -> subprocess.Popen:
    """Training in a fresh process, as a user would run and rerun it.

    The reference, the killed run and its resume all run this way, on one thread from the start:
    torch's CPU kernels are bitwise reproducible between processes that never change their thread
    count (this suite's process has changed it, and ``num_threads=1`` would change it again).
    """
    code = (
        f"import sys; sys.path.insert(0, {str(TESTS)!r})\n"
        "from _train_helpers import ToyWindows, tiny_config\n"
        "from brainlm.train import pretrain\n"
        f"pretrain(tiny_config({str(out)!r}, **{SETTINGS!r}), resume={resume!r}, train_dataset=ToyWindows(), "
        "val_dataset=ToyWindows(8, seed=1))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", **(env_extra or {})}
    return subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _run(out: Path, resume: bool = False) -> Path:
    """Train (or resume) to the end in a fresh process; the last checkpoint."""
    proc = _start(out, resume=resume)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err.decode()[-2000:]
    last = find_checkpoints(out)[-1]
    assert last.name == f"step_{SETTINGS['max_steps']:08d}"
    return last


def _wait_for(condition, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    t0 = time.monotonic()
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"training exited early: {proc.stderr.read().decode()[-2000:]}")
        if time.monotonic() - t0 > timeout:
            proc.kill()
            raise AssertionError("timed out waiting for the training subprocess")
        time.sleep(0.02)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    return load_file(_run(tmp_path_factory.mktemp("ref") / "run") / "model.safetensors")


def _assert_same(weights: dict, checkpoint: Path) -> None:
    got = load_file(checkpoint / "model.safetensors")
    assert all(torch.equal(weights[k], got[k]) for k in weights)


def test_sigkill_at_random_moment_then_resume(reference, tmp_path):
    out = tmp_path / "run"
    rng = random.Random(1234)
    kill_after = rng.randint(1, SETTINGS["max_steps"] - 10)  # a random step, then a random moment inside it
    proc = _start(out)
    _wait_for(lambda: max([r["step"] for r in read_metrics(out)], default=0) >= kill_after, proc)
    time.sleep(rng.uniform(0.0, 0.01))
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL  # killed, not finished
    for folder in find_checkpoints(out):  # every checkpoint that looks complete is complete
        verify_manifest(folder)
    logged = max([r["step"] for r in read_metrics(out)], default=0)
    saved = int(find_checkpoints(out)[-1].name.split("_")[1]) if find_checkpoints(out) else 0
    assert logged - saved <= SETTINGS["save_every"]  # lost work: at most one checkpoint interval
    _assert_same(reference, _run(out, resume=True))
    steps = [r["step"] for r in read_metrics(out) if r["split"] == "train"]
    assert steps == list(range(1, SETTINGS["max_steps"] + 1))  # the log has each step once


def test_sigkill_during_checkpoint_write(reference, tmp_path):
    out = tmp_path / "run"
    proc = _start(out, {"BRAINLM_CHECKPOINT_PAUSE": "10:600"})  # writer stalls inside step 10's checkpoint
    ckpts = out / "checkpoints"
    _wait_for(lambda: ckpts.is_dir() and any((p / "model.safetensors").exists() for p in ckpts.glob(".tmp-step_00000010-*")), proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert [p.name for p in find_checkpoints(out)] == ["step_00000005"]  # the half-written one is not picked up
    assert list(ckpts.glob(".tmp-step_00000010-*"))
    last = _run(out, resume=True)
    assert not list(ckpts.glob(".tmp-*"))  # cleaned up on resume
    _assert_same(reference, last)

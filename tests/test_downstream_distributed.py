"""Embeddings and reconstructions on 2 gloo processes equal the single-process outputs."""

import numpy as np
import pandas as pd
import pytest
import torch.multiprocessing as mp
from _train_helpers import cli_worker, free_port
from downstream_synth import synthetic_store, tiny_model

from brainlm import save_pretrained
from brainlm.cli import main
from brainlm.io import read_embeddings


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist")
    store = synthetic_store(root / "store", n_subjects=7, split=(5, 1, 1))  # an odd count: ranks get 4 and 3
    save_pretrained(tiny_model(), root / "model")
    return root, store


def _spawn(argv):
    for attempt in range(3):
        try:
            mp.spawn(cli_worker, args=(2, free_port(), argv), nprocs=2)
            return
        except mp.ProcessRaisedException as err:
            if "address already in use" not in str(err).lower() or attempt == 2:
                raise


def test_embed_on_two_processes_equals_one(setup):
    root, store = setup
    common = [str(root / "model"), str(store.path), "--windows", "sliding", "--device", "cpu", "--precision", "fp32"]
    assert main(["embed", *common, "--out", str(root / "one.parquet")]) == 0
    _spawn(["embed", *common, "--out", str(root / "two.parquet")])
    one, two = read_embeddings(root / "one.parquet"), read_embeddings(root / "two.parquet")
    pd.testing.assert_frame_equal(one.index, two.index)  # same rows, same order
    np.testing.assert_allclose(two.X, one.X, rtol=1e-5, atol=1e-6)


def test_reconstruct_on_two_processes_equals_one(setup):
    root, store = setup
    common = [str(root / "model"), str(store.path), "--device", "cpu", "--precision", "fp32"]
    assert main(["reconstruct", *common, "--out", str(root / "r1")]) == 0
    _spawn(["reconstruct", *common, "--out", str(root / "r2")])
    one, two = (pd.read_csv(root / r / "r2_per_region.csv", dtype={"subject_id": str}) for r in ("r1", "r2"))
    pd.testing.assert_frame_equal(one.drop(columns="r2"), two.drop(columns="r2"))
    np.testing.assert_allclose(two["r2"], one["r2"], rtol=1e-4, atol=1e-5)
    s1, s2 = (pd.read_csv(root / r / "summary.csv") for r in ("r1", "r2"))
    np.testing.assert_allclose(s2["conn_r2_masked"], s1["conn_r2_masked"], rtol=1e-6)

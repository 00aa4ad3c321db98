import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
from conftest import make_batch
from downstream_synth import PATCH, WINDOW, R, synthetic_store, tiny_model

from brainlm.checkpoint import save_pretrained
from brainlm.downstream import (
    check_regions,
    cls_attention,
    embed,
    embed_windows,
    load_model,
    open_recordings,
    read_embeddings,
    window_starts,
    write_embeddings,
)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return synthetic_store(tmp_path_factory.mktemp("store"))


@pytest.fixture(scope="module")
def model():
    return tiny_model()


def test_pooling_shapes_and_semantics(model):
    x, xyz = make_batch(3, R, WINDOW)
    with torch.no_grad():
        hidden = model(x, xyz, mask_ratio=0.0).encoder_last_hidden_state  # (B, 1 + L, D)
    P = WINDOW // PATCH
    cls = embed_windows(model, x, xyz, "cls")
    mean = embed_windows(model, x, xyz, "mean")
    rt = embed_windows(model, x, xyz, "region_time")
    rt_avg = embed_windows(model, x, xyz, "region_time", average_regions=True)
    assert cls.shape == mean.shape == rt_avg.shape == (3, 16) and rt.shape == (3, R, 16)
    np.testing.assert_allclose(cls, hidden[:, 0].numpy(), atol=1e-6)
    np.testing.assert_allclose(mean, hidden[:, 1:].mean(1).numpy(), atol=1e-6)
    manual = hidden[:, 1:].reshape(3, R, P, 16).mean(2).numpy()  # region-major tokens
    np.testing.assert_allclose(rt, manual, atol=1e-6)
    np.testing.assert_allclose(rt_avg, manual.mean(1), atol=1e-6)
    # Region-major order: changing region 2 only changes region 2's region_time row in layer 0 inputs,
    # and coordinates passed as (R, 3) broadcast like (B, R, 3).
    np.testing.assert_allclose(embed_windows(model, x, xyz[0], "cls"), cls, atol=1e-6)


def test_unknown_pooling_is_an_error(model):
    x, xyz = make_batch(1, R, WINDOW)
    with pytest.raises(ValueError, match="pooling must be one of"):
        embed_windows(model, x, xyz, "max")


def test_attention_maps_shape_and_sum(model):
    x, xyz = make_batch(2, R, WINDOW)
    a = cls_attention(model, x, xyz)
    assert a.shape == (2, R, WINDOW // PATCH)
    np.testing.assert_allclose(a.sum((1, 2)), 1.0, atol=1e-5)
    emb, per_region = embed_windows(model, x, xyz, "cls", attention=True)
    assert per_region.shape == (2, R)
    np.testing.assert_allclose(per_region, a.sum(-1), atol=1e-5)
    # Every layer's map, and their mean (layer=None).
    layers = [cls_attention(model, x, xyz, layer) for layer in range(model.config.num_hidden_layers)]
    np.testing.assert_allclose(layers[-1], a, atol=1e-6)
    assert not np.allclose(layers[0], layers[-1])
    np.testing.assert_allclose(cls_attention(model, x, xyz, None), np.mean(layers, 0), atol=1e-6)
    with pytest.raises(ValueError, match="--layer 2: the encoder has 2 layers"):
        cls_attention(model, x, xyz, 2)


def test_window_starts():
    assert window_starts(100, 20, 20).tolist() == [0, 20, 40, 60, 80]
    assert window_starts(100, 20, 30).tolist() == [0, 30, 60]
    assert window_starts(100, 20, mode="first").tolist() == [0]
    assert window_starts(10, 20).tolist() == []


def test_sliding_windows_and_their_average(store, model):
    sl = embed(model, store, split="validation", windows="sliding", stride=10, progress=False)
    av = embed(model, store, split="validation", windows="average", stride=10, progress=False)
    first = embed(model, store, split="validation", windows="first", progress=False)
    n_per = len(window_starts(120, WINDOW, 10))
    assert len(sl) == 2 * n_per and len(av) == 2 and len(first) == 2
    for rid, group in sl.index.groupby("recording_id").groups.items():
        row = av.index.index[av.index["recording_id"] == rid][0]
        np.testing.assert_allclose(av.X[row], sl.X[group].mean(0), atol=1e-5)
        assert sl.index.loc[group, "window_start"].tolist() == list(range(0, 120 - WINDOW + 1, 10))
    assert (av.index["window"] == -1).all()
    # The first window equals a direct call on the store's recording.
    ts = store.get(av.index["recording_id"].iloc[0])
    np.testing.assert_allclose(first.X[0], embed_windows(model, ts[None, :WINDOW].transpose(0, 2, 1), store.coords)[0], atol=1e-5)


@pytest.mark.parametrize("suffix", [".parquet", ".npy"])
def test_written_embeddings_are_keyed(store, model, tmp_path, suffix):
    emb = embed(model, store, windows="sliding", pooling="region_time", attention=True, progress=False)
    path = tmp_path / f"emb{suffix}"
    write_embeddings(emb, path)
    back = read_embeddings(path)
    np.testing.assert_allclose(back.X, emb.X)
    assert back.X.shape == (len(emb), R, 16)
    np.testing.assert_allclose(back.attention, emb.attention)
    pd.testing.assert_frame_equal(back.index, emb.index, check_dtype=False)
    assert set(emb.index["subject_id"]) == set(store.recordings["subject_id"])
    if suffix == ".parquet":
        cols = pq.read_schema(path).names
        assert cols[:6] == ["recording_id", "subject_id", "session_id", "run_id", "window", "window_start"]
    with pytest.raises(FileExistsError, match="not overwriting"):
        write_embeddings(emb, path)
    write_embeddings(emb, path, overwrite=True)


def test_files_accepted_by_prepare(tmp_path, model, store):
    ts = store.get(0)
    np.save(tmp_path / "sub-07_run-2_bold.npy", ts)
    emb = embed(model, [tmp_path / "sub-07_run-2_bold.npy"], coords=store.coords, windows="first", progress=False)
    assert emb.index.loc[0, "subject_id"] == "07" and emb.index.loc[0, "run_id"] == "2"
    with pytest.raises(ValueError, match="need region coordinates"):
        open_recordings([tmp_path / "sub-07_run-2_bold.npy"])


def test_region_mismatch_names_both_counts(store):
    with pytest.raises(ValueError, match=r"trained on 7 regions but .* has 6"):
        embed(tiny_model(num_regions=7), store, progress=False)


def test_short_recordings_are_skipped_and_listed(store, model):
    emb = embed(model, store, window=100, windows="first", progress=False)
    assert emb.skipped == [] and len(emb) == len(store)
    with pytest.raises(ValueError, match="holds a window of 200"):
        embed(model, store, window=200, progress=False)


def test_load_model_dispatch(tmp_path, model, golden_dir):
    save_pretrained(model, tmp_path / "ours")
    run = tmp_path / "run"
    save_pretrained(model, run / "checkpoints" / "step_00000010")
    save_pretrained(model, run / "checkpoints" / "step_00000020")
    x, xyz = make_batch(1, R, WINDOW)
    ref = embed_windows(model, x, xyz)
    for path in (tmp_path / "ours", run, run / "checkpoints" / "step_00000010"):
        np.testing.assert_allclose(embed_windows(load_model(path), x, xyz), ref, atol=1e-6)
    save_pretrained(model, run / "best")
    assert load_model(run) is not None
    orig = load_model(golden_dir)  # original BrainLM format
    assert type(orig).__name__ == "BrainLMForPretraining"
    with pytest.raises(FileNotFoundError, match="not a checkpoint folder"):
        load_model(tmp_path)
    with pytest.raises(FileNotFoundError):
        load_model(tmp_path / "nothing")


def test_vitmae_models(tmp_path):
    from test_vitmae import tiny_model as tiny_vitmae

    vit = tiny_vitmae()
    vit.mae.save_pretrained(tmp_path / "vit")
    loaded = load_model(tmp_path / "vit")
    assert type(loaded).__name__ == "BrainLMViTMAE"
    x = torch.randn(2, 424, 200)
    assert embed_windows(loaded, x, torch.zeros(424, 3), "mean").shape == (2, 32)
    # Region vectors come from the image patches that hold each region (brainlm.vitmae).
    assert embed_windows(loaded, x, torch.zeros(424, 3), "region_time").shape == (2, 424, 32)
    with pytest.raises(ValueError, match=r"trained on 424 regions but .* has 94"):
        check_regions(loaded, 94, "the store")


def test_parquet_reads_as_an_integration_embedding_table(store, model, tmp_path):
    from brainlm.integrate.io import read_embedding_table

    emb = embed(model, store, windows="sliding", progress=False)
    write_embeddings(emb, tmp_path / "e.parquet")
    ids, X = read_embedding_table(tmp_path / "e.parquet")  # windows of a subject averaged
    first = ids[0]
    np.testing.assert_allclose(X[0], emb.X[emb.index["subject_id"] == first].mean(0), atol=1e-5)

"""The Brainmarks model plugin (brainlm.plugins.brainmarks) against Brainmarks' own code.

brainmarks 0.1.1 is part of the test environment (``make test`` installs it): the transform is
compared with Brainmarks' own ``BrainLMTransform``, and Brainmarks' own ``main_logistic`` runs the
plugin end to end, with the same table as ``brainlm benchmark --protocol brainmarks`` on the store
``prepare --normalization brainmarks-brainlm`` writes from the same dataset.
"""

import builtins

import brainmarks.datasets.base
import brainmarks.datasets.hcpya
import brainmarks.main_logistic
import numpy as np
import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf

from brainlm.errors import UserError
from brainlm.model import BrainLMForPretraining, brainlm_tiny
from brainlm.plugins.brainmarks import BrainmarksModel, BrainmarksTransform, create_brainmarks_model

from brainmarks_synth import brainmarks_brainlm_transform, brainmarks_samples, write_brainmarks_dataset

COLUMNS = ["C", "acc", "acc_std", "f1", "f1_std", "bacc", "bacc_std"]


def _as_loaded(row: dict) -> dict:
    """A sample as Brainmarks' dataset hands it over (``set_format("torch")``: float32 tensors)."""
    return {k: torch.tensor(v, dtype=torch.float32) if isinstance(v, (np.ndarray, float)) else
            (torch.tensor(v) if isinstance(v, int) else v) for k, v in row.items()}


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return BrainLMForPretraining(brainlm_tiny(num_brain_voxels=424, num_timepoints_per_voxel=100,
                                              timepoint_patching_size=50, hidden_size=16, intermediate_size=32,
                                              decoder_hidden_size=16, decoder_intermediate_size=32)).eval()


@pytest.fixture(scope="module")
def brainmarks_transform(tmp_path_factory):
    return brainmarks_brainlm_transform(tmp_path_factory.mktemp("brainmarks"))


@pytest.mark.parametrize("tr,window", [(0.72, 100), (2.0, 200), (0.5, 200)])
def test_transform_is_brainmarks_own_transform(brainmarks_transform, tr, window):
    """To the last bit: the same unscaling, float32 quantiles, scaling, resampling and padding.
    Brainmarks then divides by 5.6430855 and orders the regions by Y; the ViT-MAE adapter does
    both itself, so its division is by 1 here and its order is undone."""
    samples = brainmarks_samples((4, 1, 1), length=250, tr=tr)
    train = [_as_loaded(r) for r in samples["train"]]
    ours = BrainmarksTransform(window=window).fit(train)
    theirs = brainmarks_transform(num_timepoints=window, max_val_to_scale=1.0, repeat_channels=False)
    theirs.fit(train)
    back = np.argsort(np.asarray(theirs.reorder_indices))  # Brainmarks' region order -> A424's
    for sample in [*train, _as_loaded(samples["test"][0])]:
        got, expected = ours(dict(sample)), theirs(dict(sample))["bold"][:, 0][:, back]  # (W, R, window)
        assert got["bold"].dtype == torch.float32 and got["bold"].shape == expected.shape
        torch.testing.assert_close(got["bold"], expected, rtol=0, atol=0)
        assert got["sub"] == sample["sub"]  # the rest of the sample is left as it was


def test_model_gives_brainmarks_triple(model):
    x = torch.randn(2, 3, 424, 100)  # (B, W, R, T)
    wrapper = BrainmarksModel(model)
    cls, reg, patch = wrapper({"bold": x})
    assert cls.shape == (2, 1, 16) and reg is None and patch.shape == (2, 3 * 424 * 2, 16)
    xyz = wrapper.xyz.expand(3, 424, 3)
    per_window = model.embed(x[1], xyz, pooling="cls").embeddings  # (W, D)
    torch.testing.assert_close(cls[1, 0], per_window.mean(0), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(patch[1, :848], model.embed(x[1, :1], xyz[:1], pooling="tokens").embeddings[0])


def test_create_from_a_folder_and_bad_arguments(model, tmp_path, monkeypatch):
    model.save_pretrained(tmp_path / "m")
    transform, wrapper = create_brainmarks_model(str(tmp_path / "m"))
    assert transform.window == 100 and wrapper.__space__ == "a424"
    monkeypatch.setenv("BRAINLM_CHECKPOINT", str(tmp_path / "m"))
    assert create_brainmarks_model()[0].window == 100
    monkeypatch.delenv("BRAINLM_CHECKPOINT")
    with pytest.raises(UserError, match="model_kwargs.checkpoint=PATH"):
        create_brainmarks_model()
    with pytest.raises(UserError, match=r"unknown model_kwargs \['variant'\]"):
        create_brainmarks_model(str(tmp_path / "m"), variant="111m")
    (tmp_path / "m" / "manifest.json").unlink()
    with pytest.raises(UserError, match="model_kwargs.trust_unverified|trust_unverified=True"):
        create_brainmarks_model(str(tmp_path / "m"))
    assert create_brainmarks_model(str(tmp_path / "m"), trust_unverified=True)[0].window == 100
    small = BrainLMForPretraining(brainlm_tiny(num_brain_voxels=10, num_timepoints_per_voxel=100,
                                               timepoint_patching_size=50))
    with pytest.raises(UserError, match="Brainmarks' a424 space has 424"):
        BrainmarksModel(small)


def test_brainmarks_finds_the_plugin():
    from brainmarks.models.registry import list_models

    assert "brainlm_checkpoint" in list_models()


def _main_logistic(monkeypatch, root, out, checkpoint, **settings):
    """Brainmarks' ``main_logistic`` in this process, as ``python -m brainmarks.main_logistic
    brainlm_checkpoint cls hcpya_rest1lr_gender --overrides ...`` runs it; its table."""
    monkeypatch.setattr(brainmarks.datasets.hcpya, "HCPYA_ROOT", str(root))
    monkeypatch.setattr(brainmarks.datasets.base, "HF_DATASETS_CACHE", str(out / "hf-cache"))
    monkeypatch.setattr(builtins, "print", builtins.print)  # main() replaces it; put it back afterwards
    overrides = {"model_kwargs": {"checkpoint": str(checkpoint)}, "device": "cpu", "amp": False, "num_workers": 1,
                 "output_root": str(out), "model": "brainlm_checkpoint", "representation": "cls",
                 "dataset": "hcpya_rest1lr_gender", **settings}
    args = OmegaConf.unsafe_merge(OmegaConf.load(brainmarks.main_logistic.DEFAULT_CONFIG), OmegaConf.create(overrides))
    brainmarks.main_logistic.main(args)
    return pd.read_csv(next(out.rglob("eval_table.csv")))


def test_main_logistic_with_the_plugin_gives_our_protocols_table(model, tmp_path, monkeypatch):
    from brainlm.data import InputOptions, StoreOptions, open_source, write_store
    from brainlm.evaluate.brainmarks import LogisticProtocol
    from brainlm.pipelines.brainmarks import BrainmarksOptions, brainmarks_benchmark

    samples = brainmarks_samples((16, 6, 8), length=200, signal=1.0, seed=1)
    root = write_brainmarks_dataset(tmp_path / "eval" / "hcpya-rest1lr.a424.arrow", samples)
    model.save_pretrained(tmp_path / "model")
    # fewer values of C, folds and solver iterations than Brainmarks' defaults, on both sides, for time
    solver = {"Cs": 3, "cv_folds": 2, "max_iter": 100}
    theirs = _main_logistic(monkeypatch, tmp_path / "eval", tmp_path / "out", tmp_path / "model", n_trials=0, **solver)
    store = write_store(open_source([root], InputOptions(kind="brainmarks")), tmp_path / "store",
                        StoreOptions(window=100, dtype="float32", normalization="brainmarks-brainlm", progress=False))
    options = BrainmarksOptions(protocol="brainmarks", trials=0, baselines=(), engine="brainlm")
    ours = brainmarks_benchmark(model, store, "gender", options, precision="fp32",
                                protocol=LogisticProtocol(**solver))["results"]["brainlm:cls"].table
    assert len(theirs) == len(ours) == 2  # the fixed splits: train and test rows
    assert list(theirs["split"]) == list(ours["split"])
    np.testing.assert_array_equal(ours[COLUMNS].to_numpy(), theirs[COLUMNS].to_numpy())


def test_num_workers_0_is_refused_before_any_work(model, tmp_path, monkeypatch):
    model.save_pretrained(tmp_path / "model")
    # no dataset at all: the refusal comes first, when Brainmarks creates the model
    with pytest.raises(UserError, match="num_workers=0 .* pass num_workers=1 or more"):
        _main_logistic(monkeypatch, tmp_path / "nothing", tmp_path / "out", tmp_path / "model", num_workers=0)

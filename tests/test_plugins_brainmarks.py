"""The Brainmarks model plugin (brainlm.plugins.brainmarks) without Brainmarks installed, and its
registration when it is. ``benchmarks/bench_brainmarks_plugin.py`` runs Brainmarks' own
``main_logistic`` with it end to end."""

import numpy as np
import pytest
import torch

from brainlm.data import Normalizer
from brainlm.errors import UserError
from brainlm.model import BrainLMForPretraining, brainlm_tiny
from brainlm.plugins.brainmarks import BrainmarksModel, BrainmarksTransform, create_brainmarks_model

from brainmarks_synth import brainmarks_samples


def _as_loaded(row: dict) -> dict:
    """A sample as Brainmarks' dataset hands it over (``set_format("torch")``)."""
    return {k: torch.tensor(v) if isinstance(v, (np.ndarray, float, int)) else v for k, v in row.items()}


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return BrainLMForPretraining(brainlm_tiny(num_brain_voxels=424, num_timepoints_per_voxel=100,
                                              timepoint_patching_size=50, hidden_size=16, intermediate_size=32,
                                              decoder_hidden_size=16, decoder_intermediate_size=32)).eval()


def test_transform_unscales_normalises_pads_and_cuts_windows():
    samples = brainmarks_samples((4, 1, 1), length=250, tr=2.0)
    train = [_as_loaded(r) for r in samples["train"]]
    transform = BrainmarksTransform(window=200).fit(train)
    unscaled = [r["bold"].astype(np.float32) * r["std"] + r["mean"] for r in samples["train"]]
    reference = Normalizer("brainmarks-brainlm").fit(unscaled)
    out = transform(dict(train[0]))
    expected = reference.transform(unscaled[0], tr=2.0)  # 250 at 2 s -> 680 at 0.735 s: three windows
    assert out["bold"].shape == (3, 424, 200) and out["bold"].dtype == torch.float32
    np.testing.assert_allclose(out["bold"].numpy(), expected[:600].reshape(3, 200, 424).transpose(0, 2, 1), atol=1e-5)
    assert out["sub"] == samples["train"][0]["sub"]  # the rest of the sample is left as it was
    short = BrainmarksTransform(window=800).fit(train)(dict(train[1]))["bold"][0].numpy()  # (R, 800)
    np.testing.assert_allclose(short[:, 680:], np.repeat(short[:, :680].mean(1, keepdims=True), 120, 1), atol=1e-5)


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
    small = BrainLMForPretraining(brainlm_tiny(num_brain_voxels=10, num_timepoints_per_voxel=100,
                                               timepoint_patching_size=50))
    with pytest.raises(UserError, match="Brainmarks' a424 space has 424"):
        BrainmarksModel(small)


def test_brainmarks_finds_the_plugin():
    registry = pytest.importorskip("brainmarks.models.registry")
    assert "brainlm_checkpoint" in registry.list_models()

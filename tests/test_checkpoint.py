import json
import os
import pickle
import shutil

import pytest
import torch
from conftest import make_batch
from safetensors.torch import load_file, save_file

from brainlm.checkpoint import (
    convert_original_state_dict,
    load_pretrained,
    load_state_dict_file,
    save_pretrained,
    to_original_state_dict,
)
from brainlm.model import BrainLMForPretraining, brainlm_tiny
from brainlm.io import MARKER


@pytest.mark.parametrize("weights", ["model.safetensors", "pytorch_model.bin"])
def test_golden_original_checkpoint_reproduced(golden_dir, tmp_path, weights):
    folder = tmp_path / "ckpt"
    folder.mkdir()
    shutil.copy(golden_dir / "config.json", folder)
    shutil.copy(golden_dir / weights, folder)
    golden = load_file(str(golden_dir / "golden.safetensors"))
    model = load_pretrained(folder)
    assert not model.training
    with torch.no_grad():
        out = model(golden["signal_vectors"], golden["xyz_vectors"], noise=golden["noise"])
    assert torch.equal(out.mask, golden["mask"])
    assert abs(out.loss.item() - golden["loss"].item()) < 1e-5
    assert (out.encoder_last_hidden_state - golden["encoder_last_hidden_state"]).abs().max() < 1e-5
    assert (out.logits - golden["logits"]).abs().max() < 1e-4


ORIGINAL_CONFIGS = [
    dict(),
    dict(use_tanh_decoder=True, loss_fn="mae"),
    dict(num_attention_heads=4, decoder_num_attention_heads=1, conv_kernel_size=33, hidden_act="relu"),
    dict(num_timepoints_per_voxel=60, timepoint_patching_size=6, mask_ratio=0.1, conv_kernel_size=None),
    dict(hidden_size=48, decoder_hidden_size=48, intermediate_size=40, decoder_num_hidden_layers=3,
         num_hidden_layers=1, layer_norm_eps=1e-6),
]


@pytest.mark.parametrize("overrides", ORIGINAL_CONFIGS)
def test_matches_original_architecture_for_any_config(overrides):
    """The original wiring around transformers' NystromformerLayer gives the same numbers."""
    pytest.importorskip("transformers")
    from brainlm.reference import OriginalBrainLM

    torch.manual_seed(0)
    cfg = brainlm_tiny(**overrides)
    ours = BrainLMForPretraining(cfg).eval()
    ref = OriginalBrainLM(cfg).eval()
    ref.load_state_dict(to_original_state_dict(ours.state_dict()), strict=True)
    R, T = 23, cfg.num_timepoints_per_voxel
    x, xyz = make_batch(2, R, T, seed=3)
    noise = torch.rand(2, R * (T // cfg.timepoint_patching_size))
    with torch.no_grad():
        a = ours(x, xyz, noise=noise)
        loss, logits, mask, latent = ref(x, xyz, noise=noise)
    assert torch.equal(a.mask, mask)
    assert (a.encoder_last_hidden_state - latent).abs().max() < 1e-5
    assert (a.logits - logits).abs().max() < 1e-4
    assert abs(a.loss.item() - loss.item()) < 1e-5


def test_save_load_round_trip_is_exact(tmp_path):
    torch.manual_seed(0)
    model = BrainLMForPretraining(brainlm_tiny(use_tanh_decoder=True)).eval()
    save_pretrained(model, tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == [MARKER, "config.json", "manifest.json",
                                                                   "model.safetensors"]
    loaded = load_pretrained(tmp_path / "m")
    assert loaded.config == model.config
    for (n, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), n
    x, xyz = make_batch(2, 5, 200)
    noise = torch.rand(2, 50)
    with torch.no_grad():
        assert torch.equal(model(x, xyz, noise=noise).logits, loaded(x, xyz, noise=noise).logits)


def test_original_state_dict_conversion_round_trip(golden_dir):
    original = load_file(str(golden_dir / "model.safetensors"))
    ours = convert_original_state_dict(original)
    back = to_original_state_dict(ours)
    dropped = {k for k in original if k.endswith("pos_embedding.pe") or k.startswith("decoder.decoder_pred.")}
    assert set(back) == set(original) - dropped
    for k in back:
        assert torch.equal(back[k], original[k])


def test_unknown_config_keys_warn_not_crash(golden_dir, tmp_path):
    folder = tmp_path / "ckpt"
    shutil.copytree(golden_dir, folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["some_future_option"] = 3
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.warns(UserWarning, match="some_future_option"):
        load_pretrained(folder)


class _Evil:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def test_malicious_pickle_is_refused_and_nothing_runs(golden_dir, tmp_path):
    folder = tmp_path / "ckpt"
    folder.mkdir()
    shutil.copy(golden_dir / "config.json", folder)
    marker = tmp_path / "pwned"
    with open(folder / "pytorch_model.bin", "wb") as f:
        pickle.dump({"x": _Evil(marker)}, f)
    with pytest.raises(ValueError, match="refusing to load"):
        load_pretrained(folder)
    assert not marker.exists()


def test_missing_and_unexpected_weights_are_listed(golden_dir, tmp_path):
    folder = tmp_path / "ckpt"
    folder.mkdir()
    shutil.copy(golden_dir / "config.json", folder)
    state = load_file(str(golden_dir / "model.safetensors"))
    del state["vit.layernorm.weight"]
    state["vit.extra_thing"] = torch.zeros(1)
    save_file(state, str(folder / "model.safetensors"))
    with pytest.raises(ValueError, match=r"missing \(1\): encoder.norm.weight(.|\n)*unexpected \(1\): vit.extra_thing"):
        load_pretrained(folder)


def test_truncated_and_absent_weights(golden_dir, tmp_path):
    folder = tmp_path / "ckpt"
    folder.mkdir()
    shutil.copy(golden_dir / "config.json", folder)
    with pytest.raises(FileNotFoundError, match="no weights"):
        load_pretrained(folder)
    data = (golden_dir / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="cannot read weights"):
        load_pretrained(folder)
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_pretrained(tmp_path)


def test_wrong_shapes_for_config(golden_dir, tmp_path):
    folder = tmp_path / "ckpt"
    shutil.copytree(golden_dir, folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["intermediate_size"] = 128
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="wrong shapes"):
        load_pretrained(folder)


def test_bin_loader_accepts_plain_tensor_pickles(tmp_path):
    torch.save({"a": torch.ones(2)}, tmp_path / "w.bin")
    assert torch.equal(load_state_dict_file(tmp_path / "w.bin")["a"], torch.ones(2))


def test_malicious_pickle_on_the_vitmae_and_resume_paths(tmp_path, capsys):
    """A pickle that would run code is refused with one line, on every path that reads pickles."""
    import json

    from _train_helpers import ToyWindows, tiny_config
    from test_vitmae import tiny_model as tiny_vitmae

    from brainlm.cli import main
    from brainlm.io import sha256_file
    from brainlm.hub import newest_checkpoint
    from brainlm.train import pretrain

    marker = tmp_path / "pwned"
    vit = tmp_path / "vit"
    tiny_vitmae().mae.save_pretrained(vit)
    for f in vit.glob("model.safetensors*"):
        f.unlink()
    with open(vit / "pytorch_model.bin", "wb") as f:
        pickle.dump({"x": _Evil(marker)}, f)
    assert main(["embed", str(vit), str(tmp_path / "nostore"), "--coords", str(tmp_path / "c.csv"),
                 "--out", str(tmp_path / "e.parquet"), "--device", "cpu"]) == 2
    assert "a .bin that is not a plain tensor pickle is refused" in capsys.readouterr().err
    assert not marker.exists()
    # A run whose optimiser state was replaced (and its manifest entry with it)
    run = tmp_path / "run"
    pretrain(tiny_config(run, max_steps=2, eval_every=2, save_every=2), train_dataset=ToyWindows(),
             val_dataset=ToyWindows(8, seed=1))
    ckpt = newest_checkpoint(run)
    with open(ckpt / "optimizer.pt", "wb") as f:
        pickle.dump({"x": _Evil(marker)}, f)
    manifest = json.loads((ckpt / "manifest.json").read_text())
    manifest["optimizer.pt"] = {"bytes": (ckpt / "optimizer.pt").stat().st_size, "sha256": sha256_file(ckpt / "optimizer.pt")}
    (ckpt / "manifest.json").write_text(json.dumps(manifest))
    capsys.readouterr()
    with pytest.raises(ValueError, match="optimizer.pt: refusing to load"):
        pretrain(tiny_config(run, max_steps=4), resume=True, train_dataset=ToyWindows(), val_dataset=ToyWindows(8, seed=1))
    assert not marker.exists()

"""Hostile inputs, part 3: models and Brainmarks.

Every model folder is verified whatever wrote it (a folder no complete manifest verifies is used
only with ``--trust-unverified``), a config that would build a broken model is refused before it
is built, a model whose outputs are not finite stops, and the flags of the embedding, fine-tuning
and Brainmarks paths that cannot apply are refused. A refusal is exit status 2, one line on
standard error naming the file or the flag, and every file that existed before unchanged
(``hostile.refused``).
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from downstream_synth import tiny_model
from hostile import PRETRAIN, no_progress_bars, refused, tree, world  # noqa: F401 (fixtures)
from safetensors.torch import load_file, save_file

from brainlm.checkpoint import load_pretrained, save_pretrained
from brainlm.cli import main
from brainlm.downstream import load_model
from brainlm.errors import CorruptFileError, UnverifiedModelError
from brainlm.io import read_embeddings, write_manifest

ORIGINAL = "tests/data/brainlm_original_tiny"


def _files(world, *rest):
    return [str(a) for a in (*rest, "--coords", world / "coords.csv")]


def _copy(world, tmp_path, name="ckpt"):
    folder = tmp_path / name
    shutil.copytree(world / "ckpt", folder)
    return folder


def _tamper(folder, value=6.0):
    """Add ``value`` to every weight of the model, as a hostile edit would."""
    state = load_file(str(folder / "model.safetensors"))
    save_file({k: v + value for k, v in state.items()}, str(folder / "model.safetensors"))


# ------------------------------------------------------------------- every checkpoint verified


@pytest.mark.parametrize("manifest", ["missing", "empty", "config only"])
def test_a_model_folder_no_complete_manifest_verifies_is_refused(world, tmp_path, capsys, manifest):
    folder = _copy(world, tmp_path)
    _tamper(folder)
    if manifest == "missing":
        (folder / "manifest.json").unlink()
    else:
        listed = json.loads((folder / "manifest.json").read_text())
        (folder / "manifest.json").write_text(json.dumps({} if manifest == "empty" else
                                                         {"config.json": listed["config.json"]}))
    out = tmp_path / "e.parquet"
    args = ["embed", folder, *_files(world, world / "inputs" / "sub-00.npy"), "--out", out]
    line = refused(capsys, tmp_path, args, folder, "--trust-unverified")
    assert {"missing": "no manifest.json", "empty": "empty manifest.json",
            "config only": "does not list model.safetensors"}[manifest] in line
    refused(capsys, tmp_path, ["verify", folder], folder, "--trust-unverified")
    with pytest.raises(UnverifiedModelError, match="trust_unverified=True"):
        load_model(folder)
    # the user's word opens it (with the weights as they are)
    assert main([str(a) for a in args] + ["--trust-unverified"]) == 0
    assert np.isfinite(read_embeddings(out).X).all()
    torch.testing.assert_close(load_model(folder, trust_unverified=True).encoder.cls_token,
                               tiny_model().encoder.cls_token + 6.0)


def test_a_listed_file_that_was_altered_is_refused_even_when_trusted(world, tmp_path, capsys):
    folder = _copy(world, tmp_path)
    _tamper(folder)
    for extra in ([], ["--trust-unverified"]):
        line = refused(capsys, tmp_path, ["embed", folder, *_files(world, world / "inputs" / "sub-00.npy"),
                                          "--out", tmp_path / "e.parquet", *extra], folder / "model.safetensors")
        assert "is damaged" in line


def test_an_unlisted_weight_file_in_a_sub_folder_is_refused(world, tmp_path, capsys):
    folder = _copy(world, tmp_path)
    (folder / "adapter").mkdir()
    (folder / "adapter" / "adapter_model.safetensors").write_bytes(b"not listed")
    line = refused(capsys, tmp_path, ["verify", folder], folder, "--trust-unverified")
    assert "does not list adapter/adapter_model.safetensors" in line


@pytest.mark.parametrize("command", ["reconstruct", "forecast", "fingerprint", "probe", "finetune", "benchmark",
                                     "attention", "pretrain"])
def test_every_command_that_opens_a_model_refuses_an_unverified_one(world, tmp_path, capsys, command):
    folder = _copy(world, tmp_path)
    (folder / "manifest.json").unlink()
    store, out = world / "store", tmp_path / "out"
    argv = {
        "reconstruct": ["reconstruct", folder, store, "--out", out],
        "forecast": ["forecast", folder, store, "--last", "5", "--out", out],
        "fingerprint": ["fingerprint", folder, store, "--out", out],
        "probe": ["probe", folder, store, "--target", "group", "--out", out],
        "finetune": ["finetune", folder, store, "--target", "group", "--out", out],
        "benchmark": ["benchmark", folder, store, "--out", out],
        "attention": ["attention", folder, store, "--num-networks", "2", "--out", out],
        "pretrain": ["pretrain", "--data", store, *PRETRAIN, f"--init_from={folder}", "--out", out],
    }[command]
    refused(capsys, tmp_path, argv, folder, "--trust-unverified")


def test_trust_unverified_where_no_model_folder_is_opened_is_refused(world, tmp_path, capsys):
    refused(capsys, tmp_path, ["pretrain", "--data", world / "store", *PRETRAIN, "--trust-unverified",
                               "--out", tmp_path / "run"], "--trust-unverified", "--init_from")
    refused(capsys, tmp_path, ["benchmark", "-", world / "store", "--protocol", "brainmarks", "--target", "group",
                               "--trust-unverified", "--out", tmp_path / "bm"], "--trust-unverified")
    refused(capsys, tmp_path, ["benchmark", "demo", world / "store", "--cv", "3", "--trust-unverified",
                               "--out", tmp_path / "cv"], "--trust-unverified", "--cv")


def test_finetune_writes_a_folder_that_verifies_and_reopens(world, tmp_path, capsys):
    out = tmp_path / "ft"
    assert main(["finetune", str(world / "ckpt"), str(world / "store"), "--target", "group", "--epochs", "1",
                 "--out", str(out)]) == 0
    listed = json.loads((out / "manifest.json").read_text())
    assert {"config.json", "model.safetensors", "head.json", "head.safetensors"} <= set(listed)
    capsys.readouterr()
    assert main(["verify", str(out)]) == 0
    assert "checkpoint OK" in capsys.readouterr().out
    load_model(out)
    (out / "head.safetensors").write_bytes(b"altered")
    refused(capsys, tmp_path, ["verify", out], out / "head.safetensors")


def test_original_brainlm_and_vitmae_folders_are_opened_unverified_and_said_so(tmp_path, capsys):
    with pytest.warns(UserWarning, match="original BrainLM folder, no manifest.json: not verified"):
        load_pretrained(ORIGINAL)
    assert main(["verify", ORIGINAL]) == 0
    assert capsys.readouterr().out.strip().endswith("original BrainLM folder, no manifest.json: not verified")


# ------------------------------------------------------------------- configs and outputs


@pytest.mark.parametrize("eps", ["NaN", -1.0, 0.0])
def test_a_config_that_breaks_the_model_is_refused_before_it_is_built(world, tmp_path, capsys, eps):
    folder = _copy(world, tmp_path)
    config = json.loads((folder / "config.json").read_text())
    config["layer_norm_eps"] = float(eps)
    (folder / "config.json").write_text(json.dumps(config))
    write_manifest(folder)  # a complete manifest: the config itself is what is wrong
    line = refused(capsys, tmp_path, ["embed", folder, *_files(world, world / "inputs" / "sub-00.npy"),
                                      "--out", tmp_path / "e.parquet"], folder / "config.json", "layer_norm_eps")
    assert "finite number" in line


@pytest.mark.parametrize("command", ["embed", "reconstruct", "forecast"])
def test_a_model_with_non_finite_outputs_stops_with_one_line(world, tmp_path, capsys, command):
    model = tiny_model()
    with torch.no_grad():
        model.encoder.cls_token.fill_(float("nan"))
        model.encoder.signal_proj.bias.fill_(float("inf"))
    folder = save_pretrained(model, tmp_path / "nan")
    out = tmp_path / "out"
    argv = {"embed": ["embed", folder, world / "store", "--out", tmp_path / "e.parquet"],
            "reconstruct": ["reconstruct", folder, world / "store", "--out", out],
            "forecast": ["forecast", folder, world / "store", "--last", "5", "--out", out]}[command]
    line = refused(capsys, tmp_path, argv, folder, "NaN or inf")
    assert "--precision fp32" in line


def test_the_python_api_takes_the_users_word_too(world, tmp_path):
    from brainlm.sklearn import BrainLMEmbedder

    folder = _copy(world, tmp_path)
    (folder / "manifest.json").unlink()
    with pytest.raises(UnverifiedModelError, match=str(folder)):
        BrainLMEmbedder(str(folder)).fit()
    assert BrainLMEmbedder(str(folder), trust_unverified=True).fit().num_regions_ == 6
    write_manifest(folder)
    (folder / "config.json").write_text((folder / "config.json").read_text() + " ")
    with pytest.raises(CorruptFileError, match="config.json"):
        load_model(folder, trust_unverified=True)


# ------------------------------------------------------------------- flags that cannot apply


@pytest.mark.parametrize("case", ["text target binned", "two values binned", "continuous, no bins"])
def test_brainmarks_protocol_refuses_targets_it_cannot_score(world, tmp_path, capsys, case):
    target, bins, names = {"text target binned": ("group", ["--bins", "qcut3"], ["--bins qcut3", "'a'"]),
                           "two values binned": ("label", ["--bins", "qcut3"], ["--bins qcut3", "2 distinct"]),
                           "continuous, no bins": ("score", [], ["--target score", "--bins"])}[case]
    store = tmp_path / "store"
    shutil.copytree(world / "store", store)
    targets = tmp_path / "targets.csv"
    subjects = [f"s{i:02d}" for i in range(12)]
    targets.write_text("subject_id,label\n" + "".join(f"{s},{i % 2}\n" for i, s in enumerate(subjects)))
    extra = ["--targets", targets] if target == "label" else []
    refused(capsys, tmp_path, ["benchmark", world / "ckpt", store, "--protocol", "brainmarks", "--target", target,
                               *bins, *extra, "--trials", "1", "--out", tmp_path / "bm"], *names)


def test_lora_rank_is_bounded_by_the_hidden_size(world, tmp_path, capsys):
    pytest.importorskip("peft")
    base = ["finetune", world / "ckpt", world / "store", "--target", "group", "--epochs", "1", "--out", tmp_path / "ft"]
    line = refused(capsys, tmp_path, [*base, "--lora", "--lora-r", "100000"], "--lora-r 100000")
    assert "hidden size, 16" in line
    refused(capsys, tmp_path, [*base, "--lora-r", "4"], "--lora-r", "only with --lora")


@pytest.mark.parametrize("command,pooling", [("embed", "tokens"), ("embed", "cls"), ("fingerprint", "mean")])
def test_keep_regions_with_another_pooling_is_refused(world, tmp_path, capsys, command, pooling):
    out = tmp_path / ("e.parquet" if command == "embed" else "fp")
    refused(capsys, tmp_path, [command, world / "ckpt", world / "store", "--pooling", pooling, "--keep-regions",
                               "--out", out], "--keep-regions", f"--pooling {pooling}")


def test_the_embedder_refuses_boolean_arrays_as_files_are_refused(world, tmp_path, capsys):
    from brainlm.errors import InputError
    from brainlm.sklearn import BrainLMEmbedder
    from hostile import series

    embedder = BrainLMEmbedder(str(world / "ckpt"), coords=np.ones((6, 3)) * np.arange(6)[:, None]).fit()
    with pytest.raises(InputError, match="recording 0: not numeric \\(dtype bool\\)"):
        embedder.transform([series(0) > 0])
    np.save(tmp_path / "sub-01.npy", series(1) > 0)
    refused(capsys, tmp_path, ["embed", world / "ckpt", tmp_path / "sub-01.npy", "--coords", world / "coords.csv",
                               "--on-error", "raise", "--out", tmp_path / "e.parquet"], tmp_path / "sub-01.npy")


def test_vitmae_folders_are_written_verified_and_their_config_checked(tmp_path):
    import warnings

    from brainlm.errors import UserError
    from brainlm.vitmae import BrainLMViTMAE, load_vitmae, vitmae_111m_config

    config = vitmae_111m_config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                                image_size=432, patch_size=48, decoder_hidden_size=16, decoder_num_hidden_layers=1,
                                decoder_num_attention_heads=2, decoder_intermediate_size=32)
    folder = BrainLMViTMAE.from_config(config).save_pretrained(tmp_path / "vit")
    assert {"config.json", "model.safetensors", "README.md"} <= set(json.loads((folder / "manifest.json").read_text()))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # verified: no "not verified" warning
        load_vitmae(folder)
    for key, value in (("layer_norm_eps", float("nan")), ("num_attention_heads", 3), ("hidden_size", 0)):
        raw = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**raw, key: value}))
        write_manifest(folder)
        with pytest.raises(UserError, match=f"config.json: {key} must be"):
            load_vitmae(folder)
        (folder / "config.json").write_text(json.dumps(raw))
        write_manifest(folder)

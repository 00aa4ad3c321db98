"""from_pretrained / save_pretrained / push_to_hub and the model card, all offline."""

import json
import shutil

import pytest
import torch
from conftest import make_batch
from safetensors.torch import load_file

from brainlm import BrainLMForPretraining, brainlm_tiny, load_pretrained
from brainlm.downstream import load_model
from brainlm.errors import HubUnavailableError, MissingInputError, UserError
from brainlm.hub import model_card, resolve_checkpoint
from brainlm.io import MARKER

HUB_ID = "someone/brainlm-tiny"


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return BrainLMForPretraining(brainlm_tiny(num_brain_voxels=7, time_encoding_dropout=0.0)).eval()


def _outputs(model):
    x, xyz = make_batch(2, 7, model.config.num_timepoints_per_voxel, seed=1)
    noise = torch.rand(2, model.num_tokens(7, x.shape[-1]), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        out = model(x, xyz, noise=noise)
        return out.logits, out.loss, model.embed(x, xyz, pooling="mean").embeddings


def _assert_same(a, b):
    for u, v in zip(_outputs(a), _outputs(b)):
        torch.testing.assert_close(u, v, rtol=0, atol=0)


def _benchmark_results():
    """A results.json as ``brainlm benchmark`` writes it: one task, the model leading within noise."""
    table = [{"method": "model", "label": "BrainLM", "value": 0.43, "ci_low": 0.40, "ci_high": 0.46},
             {"method": "mean", "label": "region mean", "value": 0.10, "ci_low": 0.05, "ci_high": 0.15},
             {"method": "conn", "label": "connectivity-conditional fill", "value": 0.41, "ci_low": 0.38,
              "ci_high": 0.44}]
    comparison = {"model": "model", "baseline": "conn", "model_value": 0.43, "baseline_value": 0.41,
                  "difference": 0.02, "diff_ci_low": -0.01, "diff_ci_high": 0.05, "p_boot": 0.2, "winner": "model",
                  "outcome": "level (within noise)"}
    return {"checkpoint": "runs/tiny/best", "store": "stores/demo", "config": {},
            "tasks": [{"task": "reconstruction", "metric": "r2", "table": table, "comparison": comparison, "notes": []}]}


def test_round_trip_gives_identical_outputs_in_our_format(model, tmp_path):
    folder = model.save_pretrained(tmp_path / "saved")
    assert {p.name for p in folder.iterdir()} == {"config.json", "model.safetensors", "README.md", "manifest.json", MARKER}
    assert json.loads((folder / "config.json").read_text())["model_type"] == "brainlm"
    assert set(load_file(folder / "model.safetensors")) == set(model.state_dict())
    loaded = BrainLMForPretraining.from_pretrained(folder)
    assert not loaded.training and loaded.config == model.config
    _assert_same(loaded, model)
    # The older names read the same folder: the alias, the folder reader, the downstream loader.
    for other in (load_pretrained(folder), load_pretrained(str(folder), "cpu"), model.from_pretrained(folder), load_model(folder)):
        _assert_same(other, model)


def test_from_pretrained_reads_the_original_format(golden_dir):
    golden = load_file(str(golden_dir / "golden.safetensors"))
    model = BrainLMForPretraining.from_pretrained(golden_dir)
    reference = load_pretrained(golden_dir)
    for key, value in reference.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    with torch.no_grad():
        out = model(golden["signal_vectors"], golden["xyz_vectors"], noise=golden["noise"])
    assert (out.logits - golden["logits"]).abs().max() < 1e-4


def test_model_card_lists_the_config_and_the_benchmark(model, tmp_path):
    results = tmp_path / "bench" / "results.json"
    results.parent.mkdir()
    results.write_text(json.dumps(_benchmark_results()))
    for benchmark in (_benchmark_results(), results, results.parent):
        card = (model.save_pretrained(tmp_path / "saved", benchmark=benchmark) / "README.md").read_text()
        assert card.startswith("---\nlibrary_name: brainlm\n")
        assert "| `hidden_size` | `32` |" in card and '| `model_type` | `"brainlm"` |' in card
        row = next(line for line in card.splitlines() if line.startswith("| reconstruction |"))
        assert "0.430 [0.400, 0.460]" in row and "connectivity-conditional fill 0.410" in row
        assert "+0.020 [-0.010, +0.050]" in row and "level (within noise)" in row
        assert "region mean" not in card  # only the strongest baseline
    plain = model_card("BrainLMForPretraining", model.config.to_dict())
    assert "No benchmark results were given" in plain and '.from_pretrained("path/or/hub-id")' in plain


def test_bad_benchmark_inputs(model, tmp_path):
    with pytest.raises(MissingInputError, match="results.json.*not found"):
        model.save_pretrained(tmp_path / "saved", benchmark=tmp_path / "nothing")
    (tmp_path / "other.json").write_text("{}")
    with pytest.raises(UserError, match="not the results.json of brainlm benchmark"):
        model.save_pretrained(tmp_path / "saved", benchmark=tmp_path / "other.json")


def test_hub_id_without_network_and_cache_is_one_clear_line(no_network, empty_hub_cache):
    with pytest.raises(HubUnavailableError) as err:
        BrainLMForPretraining.from_pretrained(HUB_ID)
    message = str(err.value)
    assert "\n" not in message and f"could not fetch '{HUB_ID}'" in message
    assert "not in the local hub cache" in message and "pass a local checkpoint folder" in message
    assert isinstance(err.value, FileNotFoundError)
    with pytest.raises(HubUnavailableError, match=HUB_ID):
        load_pretrained(HUB_ID)
    with pytest.raises(HubUnavailableError, match=HUB_ID):
        load_model(HUB_ID)
    with pytest.raises(MissingInputError, match="no checkpoint folder at ./absent"):
        BrainLMForPretraining.from_pretrained("./absent")


def test_hub_id_is_read_offline_from_the_cache(no_network, empty_hub_cache, model, tmp_path):
    # The layout huggingface_hub keeps: refs/main names the commit whose snapshot holds the files.
    commit = "0" * 40
    repo = empty_hub_cache / f"models--{HUB_ID.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    model.save_pretrained(repo / "snapshots" / commit)
    assert resolve_checkpoint(HUB_ID) == repo / "snapshots" / commit
    _assert_same(BrainLMForPretraining.from_pretrained(HUB_ID), model)
    _assert_same(load_model(HUB_ID), model)


def test_push_to_hub_uploads_the_saved_folder(model, monkeypatch, tmp_path):
    """The upload API is replaced by a recorder: nothing reaches the network."""
    import huggingface_hub

    calls = []

    class FakeApi:
        def __init__(self, token=None):
            calls.append(("token", token))

        def create_repo(self, repo_id, private=None, exist_ok=False):
            calls.append(("create", repo_id, private, exist_ok))
            return type("RepoUrl", (), {"repo_id": repo_id})()

        def upload_folder(self, *, repo_id, repo_type, folder_path, **kwargs):
            calls.append(("upload", repo_id, repo_type))
            shutil.copytree(folder_path, tmp_path / "uploaded")
            return f"https://huggingface.co/{repo_id}/commit/abc"

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    url = model.push_to_hub(HUB_ID, benchmark=_benchmark_results(), token="t")
    assert url.endswith("/commit/abc")
    assert calls == [("token", "t"), ("create", HUB_ID, None, True), ("upload", HUB_ID, "model")]
    card = (tmp_path / "uploaded" / "README.md").read_text()
    assert f'BrainLMForPretraining.from_pretrained("{HUB_ID}")' in card and "| reconstruction |" in card
    _assert_same(BrainLMForPretraining.from_pretrained(tmp_path / "uploaded"), model)


def test_push_to_hub_failure_is_a_user_error(model, monkeypatch):
    import huggingface_hub

    class OfflineApi:
        def __init__(self, token=None):
            pass

        def create_repo(self, **kwargs):
            raise ConnectionError("Failed to resolve 'huggingface.co'")

    monkeypatch.setattr(huggingface_hub, "HfApi", OfflineApi)
    with pytest.raises(UserError, match=rf"could not push to '{HUB_ID}'.*ConnectionError"):
        model.push_to_hub(HUB_ID)

"""Inference precision: bf16 embeddings of a trained demo model stay within cosine 0.999 of fp32."""

import numpy as np
import pytest
import torch

from brainlm.data import build_demo_store
from brainlm.distributed import cpu_supports_bf16, resolve_precision
from brainlm.downstream import embed
from brainlm.train import apply_overrides, pretrain, train_preset


@pytest.fixture(scope="module")
def demo_model(tmp_path_factory):
    root = tmp_path_factory.mktemp("prec")
    store = build_demo_store(root / "store", progress=False)
    config = apply_overrides(train_preset("demo"), dict(
        data=str(store.path), out_dir=str(root / "run"), max_steps="40", eval_every="40", save_every="40",
        eval_max_batches="1", progress="false", plots="false"))
    return pretrain(config).checkpoint, store


def test_bf16_embeddings_match_fp32(demo_model):
    checkpoint, store = demo_model
    kwargs = dict(split="test", windows="sliding", progress=False, device="cpu")
    fp32 = embed(str(checkpoint), store, precision="fp32", **kwargs)
    bf16 = embed(str(checkpoint), store, precision="bf16", **kwargs)
    a, b = fp32.X.astype(np.float64), bf16.X.astype(np.float64)
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    assert len(cos) > 10 and cos.min() > 0.999, cos.min()
    assert not np.array_equal(a, b)  # bf16 really ran


def test_auto_precision_follows_the_hardware():
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu) == (torch.bfloat16 if cpu_supports_bf16() else torch.float32)
    with pytest.raises(ValueError, match="--precision fp16 needs a GPU"):
        resolve_precision("fp16", cpu)
    with pytest.raises(ValueError, match="--precision must be one of"):
        resolve_precision("fp8", cpu)

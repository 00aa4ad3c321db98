import math

import pytest
import torch
from conftest import make_batch

from brainlm.model import (
    BrainLMConfig,
    BrainLMForPretraining,
    _iterative_pinv,
    brainlm_13m,
    brainlm_111m,
    brainlm_650m,
    brainlm_tiny,
)


@pytest.mark.parametrize(
    "R,T,W,ratio",
    [(424, 200, 20, 0.75), (17, 60, 10, 0.5), (94, 200, 20, 0.2), (5, 8, 4, 0.0), (33, 120, 40, 0.9)],
)
def test_shapes(R, T, W, ratio):
    torch.manual_seed(0)
    cfg = brainlm_tiny(timepoint_patching_size=W, num_timepoints_per_voxel=T)
    model = BrainLMForPretraining(cfg)
    x, xyz = make_batch(2, R, T)
    out = model(x, xyz, mask_ratio=ratio)
    P = T // W
    L = R * P
    keep = int(L * (1 - ratio))
    assert out.logits.shape == (2, R, P, W)
    assert out.mask.shape == (2, R, P)
    assert out.encoder_last_hidden_state.shape == (2, 1 + keep, cfg.hidden_size)
    assert out.ids_restore.shape == (2, L)
    # exactly int(L * (1 - ratio)) tokens kept per sample
    assert torch.equal(out.mask.flatten(1).sum(1), torch.full((2,), float(L - keep)))
    if ratio == 0.0:
        assert out.loss is None
    else:
        assert out.loss.ndim == 0 and torch.isfinite(out.loss)


def test_model_uses_any_T_multiple_of_W_with_one_model():
    model = BrainLMForPretraining(brainlm_tiny())
    for T in (20, 100, 400):
        x, xyz = make_batch(1, 11, T)
        assert model(x, xyz).logits.shape == (1, 11, T // 20, 20)


def test_every_parameter_gets_a_gradient_and_no_nan():
    torch.manual_seed(0)
    cfg = brainlm_tiny(num_timepoints_per_voxel=60, timepoint_patching_size=10, use_tanh_decoder=True)
    model = BrainLMForPretraining(cfg).train()
    x, xyz = make_batch(2, 13, 60)
    out = model(x, xyz)
    out.loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_mask_convention_and_loss_only_on_masked_patches():
    torch.manual_seed(0)
    model = BrainLMForPretraining(brainlm_tiny(num_timepoints_per_voxel=40, timepoint_patching_size=10)).eval()
    x, xyz = make_batch(2, 9, 40)
    noise = torch.rand(2, 36)
    out = model(x, xyz, noise=noise, mask_ratio=0.5)
    # the 18 largest noise values are masked
    expected = torch.zeros(2, 36)
    expected.scatter_(1, noise.argsort(1)[:, 18:], 1.0)
    assert torch.equal(out.mask.flatten(1), expected)
    target = x.view(2, 9, 4, 10)
    manual = ((out.logits - target) ** 2).mean(-1)[out.mask.bool()].mean()
    assert torch.allclose(out.loss, manual, atol=1e-6)
    # changing visible targets' values where they are not masked changes nothing in the loss
    x2 = x.clone().view(2, 9, 4, 10)
    x2[~out.mask.bool()] += 100.0
    # (inputs changed, so predictions change; compare the loss formula only)
    assert torch.allclose(model.forward_loss(x2.view(2, 9, 40), out.logits, out.mask), out.loss, atol=1e-6)


def test_mae_loss():
    model = BrainLMForPretraining(brainlm_tiny(loss_fn="mae", num_timepoints_per_voxel=40, timepoint_patching_size=10))
    x, xyz = make_batch(1, 5, 40)
    out = model(x, xyz, mask_ratio=0.5)
    manual = (out.logits - x.view(1, 5, 4, 10)).abs().mean(-1)[out.mask.bool()].mean()
    assert torch.allclose(out.loss, manual, atol=1e-6)


def test_noise_gives_reproducible_masking_and_no_noise_region_major_order():
    model = BrainLMForPretraining(brainlm_tiny()).eval()
    x, xyz = make_batch(2, 7, 200)
    noise = torch.rand(2, 70)
    a = model(x, xyz, noise=noise)
    b = model(x, xyz, noise=noise)
    assert torch.equal(a.mask, b.mask) and torch.equal(a.logits, b.logits)
    # masking off without noise: deterministic region-major order, every token kept
    e1 = model(x, xyz, mask_ratio=0.0)
    e2 = model(x, xyz, mask_ratio=0.0)
    assert torch.equal(e1.encoder_last_hidden_state, e2.encoder_last_hidden_state)
    assert torch.equal(e1.ids_keep, torch.arange(70).expand(2, 70))
    # same as passing increasing noise (region-major order)
    e3 = model(x, xyz, mask_ratio=0.0, noise=torch.linspace(0, 1, 70).expand(2, 70))
    assert torch.allclose(e1.encoder_last_hidden_state, e3.encoder_last_hidden_state)


def _naive_attention(q, k, v):
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    return torch.softmax(scores, -1) @ v


def test_exact_attention_equals_naive_softmax():
    torch.manual_seed(0)
    cfg = brainlm_tiny(conv_kernel_size=None)
    attn = BrainLMForPretraining(cfg).encoder.blocks.layers[0].attn
    x = torch.randn(2, 50, cfg.hidden_size)
    out, cls = attn(x, return_cls_attention=True)
    q, k, v = attn.qkv(x).view(2, 50, 3, 2, 16).permute(2, 0, 3, 1, 4)
    ref = _naive_attention(q, k, v).transpose(1, 2).reshape(2, 50, 32)
    assert torch.allclose(out, attn.proj(ref), atol=1e-6)
    probs = torch.softmax(q @ k.transpose(-1, -2) / 4.0, -1)
    assert torch.allclose(cls, probs[:, :, 0], atol=1e-6)


def test_nystrom_approaches_exact_as_landmarks_grow():
    torch.manual_seed(0)
    N, d = 240, 16
    # smooth queries/keys (neighbouring tokens alike), as in real token sequences
    base = torch.randn(1, 2, N // 8, d).repeat_interleave(8, dim=2)
    q = base + 0.1 * torch.randn(1, 2, N, d)
    k = base + 0.1 * torch.randn(1, 2, N, d)
    v = torch.randn(1, 2, N, d)
    exact = _naive_attention(q, k, v)
    errors = []
    for m in (4, 16, 64, 240):
        cfg = brainlm_tiny(attention_type="nystrom", num_landmarks=m, conv_kernel_size=None, hidden_size=32)
        attn = BrainLMForPretraining(cfg).encoder.blocks.layers[0].attn
        approx = attn._nystrom(q, k, v)
        errors.append((approx - exact).abs().mean().item())
    assert errors == sorted(errors, reverse=True), errors
    assert errors[-1] < 0.05 * errors[0]


def test_nystrom_any_sequence_length_and_model_runs():
    cfg = brainlm_tiny(attention_type="nystrom", num_landmarks=8)
    model = BrainLMForPretraining(cfg)
    x, xyz = make_batch(2, 13, 200)  # 130 tokens, 97 kept: not a multiple of 8
    out = model(x, xyz, mask_ratio=0.25)
    assert torch.isfinite(out.loss)
    out.loss.backward()


def test_iterative_pinv():
    a = torch.softmax(torch.randn(3, 6, 6), -1)
    assert torch.allclose(_iterative_pinv(a, num_iter=20), torch.linalg.pinv(a), atol=1e-3)


def test_gradient_checkpointing_gives_same_gradients():
    torch.manual_seed(0)
    cfg = brainlm_tiny(time_encoding_dropout=0.1)
    x, xyz = make_batch(2, 9, 200)
    noise = torch.rand(2, 90)
    grads = []
    for ckpt in (False, True):
        torch.manual_seed(1)
        model = BrainLMForPretraining(cfg).train()
        if ckpt:
            model.gradient_checkpointing_enable()
        torch.manual_seed(2)
        model(x, xyz, noise=noise).loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for n in grads[0]:
        assert torch.allclose(grads[0][n], grads[1][n], atol=1e-6), n


def test_bf16_autocast_runs():
    model = BrainLMForPretraining(brainlm_tiny())
    x, xyz = make_batch(2, 9, 200)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x, xyz)
    assert torch.isfinite(out.loss)
    out.loss.backward()


def test_decoder_width_may_differ_from_encoder():
    cfg = brainlm_tiny(decoder_hidden_size=16, decoder_num_attention_heads=2, decoder_intermediate_size=32)
    model = BrainLMForPretraining(cfg)
    x, xyz = make_batch(2, 9, 200)
    out = model(x, xyz)
    assert out.logits.shape == (2, 9, 10, 20)
    out.loss.backward()


def test_presets_parameter_counts():
    def count(cfg):
        with torch.device("meta"):
            return BrainLMForPretraining(cfg).num_parameters()

    assert 4e6 < count(brainlm_13m()) < 14e6
    assert 100e6 < count(brainlm_111m()) < 125e6
    assert 600e6 < count(brainlm_650m()) < 700e6


def test_config_json_round_trip(tmp_path):
    cfg = brainlm_13m(mask_ratio=0.5, extra={"note": "kept"})
    assert BrainLMConfig.from_json(cfg.to_json()) == cfg


@pytest.mark.parametrize(
    "kw,match",
    [
        (dict(num_timepoints_per_voxel=201), "multiple of"),
        (dict(hidden_size=30, num_attention_heads=4), "must divide hidden_size"),
        (dict(decoder_hidden_size=30, decoder_num_attention_heads=4), "must divide decoder_hidden_size"),
        (dict(loss_fn="huber"), "loss_fn must be"),
        (dict(mask_ratio=1.0), "mask_ratio"),
        (dict(attention_type="flash"), "attention_type"),
        (dict(conv_kernel_size=64), "odd"),
        (dict(hidden_size=0), r"hidden_size must be an integer in 1\.\."),
        (dict(hidden_size=True), "hidden_size must be an integer"),
        (dict(num_brain_voxels=1 << 30), "num_brain_voxels must be an integer in"),
        (dict(layer_norm_eps=float("nan")), "layer_norm_eps must be a finite number"),
        (dict(layer_norm_eps=-1.0), "layer_norm_eps must be a finite number"),
        (dict(layer_norm_eps=0.0), "layer_norm_eps"),
        (dict(initializer_range=float("inf")), "initializer_range"),
        (dict(hidden_dropout_prob=float("nan")), "hidden_dropout_prob"),
        (dict(mask_ratio=float("nan")), "mask_ratio"),
        (dict(qkv_bias="yes"), "qkv_bias must be true or false"),
    ],
)
def test_config_validation(kw, match):
    with pytest.raises(ValueError, match=match):
        BrainLMConfig(**kw)


def test_bad_inputs_raise_clear_errors():
    model = BrainLMForPretraining(brainlm_tiny())
    x, xyz = make_batch(2, 9, 200)
    with pytest.raises(ValueError, match=r"\(B, R, T\)"):
        model(x[0], xyz)
    with pytest.raises(ValueError, match=r"\(B, R, 3\)"):
        model(x, xyz[..., :2])
    with pytest.raises(ValueError, match="9 regions"):
        model(x, xyz[:, :8])
    with pytest.raises(ValueError, match="not a positive multiple"):
        model(x[..., :190 + 5], xyz)
    with pytest.raises(ValueError, match="noise must have shape"):
        model(x, xyz, noise=torch.rand(2, 89))
    with pytest.raises(ValueError, match="mask_ratio"):
        model(x, xyz, mask_ratio=1.5)


def test_without_qkv_bias():
    model = BrainLMForPretraining(brainlm_tiny(qkv_bias=False))
    assert model.encoder.blocks.layers[0].attn.qkv.bias is None
    x, xyz = make_batch(1, 4, 200)
    assert torch.isfinite(model(x, xyz).loss)


@pytest.mark.parametrize("ckpt,layers", [(False, 2), (True, 2), (False, 1), (False, 0)])
def test_decoding_masked_patches_only_gives_same_loss_and_gradients(ckpt, layers):
    cfg = brainlm_tiny(decoder_num_hidden_layers=layers, time_encoding_dropout=0.0)
    x, xyz = make_batch(2, 9, 200)
    noise = torch.rand(2, 90)
    results = []
    for visible in (True, False):
        torch.manual_seed(0)
        model = BrainLMForPretraining(cfg).train()
        if ckpt:
            model.gradient_checkpointing_enable()
        out = model(x, xyz, noise=noise, mask_ratio=0.6, decode_visible=visible)
        out.loss.backward()
        results.append((out, {n: p.grad.clone() for n, p in model.named_parameters()}))
    (full, g_full), (masked, g_masked) = results
    m = full.mask.bool()
    assert torch.allclose(full.loss, masked.loss, atol=1e-6)
    assert torch.allclose(full.logits[m], masked.logits[m], atol=1e-5)
    assert torch.equal(masked.logits[~m], torch.zeros_like(masked.logits[~m]))
    for n in g_full:
        assert torch.allclose(g_full[n], g_masked[n], atol=1e-5), n


# -- the learned region embedding (off by default) ----------------------------------------------


def _centred_rank(emb: torch.Tensor) -> int:
    """Rank of (R, D) region vectors after removing their mean: the dimension of their affine span."""
    return int(torch.linalg.matrix_rank((emb - emb.mean(0)).double(), rtol=1e-4))


def test_region_identity_default_is_the_original():
    from brainlm.model import _region_identity

    model = BrainLMForPretraining(brainlm_tiny())
    assert not any("region_embedding" in k for k in model.state_dict())
    _, xyz = make_batch(1, 12, 20)
    assert _centred_rank(_region_identity(model.encoder, xyz)[0]) == 3  # a 3-dimensional affine subspace


def test_learned_region_embedding_spans_more_dims_learns_and_round_trips(tmp_path):
    from brainlm import load_pretrained, save_pretrained
    from brainlm.model import _region_identity

    torch.manual_seed(0)
    R, T = 12, 40
    cfg = brainlm_tiny(num_brain_voxels=R, num_timepoints_per_voxel=T, timepoint_patching_size=10,
                       learned_region_embedding=True)
    model = BrainLMForPretraining(cfg)
    assert cfg.num_parameters() == model.num_parameters()
    x, xyz = make_batch(2, R, T)
    out = model(x, xyz, mask_ratio=0.5)
    for part in (model.encoder, model.decoder):
        assert _centred_rank(_region_identity(part, xyz)[0]) > 3
    out.loss.backward()
    assert model.encoder.region_embedding.grad.abs().sum() > 0 and model.decoder.region_embedding.grad.abs().sum() > 0
    save_pretrained(model, tmp_path / "m")
    noise = torch.rand(2, R * 4)
    again = load_pretrained(tmp_path / "m")
    assert torch.equal(model.eval()(x, xyz, noise=noise).logits, again(x, xyz, noise=noise).logits)
    with pytest.raises(ValueError, match="learned_region_embedding needs the 12 regions"):
        model(*make_batch(1, 8, 40))

"""The ViT-MAE adapter for the released BrainLM checkpoints.

No checkpoint can be downloaded here, so models are built with
``transformers.ViTMAEForPreTraining(config)``, saved with ``save_pretrained`` (and in the
older key layout of the released files), and loaded back through ``brainlm.vitmae``.
Tiny configs keep the image large enough for a 424 x 200 window but use few, big patches
and a narrow network; the full sizes are only built on the meta device.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")
from safetensors.torch import load_file, save_file  # noqa: E402
from transformers import ViTMAEForPreTraining  # noqa: E402

from brainlm.errors import UserError
from brainlm.hub import resolve_checkpoint
from brainlm.vitmae import (  # noqa: E402
    A424_SCALE,
    BrainLMViTMAE,
    is_vitmae_checkpoint,
    load_vitmae,
    read_region_order,
    vitmae_111m_config,
    vitmae_650m_config,
)

COORDS = Path(__file__).resolve().parents[1] / "src/brainlm/atlases/A424_Coordinates.dat"


def tiny_config(image_size=432, patch_size=48, **overrides):
    kwargs = dict(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=image_size,
        patch_size=patch_size,
        decoder_hidden_size=16,
        decoder_num_hidden_layers=1,
        decoder_num_attention_heads=2,
        decoder_intermediate_size=32,
    )
    kwargs.update(overrides)
    return vitmae_111m_config(**kwargs)


def tiny_model(seed=0, **config_kwargs) -> BrainLMViTMAE:
    torch.manual_seed(seed)
    return BrainLMViTMAE.from_config(tiny_config(**config_kwargs)).eval()


@pytest.fixture(scope="module")
def model() -> BrainLMViTMAE:
    return tiny_model()


@pytest.fixture
def windows() -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.randn(2, 424, 200, generator=g)  # (B, R, T)


def _noise(model, batch, seed=2):
    return torch.rand(batch, model.num_patches, generator=torch.Generator().manual_seed(seed))


def _legacy_key(key: str) -> str:
    """Parameter names as transformers 4.x wrote them, the layout of the released files."""
    for new, old in [
        ("vit.layers.", "vit.encoder.layer."),
        ("attention.q_proj", "attention.attention.query"),
        ("attention.k_proj", "attention.attention.key"),
        ("attention.v_proj", "attention.attention.value"),
        ("attention.o_proj", "attention.output.dense"),
        ("mlp.fc1", "intermediate.dense"),
        ("mlp.fc2", "output.dense"),
    ]:
        key = key.replace(new, old)
    return key


# --------------------------------------------------------------------------- region order


def test_region_order_is_the_originals_stable_sort_by_y():
    rows = [line.split() for line in COORDS.read_text().splitlines()]
    y = [float(r[2]) for r in rows]
    original = sorted(range(len(y)), key=lambda k: y[k])  # as in brainlm_tutorial.ipynb
    order = read_region_order()
    assert order.tolist() == original
    assert read_region_order(COORDS).tolist() == original
    # Ties are common, and within a tie the label order is kept.
    y_sorted = np.asarray(y)[original]
    tied = np.flatnonzero(np.diff(y_sorted) == 0)
    assert len(tied) > 100
    assert all(order[i] < order[i + 1] for i in tied)
    assert not np.array_equal(np.argsort(y), original)  # an unstable sort would differ


def test_region_order_follows_labels_not_file_rows(tmp_path):
    lines = COORDS.read_text().splitlines()
    shuffled = tmp_path / "coords.dat"
    shuffled.write_text("\n".join(lines[::-1]) + "\n")
    assert read_region_order(shuffled).tolist() == read_region_order().tolist()


def test_missing_coordinate_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="coordinate file not found"):
        read_region_order(tmp_path / "nope.dat")
    with pytest.raises(FileNotFoundError, match="coordinate file not found"):
        BrainLMViTMAE.from_config(tiny_config(), coords_path=tmp_path / "nope.dat")


def test_malformed_coordinate_file_is_a_clear_error(tmp_path):
    short = tmp_path / "short.dat"
    short.write_text("\n".join(COORDS.read_text().splitlines()[:400]))
    with pytest.raises(ValueError, match="424 A424 labels"):
        read_region_order(short)
    junk = tmp_path / "junk.dat"
    junk.write_text("label X Y Z\n1 2 3 4\n")
    with pytest.raises(ValueError, match="numeric rows"):
        read_region_order(junk)


# --------------------------------------------------------------------------- window <-> image


@pytest.mark.parametrize(
    "image_size, patch_size, padding",
    [(432, 48, (4, 4, 116, 116)), (434, 31, (5, 5, 117, 117)), (435, 29, (5, 6, 117, 118))],
)
def test_image_is_reordered_scaled_three_channels_padded(image_size, patch_size, padding, windows):
    m = tiny_model(image_size=image_size, patch_size=patch_size)
    assert m.padding == padding
    top, bottom, left, right = padding
    image = m.to_image(windows)
    assert image.shape == (2, 3, image_size, image_size)
    inside = image[:, :, top : image_size - bottom, left : image_size - right]  # (B, C, R, T)
    expected = windows[:, read_region_order()] / 5.6430855
    for c in range(3):
        torch.testing.assert_close(inside[:, c], expected)
    outside = torch.ones_like(image, dtype=torch.bool)
    outside[:, :, top : image_size - bottom, left : image_size - right] = False
    assert (image[outside] == -1).all()
    # The inverse gives back the window in the caller's order and units.
    torch.testing.assert_close(m.from_image(image), windows)


def test_unpatchify_inverts_transformers_patchify(model, windows):
    image = model.to_image(windows)
    torch.testing.assert_close(model.unpatchify(model.mae.patchify(image)), image)


def test_full_size_presets_pad_like_the_original():
    # The original pads 424 x 200 to 432 x 432 (patch 16) and 434 x 434 (patch 14).
    with torch.device("meta"):
        mae111 = ViTMAEForPreTraining(vitmae_111m_config())
        mae650 = ViTMAEForPreTraining(vitmae_650m_config())
    m111, m650 = BrainLMViTMAE(mae111), BrainLMViTMAE(mae650)
    assert m111.padding == (4, 4, 116, 116) and m111.num_patches == 27 * 27
    assert m650.padding == (5, 5, 117, 117) and m650.num_patches == 31 * 31


# --------------------------------------------------------------------------- sizes


def test_full_size_parameter_counts_on_meta():
    with torch.device("meta"):
        m111 = ViTMAEForPreTraining(vitmae_111m_config())
        m650 = ViTMAEForPreTraining(vitmae_650m_config())
    n111 = sum(p.numel() for p in m111.parameters())
    n650 = sum(p.numel() for p in m650.parameters())
    assert 105e6 < n111 < 118e6, n111
    assert 630e6 < n650 < 670e6, n650
    assert (m111.config.hidden_size, m111.config.num_hidden_layers) == (768, 12)
    assert (m650.config.hidden_size, m650.config.num_hidden_layers) == (1280, 32)


def test_interface_attributes(model):
    assert model.num_regions == 424
    assert model.window_length == 200
    assert model.config.model_type == "vit_mae"
    assert model.config._attn_implementation == "sdpa"


# --------------------------------------------------------------------------- forward


def test_forward_shapes(model, windows):
    out = model(windows, xyz_vectors=torch.zeros(2, 424, 3), noise=_noise(model, 2))
    n, kept = model.num_patches, int(model.num_patches * (1 - model.config.mask_ratio))
    assert out.logits.shape == (2, 424, 200)
    assert out.mask.shape == (2, 424, 200)
    assert out.encoder_last_hidden_state.shape == (2, 1 + kept, model.hidden_size)
    assert out.ids_restore.shape == out.patch_mask.shape == (2, n)
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    assert set(out.mask.unique().tolist()) <= {0.0, 1.0}


def test_encoder_and_decoder_equal_transformers_forward(model, windows):
    noise = _noise(model, 2)
    out = model(windows, noise=noise)
    with torch.no_grad():
        ref = model.mae(model.to_image(windows), noise=noise)
        ref_enc = model.mae.vit(model.to_image(windows), noise=noise)
    torch.testing.assert_close(out.encoder_last_hidden_state, ref_enc.last_hidden_state)
    torch.testing.assert_close(out.patch_mask, ref.mask)
    torch.testing.assert_close(out.ids_restore, ref.ids_restore)
    torch.testing.assert_close(out.logits, model.from_image(model.mae.unpatchify(ref.logits)))


def test_mask_ratio_argument(model, windows):
    out = model(windows, mask_ratio=0.5)
    assert out.patch_mask.sum(1).tolist() == [model.num_patches - int(model.num_patches * 0.5)] * 2


def test_pixel_mask_is_the_patch_mask_inside_the_window(model, windows):
    out = model(windows, noise=_noise(model, 2))
    (H, W), p = model.image_size, model.patch_size
    top, _, left, _ = model.padding
    grid = out.patch_mask.view(2, H // p, W // p)  # (B, h, w)
    pixels = grid.repeat_interleave(p, 1).repeat_interleave(p, 2)  # (B, H, W)
    window = pixels[:, top : top + 424, left : left + 200]  # (B, R, T) rows by Y
    torch.testing.assert_close(out.mask, window[:, torch.argsort(read_region_order())])


def test_loss_is_on_masked_pixels_inside_the_window(model, windows):
    noise = _noise(model, 2)
    out = model(windows, noise=noise)
    # The MSE of the returned reconstruction over the returned mask ...
    manual = ((out.logits - windows) ** 2 * out.mask).sum() / out.mask.sum()
    torch.testing.assert_close(out.loss, manual)
    # ... is the original's loss (computed on the scaled image, padding cut) times scale**2.
    image = model.to_image(windows)
    top, _, left, _ = model.padding
    with torch.no_grad():
        ref = model.mae(image, noise=noise)
    crop = (slice(None), slice(None), slice(top, top + 424), slice(left, left + 200))
    pred = model.mae.unpatchify(ref.logits)[crop].mean(1)
    mask = model.mae.unpatchify(ref.mask.unsqueeze(-1).expand_as(ref.logits))[crop].mean(1)
    original = ((pred - image[crop].mean(1)) ** 2 * mask).sum() / mask.sum()
    torch.testing.assert_close(out.loss, original * A424_SCALE**2)
    # transformers' own loss also counts the padding of masked patches, so it differs.
    assert not torch.isclose(ref.loss * A424_SCALE**2, out.loss, rtol=1e-3)


def test_loss_ignores_unmasked_pixels(model, windows):
    out = model(windows, noise=_noise(model, 2))
    changed = out.logits + 100.0 * (1 - out.mask)
    torch.testing.assert_close(model.forward_loss(windows, changed, out.mask), out.loss)


def test_every_parameter_gets_a_gradient(windows):
    m = tiny_model().train()
    m(windows, noise=_noise(m, 2)).loss.backward()
    for name, p in m.named_parameters():
        if p.requires_grad:  # the sin-cos position tables are frozen, as in transformers
            assert p.grad is not None, name
            assert torch.isfinite(p.grad).all(), name


# --------------------------------------------------------------------------- embed


def test_embed_is_deterministic_and_uses_every_patch(model, windows):
    cls = model.embed(windows, pooling="cls").embeddings
    mean = model.embed(windows, pooling="mean").embeddings
    assert cls.shape == mean.shape == (2, model.hidden_size)
    torch.testing.assert_close(model.embed(windows).embeddings, cls)
    # Masking off: all N patches, in order, whatever the config's mask ratio.
    image = model.to_image(windows)
    hidden, mask, ids_restore = model.forward_encoder(image, None, mask_ratio=0.0)
    assert hidden.shape[1] == 1 + model.num_patches and mask.sum() == 0
    torch.testing.assert_close(mean, model.embed(windows, pooling="mean").embeddings)
    # Same as transformers' own encoder with masking off and patches kept in order.
    in_order = torch.arange(model.num_patches).expand(2, -1)
    ratio = model.config.mask_ratio
    try:
        model.config.mask_ratio = 0.0
        with torch.no_grad():
            ref = model.mae.vit(image, noise=in_order).last_hidden_state
    finally:
        model.config.mask_ratio = ratio
    torch.testing.assert_close(cls, ref[:, 0])
    torch.testing.assert_close(mean, ref[:, 1:].mean(1))


def test_embed_sees_the_last_region_and_timepoint(model, windows):
    poked = windows.clone()
    poked[:, 423, 199] += 5.0
    assert not torch.allclose(model.embed(poked).embeddings, model.embed(windows).embeddings)


def test_embed_rejects_unknown_pooling(model, windows):
    with pytest.raises(ValueError, match="does not apply to ViT-MAE"):
        model.embed(windows, pooling="max")


# --------------------------------------------------------------------------- regions from patches


def test_region_pixels_follow_the_reorder_and_the_padding(model):
    counts = model.region_pixels()  # (R, N)
    (H, W), p = model.image_size, 48
    top, _, left, _ = model.padding
    assert counts.shape == (424, model.num_patches)
    torch.testing.assert_close(counts.sum(1), torch.full((424,), 200.0))  # every timepoint of every region once
    # The region on image row j (the j-th by Y) lies in patch row (top + j) // p only.
    order = model.region_order
    for j in (0, 43, 423):
        rows = counts[order[j]].view(H // p, W // p).sum(1).nonzero().flatten().tolist()
        assert rows == [(top + j) // p]
    # Its pixels fall in the window's patch columns, the first and last in part.
    per_column = counts[order[0]].view(H // p, W // p).sum(0)
    cols = model.window_columns
    assert per_column.nonzero().flatten().tolist() == list(cols)
    assert per_column[cols.start] == (cols.start + 1) * p - left
    assert per_column[cols.stop - 1] == left + 200 - (cols.stop - 1) * p


def test_cls_attention_is_transformers_attention_given_to_regions(model, windows):
    image = model.to_image(windows)
    in_order = torch.arange(model.num_patches).expand(2, -1)
    *_, ours = model.forward_encoder(image, in_order, mask_ratio=0.0, output_cls_attentions=True)
    # The reference: transformers' eager attention weights, masking off, patches in order.
    ratio, impl = model.config.mask_ratio, model.config._attn_implementation
    try:
        model.config.mask_ratio, model.config._attn_implementation = 0.0, "eager"
        with torch.no_grad():
            ref = model.mae.vit(image, noise=in_order, output_attentions=True).attentions
    finally:
        model.config.mask_ratio, model.config._attn_implementation = ratio, impl
    assert len(ours) == len(ref) == 2
    for a, r in zip(ours, ref):
        torch.testing.assert_close(a, r[:, :, 0], atol=1e-6, rtol=1e-5)
    with torch.no_grad():
        maps = model.cls_attention(windows)  # (B, R, P)
        every = model.cls_attention(windows, layer=None)
        first = model.cls_attention(windows, layer=0)
    assert maps.shape == (2, 424, len(model.window_columns))
    torch.testing.assert_close(maps.sum((1, 2)), torch.ones(2))
    torch.testing.assert_close(every, (first + maps) / 2)
    # Each patch's attention is shared by its regions in proportion to their pixels: the
    # regions of one patch row and column get equal parts, and padding gets nothing.
    a = r[:, :, 0].mean(1)[:, 1:]  # (B, N) last layer, head mean
    share = model.region_pixels() / model.region_pixels().sum(0).clamp(min=1)
    expected = (a[:, None] * share).view(2, 424, 9, 9).sum(2)[..., 2:7]
    torch.testing.assert_close(maps, expected / expected.sum((1, 2), keepdim=True), atol=1e-6, rtol=1e-5)
    with torch.no_grad():
        out = model.embed(windows, output_attentions=True)
    torch.testing.assert_close(out.cls_attention, maps.sum(-1))
    with pytest.raises(UserError, match="--layer 2: the encoder has 2 layers"):
        model.cls_attention(windows, layer=2)


def test_region_time_is_the_pixel_weighted_mean_of_patch_tokens(model, windows):
    with torch.no_grad():
        regions = model.embed(windows, pooling="region_time").embeddings  # (B, R, D)
        both = model.embed(windows, pooling="region_time", average_regions=True).embeddings
        hidden, _, _ = model.forward_encoder(model.to_image(windows), torch.arange(model.num_patches).expand(2, -1),
                                             mask_ratio=0.0)
    assert regions.shape == (2, 424, 32)
    torch.testing.assert_close(both, regions.mean(1))
    counts = model.region_pixels()
    r = int(model.region_order[100])
    expected = (counts[r][:, None] * hidden[:, 1:]).sum(1) / 200
    torch.testing.assert_close(regions[:, r], expected)
    # Regions on the same patch row (48 image rows) share their tokens, so their vectors.
    same_row = model.region_order[(torch.arange(424) + model.padding[0]) // 48 == 3]
    assert len(same_row) == 48
    torch.testing.assert_close(regions[:, same_row], regions[:, same_row[:1]].expand(-1, 48, -1))


def test_any_region_count_with_a_custom_order():
    from transformers import ViTMAEForPreTraining

    torch.manual_seed(0)
    order = torch.randperm(24)
    vit = BrainLMViTMAE(ViTMAEForPreTraining(tiny_config(image_size=32, patch_size=8)), order,
                        window_length=20).eval()
    x = torch.randn(3, 24, 20)
    with torch.no_grad():
        maps = vit.cls_attention(x)
        emb = vit.embed(x, pooling="region_time").embeddings
    assert maps.shape == (3, 24, 4) and emb.shape == (3, 24, 32)  # window columns 6..25: patch columns 0..3
    torch.testing.assert_close(maps.sum((1, 2)), torch.ones(3))
    assert vit.forecast(x, None, 8).shape == (3, 24, 8)


# --------------------------------------------------------------------------- forecasting


def original_last_masking(image, T, p, k, mode):
    """The original's predict_last / predict_last_pixel rule, restated for the test.

    From ``ViTMAEForPreTraining.forward`` in ``brainlm_mae/modeling_vit_mae_with_padding.py``
    (vandijklab/BrainLM): the window starts (W - T) // 2 columns into the padded image; the
    patch columns from ``start`` to the one holding the window's end are masked in every row;
    ``predict_last`` rounds the count of columns up, ``predict_last_pixel`` down and zeroes
    the remaining image columns of the last k (every row, every channel).

    Args:
        image: ``(B, C, H, W)`` padded image. T: window length. p: patch size. k: timepoints.

    Returns:
        noise ``(B, N)`` 0/1 (1 = masked), the image the encoder sees, and the number of the
        last k timepoints covered only by zeroing (0 for predict_last).
    """
    B, _, H, W = image.shape
    left = (W - T) // 2
    image_end = left + T  # one past the window's last image column
    patch_end = math.ceil(image_end / p) * p
    mask_start = image_end - k
    num_mask = (patch_end - mask_start) // p
    if mask_start % p != 0 and mode == "predict_last":
        num_mask += 1
    end = patch_end // p
    start = end - num_mask
    grid = torch.zeros(B, H // p, W // p)
    grid[:, :, start:end] = 1
    seen = image.clone()
    zeroed = 0
    if mode == "predict_last_pixel":
        zeroed = k - (image_end - start * p)
        if zeroed > 0:
            seen[:, :, :, start * p - zeroed : start * p] = 0
    return grid.flatten(1), seen, max(zeroed, 0)


def original_masking_step(sequence, noise):
    """The original's masking step in the forecasting modes: keep N - sum(noise) patches."""
    B, N, D = sequence.shape
    num_keep = int(N - noise[0].sum())
    ids_shuffle = torch.argsort(noise, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    kept = torch.gather(sequence, 1, ids_shuffle[:, :num_keep, None].expand(-1, -1, D))
    mask = torch.ones(B, N)
    mask[:, :num_keep] = 0
    return kept, torch.gather(mask, 1, ids_restore), ids_restore


@pytest.fixture(scope="module")
def model_p31() -> BrainLMViTMAE:
    return tiny_model(image_size=434, patch_size=31)  # odd patch, 117 columns of left padding


@pytest.mark.parametrize("mode", ["predict_last", "predict_last_pixel"])
@pytest.mark.parametrize("which", ["model", "model_p31"])
@pytest.mark.parametrize("ratio", [0.2, 0.29, 0.38, 0.5])
def test_forecast_modes_equal_the_originals_rule(request, which, mode, ratio, windows, monkeypatch):
    m = request.getfixturevalue(which)
    T, p = 200, m.patch_size
    k = int(ratio * T)  # the original's count: 0.29 * 200 truncates to 57
    image = m.to_image(windows)
    noise, seen, zeroed = original_last_masking(image, T, p, k, mode)
    monkeypatch.setattr(m.mae.vit.embeddings, "random_masking", original_masking_step)
    with torch.no_grad():
        ref = m.mae(seen, noise=noise)
    monkeypatch.undo()
    out = m(windows, train_mode=mode, mask_ratio=ratio)

    # Masks: the same patches; the window mask adds the zeroed timepoints.
    torch.testing.assert_close(out.patch_mask, ref.mask)
    top, _, left, _ = m.padding
    crop = (slice(None), slice(None), slice(top, top + 424), slice(left, left + 200))
    ref_mask = m.mae.unpatchify(ref.mask.unsqueeze(-1).expand_as(ref.logits))[crop].mean(1)
    if zeroed:
        ref_mask[:, :, T - k : T - k + zeroed] = 1
    restore = torch.argsort(read_region_order())
    torch.testing.assert_close(out.mask, ref_mask[:, restore])
    assert (out.mask == out.mask[:, :1]).all()  # every region alike
    if mode == "predict_last_pixel":
        assert out.mask.sum(-1).unique().tolist() == [k]
    else:
        assert out.mask.sum(-1).unique().item() >= k
    # Kept patches in row-major order: the restore of a stable sort of the 0/1 noise.
    torch.testing.assert_close(out.ids_restore, torch.argsort(torch.argsort(noise, stable=True)))

    # Reconstruction and loss (the original's is on the scaled image).
    pred = m.mae.unpatchify(ref.logits)[crop].mean(1)  # (B, R, T) rows by Y
    torch.testing.assert_close(out.logits, pred[:, restore] * A424_SCALE)
    target = image[crop].mean(1)  # the unzeroed input
    original = ((pred - target) ** 2 * ref_mask).sum() / ref_mask.sum()
    torch.testing.assert_close(out.loss, original * A424_SCALE**2)


def test_modes_agree_when_k_is_on_a_patch_boundary(model, windows):
    # Patch 48, window from image column 116: boundaries at window timepoints 28, 76, 124, 172.
    a = model(windows, train_mode="predict_last", num_last=76)
    b = model(windows, train_mode="predict_last_pixel", num_last=76)
    torch.testing.assert_close(a.mask, b.mask)
    torch.testing.assert_close(a.logits, b.logits)
    assert a.mask.sum(-1).unique().tolist() == [76]


def test_last_masking_of_the_released_sizes():
    with torch.device("meta"):
        mae16 = ViTMAEForPreTraining(vitmae_111m_config())
        mae14 = ViTMAEForPreTraining(vitmae_650m_config())
    m16, m14 = BrainLMViTMAE(mae16), BrainLMViTMAE(mae14)
    # Patch 16, 116 columns of left padding: window timepoints 156.. share columns 17-19.
    last = m16.last_masking(40, "predict_last")
    assert (last.columns, last.zeroed, last.hidden_from) == (range(17, 20), range(156, 156), 156)
    pixel = m16.last_masking(40, "predict_last_pixel")
    assert (pixel.columns, pixel.zeroed, pixel.hidden_from) == (range(18, 20), range(160, 172), 160)
    assert m16.last_patch_mask(last).view(27, 27)[:, 17:20].all()
    assert m16.last_patch_mask(last).sum() == 27 * 3
    # Patch 14, 117 columns of left padding.
    last = m14.last_masking(40, "predict_last")
    assert (last.columns, last.hidden_from) == (range(19, 23), 149)
    pixel = m14.last_masking(40, "predict_last_pixel")
    assert (pixel.columns, pixel.zeroed, pixel.hidden_from) == (range(20, 23), range(160, 163), 160)
    # The limits: pixel mode needs a whole column; patch mode must leave something visible.
    assert m16.last_masking(12, "predict_last_pixel").columns == range(19, 20)
    assert m14.last_masking(9, "predict_last_pixel").columns == range(22, 23)
    assert m16.last_masking(188, "predict_last").hidden_from == 12
    assert m14.last_masking(191, "predict_last").hidden_from == 9
    with pytest.raises(ValueError, match="at least 12"):
        m16.last_masking(11, "predict_last_pixel")
    with pytest.raises(ValueError, match="at most 188"):
        m16.last_masking(189, "predict_last")


@pytest.mark.parametrize("mode", ["predict_last", "predict_last_pixel"])
def test_forecast_depends_only_on_the_visible_part(model, windows, mode):
    k = 40
    y = model.forecast(windows, None, k, train_mode=mode)
    assert y.shape == (2, 424, k) and y.dtype == torch.float32
    torch.testing.assert_close(y, model(windows, train_mode=mode, num_last=k).logits[..., -k:])
    hidden_from = model.last_masking(k, mode).hidden_from  # 124 (patch), 160 (pixel)
    assert hidden_from == (124 if mode == "predict_last" else 160)
    g = torch.Generator().manual_seed(5)
    changed = windows.clone()
    changed[..., hidden_from:] = 10 * torch.randn(2, 424, 200 - hidden_from, generator=g)
    torch.testing.assert_close(model.forecast(changed, None, k, train_mode=mode), y, rtol=0, atol=0)
    # ... but the last visible timepoint does count.
    poked = windows.clone()
    poked[:, :, hidden_from - 1] += 5.0
    assert not torch.allclose(model.forecast(poked, None, k, train_mode=mode), y)


def test_forecast_fraction_is_the_originals_count(model, windows):
    torch.testing.assert_close(model.forecast(windows, None, 0.2), model.forecast(windows, None, 40))
    assert model.forecast(windows, None, 0.29).shape[-1] == 57  # int(0.29 * 200)
    # forward's mask_ratio means the same in the forecasting modes; None reads the config's.
    out = model(windows, train_mode="predict_last_pixel")
    assert out.mask.sum(-1).unique().tolist() == [int(model.config.mask_ratio * 200)]


def test_forecast_rejects_bad_k(model, windows):
    for k in (0, -3, 200, 250):
        with pytest.raises(ValueError, match="between 1 and 199"):
            model.forecast(windows, None, k)
    for fraction in (0.0, 1.0, 1.5, -0.2):
        with pytest.raises(ValueError, match=r"in \(0, 1\)"):
            model.forecast(windows, None, fraction)
    with pytest.raises(ValueError, match="rounds down to none"):
        model.forecast(windows, None, 0.004)
    for k in (True, "10", None):
        with pytest.raises(TypeError):
            model.forecast(windows, None, k)
    assert model.forecast(windows, None, np.int64(10)).shape == (2, 424, 10)
    with pytest.raises(ValueError, match="at least 28"):
        model.forecast(windows, None, 27, train_mode="predict_last_pixel")
    with pytest.raises(ValueError, match="at most 172"):
        model.forecast(windows, None, 173)
    with pytest.raises(ValueError, match="train_mode must be one of"):
        model.forecast(windows, None, 10, train_mode="auto_encode")


def test_forward_train_mode_arguments(model, windows):
    with pytest.raises(ValueError, match="train_mode must be one of"):
        model(windows, train_mode="predict_next")
    with pytest.raises(ValueError, match="noise must be None"):
        model(windows, noise=_noise(model, 2), train_mode="predict_last")
    with pytest.raises(ValueError, match="not both"):
        model(windows, train_mode="predict_last", mask_ratio=0.2, num_last=40)
    with pytest.raises(ValueError, match="num_last is for the forecasting modes"):
        model(windows, num_last=40)
    # The default is still random masking, whatever the config says.
    model.config.train_mode = "predict_last"
    try:
        out = model(windows, noise=_noise(model, 2))
    finally:
        del model.config.train_mode
    assert out.patch_mask.sum(1).tolist() == [model.num_patches - int(model.num_patches * 0.25)] * 2


# --------------------------------------------------------------------------- bad input


def test_window_must_have_424_regions(model):
    with pytest.raises(ValueError, match="only know the A424 parcellation"):
        model(torch.randn(1, 400, 200))
    with pytest.raises(ValueError, match="only know the A424 parcellation"):
        model.embed(torch.randn(1, 100, 200)).embeddings


def test_window_must_have_the_trained_length(model):
    with pytest.raises(ValueError, match="200 timepoints"):
        model(torch.randn(1, 424, 150))
    with pytest.raises(ValueError, match=r"\(B, R, T\)"):
        model(torch.randn(424, 200))


def test_image_too_small_for_the_window():
    with pytest.raises(ValueError, match="cannot hold a 424 x 200 window"):
        BrainLMViTMAE.from_config(tiny_config(image_size=224, patch_size=16))


def test_norm_pix_loss_is_refused_in_forward(windows):
    m = tiny_model(norm_pix_loss=True)
    with pytest.raises(NotImplementedError, match="norm_pix_loss"):
        m(windows)
    assert m.embed(windows).embeddings.shape == (2, 32)


# --------------------------------------------------------------------------- loading


@pytest.fixture(scope="module")
def saved(tmp_path_factory, model):
    folder = tmp_path_factory.mktemp("vitmae") / "vitmae_tiny"
    model.mae.save_pretrained(folder)
    return folder


def test_load_safetensors_folder(saved, model, windows):
    assert is_vitmae_checkpoint(saved)
    loaded = load_vitmae(saved)
    assert not loaded.training
    assert loaded.config._attn_implementation == "sdpa"
    noise = _noise(model, 2)
    a, b = loaded(windows, noise=noise), model(windows, noise=noise)
    torch.testing.assert_close(a.logits, b.logits)
    torch.testing.assert_close(loaded.embed(windows).embeddings, model.embed(windows).embeddings)


def test_load_legacy_bin_folder(saved, model, windows, tmp_path):
    """The released files: old parameter names, a .bin, image_size as a list, extra keys."""
    folder = tmp_path / "vitmae_111M"
    folder.mkdir()
    state = {k: v.clone() for k, v in model.mae.state_dict().items()}
    # Position tables unlike transformers' own sin-cos init: they must come from the file.
    g = torch.Generator().manual_seed(3)
    for key in ("vit.embeddings.position_embeddings", "decoder.decoder_pos_embed"):
        state[key] = torch.randn(state[key].shape, generator=g)
    legacy = {_legacy_key(k): v for k, v in state.items()}
    assert "vit.encoder.layer.1.attention.attention.query.weight" in legacy
    assert "decoder.decoder_layers.0.attention.output.dense.weight" in legacy
    torch.save(legacy, folder / "pytorch_model.bin")
    config = json.loads((saved / "config.json").read_text())
    config.update(image_size=[432, 432], train_mode="auto_encode", transformers_version="4.28.0")
    (folder / "config.json").write_text(json.dumps(config))
    assert is_vitmae_checkpoint(folder)
    loaded = load_vitmae(folder)
    for key, value in loaded.mae.state_dict().items():
        torch.testing.assert_close(value, state[key], msg=key)
    assert loaded.image_size == (432, 432)


def test_bin_is_read_with_weights_only(saved, tmp_path, monkeypatch):
    folder = tmp_path / "bin"
    folder.mkdir()
    (folder / "config.json").write_text((saved / "config.json").read_text())
    torch.save(load_file(saved / "model.safetensors"), folder / "pytorch_model.bin")
    seen = []
    real_load = torch.load

    def spy(*args, **kwargs):
        seen.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    load_vitmae(folder)
    assert seen and all(w is True for w in seen)


def test_load_dtype_and_device(saved):
    m = load_vitmae(saved, dtype=torch.bfloat16, device="cpu")
    assert {p.dtype for p in m.parameters()} == {torch.bfloat16}


def test_bf16_on_cpu_is_close_to_fp32(model, windows):
    m16 = tiny_model().to(torch.bfloat16)
    e32, e16 = model.embed(windows).embeddings, m16.embed(windows).embeddings
    assert e16.dtype == torch.bfloat16
    assert (e16.float() - e32).norm() / e32.norm() < 0.05
    noise = _noise(model, 2)
    l32, l16 = model(windows, noise=noise).loss, m16(windows, noise=noise).loss
    assert torch.isfinite(l16) and abs(l16 - l32) / l32 < 0.05


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_gpu_dtypes_are_close_to_cpu_fp32(saved, model, windows, dtype):
    m = load_vitmae(saved, dtype=dtype, device="cuda")
    x = windows.cuda()
    e = m.embed(x).embeddings.float().cpu()
    ref = model.embed(windows).embeddings
    assert (e - ref).norm() / ref.norm() < (1e-4 if dtype == torch.float32 else 0.05)
    out = m(x, noise=_noise(model, 2).cuda())
    assert torch.isfinite(out.loss)
    for mode in ("predict_last", "predict_last_pixel"):
        y = m.forecast(x, None, 40, train_mode=mode).float().cpu()
        ref = model.forecast(windows, None, 40, train_mode=mode)
        assert (y - ref).norm() / ref.norm() < (1e-4 if dtype == torch.float32 else 0.05)


def test_is_vitmae_checkpoint_negative_cases(saved, tmp_path):
    assert not is_vitmae_checkpoint(tmp_path / "absent")
    assert not is_vitmae_checkpoint(saved / "config.json")
    no_weights = tmp_path / "no_weights"
    no_weights.mkdir()
    (no_weights / "config.json").write_text((saved / "config.json").read_text())
    assert not is_vitmae_checkpoint(no_weights)
    core = tmp_path / "core"
    core.mkdir()
    (core / "config.json").write_text(json.dumps({"model_type": "brainlm_mae"}))
    (core / "model.safetensors").write_bytes((saved / "model.safetensors").read_bytes())
    assert not is_vitmae_checkpoint(core)
    with pytest.raises(ValueError, match="not 'vit_mae'"):
        load_vitmae(core)
    with pytest.raises(ValueError, match="no weights"):
        load_vitmae(no_weights)


def test_missing_local_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint folder"):
        load_vitmae(tmp_path / "absent")
    with pytest.raises(FileNotFoundError, match="no checkpoint folder"):
        load_vitmae("./absent/vitmae_111M")


def test_resolve_checkpoint_keeps_local_folders(saved):
    assert resolve_checkpoint(saved) == saved
    assert resolve_checkpoint(str(saved)) == saved


def test_save_pretrained_round_trip_with_a_model_card(model, windows, tmp_path):
    folder = model.save_pretrained(tmp_path / "saved")
    assert {p.name for p in folder.iterdir()} >= {"config.json", "model.safetensors", "README.md"}
    assert is_vitmae_checkpoint(folder)
    card = (folder / "README.md").read_text()
    assert "BrainLMViTMAE.from_pretrained" in card and '| `patch_size` | `48` |' in card
    loaded = BrainLMViTMAE.from_pretrained(folder)
    assert not loaded.training
    torch.testing.assert_close(loaded.embed(windows).embeddings, model.embed(windows).embeddings, rtol=0, atol=0)


def test_weights_that_do_not_fit_the_config(saved, tmp_path):
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "config.json").write_text((saved / "config.json").read_text())
    state = load_file(saved / "model.safetensors")
    state.pop("vit.embeddings.cls_token")
    save_file(state, folder / "model.safetensors")
    with pytest.raises(ValueError, match="do not fit the config"):
        load_vitmae(folder)


def test_image_size_too_small_in_a_checkpoint(tmp_path):
    folder = tmp_path / "small"
    ViTMAEForPreTraining(tiny_config(image_size=224, patch_size=16)).save_pretrained(folder)
    with pytest.raises(ValueError, match="cannot hold"):
        load_vitmae(folder)


# --------------------------------------------------------------------------- hub ids


def test_hub_id_offline_is_a_clear_error(no_network, empty_hub_cache):
    with pytest.raises(UserError, match=r"'vandijklab/brainlm/vitmae_111M'.*local path"):
        load_vitmae("vandijklab/brainlm/vitmae_111M")


def test_hub_id_without_network_is_a_clear_error(no_network, monkeypatch):
    import huggingface_hub

    def unreachable(*args, **kwargs):
        raise ConnectionError("Failed to resolve 'huggingface.co'")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", unreachable)
    with pytest.raises(UserError, match=r"could not fetch 'vandijklab/brainlm'"):
        load_vitmae("vandijklab/brainlm")


def test_hub_id_downloads_the_subfolder(no_network, monkeypatch, saved, windows, model):
    import huggingface_hub

    calls = []

    def fake_snapshot(repo_id, **kwargs):
        calls.append((repo_id, kwargs))
        return str(saved.parent)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot)
    loaded = load_vitmae(f"vandijklab/brainlm/{saved.name}", revision="main")
    assert calls == [
        ("vandijklab/brainlm", {"revision": "main", "allow_patterns": [f"{saved.name}/*"]})
    ]
    torch.testing.assert_close(loaded.embed(windows).embeddings, model.embed(windows).embeddings)

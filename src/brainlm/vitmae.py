"""The released BrainLM ViT-MAE checkpoints (111M and 650M), on CPU and GPU.

The large published BrainLM weights (Hugging Face ``vandijklab/brainlm``, folders
``vitmae_111M`` and ``vitmae_650M``) are stock ``transformers`` ``ViTMAEForPreTraining``
models that see one recording window as an image. This module is the adapter at the edge:
it loads such a folder into the maintained ``transformers`` ViT-MAE classes and wraps them
with the window <-> image conversion, so callers hand in ``(B, R, T)`` windows as they do to
the core model and get windows back.

Dimension letters::

    B batch          R regions (424, the A424 parcels)     T timepoints (200)
    C channels (3)   H, W padded image height and width    N image patches (H/p * W/p)
    p patch size     D encoder hidden size

The window -> image steps, as the original code does them (``brainlm_tutorial.ipynb``,
cells building ``reorder_idxs_by_x_coord`` / ``preprocess_images``, and
``brainlm_mae/modeling_vit_mae_with_padding.py``, ``ViTMAEForPreTraining.forward``):

1. reorder the regions by ascending Y (the third column of ``A424_Coordinates.dat``);
   the original uses Python's ``sorted(range(424), key=Y)``, which is stable, so parcels
   with the same Y keep their label order. 420 of the 424 parcels share a Y value with
   another parcel, so the tie rule matters; ``np.argsort(kind="stable")`` reproduces it,
   the default quicksort does not;
2. divide by ``5.6430855``;
3. repeat into 3 identical channels;
4. pad with ``-1`` to ``config.image_size``, ``total // 2`` on each side (432 x 432 for the
   patch-16 model: 4 rows above and below, 116 columns left and right; 434 x 434 for the
   patch-14 model: 5 and 117).

The decoder output is unpatchified, the padding cut away, and the three channels averaged
back to one ``(B, R, T)`` window. The mask follows ``transformers``: per patch, 1 = masked,
and masking draws from all ``N`` patches of the padded image, padding-only patches included
(the original does the same).

Regions from image patches (per-region vectors and CLS attention, the interface shared with
BrainLM models, whose tokens are regions): region ``r`` is one image row, so it lies in one
row of patches and spans the patch columns that hold the window's timepoints (13 of 27 for
patch 16, the first and last only in part). ``region_pixels[r, n]`` counts the window pixels
of region ``r`` in patch ``n`` (:meth:`BrainLMViTMAE.region_pixels`). A region's vector
(``embed(pooling="region_time")``) is the mean of those patches' tokens weighted by that
count, so the ``p`` regions of one patch row share one vector: the released models do not
resolve single regions finer than a patch. A region's CLS attention is its share of each
patch's attention (its pixels over the patch's window pixels), summed per patch column:
``(B, R, P)`` with ``P`` the window's patch columns; padding-only patches hold no region, so
their attention is dropped and the map renormalised to sum to 1, as BrainLM's maps are.

Output units and shapes (``ViTMAEOutput``):

- ``logits``: ``(B, R, T)``, the reconstruction in the caller's region order and units:
  the reorder and the division by 5.6430855 are undone.
- ``mask``: ``(B, R, T)`` pixel mask in the caller's region order, 1 = masked.
- ``patch_mask``: ``(B, N)``, 1 = masked, in ``transformers``' patch order (row-major).
- ``loss``: mean squared error between ``logits`` and the input over the masked pixels of
  the window, so ``((logits - x) ** 2 * mask).sum() / mask.sum()``.

Forecasting modes (``train_mode``), as the original's ``ViTMAEForPreTraining.forward``
(``modeling_vit_mae_with_padding.py``) does them. ``"auto_encode"`` (the default) is the random
masking above. The two forecasting modes hide the last ``k`` timepoints of every region,
the same for every window, with no randomness; ``k = int(mask_ratio * T)`` (the original
reuses ``config.mask_ratio`` as a fraction of the ``T`` timepoints, not of the patches), or
``num_last`` / ``forecast(x, k)`` here. Only patch *columns* are masked (time runs along the
image width), each in every patch row (all regions and the padding rows above and below);
the right-hand padding-only columns stay visible. Patch boundaries do not fall on the
window's timepoints in general (the window starts ``left`` = 116 columns into the image for
patch 16: boundaries at window timepoints 12, 28, ..., 188), so the two modes round
differently:

- ``"predict_last"`` (patch level): every patch column that holds any of the last ``k``
  timepoints is masked, so the encoder may lose a few more (up to ``p - 1``) timepoints
  before ``T - k``; the returned ``mask`` and the loss cover all of the masked columns'
  timepoints, not only the last ``k``.
- ``"predict_last_pixel"`` (pixel level): only patch columns that lie wholly inside the last
  ``k`` timepoints (or the right padding) are masked; the rest of the last ``k`` timepoints,
  the front of the last visible column, are set to 0 in the input image (every row of those
  image columns, padding rows included, all channels), so the encoder still sees nothing
  from ``T - k`` on; ``mask`` and the loss cover exactly the last ``k`` timepoints (the
  zeroed ones are predicted by visible tokens). It needs at least one whole masked column:
  ``k >= 12`` for patch 16 (``k >= 9`` for patch 14).

When ``k`` lands on a patch boundary the two modes are the same. In both, the masked
patches are the 0/1 "noise" handed to the masking step, with ``N - masked`` patches kept;
``ids_restore`` is that of a stable sort (kept patches first in row-major order, then the
masked ones). ``forecast(x, k)`` returns the reconstruction of the last ``k`` timepoints.

Where we depart from the original, and why:

- Attention runs through ``transformers``' SDPA path, not the flash-attn monkey patch
  (``replace_vitmae_attn_with_flash_attn.py``); that patch needs a CUDA flash-attn build
  and half precision, and it passes the attention dropout probability to flash-attn even in
  eval mode (harmless only because the tutorial sets that probability to 0).
- The loss is in the caller's units, 5.6430855**2 times the original's loss (which was
  computed on the scaled image), so that it is the MSE of the returned ``logits``. Like
  the original, and unlike ``transformers``' own ``ViTMAEForPreTraining`` loss, it excludes
  the padding: ``transformers`` averages over every pixel of a masked patch.
- ``embed`` turns masking off (every patch enters the encoder, in order). The original
  tutorial took CLS tokens from ``model.vit`` with the checkpoint's mask ratio (0.75), so
  its embeddings were random; ours are deterministic. ``"mean"`` pooling averages all ``N``
  patch tokens, padding-only patches included, as the tutorial's mean over
  ``last_hidden_state[:, 1:]`` did.
- The original only pads an even total (it pads ``total // 2`` on both sides, so an odd
  total fails). We put the extra row or column at the end (bottom / right). The released
  configs both have even totals, so they are not affected.
- ``train_mode`` is an argument of ``forward`` (default ``"auto_encode"``), not
  ``config.train_mode``; a checkpoint's ``config.train_mode`` is ignored. The original reads
  the config, which fails when the key is absent (the tutorial sets it to ``auto_encode`` in
  that case) and would silently make a checkpoint saved in a forecasting mode forecast.
- ``noise`` is honoured in ``"auto_encode"``; the original always draws its own noise there,
  ignoring the caller's. With a forecasting mode, ``noise`` is refused (the original
  silently replaced it).
- Forecasting sizes the original mishandles are refused: ``predict_last_pixel`` with no
  whole masked column (for the released sizes the original then masks no patch, also sets
  the right padding of the last patch column to 0, and its loss mask is empty, so the loss
  is NaN), and ``predict_last`` with a ``k`` whose columns would hide the whole window.
- In the forecasting modes the original sorts its 0/1 noise with an unstable ``argsort``,
  so the order of the kept patches (and ``ids_restore``) is up to the sort; we sort
  stably. The encoder sees the same set of patches with the same position embeddings
  (added before masking), and attention does not depend on token order, so the outputs
  agree up to rounding.
- Pixel-normalised loss (``config.norm_pix_loss``) is not supported in ``forward``; the
  reconstruction would not be in signal units. ``embed`` works regardless.
- The original's ``ViTMAEForPreTraining`` fixes the image size from the patch size
  (16 -> 432, 14 -> 434); we read it from ``config.image_size`` as the tutorial's padding
  does, and check that it holds the window.

Preset configs: the original code names the models only "111M" / "650M" and fixes the image
and patch sizes above; no layer sizes are visible in it. ``vitmae_111m_config`` and
``vitmae_650m_config`` take the encoder of ViT-MAE base (768 wide, 12 layers, 12 heads) and
huge (1280 wide, 32 layers, 16 heads) and the ``transformers`` ViT-MAE decoder defaults
(512 wide, 8 layers, 16 heads); with those, the full models have 112.6M and 658.3M
parameters, in line with the names. A loaded checkpoint always uses its own ``config.json``.

The modules themselves are ``transformers``' (patch embedding, blocks, decoder); the
original's ``modeling_vit_mae_with_padding.py`` has the same layers and parameter names, and
``transformers`` renames the older parameter names of the released files when loading.
"""

from __future__ import annotations

import numbers
import os
import pickle
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from brainlm.errors import CorruptFileError, MissingInputError, UserError
from brainlm.hub import HubMixin, open_model, read_model_config, register_format
from brainlm.io import write_manifest
from brainlm.model import MAX_SIZE, EmbeddingOutput, ReconstructionOutput, is_count, is_finite_number

__all__ = [
    "A424_SCALE",
    "TRAIN_MODES",
    "BrainLMViTMAE",
    "LastMasking",
    "ViTMAEOutput",
    "is_vitmae_checkpoint",
    "load_vitmae",
    "read_region_order",
    "vitmae_111m_config",
    "vitmae_650m_config",
]

# The original divides every window by this value before padding (brainlm_tutorial.ipynb,
# ``max_val_to_scale``).
A424_SCALE = 5.6430855
NUM_REGIONS = 424
WINDOW_LENGTH = 200
PAD_VALUE = -1.0
# The original's config.train_mode values: random masking, and the two forecasting modes.
TRAIN_MODES = ("auto_encode", "predict_last", "predict_last_pixel")
FORECAST_MODES = TRAIN_MODES[1:]

_WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


# --------------------------------------------------------------------------- configs


def _vitmae_config(**kwargs):
    from transformers import ViTMAEConfig

    config = ViTMAEConfig(**kwargs)
    config._attn_implementation = "sdpa"
    return config


# The transformers ViT-MAE decoder defaults, and the two released image geometries.
_VITMAE_COMMON = dict(num_channels=3, decoder_hidden_size=512, decoder_num_hidden_layers=8,
                      decoder_num_attention_heads=16, decoder_intermediate_size=2048, mask_ratio=0.75,
                      norm_pix_loss=False)


def vitmae_111m_config(**overrides):
    """ViT-MAE base encoder on a 432 x 432 image with 16 x 16 patches (27 x 27 = 729 patches).

    Decoder: ``transformers`` defaults (512 wide, 8 layers, 16 heads), see the module docstring.
    """
    return _vitmae_config(**{**_VITMAE_COMMON, "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
                             "intermediate_size": 3072, "image_size": 432, "patch_size": 16, **overrides})


def vitmae_650m_config(**overrides):
    """ViT-MAE huge encoder on a 434 x 434 image with 14 x 14 patches (31 x 31 = 961 patches).

    Decoder: ``transformers`` defaults (512 wide, 8 layers, 16 heads), see the module docstring.
    """
    return _vitmae_config(**{**_VITMAE_COMMON, "hidden_size": 1280, "num_hidden_layers": 32, "num_attention_heads": 16,
                             "intermediate_size": 5120, "image_size": 434, "patch_size": 14, **overrides})


def _pair(value) -> tuple[int, int]:
    if isinstance(value, (list, tuple)):
        if len(value) != 2:
            raise UserError(f"expected an int or a pair, got {value!r}")
        return int(value[0]), int(value[1])
    return int(value), int(value)


# --------------------------------------------------------------------------- region order


def read_region_order(coords_path: str | os.PathLike | None = None) -> torch.Tensor:
    """Region order of the image rows: A424 parcels by ascending Y, ties in label order.

    Args:
        coords_path: the A424 coordinate file (tab separated ``label X Y Z`` per row, no
            header). ``None`` reads the copy bundled with the package.

    Returns:
        ``(R,)`` long tensor ``order``: image row ``j`` holds region ``order[j]``, where region
        ``i`` (0-based) is the parcel with label ``i + 1``.
    """
    if coords_path is None:
        text = resources.files("brainlm").joinpath("atlases/A424_Coordinates.dat").read_text()
        source = "the bundled A424_Coordinates.dat"
    else:
        path = Path(coords_path)
        if not path.is_file():
            raise MissingInputError(
                f"A424 coordinate file not found: {path} (needed to order the regions by Y; "
                "pass coords_path=None to use the copy bundled with brainlm)"
            )
        text = path.read_text()
        source = str(path)
    rows = [line.split() for line in text.splitlines() if line.strip()]
    try:
        table = np.array(rows, dtype=np.float64)  # (R, 4) label X Y Z
    except ValueError as err:
        raise UserError(f"{source}: expected numeric rows 'label X Y Z' ({err})") from None
    if table.ndim != 2 or table.shape[1] != 4:
        raise UserError(f"{source}: expected 4 columns 'label X Y Z' per row")
    labels = table[:, 0]
    if sorted(labels.tolist()) != list(range(1, NUM_REGIONS + 1)):
        raise UserError(
            f"{source}: expected the {NUM_REGIONS} A424 labels 1..{NUM_REGIONS}, "
            f"got {len(labels)} rows"
        )
    y = table[np.argsort(labels, kind="stable"), 2]  # (R,) Y of region i = label i + 1
    # Stable, as the original's Python sorted(): equal Y keeps label order.
    return torch.from_numpy(np.argsort(y, kind="stable")).long()


# --------------------------------------------------------------------------- model


@dataclass
class ViTMAEOutput:
    """What ``BrainLMViTMAE.forward`` returns. Shapes and units: see the module docstring."""

    loss: torch.Tensor  # () MSE over masked window pixels, caller's units
    logits: torch.Tensor  # (B, R, T) reconstruction, caller's region order and units
    mask: torch.Tensor  # (B, R, T) 1 = masked
    encoder_last_hidden_state: torch.Tensor  # (B, 1 + kept, D) CLS first
    ids_restore: torch.Tensor  # (B, N)
    patch_mask: torch.Tensor  # (B, N) 1 = masked


@dataclass(frozen=True)
class LastMasking:
    """What a forecasting mode hides to predict the last ``num_last`` timepoints.

    The same for every window (see "Forecasting modes" in the module docstring).

    Attributes:
        train_mode: ``"predict_last"`` or ``"predict_last_pixel"``.
        num_last: ``k``, the timepoints to predict.
        columns: the masked patch columns (image column // patch width), each masked in
            every patch row.
        zeroed: window timepoints set to 0 in the input image (``predict_last_pixel``: the
            part of the last ``k`` in the last visible column); empty for ``predict_last``.
        hidden_from: first window timepoint the encoder does not see (``T - k``, or earlier
            for ``predict_last``); ``forward``'s ``mask`` and loss cover ``hidden_from..T-1``.
    """

    train_mode: str
    num_last: int
    columns: range
    zeroed: range
    hidden_from: int


class BrainLMViTMAE(nn.Module, HubMixin):
    """A ``transformers`` ``ViTMAEForPreTraining`` that reads and writes ``(B, R, T)`` windows.

    ``from_pretrained(path_or_hub_id, device=..., dtype=..., coords_path=...)`` loads a released
    checkpoint (as :func:`load_vitmae`); ``save_pretrained(folder)`` writes the same format
    (``transformers``' ``config.json`` + ``model.safetensors``) with a model card, and
    ``push_to_hub(repo_id)`` uploads it (:class:`brainlm.hub.HubMixin`). The region order is
    not saved: loading reads it from the A424 coordinate file again.

    Args:
        mae: the ``transformers`` model (its ``config.image_size`` must hold the window).
        region_order: ``(R,)`` image row -> region index, from ``read_region_order``.
        scale: windows are divided by this before they become an image.
        window_length: timepoints ``T`` per window.
    """

    model_types = ("vit_mae",)

    def __init__(
        self,
        mae: nn.Module,
        region_order: torch.Tensor | None = None,
        *,
        scale: float = A424_SCALE,
        window_length: int = WINDOW_LENGTH,
    ):
        super().__init__()
        self.mae = mae
        if region_order is None:
            region_order = read_region_order()
        region_order = torch.as_tensor(region_order, dtype=torch.long)
        if sorted(region_order.tolist()) != list(range(len(region_order))):
            raise UserError("region_order must be a permutation of 0..R-1")
        self.register_buffer("region_order", region_order, persistent=False)
        self.register_buffer("region_restore", torch.argsort(region_order), persistent=False)
        self.scale = float(scale)
        self.window_length = int(window_length)

        H, W = self.image_size
        ph, pw = _pair(self.config.patch_size)
        if H % ph or W % pw:
            raise UserError(
                f"image size {H} x {W} is not a whole number of {ph} x {pw} patches"
            )
        if H < self.num_regions or W < self.window_length:
            raise UserError(
                f"config image size {H} x {W} cannot hold a {self.num_regions} x "
                f"{self.window_length} window (regions x timepoints)"
            )
        # Padding (top, bottom, left, right); an odd total puts the extra row/column last.
        top, left = (H - self.num_regions) // 2, (W - self.window_length) // 2
        self._pad = (top, H - self.num_regions - top, left, W - self.window_length - left)
        self.register_buffer("_region_pixels", self._count_region_pixels(), persistent=False)

    @classmethod
    def from_config(cls, config, coords_path=None, **kwargs) -> "BrainLMViTMAE":
        """A randomly initialised model from a ``ViTMAEConfig`` (e.g. ``vitmae_111m_config()``)."""
        from transformers import ViTMAEForPreTraining

        config._attn_implementation = "sdpa"
        return cls(ViTMAEForPreTraining(config), read_region_order(coords_path), **kwargs)

    # ----- sizes

    @property
    def config(self):
        return self.mae.config

    @property
    def num_regions(self) -> int:
        return len(self.region_order)

    @property
    def image_size(self) -> tuple[int, int]:
        return _pair(self.config.image_size)

    @property
    def patch_size(self) -> int | tuple[int, int]:
        ph, pw = _pair(self.config.patch_size)
        return ph if ph == pw else (ph, pw)

    @property
    def num_patches(self) -> int:
        (H, W), (ph, pw) = self.image_size, _pair(self.config.patch_size)
        return (H // ph) * (W // pw)

    @property
    def hidden_size(self) -> int:
        return self.config.hidden_size

    @property
    def padding(self) -> tuple[int, int, int, int]:
        """Rows and columns of -1 around the window: (top, bottom, left, right)."""
        return self._pad

    @property
    def window_columns(self) -> range:
        """The patch columns that hold the window's timepoints (the ``P`` of ``cls_attention``)."""
        pw = _pair(self.config.patch_size)[1]
        left = self._pad[2]
        return range(left // pw, (left + self.window_length - 1) // pw + 1)

    def region_pixels(self) -> torch.Tensor:
        """``(R, N)`` window pixels of each region (caller's order) in each image patch (row-major)."""
        return self._region_pixels

    def _count_region_pixels(self) -> torch.Tensor:
        (H, W), (ph, pw) = self.image_size, _pair(self.config.patch_size)
        top, _, left, _ = self._pad
        columns = torch.arange(left, left + self.window_length) // pw  # (T,) patch column of each timepoint
        per_column = torch.bincount(columns, minlength=W // pw).float()  # (w,)
        counts = torch.zeros(self.num_regions, (H // ph) * (W // pw))  # (R, N)
        for row, region in enumerate(self.region_order.tolist()):
            first = (top + row) // ph * (W // pw)  # patch index of the region's patch row, column 0
            counts[region, first : first + W // pw] = per_column
        return counts

    # ----- window <-> image

    def _check_window(self, signal_vectors: torch.Tensor) -> None:
        if signal_vectors.ndim != 3:
            raise UserError(
                f"signal_vectors must be (B, R, T), got shape {tuple(signal_vectors.shape)}"
            )
        _, R, T = signal_vectors.shape
        if R != self.num_regions:
            raise UserError(
                f"the released ViT-MAE BrainLM models only know the A424 parcellation: "
                f"expected {self.num_regions} regions, got {R}"
            )
        if T != self.window_length:
            raise UserError(f"expected windows of {self.window_length} timepoints, got {T}")

    def to_image(self, signal_vectors: torch.Tensor) -> torch.Tensor:
        """Window -> padded image: reorder by Y, scale, 3 channels, pad with -1.

        Args:
            signal_vectors: ``(B, R, T)`` in the caller's region order.

        Returns:
            ``(B, C, H, W)`` in the model's dtype.
        """
        self._check_window(signal_vectors)
        dtype = self.mae.vit.embeddings.patch_embeddings.projection.weight.dtype
        x = signal_vectors[:, self.region_order] / self.scale  # (B, R, T) rows by Y
        x = x.to(dtype).unsqueeze(1).expand(-1, self.config.num_channels, -1, -1)  # (B, C, R, T)
        top, bottom, left, right = self._pad
        return F.pad(x, (left, right, top, bottom), value=PAD_VALUE)  # (B, C, H, W)

    def from_image(self, image: torch.Tensor) -> torch.Tensor:
        """Padded image -> window: cut the padding, average the channels, undo scale and reorder.

        Args:
            image: ``(B, C, H, W)``.

        Returns:
            ``(B, R, T)`` in the caller's region order and units.
        """
        top, _, left, _ = self._pad
        x = image[:, :, top : top + self.num_regions, left : left + self.window_length]  # (B, C, R, T)
        x = x.mean(dim=1) * self.scale  # (B, R, T) rows by Y
        return x[:, self.region_restore]  # (B, R, T) caller's order

    def unpatchify(self, patches: torch.Tensor) -> torch.Tensor:
        """``(B, N, p * p * C)`` -> ``(B, C, H, W)``, the layout of ``transformers``' ``patchify``."""
        (H, W), (ph, pw) = self.image_size, _pair(self.config.patch_size)
        B, C = patches.shape[0], self.config.num_channels
        x = patches.reshape(B, H // ph, W // pw, ph, pw, C)  # (B, h, w, ph, pw, C)
        x = x.permute(0, 5, 1, 3, 2, 4)  # (B, C, h, ph, w, pw)
        return x.reshape(B, C, H, W)  # (B, C, H, W)

    # ----- the masked autoencoder, in named steps around transformers' modules

    def random_masking(
        self,
        x: torch.Tensor,
        noise: torch.Tensor | None,
        mask_ratio: float | None = None,
        *,
        num_keep: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Keep the ``num_keep`` patches with the smallest noise (``N * (1 - mask_ratio)``).

        Same rule as ``transformers``' ``ViTMAEEmbeddings.random_masking``, with the ratio
        passed in rather than read from the config, or the count given directly; ties in
        ``noise`` keep patch order (stable sort).

        Args:
            x: ``(B, N, D)`` patch embeddings.
            noise: ``(B, N)``, small = keep; ``None`` draws uniform noise.
            mask_ratio: fraction of the ``N`` patches to mask; or
            num_keep: the number of patches to keep (exactly one of the two).

        Returns:
            kept ``(B, kept, D)``, mask ``(B, N)`` (1 = masked), ids_restore ``(B, N)``.
        """
        B, N, D = x.shape
        if (mask_ratio is None) == (num_keep is None):
            raise UserError("pass exactly one of mask_ratio and num_keep")
        if num_keep is None:
            num_keep = int(N * (1 - mask_ratio))
        if not 0 <= num_keep <= N:
            raise UserError(f"num_keep must be between 0 and N = {N}, got {num_keep}")
        if noise is None:
            noise = torch.rand(B, N, device=x.device)
        if noise.shape != (B, N):
            raise UserError(f"noise must be (B, N) = ({B}, {N}), got {tuple(noise.shape)}")
        ids_shuffle = torch.argsort(noise.to(x.device), dim=1, stable=True)  # (B, N) keep first
        ids_restore = torch.argsort(ids_shuffle, dim=1)  # (B, N)
        ids_keep = ids_shuffle[:, :num_keep]  # (B, kept)
        kept = torch.gather(x, 1, ids_keep.unsqueeze(-1).expand(-1, -1, D))  # (B, kept, D)
        mask = torch.ones(B, N, device=x.device, dtype=x.dtype)
        mask[:, :num_keep] = 0
        mask = torch.gather(mask, 1, ids_restore)  # (B, N) 1 = masked
        return kept, mask, ids_restore

    def forward_encoder(
        self,
        image: torch.Tensor,
        noise: torch.Tensor | None,
        mask_ratio: float | None = None,
        *,
        num_keep: int | None = None,
        output_cls_attentions: bool = False,
    ) -> tuple[torch.Tensor, ...]:
        """Patch-embed, add positions, mask, prepend CLS, run the encoder.

        Args:
            image: ``(B, C, H, W)``.
            noise, mask_ratio, num_keep: as ``random_masking``.
            output_cls_attentions: also return, per encoder layer, the CLS token's attention
                ``(B, heads, 1 + kept)`` (computed from the layer's input, as in its softmax).

        Returns:
            hidden ``(B, 1 + kept, D)``, mask ``(B, N)``, ids_restore ``(B, N)`` (and the
            list of CLS attentions when asked).
        """
        vit = self.mae.vit
        emb = vit.embeddings
        pos = emb.position_embeddings  # (1, 1 + N, D), CLS position first
        x = emb.patch_embeddings(image) + pos[:, 1:]  # (B, N, D)
        x, mask, ids_restore = self.random_masking(x, noise, mask_ratio, num_keep=num_keep)
        cls = (emb.cls_token + pos[:, :1]).expand(x.shape[0], -1, -1)  # (B, 1, D)
        x = torch.cat([cls, x], dim=1)  # (B, 1 + kept, D)
        cls_attentions = []
        # transformers 5 keeps the blocks in vit.layers, 4.x in vit.encoder.layer (returning tuples).
        for layer in vit.layers if hasattr(vit, "layers") else vit.encoder.layer:
            if output_cls_attentions:
                cls_attentions.append(_cls_attention(layer, x, self.config.num_attention_heads))
            x = layer(x)
            x = x[0] if isinstance(x, tuple) else x
        if output_cls_attentions:
            return vit.layernorm(x), mask, ids_restore, cls_attentions
        return vit.layernorm(x), mask, ids_restore

    def forward_decoder(self, hidden: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """``(B, 1 + kept, D)`` -> per-patch pixels ``(B, N, p * p * C)``."""
        return self.mae.decoder(hidden, ids_restore).logits

    def window_mask(self, patch_mask: torch.Tensor) -> torch.Tensor:
        """Patch mask ``(B, N)`` -> pixel mask ``(B, R, T)`` of the window, caller's region order.

        Only the crop and the reorder are undone: scaling a 0/1 mask would break it.
        """
        (H, W), (ph, pw) = self.image_size, _pair(self.config.patch_size)
        grid = patch_mask.view(-1, H // ph, W // pw)  # (B, h, w)
        pixels = grid.repeat_interleave(ph, dim=1).repeat_interleave(pw, dim=2)  # (B, H, W)
        top, _, left, _ = self._pad
        R, T = self.num_regions, self.window_length
        mask = pixels[:, top : top + R, left : left + T]  # (B, R, T) rows by Y
        return mask[:, self.region_restore]  # (B, R, T) caller's order

    def forward_loss(
        self, signal_vectors: torch.Tensor, logits: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """MSE over masked window pixels; padding never enters (it is not in the window).

        Args:
            signal_vectors, logits, mask: ``(B, R, T)``; ``mask`` 1 = masked.

        Returns:
            scalar, float32.
        """
        err = (logits.float() - signal_vectors.float()) ** 2  # (B, R, T)
        mask = mask.float()
        return (err * mask).sum() / mask.sum().clamp(min=1)

    # ----- forecasting: the original's predict_last / predict_last_pixel masks

    def _num_last(self, k) -> int:
        """Check a count of last timepoints: an int with ``1 <= k < T``."""
        T = self.window_length
        if isinstance(k, bool) or not isinstance(k, numbers.Integral):
            raise TypeError(f"k must be an int number of timepoints, got {k!r}")
        if not 1 <= k < T:
            raise UserError(
                f"k must be between 1 and {T - 1} (the window has {T} timepoints), got {k}"
            )
        return int(k)

    def _num_last_of_fraction(self, fraction) -> int:
        """``int(fraction * T)``: the original's count for ``mask_ratio`` when forecasting."""
        T = self.window_length
        if isinstance(fraction, bool) or not isinstance(fraction, numbers.Real):
            raise TypeError(f"the fraction of timepoints must be a float, got {fraction!r}")
        if not 0.0 < fraction < 1.0:
            raise UserError(
                f"the fraction of timepoints to predict must be in (0, 1), got {fraction} "
                "(pass an int for a number of timepoints)"
            )
        k = int(float(fraction) * T)
        if k < 1:
            raise UserError(f"fraction {fraction} of {T} timepoints rounds down to none")
        return k

    def last_masking(self, num_last: int, train_mode: str = "predict_last") -> LastMasking:
        """Which patch columns and pixels a forecasting mode hides (no tensors, no randomness).

        Args:
            num_last: ``k``, the timepoints to predict, ``1 <= k < T``.
            train_mode: ``"predict_last"`` (mask every patch column holding any of the last
                ``k`` timepoints) or ``"predict_last_pixel"`` (mask the columns wholly inside
                them, zero the rest of them in the input).

        Returns:
            ``LastMasking``.

        Raises:
            ValueError: an unknown mode, ``k`` out of range, ``predict_last`` hiding the whole
                window, or ``predict_last_pixel`` without a whole column to mask.
        """
        if train_mode not in FORECAST_MODES:
            raise UserError(f"train_mode must be one of {FORECAST_MODES}, got {train_mode!r}")
        k = self._num_last(num_last)
        T, left = self.window_length, self._pad[2]
        pw = _pair(self.config.patch_size)[1]
        # Image columns: the window occupies left .. left + T - 1.
        end = -(-(left + T) // pw)  # one past the last patch column holding the window
        first = left + T - k  # image column of window timepoint T - k
        if train_mode == "predict_last":
            start = first // pw  # the column holding timepoint T - k, and all after it
            col0 = start * pw - left  # window timepoint where the masked columns begin
            if col0 < 1:
                inside = -(-(left + 1) // pw) * pw - left  # first column start inside the window
                raise UserError(
                    f"predict_last with k={k} would hide the whole window: timepoint {T - k} lies "
                    f"in a patch column that starts at window timepoint {col0}; k must be at "
                    f"most {T - inside}"
                )
            zeroed = range(col0, col0)  # none
        else:
            start = -(-first // pw)  # the first column starting at or after T - k
            if start >= end:
                last_width = left + T - (end - 1) * pw  # window timepoints in the last column
                raise UserError(
                    f"predict_last_pixel with k={k} masks no patch: it masks only patch columns "
                    f"wholly inside the last k timepoints, and the last column holds "
                    f"{last_width}; k must be at least {last_width} (or use predict_last)"
                )
            col0 = start * pw - left
            zeroed = range(T - k, col0)  # the front of the last visible column
        return LastMasking(
            train_mode=train_mode,
            num_last=k,
            columns=range(start, end),
            zeroed=zeroed,
            hidden_from=min(T - k, col0),
        )

    def last_patch_mask(self, masking: LastMasking, device=None) -> torch.Tensor:
        """``(N,)`` float, 1 = masked: ``masking.columns`` in every patch row, row-major."""
        (H, W), (ph, pw) = self.image_size, _pair(self.config.patch_size)
        grid = torch.zeros(H // ph, W // pw, device=device)  # (h, w)
        grid[:, masking.columns.start : masking.columns.stop] = 1
        return grid.flatten()  # (N,)

    def zero_timepoints(self, image: torch.Tensor, timepoints: range) -> torch.Tensor:
        """Set window ``timepoints`` to 0 in every row (padding rows too) and channel.

        Args:
            image: ``(B, C, H, W)``.
            timepoints: window timepoints (a range of ``0..T-1``).

        Returns:
            a new ``(B, C, H, W)`` (the input is left unchanged).
        """
        left = self._pad[2]
        image = image.clone()
        image[..., left + timepoints.start : left + timepoints.stop] = 0
        return image

    # ----- forward passes

    def forward(
        self,
        signal_vectors: torch.Tensor,
        xyz_vectors: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
        mask_ratio: float | None = None,
        train_mode: str = "auto_encode",
        num_last: int | None = None,
    ) -> ViTMAEOutput:
        """Masked reconstruction of ``(B, R, T)`` windows.

        Args:
            signal_vectors: ``(B, R, T)`` normalised recording windows, caller's region order.
            xyz_vectors: accepted for interface compatibility and ignored; the region order
                comes from the A424 coordinates given at construction.
            noise: ``(B, N)`` over the image patches, small = keep; ``None`` draws at random.
                ``"auto_encode"`` only.
            mask_ratio: ``"auto_encode"``: fraction of the ``N`` image patches to mask.
                Forecasting modes: fraction of the ``T`` timepoints to predict,
                ``k = int(mask_ratio * T)``. ``None`` uses the config's.
            train_mode: ``"auto_encode"`` (random patches), ``"predict_last"`` or
                ``"predict_last_pixel"`` (the last ``k`` timepoints; see the module docstring).
            num_last: forecasting modes: ``k`` itself, instead of ``mask_ratio``.

        Returns:
            ``ViTMAEOutput`` (shapes and units in the module docstring). In the forecasting
            modes ``mask`` is 1 from ``last_masking(k, train_mode).hidden_from`` on, in every
            region, and the loss is over those timepoints.
        """
        if self.config.norm_pix_loss:
            raise NotImplementedError(
                "config.norm_pix_loss=True is not supported: the reconstruction would not be in "
                "signal units (embed() still works)"
            )
        if train_mode not in TRAIN_MODES:
            raise UserError(f"train_mode must be one of {TRAIN_MODES}, got {train_mode!r}")
        image = self.to_image(signal_vectors)  # (B, C, H, W)
        image, noise, num_keep, zeroed = self._masking(image, noise, mask_ratio, train_mode, num_last)
        hidden, patch_mask, ids_restore = self.forward_encoder(image, noise, num_keep=num_keep)
        patches = self.forward_decoder(hidden, ids_restore)  # (B, N, p*p*C)
        logits = self.from_image(self.unpatchify(patches))  # (B, R, T)
        mask = self.window_mask(patch_mask)  # (B, R, T)
        if len(zeroed):
            mask[..., zeroed.start : zeroed.stop] = 1  # zeroed pixels count as hidden
        loss = self.forward_loss(signal_vectors, logits, mask)
        return ViTMAEOutput(loss=loss, logits=logits, mask=mask, encoder_last_hidden_state=hidden,
                            ids_restore=ids_restore, patch_mask=patch_mask)

    def _masking(self, image: torch.Tensor, noise, mask_ratio, train_mode: str, num_last):
        """What ``forward`` masks: random patches (``auto_encode``), or the columns (and pixels)
        of the last ``k`` timepoints. Returns the image (forecasting modes zero the pixels they
        hide), the noise, how many patches are kept, and the zeroed timepoints."""
        B, N = image.shape[0], self.num_patches
        if train_mode == "auto_encode":
            if num_last is not None:
                raise UserError("num_last is for the forecasting modes, not auto_encode")
            ratio = self.config.mask_ratio if mask_ratio is None else float(mask_ratio)
            return image, noise, int(N * (1 - ratio)), range(0)
        if noise is not None:
            raise UserError(f"{train_mode} masks deterministically: noise must be None")
        if num_last is not None and mask_ratio is not None:
            raise UserError("pass mask_ratio or num_last, not both")
        if num_last is None:
            num_last = self._num_last_of_fraction(self.config.mask_ratio if mask_ratio is None else mask_ratio)
        masking = self.last_masking(num_last, train_mode)
        noise = self.last_patch_mask(masking, image.device).expand(B, -1)  # (B, N) 1 = mask
        rows = self.image_size[0] // _pair(self.config.patch_size)[0]
        return self.zero_timepoints(image, masking.zeroed), noise, N - rows * len(masking.columns), masking.zeroed

    def forecast(
        self,
        signal_vectors: torch.Tensor,
        xyz_vectors: torch.Tensor | None = None,
        k_or_fraction: float | None = None,
        *,
        train_mode: str = "predict_last",
    ) -> torch.Tensor:
        """The model's prediction of the last ``k`` timepoints of each window, from the rest.

        One deterministic forward pass in a forecasting mode (``forward(train_mode=...)``);
        the encoder never sees timepoints ``T - k`` on, so their values in ``signal_vectors``
        do not matter (pass anything finite, e.g. zeros, when they are unknown).
        ``"predict_last"`` also hides the rest of the patch column holding timepoint
        ``T - k`` (up to ``p - 1`` more timepoints, see ``last_masking``);
        ``"predict_last_pixel"`` hides exactly the last ``k``. Gradients flow as in ``forward``;
        wrap in ``torch.no_grad()`` for inference.

        Args:
            signal_vectors: ``(B, R, T)`` windows, caller's region order and units.
            xyz_vectors: ignored (see ``forward``); the argument keeps the signature of
                :meth:`brainlm.model.BrainLMForPretraining.forecast`.
            k_or_fraction: an int ``k`` (``1 <= k < T``), or a float fraction in ``(0, 1)`` of
                the ``T`` timepoints, ``k = int(fraction * T)`` as the original's ``mask_ratio``.
            train_mode: ``"predict_last"`` (default: only whole patches are hidden, as in
                pretraining) or ``"predict_last_pixel"`` (needs ``k`` at least the window
                timepoints in the last patch column: 12 for patch 16, 9 for patch 14).

        Returns:
            ``(B, R, k)``, caller's region order and units, the model's dtype.

        Raises:
            TypeError: ``k_or_fraction`` is neither an int nor a float.
            ValueError: ``k`` out of range, or too large or small for the mode (see
                ``last_masking``); an unknown ``train_mode``.
        """
        if train_mode not in FORECAST_MODES:
            raise UserError(f"train_mode must be one of {FORECAST_MODES}, got {train_mode!r}")
        if isinstance(k_or_fraction, numbers.Integral) and not isinstance(k_or_fraction, bool):
            k = self._num_last(k_or_fraction)
        else:
            k = self._num_last_of_fraction(k_or_fraction)
        out = self(signal_vectors, train_mode=train_mode, num_last=k)
        return out.logits[..., self.window_length - k :]  # (B, R, k)

    def embed(
        self,
        signal_vectors: torch.Tensor,
        xyz_vectors: torch.Tensor | None = None,
        pooling: str = "cls",
        average_regions: bool = False,
        output_attentions: bool = False,
    ) -> EmbeddingOutput:
        """Embed windows with masking off (every patch, in order).

        Args:
            signal_vectors: ``(B, R, T)``.
            xyz_vectors: ignored (see ``forward``).
            pooling: ``"cls"`` the CLS token, ``"mean"`` the mean of the ``N`` patch tokens,
                ``"tokens"`` every patch token, ``(B, N, D)``; ``"region_time"`` one vector per
                region from the patches that hold it (module docstring, "Regions from image
                patches"), ``(B, R, D)``; with ``average_regions`` their mean, ``(B, D)``.
            output_attentions: also return the last layer's CLS attention per region, ``(B, R)``.

        Returns:
            ``EmbeddingOutput``.
        """
        if pooling not in ("cls", "mean", "tokens", "region_time"):
            raise UserError(f"--pooling {pooling!r} does not apply to ViT-MAE models; use cls, mean, tokens or "
                            "region_time")
        image = self.to_image(signal_vectors)
        B = image.shape[0]
        in_order = torch.arange(self.num_patches, device=image.device).expand(B, -1)  # (B, N)
        hidden, _, _, *attentions = self.forward_encoder(image, in_order, mask_ratio=0.0,
                                                          output_cls_attentions=output_attentions)  # (B, 1 + N, D)
        if pooling == "region_time":
            weights = self._region_pixels / self._region_pixels.sum(1, keepdim=True)  # (R, N), rows sum to 1
            emb = torch.einsum("rn,bnd->brd", weights.to(hidden.dtype), hidden[:, 1:])  # (B, R, D)
            emb = emb.mean(1) if average_regions else emb
        else:
            emb = hidden[:, 0] if pooling == "cls" else (hidden[:, 1:] if pooling == "tokens" else hidden[:, 1:].mean(1))
        attn = self._region_attention(attentions[0][-1]).sum(-1) if output_attentions else None  # (B, R)
        return EmbeddingOutput(emb, attn, hidden[:, 0])

    def cls_attention(self, signal_vectors: torch.Tensor, xyz_vectors: torch.Tensor | None = None,
                      layer: int | None = -1) -> torch.Tensor:
        """CLS attention per region in one encoder layer (``None``: the mean over layers), head mean.

        Returns:
            ``(B, R, P)`` over the window's patch columns (``window_columns``); each map sums to 1
            (module docstring, "Regions from image patches").
        """
        _check_layer(layer, self.config.num_hidden_layers)
        image = self.to_image(signal_vectors)
        in_order = torch.arange(self.num_patches, device=image.device).expand(image.shape[0], -1)  # (B, N)
        *_, attentions = self.forward_encoder(image, in_order, mask_ratio=0.0, output_cls_attentions=True)
        if layer is None:
            return torch.stack([self._region_attention(a) for a in attentions]).mean(0)
        return self._region_attention(attentions[layer])

    def _region_attention(self, cls_attn: torch.Tensor) -> torch.Tensor:
        """``(B, heads, 1 + N)`` CLS attention of one layer -> ``(B, R, P)``: head mean, CLS's
        attention to itself dropped, each patch's share given to its regions by pixel count."""
        (H, W), (ph, pw) = self.image_size, _pair(self.config.patch_size)
        a = cls_attn.float().mean(1)[:, 1:]  # (B, N)
        share = self._region_pixels / self._region_pixels.sum(0).clamp(min=1)  # (R, N) each patch's split
        per = a[:, None, :] * share  # (B, R, N)
        per = per.view(len(a), self.num_regions, H // ph, W // pw).sum(2)  # (B, R, w): one patch row per region
        per = per[..., self.window_columns.start : self.window_columns.stop]  # (B, R, P)
        return per / per.sum((1, 2), keepdim=True)

    # ----- the rest of the interface shared with BrainLMForPretraining

    def num_tokens(self, num_regions: int, num_timepoints: int) -> int:
        """The image patches masking noise covers (whatever the window)."""
        return self.num_patches

    def reconstruct(self, signal_vectors: torch.Tensor, xyz_vectors: torch.Tensor | None = None,
                    noise: torch.Tensor | None = None, mask_ratio: float | None = None) -> ReconstructionOutput:
        """Random patch masking, encode, decode: prediction and mask, (B, R, T) each."""
        out = self(signal_vectors, noise=noise, mask_ratio=mask_ratio)
        return ReconstructionOutput(out.logits, out.mask.bool())

    def fsdp_units(self) -> list[nn.Module]:
        """The modules sharded one by one under FSDP (the encoder and decoder layers)."""
        return [*self.mae.vit.encoder.layer, *self.mae.decoder.decoder_layers]

    # ----- the model card, for HubMixin

    def _card_config(self) -> dict:
        return self.config.to_dict()


def _cls_attention(layer: nn.Module, x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """The CLS query's attention over all tokens in one ``transformers`` ViT-MAE layer.

    Args:
        layer: the layer (its pre-LayerNorm and query / key projections; transformers 5
            names them ``attention.q_proj``, 4.x ``attention.attention.query``).
        x: ``(B, N, D)`` the layer's input, CLS first.
        num_heads: attention heads (``config.num_attention_heads``).

    Returns:
        ``(B, heads, N)``; no ``N x N`` matrix is formed.
    """
    h = layer.layernorm_before(x)  # (B, N, D)
    attn = layer.attention
    q_proj, k_proj = (attn.q_proj, attn.k_proj) if hasattr(attn, "q_proj") else (attn.attention.query,
                                                                                    attn.attention.key)
    B, N, _ = h.shape
    q = q_proj(h[:, :1]).view(B, 1, num_heads, -1).transpose(1, 2)  # (B, heads, 1, d)
    k = k_proj(h).view(B, N, num_heads, -1).transpose(1, 2)  # (B, heads, N, d)
    return torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-1)[:, :, 0]  # (B, heads, N)


def _check_layer(layer: int | None, num_layers: int) -> None:
    """Refuse a layer index the encoder does not have (``None``: every layer)."""
    if layer is not None and not -num_layers <= layer < num_layers:
        raise UserError(f"--layer {layer}: the encoder has {num_layers} layers (0..{num_layers - 1}, -1 for the last)")


# --------------------------------------------------------------------------- loading


def is_vitmae_checkpoint(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a local folder with a ``vit_mae`` ``config.json`` and weights."""
    folder = Path(path)
    try:
        config = read_model_config(folder) if folder.is_dir() else None
    except UserError:  # no config.json, or one that is not a JSON object
        return False
    if not config or config.get("model_type") != "vit_mae":
        return False
    return any((folder / name).is_file() for name in _WEIGHT_FILES)


def load_vitmae(
    path_or_hub_id: str | os.PathLike,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    coords_path: str | os.PathLike | None = None,
    revision: str | None = None,
    trust_unverified: bool = False,
) -> BrainLMViTMAE:
    """Load a released BrainLM ViT-MAE checkpoint: :func:`brainlm.hub.open_model` for ``vit_mae`` folders.

    Args:
        path_or_hub_id: a local folder (``config.json`` with ``model_type: vit_mae`` and
            ``model.safetensors`` or ``pytorch_model.bin``), or a hub id with optional
            subfolder, e.g. ``"vandijklab/brainlm/vitmae_111M"``; an existing local path
            always wins, and a hub id needs the network (or the local hub cache).
        dtype: parameter dtype (float32, bfloat16; float16 on GPU).
        device: where the model lives.
        coords_path: A424 coordinate file for the region order; ``None`` uses the bundled one.
        revision: hub revision (ignored for local folders).
        trust_unverified: a folder with a manifest that does not list a weight file is refused
            without it (a released folder without any manifest is opened unverified).

    Returns:
        ``BrainLMViTMAE`` in eval mode.
    """
    return open_model(path_or_hub_id, map_location=device, dtype=dtype, coords_path=coords_path, revision=revision,
                      model_types=BrainLMViTMAE.model_types, trust_unverified=trust_unverified)


def _load_folder(cls, folder: Path, raw: dict, *, map_location: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32, coords_path: str | os.PathLike | None = None) -> BrainLMViTMAE:
    """A local ViT-MAE checkpoint folder as ``cls``, in eval mode (the loader registered for ``vit_mae``)."""
    from transformers import ViTMAEForPreTraining

    source = str(folder)
    if not any((folder / name).is_file() for name in _WEIGHT_FILES):
        raise UserError(f"{source}: no weights ({' or '.join(_WEIGHT_FILES[::2])})")
    _check_config(raw, folder / "config.json")
    region_order = read_region_order(coords_path)

    # transformers reads .bin weights with torch.load(weights_only=True) and renames the
    # keys of older releases (vit.encoder.layer.*.attention.attention.query, ...).
    try:
        mae, info = ViTMAEForPreTraining.from_pretrained(
            folder,
            attn_implementation="sdpa",
            local_files_only=True,
            weights_only=True,
            output_loading_info=True,
        )
    except (OSError, RuntimeError, pickle.UnpicklingError) as err:
        # A pickle that would run code is refused by weights_only=True before anything runs.
        raise CorruptFileError(f"{source}: cannot load the weights ({type(err).__name__}: "
                               f"{str(err).splitlines()[0] if str(err) else ''}); a .bin that is not a plain tensor "
                               "pickle is refused: convert it to safetensors in a trusted environment") from err
    missing = list(info.get("missing_keys", []))
    mismatched = list(info.get("mismatched_keys", []))
    if missing or mismatched:
        raise UserError(
            f"{source}: weights do not fit the config (missing {missing[:5]}, "
            f"mismatched {mismatched[:5]})"
        )
    model = cls(mae, region_order)
    return model.to(device=map_location, dtype=dtype).eval()


# The ViT-MAE config values a model is built from: (name, default, the smallest allowed value).
_VITMAE_SIZES = (("hidden_size", 768, 1), ("num_hidden_layers", 12, 1), ("num_attention_heads", 12, 1),
                 ("intermediate_size", 3072, 1), ("decoder_hidden_size", 512, 1), ("decoder_num_hidden_layers", 8, 0),
                 ("decoder_num_attention_heads", 16, 1), ("decoder_intermediate_size", 2048, 1),
                 ("patch_size", 16, 1), ("num_channels", 3, 1))


def _check_config(raw: dict, path: Path) -> None:
    """Refuse config values that would build a broken model (a NaN ``layer_norm_eps`` gives NaN
    embeddings without any error), before the model is built."""
    def refuse(name: str, what: str) -> None:
        raise UserError(f"{path}: {name} must be {what}, got {raw.get(name)!r}")

    values = {name: raw.get(name, default) for name, default, _ in _VITMAE_SIZES}
    for name, _, low in _VITMAE_SIZES:
        if not (is_count(values[name]) and low <= values[name] <= MAX_SIZE):
            refuse(name, f"an integer in {low}..{MAX_SIZE}")
    image = raw.get("image_size", 224)
    sizes = list(image) if isinstance(image, (list, tuple)) else [image]
    if not sizes or not all(is_count(v) and 1 <= v <= MAX_SIZE for v in sizes):
        refuse("image_size", f"an integer (or a pair) in 1..{MAX_SIZE}")
    for width, heads in (("hidden_size", "num_attention_heads"), ("decoder_hidden_size", "decoder_num_attention_heads")):
        if values[width] % values[heads]:
            refuse(heads, f"a divisor of {width} ({values[width]})")
    eps = raw.get("layer_norm_eps", 1e-12)
    if not (is_finite_number(eps) and 0 < eps < 1):
        refuse("layer_norm_eps", "a finite number in (0, 1)")
    ratio = raw.get("mask_ratio", 0.75)
    if not (is_finite_number(ratio) and 0 <= ratio < 1):
        refuse("mask_ratio", "in [0, 1)")


def _save_folder(model: BrainLMViTMAE, folder: Path) -> None:
    model.mae.save_pretrained(folder, safe_serialization=True)
    write_manifest(folder)


register_format("vit_mae", _load_folder, save=_save_folder)

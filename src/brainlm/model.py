"""BrainLM: a masked autoencoder over parcellated fMRI.

Each recording window is a matrix of R regions x T timepoints. Every region's time course is
cut into P = T / W patches of W timepoints; each patch is one token. A random subset of
tokens is kept, the encoder sees only those (plus a CLS token), and a light decoder fills in
mask tokens and reconstructs every patch. The loss is taken on masked patches only.

Dimension letters used in shape comments:

    B  batch                     R  regions (parcels)
    T  timepoints per window     W  timepoints per patch (``timepoint_patching_size``)
    P  patches per region, T / W L  tokens, R * P
    K  kept (visible) tokens     N  sequence length seen by a transformer layer
    D  hidden size               H  attention heads, d = D / H

Mask convention, everywhere in this package: ``mask: (B, R, P)``, **1 = masked** (hidden
from the encoder, predicted by the decoder), 0 = visible.

Where this implementation departs from the original BrainLM code, on purpose:

- Attention is exact softmax attention through ``scaled_dot_product_attention``: the same
  numbers as the original (whose Nystromformer layers always take their exact branch) without
  an N x N matrix in memory. ``attention_type="nystrom"`` selects a real Nystrom
  approximation, with landmarks as segment means over segments of near-equal size, so it
  works for any sequence length.
- Query, key and value projections are one fused ``qkv`` linear layer; original checkpoints
  are converted on load (``brainlm.checkpoint``).
- R and T are read from the input, so one model serves any atlas and any window length that
  is a multiple of W. The decoder's coordinate projection and time encoding are sized by
  ``decoder_hidden_size`` (the original sizes them by ``hidden_size`` and therefore only runs
  when the two are equal; for such checkpoints both agree).
- Token order matters, because each layer adds a depthwise convolution of the values along
  the token axis. With ``noise`` given, encoder tokens are ordered by ascending noise, exactly
  as in the original. With masking off and no noise, tokens are in region-major order
  (region 0 patches 0..P-1, region 1, ...), so embeddings are deterministic.
- The sinusoidal time-encoding table is computed, not stored in checkpoints.
- With nothing masked (``mask_ratio=0``) the loss is ``None`` rather than 0/0.
- Optional, off by default (new; not in the original): ``learned_region_embedding`` adds a
  learned vector per region to the projection of its (x, y, z). The original knows a region
  only through a linear map of 3 coordinates, so all region embeddings lie in a 3-dimensional
  affine subspace; the learned table lets the model tell every region apart (it ties the model
  to ``num_brain_voxels`` regions in a fixed order). The ``demo`` training preset uses it.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from brainlm.errors import UserError
from brainlm.hub import HubMixin

__all__ = [
    "BrainLMConfig",
    "MAX_SIZE",
    "is_count",
    "is_finite_number",
    "BrainLMForPretraining",
    "BrainLMOutput",
    "EncoderOutput",
    "EmbeddingOutput",
    "ReconstructionOutput",
    "masking_noise",
    "brainlm_13m",
    "brainlm_111m",
    "brainlm_650m",
    "brainlm_tiny",
    "PRESETS",
]

_ACTIVATIONS = {
    "gelu": lambda: nn.GELU(),  # exact erf GELU, as the original
    "gelu_new": lambda: nn.GELU(approximate="tanh"),
    "gelu_tanh": lambda: nn.GELU(approximate="tanh"),
    "relu": lambda: nn.ReLU(),
    "silu": lambda: nn.SiLU(),
}


# ---------------------------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------------------------


# The largest size a config may name (widths, layers, regions, timepoints): beyond any real model,
# small enough that counting its parameters cannot overflow what a checkpoint file could hold.
MAX_SIZE = 1 << 24


def is_count(value: Any) -> bool:
    """An integer (``True`` is not one), for the config checks of both model kinds."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_finite_number(value: Any) -> bool:
    """A finite int or float (not a bool, not NaN or infinite)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(kw_only=True)
class BrainLMConfig:
    """Hyper-parameters of :class:`BrainLMForPretraining`; field names follow the original."""

    # encoder
    hidden_size: int = 256  # D, width of the encoder
    num_hidden_layers: int = 4  # encoder transformer layers
    num_attention_heads: int = 4  # encoder heads; must divide hidden_size
    intermediate_size: int = 1024  # encoder MLP width
    hidden_act: str = "gelu"  # MLP activation (exact erf GELU by default)
    hidden_dropout_prob: float = 0.0  # dropout after attention output and MLP (original: 0)
    attention_probs_dropout_prob: float = 0.1  # kept for compatibility; never applied, as in the original
    initializer_range: float = 0.02  # std of the normal init of encoder weights and tokens
    layer_norm_eps: float = 1e-12  # LayerNorm epsilon
    qkv_bias: bool = True  # bias on the query/key/value projection
    # decoder
    decoder_hidden_size: int = 256  # width of the decoder
    decoder_num_hidden_layers: int = 2  # decoder transformer layers
    decoder_num_attention_heads: int = 4  # decoder heads; must divide decoder_hidden_size
    decoder_intermediate_size: int = 1024  # decoder MLP width
    # data shape
    num_brain_voxels: int = 424  # R the model was configured for (input may use any R)
    num_timepoints_per_voxel: int = 200  # T of a training window (input may use any multiple of W)
    timepoint_patching_size: int = 20  # W, timepoints per token
    # objective
    mask_ratio: float = 0.2  # fraction of tokens hidden from the encoder
    loss_fn: str = "mse"  # "mse" or "mae" over masked patches
    use_tanh_decoder: bool = False  # squash predictions with tanh
    time_encoding_dropout: float = 0.1  # the original's hard-coded dropout after the time encoding
    max_time_patches: int = 5000  # rows of the sinusoidal time-encoding table (P must not exceed it)
    learned_region_embedding: bool = False  # add a learned (num_brain_voxels, D) table to the xyz projection
    # attention
    conv_kernel_size: int | None = 65  # depthwise conv of values along tokens; None or 0 disables
    attention_type: str = "exact"  # "exact" (SDPA) or "nystrom" (approximation for long contexts)
    num_landmarks: int = 64  # Nystrom landmarks
    segment_means_seq_len: int = 64  # kept for compatibility with original configs
    inv_coeff_init_option: bool = False  # Nystrom pseudo-inverse init ("original" when True)
    # anything else found in a config file, kept so a save/load round trip loses nothing
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise UserError(f"BrainLMConfig: {msg}")

        for name in (
            "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
            "decoder_hidden_size", "decoder_num_attention_heads", "decoder_intermediate_size",
            "num_brain_voxels", "num_timepoints_per_voxel", "timepoint_patching_size",
            "num_landmarks", "max_time_patches",
        ):
            value = getattr(self, name)
            need(is_count(value) and 0 < value <= MAX_SIZE, f"{name} must be an integer in 1..{MAX_SIZE}, got {value!r}")
        need(is_count(self.decoder_num_hidden_layers) and 0 <= self.decoder_num_hidden_layers <= MAX_SIZE,
             f"decoder_num_hidden_layers must be an integer in 0..{MAX_SIZE}, got {self.decoder_num_hidden_layers!r}")
        # a NaN or negative epsilon gives NaN embeddings without any error: refused before a model is built
        need(is_finite_number(self.layer_norm_eps) and 0 < self.layer_norm_eps < 1,
             f"layer_norm_eps must be a finite number in (0, 1), got {self.layer_norm_eps!r}")
        need(is_finite_number(self.initializer_range) and self.initializer_range >= 0,
             f"initializer_range must be a finite number >= 0, got {self.initializer_range!r}")
        need(self.conv_kernel_size is None or (is_count(self.conv_kernel_size) and 0 <= self.conv_kernel_size <= MAX_SIZE),
             f"conv_kernel_size must be None or an integer in 0..{MAX_SIZE}, got {self.conv_kernel_size!r}")
        for name in ("qkv_bias", "use_tanh_decoder", "learned_region_embedding", "inv_coeff_init_option"):
            need(isinstance(getattr(self, name), bool), f"{name} must be true or false, got {getattr(self, name)!r}")
        need(
            self.hidden_size % self.num_attention_heads == 0,
            f"num_attention_heads ({self.num_attention_heads}) must divide hidden_size ({self.hidden_size})",
        )
        need(
            self.decoder_hidden_size % self.decoder_num_attention_heads == 0,
            f"decoder_num_attention_heads ({self.decoder_num_attention_heads}) must divide "
            f"decoder_hidden_size ({self.decoder_hidden_size})",
        )
        need(
            self.num_timepoints_per_voxel % self.timepoint_patching_size == 0,
            f"num_timepoints_per_voxel ({self.num_timepoints_per_voxel}) must be a multiple of "
            f"timepoint_patching_size ({self.timepoint_patching_size})",
        )
        need(
            self.num_timepoints_per_voxel // self.timepoint_patching_size <= self.max_time_patches,
            f"{self.num_timepoints_per_voxel // self.timepoint_patching_size} patches per region exceed "
            f"max_time_patches ({self.max_time_patches})",
        )
        need(self.loss_fn in ("mse", "mae"), f"loss_fn must be 'mse' or 'mae', got {self.loss_fn!r}")
        need(self.hidden_act in _ACTIVATIONS, f"hidden_act must be one of {sorted(_ACTIVATIONS)}, got {self.hidden_act!r}")
        need(
            self.attention_type in ("exact", "nystrom"),
            f"attention_type must be 'exact' or 'nystrom', got {self.attention_type!r}",
        )
        if self.conv_kernel_size:
            need(self.conv_kernel_size % 2 == 1, f"conv_kernel_size must be odd, got {self.conv_kernel_size}")
        for name in ("mask_ratio", "hidden_dropout_prob", "attention_probs_dropout_prob", "time_encoding_dropout"):
            need(is_finite_number(getattr(self, name)) and 0.0 <= getattr(self, name) < 1.0,
                 f"{name} must be in [0, 1), got {getattr(self, name)!r}")

    def num_parameters(self) -> int:
        """Parameters of the model this config builds, counted without building it."""

        def block(d: int, heads: int, inner: int) -> int:
            conv = heads * self.conv_kernel_size if self.conv_kernel_size else 0
            qkv = 3 * d * d + (3 * d if self.qkv_bias else 0)
            return qkv + conv + (d * d + d) + 2 * d + (d * inner + inner + inner * d + d) + 2 * d

        D, Dd, W = self.hidden_size, self.decoder_hidden_size, self.timepoint_patching_size
        regions = self.num_brain_voxels if self.learned_region_embedding else 0
        encoder = (W * D + D) + (3 * D + D) + D + 2 * D + regions * D
        encoder += self.num_hidden_layers * block(D, self.num_attention_heads, self.intermediate_size)
        decoder = (D * Dd + Dd) + Dd + (3 * Dd + Dd) + regions * Dd + 2 * Dd + (Dd * (Dd // 2) + Dd // 2) + ((Dd // 2) * W + W)
        decoder += self.decoder_num_hidden_layers * block(Dd, self.decoder_num_attention_heads,
                                                           self.decoder_intermediate_size)
        return encoder + decoder

    def activation_elements(self, batch: int, num_regions: int, num_timepoints: int) -> int:
        """A rough count of the activations a training step keeps for the backward pass.

        Per layer and token about ``8 D + 2 I`` values (inputs, q/k/v, attention output, two
        norms, the MLP's hidden layer): an estimate for refusing impossible sizes up front, not
        a memory planner.
        """
        L = num_regions * (num_timepoints // self.timepoint_patching_size)
        K = int(L * (1 - self.mask_ratio)) + 1
        enc = self.num_hidden_layers * K * (8 * self.hidden_size + 2 * self.intermediate_size)
        dec = self.decoder_num_hidden_layers * (L + 1) * (8 * self.decoder_hidden_size + 2 * self.decoder_intermediate_size)
        return batch * (enc + dec)

    @property
    def num_patches_per_voxel(self) -> int:
        """P for the configured window: T / W."""
        return self.num_timepoints_per_voxel // self.timepoint_patching_size

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        extra = d.pop("extra")
        return {**extra, **d, "model_type": "brainlm"}

    def to_json(self) -> str:
        """The config as JSON text (``brainlm.checkpoint`` writes and reads the files)."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "BrainLMConfig":
        """Build a config; keys it does not know are kept in ``extra``."""
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        known = {k: v for k, v in d.items() if k in names}
        extra = {k: v for k, v in d.items() if k not in names and k != "model_type"}
        extra.update(d.get("extra", {}) or {})
        return cls(**known, extra=extra)

    @classmethod
    def from_json(cls, text: str) -> "BrainLMConfig":
        return cls.from_dict(json.loads(text))

    def replace(self, **changes: Any) -> "BrainLMConfig":
        return dataclasses.replace(self, **changes)


def _sizes(width: int, layers: int, heads: int, dec_width: int, dec_layers: int, dec_heads: int) -> dict[str, int]:
    """Encoder and decoder sizes, MLPs 4x wide (BERT / ViT convention)."""
    return dict(hidden_size=width, num_hidden_layers=layers, num_attention_heads=heads, intermediate_size=4 * width,
                decoder_hidden_size=dec_width, decoder_num_hidden_layers=dec_layers,
                decoder_num_attention_heads=dec_heads, decoder_intermediate_size=4 * dec_width)


# Named sizes: name -> config fields (a declarative table; each has a function below).
_PRESET_FIELDS: dict[str, dict[str, Any]] = {
    "tiny": {**_sizes(32, 2, 2, 32, 1, 2), "intermediate_size": 64, "decoder_intermediate_size": 64,
             "conv_kernel_size": 9},
    "13m": {**_sizes(256, 4, 4, 256, 2, 4), "num_brain_voxels": 424, "num_timepoints_per_voxel": 200,
            "timepoint_patching_size": 20, "mask_ratio": 0.2},
    "111m": {**_sizes(768, 12, 12, 512, 8, 16), "mask_ratio": 0.75},
    "650m": {**_sizes(1280, 32, 16, 512, 8, 16), "mask_ratio": 0.75},
}


def brainlm_tiny(**overrides: Any) -> BrainLMConfig:
    """A few-thousand-parameter model for tests and smoke runs."""
    return BrainLMConfig(**{**_PRESET_FIELDS["tiny"], **overrides})


def brainlm_13m(**overrides: Any) -> BrainLMConfig:
    """The original released ``old_13M`` configuration (A424, 200 timepoints, patches of 20)."""
    return BrainLMConfig(**{**_PRESET_FIELDS["13m"], **overrides})


def brainlm_111m(**overrides: Any) -> BrainLMConfig:
    """A ViT-Base-sized encoder (768 wide, 12 layers) with a 512-wide, 8-layer decoder."""
    return BrainLMConfig(**{**_PRESET_FIELDS["111m"], **overrides})


def brainlm_650m(**overrides: Any) -> BrainLMConfig:
    """A ViT-Huge-sized encoder (1280 wide, 32 layers) with a 512-wide, 8-layer decoder."""
    return BrainLMConfig(**{**_PRESET_FIELDS["650m"], **overrides})


PRESETS = {"tiny": brainlm_tiny, "13m": brainlm_13m, "111m": brainlm_111m, "650m": brainlm_650m}


# ---------------------------------------------------------------------------------------------
# Building blocks
# ---------------------------------------------------------------------------------------------


def sinusoidal_table(num_positions: int, dim: int) -> Tensor:
    """The Transformer sin/cos table, (num_positions, dim): sin on even, cos on odd columns."""
    position = torch.arange(num_positions, dtype=torch.float32)[:, None]  # (n, 1)
    div_term = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(num_positions, dim)
    table[:, 0::2] = torch.sin(position * div_term)
    table[:, 1::2] = torch.cos(position * div_term[: dim // 2])
    return table


def _region_table(config: BrainLMConfig, dim: int) -> nn.Parameter | None:
    """The learned per-region table of ``learned_region_embedding``, (R, dim), or None."""
    return nn.Parameter(torch.zeros(config.num_brain_voxels, dim)) if config.learned_region_embedding else None


def _region_identity(module: nn.Module, xyz: Tensor) -> Tensor:
    """(B, R, 3) coordinates -> (B, R, dim): the xyz projection, plus the learned table if any."""
    out = module.xyz_proj(xyz)  # (B, R, dim)
    if module.region_embedding is not None:
        out = out + module.region_embedding.to(out.dtype)  # (R, dim) broadcast over B
    return out


def _segment_means(x: Tensor, num_segments: int) -> Tensor:
    """Means of ``num_segments`` contiguous, near-equal segments along dim -2.

    Works for any length N (segments differ in size by at most one token).
    x: (..., N, d) -> (..., m, d)
    """
    n = x.shape[-2]
    seg = torch.arange(n, device=x.device) * num_segments // n  # (N,) segment of each token
    onehot = F.one_hot(seg, num_segments).to(x.dtype)  # (N, m)
    weights = onehot / onehot.sum(0, keepdim=True)  # each column averages its segment
    return weights.transpose(0, 1) @ x  # (..., m, d)


def _iterative_pinv(mat: Tensor, num_iter: int = 6, original_init: bool = False) -> Tensor:
    """Moore-Penrose pseudo-inverse by the iteration of the Nystromformer paper (eq. 16).

    mat: (..., m, m) -> (..., m, m)
    """
    eye = torch.eye(mat.shape[-1], device=mat.device, dtype=mat.dtype)
    if original_init:
        v = mat.transpose(-1, -2) / mat.sum().amax()
    else:
        v = mat.transpose(-1, -2) / mat.sum(-2).amax(-1)[..., None, None]
    for _ in range(num_iter):
        kv = mat @ v
        v = 0.25 * v @ (13 * eye - kv @ (15 * eye - kv @ (7 * eye - kv)))
    return v


class Attention(nn.Module):
    """Multi-head self-attention with the original's value convolution and post-LayerNorm input.

    output = proj(softmax(q k^T / sqrt(d)) v + conv(v)), where conv is a depthwise convolution
    of each head's values along the token axis. Attention dropout is never applied (as in the
    original), so training uses the fused SDPA kernels too.
    """

    def __init__(self, dim: int, num_heads: int, config: BrainLMConfig):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=config.qkv_bias)
        k = config.conv_kernel_size or 0
        self.conv = (
            nn.Conv2d(num_heads, num_heads, (k, 1), padding=(k // 2, 0), groups=num_heads, bias=False)
            if k
            else None
        )
        self.proj = nn.Linear(dim, dim)
        self.attention_type = config.attention_type
        self.num_landmarks = config.num_landmarks
        self.original_pinv_init = config.inv_coeff_init_option

    def forward(
        self, x: Tensor, return_cls_attention: bool = False, query_index: Tensor | None = None
    ) -> tuple[Tensor, Tensor | None]:
        """x (B, N, D) -> (B, N, D); with ``query_index`` (B, M), outputs for those tokens only (B, M, D)."""
        B, N, D = x.shape
        H, d = self.num_heads, self.head_dim
        if query_index is None:
            qkv = self.qkv(x).view(B, N, 3, H, d)  # (B, N, 3, H, d)
            q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, H, N, d)
        else:
            # Keys and values for every token, queries only where outputs are needed.
            w_q, w_kv = self.qkv.weight.split([D, 2 * D])
            b_q, b_kv = self.qkv.bias.split([D, 2 * D]) if self.qkv.bias is not None else (None, None)
            x_q = x.gather(1, query_index[..., None].expand(-1, -1, D))  # (B, M, D)
            q = F.linear(x_q, w_q, b_q).view(B, -1, H, d).transpose(1, 2)  # (B, H, M, d)
            k, v = F.linear(x, w_kv, b_kv).view(B, N, 2, H, d).permute(2, 0, 3, 1, 4).unbind(0)  # (B, H, N, d)
        if self.attention_type == "nystrom" and N > self.num_landmarks:
            out = self._nystrom(q, k, v)
        else:
            out = F.scaled_dot_product_attention(q, k, v)  # (B, H, M, d)
        if self.conv is not None:
            # The depthwise (k, 1) kernel runs about twice as fast on a channels-last input.
            conv = self.conv(v.contiguous(memory_format=torch.channels_last))  # (B, H, N, d)
            if query_index is not None:
                conv = conv.gather(2, query_index[:, None, :, None].expand(-1, H, -1, d))  # (B, H, M, d)
            out = out + conv
        cls_attn = None
        if return_cls_attention:
            # Attention of the CLS query (token 0) over all tokens: (B, H, N); no N x N matrix.
            cls_attn = torch.softmax(q[:, :, :1] @ k.transpose(-1, -2) / math.sqrt(self.head_dim), -1)[:, :, 0]
        out = out.transpose(1, 2).reshape(B, -1, D)  # (B, M, D)
        return self.proj(out), cls_attn

    def _nystrom(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        scale = self.head_dim**-0.5
        q_l = _segment_means(q, self.num_landmarks)  # (B, H, m, d)
        k_l = _segment_means(k, self.num_landmarks)  # (B, H, m, d)
        kernel_1 = torch.softmax(q @ k_l.transpose(-1, -2) * scale, -1)  # (B, H, N, m)
        kernel_2 = torch.softmax(q_l @ k_l.transpose(-1, -2) * scale, -1)  # (B, H, m, m)
        kernel_3 = torch.softmax(q_l @ k.transpose(-1, -2) * scale, -1)  # (B, H, m, N)
        pinv = _iterative_pinv(kernel_2, original_init=self.original_pinv_init)
        return (kernel_1 @ pinv) @ (kernel_3 @ v)  # (B, H, N, d)


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int, act: str, dropout: float):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = _ACTIVATIONS[act]()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.fc2(self.act(self.fc1(x))))


class Block(nn.Module):
    """Post-LayerNorm transformer layer (BERT style), as the original's layers."""

    def __init__(self, dim: int, num_heads: int, mlp_dim: int, config: BrainLMConfig):
        super().__init__()
        self.attn = Attention(dim, num_heads, config)
        self.drop = nn.Dropout(config.hidden_dropout_prob)
        self.norm1 = nn.LayerNorm(dim, eps=config.layer_norm_eps)
        self.mlp = MLP(dim, mlp_dim, config.hidden_act, config.hidden_dropout_prob)
        self.norm2 = nn.LayerNorm(dim, eps=config.layer_norm_eps)

    def forward(
        self, x: Tensor, return_cls_attention: bool = False, query_index: Tensor | None = None
    ) -> tuple[Tensor, Tensor | None]:
        a, cls_attn = self.attn(x, return_cls_attention, query_index)
        if query_index is not None:
            x = x.gather(1, query_index[..., None].expand(-1, -1, x.shape[-1]))  # (B, M, D)
        x = self.norm1(x + self.drop(a))
        x = self.norm2(x + self.mlp(x))
        return x, cls_attn


class _Stack(nn.Module):
    """A list of blocks with optional activation checkpointing."""

    def __init__(self, blocks: list[Block]):
        super().__init__()
        self.layers = nn.ModuleList(blocks)
        self.gradient_checkpointing = False

    def forward(
        self, x: Tensor, return_cls_attention: bool = False, last_query_index: Tensor | None = None
    ) -> tuple[Tensor, list[Tensor]]:
        """x (B, N, D) -> (B, N, D), or (B, M, D) for the tokens in ``last_query_index`` (B, M)."""
        cls_attentions = []
        for i, layer in enumerate(self.layers):
            query_index = last_query_index if i == len(self.layers) - 1 else None
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                x, attn = checkpoint(layer, x, return_cls_attention, query_index, use_reentrant=False)
            else:
                x, attn = layer(x, return_cls_attention, query_index)
            if attn is not None:
                cls_attentions.append(attn)
        return x, cls_attentions


# ---------------------------------------------------------------------------------------------
# Encoder and decoder
# ---------------------------------------------------------------------------------------------


class BrainLMEncoder(nn.Module):
    """Patch embedding + coordinates + time encoding, masking, CLS token, transformer, LayerNorm."""

    def __init__(self, config: BrainLMConfig):
        super().__init__()
        D = config.hidden_size
        self.patch_size = config.timepoint_patching_size
        self.signal_proj = nn.Linear(config.timepoint_patching_size, D)
        self.xyz_proj = nn.Linear(3, D)
        self.region_embedding = _region_table(config, D)
        self.register_buffer("time_encoding", sinusoidal_table(config.max_time_patches, D), persistent=False)
        self.time_drop = nn.Dropout(config.time_encoding_dropout)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, D))
        self.blocks = _Stack(
            [Block(D, config.num_attention_heads, config.intermediate_size, config) for _ in range(config.num_hidden_layers)]
        )
        self.norm = nn.LayerNorm(D, eps=config.layer_norm_eps)

    def embed(self, signal_vectors: Tensor, xyz_vectors: Tensor) -> Tensor:
        """Token embeddings before masking: (B, R, T), (B, R, 3) -> (B, L, D), region-major."""
        B, R, T = signal_vectors.shape
        P = T // self.patch_size
        patches = signal_vectors.view(B, R, P, self.patch_size)  # (B, R, P, W)
        x = self.signal_proj(patches) + _region_identity(self, xyz_vectors)[:, :, None, :]  # (B, R, P, D)
        x = x + self.time_encoding[:P].to(x.dtype)  # broadcast over B, R
        x = self.time_drop(x)
        return x.flatten(1, 2)  # (B, L, D)

    def forward(self, tokens: Tensor, ids_keep: Tensor, return_cls_attention: bool = False):
        """tokens (B, L, D), ids_keep (B, K) -> hidden (B, 1 + K, D), CLS attentions per layer."""
        B, L, D = tokens.shape
        x = tokens.gather(1, ids_keep[..., None].expand(-1, -1, D))  # (B, K, D)
        x = torch.cat([self.cls_token.expand(B, -1, -1).to(x.dtype), x], dim=1)  # (B, 1 + K, D)
        x, cls_attentions = self.blocks(x, return_cls_attention)
        return self.norm(x), cls_attentions


class BrainLMDecoder(nn.Module):
    """Projects encoder states, fills masked positions with the mask token, decodes every patch."""

    def __init__(self, config: BrainLMConfig):
        super().__init__()
        Dd = config.decoder_hidden_size
        self.embed = nn.Linear(config.hidden_size, Dd)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, Dd))
        self.xyz_proj = nn.Linear(3, Dd)
        self.region_embedding = _region_table(config, Dd)
        self.register_buffer("time_encoding", sinusoidal_table(config.max_time_patches, Dd), persistent=False)
        self.time_drop = nn.Dropout(config.time_encoding_dropout)
        self.blocks = _Stack(
            [
                Block(Dd, config.decoder_num_attention_heads, config.decoder_intermediate_size, config)
                for _ in range(config.decoder_num_hidden_layers)
            ]
        )
        self.norm = nn.LayerNorm(Dd, eps=config.layer_norm_eps)
        self.pred1 = nn.Linear(Dd, Dd // 2)
        self.pred_act = nn.LeakyReLU(0.1)
        self.pred2 = nn.Linear(Dd // 2, config.timepoint_patching_size)
        self.use_tanh = config.use_tanh_decoder

    def forward(
        self, latent: Tensor, ids_keep: Tensor, xyz_vectors: Tensor, num_patches: int, ids_masked: Tensor | None = None
    ) -> Tensor:
        """latent (B, 1 + K, D), ids_keep (B, K), xyz (B, R, 3) -> predictions (B, R, P, W).

        With ``ids_masked`` (B, L - K), the last layer and the head run for masked tokens only
        (every token still serves as key and value); other patches of the result are zero.
        """
        x = self.embed(latent)  # (B, 1 + K, Dd)
        B, _, Dd = x.shape
        R, P = xyz_vectors.shape[1], num_patches
        # Put each kept token back at its place; every other place holds the mask token.
        full = self.mask_token.to(x.dtype).expand(B, R * P, Dd)
        full = full.scatter(1, ids_keep[..., None].expand(-1, -1, Dd), x[:, 1:])  # (B, L, Dd)
        full = full.view(B, R, P, Dd) + _region_identity(self, xyz_vectors)[:, :, None, :]  # (B, R, P, Dd)
        full = self.time_drop(full + self.time_encoding[:P].to(full.dtype))
        x = torch.cat([x[:, :1], full.flatten(1, 2)], dim=1)  # (B, 1 + L, Dd), CLS then region-major
        if ids_masked is not None and len(self.blocks.layers) > 0:
            x, _ = self.blocks(x, last_query_index=ids_masked + 1)  # (B, L - K, Dd); +1 skips CLS
        else:
            x, _ = self.blocks(x)
            x = x[:, 1:]  # (B, L, Dd)
            if ids_masked is not None:
                x = x.gather(1, ids_masked[..., None].expand(-1, -1, Dd))  # (B, L - K, Dd)
        x = self.norm(x)  # LayerNorm is per token, so dropping tokens first is exact
        pred = self.pred2(self.pred_act(self.pred1(x)))  # (B, L or L - K, W)
        if self.use_tanh:
            pred = torch.tanh(pred)
        if ids_masked is not None:
            W = pred.shape[-1]
            pred = pred.new_zeros(B, R * P, W).scatter(1, ids_masked[..., None].expand(-1, -1, W), pred)  # (B, L, W)
        return pred.view(B, R, P, -1)  # (B, R, P, W)


# ---------------------------------------------------------------------------------------------
# The masked autoencoder
# ---------------------------------------------------------------------------------------------


@dataclass
class BrainLMOutput:
    """What :meth:`BrainLMForPretraining.forward` returns.

    loss: () masked-patch MSE or MAE; None when nothing is masked.
    logits: (B, R, P, W) reconstruction of every patch.
    mask: (B, R, P), 1 = masked.
    encoder_last_hidden_state: (B, 1 + K, D), CLS first, then kept tokens in encoder order.
    ids_restore: (B, L) position of each region-major token in the encoder's order
        (kept tokens first, then masked), as in the original.
    ids_keep: (B, K) region-major index of each kept token, in encoder order.
    cls_attentions: per encoder layer, (B, H, 1 + K) attention of the CLS token, when asked.
    """

    loss: Tensor | None
    logits: Tensor
    mask: Tensor
    encoder_last_hidden_state: Tensor
    ids_restore: Tensor
    ids_keep: Tensor
    cls_attentions: list[Tensor] | None = None


@dataclass
class EncoderOutput:
    """What :meth:`BrainLMForPretraining.forward_encoder` returns.

    latent: (B, 1 + K, D) encoder output after its LayerNorm, CLS first, kept tokens in encoder order.
    mask: (B, L), 1 = masked, region-major.
    ids_restore: (B, L) position of each region-major token in the encoder's order.
    ids_keep: (B, K) region-major index of each kept token, in encoder order.
    cls_attentions: per encoder layer, (B, H, 1 + K) attention of the CLS token (empty unless asked).
    """

    latent: Tensor
    mask: Tensor
    ids_restore: Tensor
    ids_keep: Tensor
    cls_attentions: list[Tensor]


@dataclass
class EmbeddingOutput:
    """What ``model.embed`` returns (both model kinds).

    embeddings: (B, D) pooled vectors, or (B, R, D) per-region vectors (``region_time`` pooling),
        or (B, L, D) tokens (``tokens`` pooling).
    cls_attention: (B, R) the last layer's CLS attention summed per region (each row sums to
        1), when asked; None otherwise.
    cls: (B, D) the CLS token, whatever the pooling (the same forward pass: a caller that needs
        both the tokens and the CLS token runs the encoder once).
    """

    embeddings: Tensor
    cls_attention: Tensor | None = None
    cls: Tensor | None = None


@dataclass
class ReconstructionOutput:
    """What ``model.reconstruct`` returns (both model kinds), in the caller's units.

    pred: (B, R, T) reconstruction of the whole window.
    mask: (B, R, T) bool, True where the value was hidden from the encoder.
    """

    pred: Tensor
    mask: Tensor


def masking_noise(masked: Tensor) -> tuple[Tensor, float]:
    """Noise and mask ratio that make a model hide exactly the tokens marked in ``masked``.

    Both model kinds keep the ``int(L * (1 - ratio))`` tokens with the smallest noise. Kept
    tokens get noise equal to their index, masked tokens that plus L, so kept tokens stay in
    index order (region-major for BrainLM). Every row must mask the same number of tokens.

    Args:
        masked: (B, L) bool, True = hide.

    Returns:
        noise (B, L) float, and the ``mask_ratio`` to pass with it.
    """
    B, L = masked.shape
    counts = masked.sum(1)
    if (counts != counts[0]).any():
        raise ValueError("every window must mask the same number of tokens")
    num_masked = int(counts[0])
    noise = torch.arange(L, dtype=torch.float32, device=masked.device).expand(B, L) + L * masked.float()
    # int(L * (1 - ratio)) must equal L - num_masked exactly; half a token of slack absorbs rounding.
    ratio = (num_masked - 0.5) / L if num_masked else 0.0
    return noise, ratio


class BrainLMForPretraining(nn.Module, HubMixin):
    """BrainLM masked autoencoder: ``model(signal_vectors, xyz_vectors, noise=None)``.

    Besides the training forward pass it implements the interface that downstream code uses
    for both model kinds (this one and :class:`brainlm.vitmae.BrainLMViTMAE`):
    ``num_regions``, ``window_length``, ``num_tokens(T)``, ``embed``, ``reconstruct``,
    ``forecast`` and ``cls_attention``; and, from :class:`brainlm.hub.HubMixin`,
    ``from_pretrained(path_or_hub_id, map_location=...)``, ``save_pretrained(folder)`` and
    ``push_to_hub(repo_id)`` (the checkpoint formats are :mod:`brainlm.checkpoint`'s).
    """

    config_class = BrainLMConfig
    model_types = ("brainlm", "brainlm_mae")  # ours (written), the original code's (read)

    def __init__(self, config: BrainLMConfig):
        super().__init__()
        self.config = config
        self.encoder = BrainLMEncoder(config)
        self.decoder = BrainLMDecoder(config)
        self.init_weights()

    # -- setup ---------------------------------------------------------------------------------

    def init_weights(self) -> None:
        """The original's scheme: encoder weights and tokens N(0, 0.02), decoder Linear xavier."""
        std = self.config.initializer_range
        for module in self.encoder.modules():
            if isinstance(module, (nn.Linear, nn.Conv2d)):
                nn.init.normal_(module.weight, std=std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        for module in self.decoder.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, std=std)
        for module in self.modules():
            if isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        nn.init.normal_(self.encoder.cls_token, std=std)
        nn.init.normal_(self.decoder.mask_token, std=std)
        for part in (self.encoder, self.decoder):
            if part.region_embedding is not None:
                nn.init.normal_(part.region_embedding, std=std)

    def gradient_checkpointing_enable(self) -> None:
        """Recompute each transformer layer in the backward pass instead of storing activations."""
        self.encoder.blocks.gradient_checkpointing = True
        self.decoder.blocks.gradient_checkpointing = True

    def gradient_checkpointing_disable(self) -> None:
        self.encoder.blocks.gradient_checkpointing = False
        self.decoder.blocks.gradient_checkpointing = False

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def fsdp_units(self) -> list[nn.Module]:
        """The modules sharded one by one under FSDP (the transformer blocks), for ``wrap_model``."""
        return [*self.encoder.blocks.layers, *self.decoder.blocks.layers]

    # -- the model card, for HubMixin (the formats live in brainlm.checkpoint) ----------------

    def _card_config(self) -> dict[str, Any]:
        return self.config.to_dict()

    # -- the named steps -------------------------------------------------------------------------

    def _check_inputs(self, signal_vectors: Tensor, xyz_vectors: Tensor) -> None:
        W = self.config.timepoint_patching_size
        if not torch.is_tensor(signal_vectors) or signal_vectors.dim() != 3:
            raise UserError(
                f"signal_vectors must be a (B, R, T) tensor, got shape {tuple(getattr(signal_vectors, 'shape', ()))}"
            )
        if not torch.is_tensor(xyz_vectors) or xyz_vectors.dim() != 3 or xyz_vectors.shape[-1] != 3:
            raise UserError(f"xyz_vectors must be a (B, R, 3) tensor, got shape {tuple(getattr(xyz_vectors, 'shape', ()))}")
        B, R, T = signal_vectors.shape
        if xyz_vectors.shape[:2] != (B, R):
            raise UserError(
                f"signal_vectors has {R} regions (batch {B}) but xyz_vectors has shape {tuple(xyz_vectors.shape)}; "
                "every region needs one (x, y, z) coordinate"
            )
        if self.config.learned_region_embedding and R != self.config.num_brain_voxels:
            raise UserError(f"learned_region_embedding needs the {self.config.num_brain_voxels} regions the model was "
                            f"built for, got {R}")
        if T % W != 0 or T == 0:
            raise UserError(f"T = {T} timepoints is not a positive multiple of timepoint_patching_size W = {W}")
        if T // W > self.config.max_time_patches:
            raise UserError(f"{T // W} patches per region exceed max_time_patches ({self.config.max_time_patches})")
        if not signal_vectors.is_floating_point() or not xyz_vectors.is_floating_point():
            raise UserError("signal_vectors and xyz_vectors must be floating point tensors")

    def patchify(self, signal_vectors: Tensor) -> Tensor:
        """(B, R, T) -> (B, R, P, W)."""
        B, R, T = signal_vectors.shape
        return signal_vectors.view(B, R, T // self.config.timepoint_patching_size, -1)  # (B, R, P, W)

    def random_masking(
        self, batch: int, num_tokens: int, mask_ratio: float, noise: Tensor | None, device: torch.device
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Per-sample random masking by argsort of noise (small noise = kept).

        Returns ids_keep (B, K) in encoder order, mask (B, L) with 1 = masked, ids_restore (B, L).
        Without noise and with nothing masked, the order is the identity (region-major).
        """
        len_keep = int(num_tokens * (1 - mask_ratio))
        if noise is None and len_keep == num_tokens:
            ids_shuffle = torch.arange(num_tokens, device=device).expand(batch, -1)
        else:
            if noise is None:
                noise = torch.rand(batch, num_tokens, device=device)
            elif noise.shape != (batch, num_tokens):
                raise UserError(f"noise must have shape (B, L) = {(batch, num_tokens)}, got {tuple(noise.shape)}")
            ids_shuffle = torch.argsort(noise.to(device), dim=1)  # (B, L) ascending: first kept
        ids_restore = torch.argsort(ids_shuffle, dim=1)  # (B, L)
        ids_keep = ids_shuffle[:, :len_keep]  # (B, K)
        mask = torch.ones(batch, num_tokens, device=device)
        mask.scatter_(1, ids_keep, 0.0)  # (B, L)
        return ids_keep, mask, ids_restore

    def forward_encoder(
        self,
        signal_vectors: Tensor,
        xyz_vectors: Tensor,
        noise: Tensor | None = None,
        mask_ratio: float | None = None,
        output_cls_attentions: bool = False,
    ) -> EncoderOutput:
        """Embed, mask and encode: (B, R, T), (B, R, 3) -> :class:`EncoderOutput`."""
        self._check_inputs(signal_vectors, xyz_vectors)
        ratio = self.config.mask_ratio if mask_ratio is None else float(mask_ratio)
        if not 0.0 <= ratio < 1.0:
            raise UserError(f"mask_ratio must be in [0, 1), got {ratio}")
        tokens = self.encoder.embed(signal_vectors, xyz_vectors)  # (B, L, D)
        B, L, _ = tokens.shape
        ids_keep, mask, ids_restore = self.random_masking(B, L, ratio, noise, tokens.device)
        latent, cls_attentions = self.encoder(tokens, ids_keep, output_cls_attentions)
        return EncoderOutput(latent, mask, ids_restore, ids_keep, cls_attentions)

    def forward_decoder(
        self, latent: Tensor, ids_keep: Tensor, xyz_vectors: Tensor, num_patches: int, ids_masked: Tensor | None = None
    ) -> Tensor:
        """latent (B, 1 + K, D) -> reconstruction (B, R, P, W) (masked patches only with ``ids_masked``)."""
        return self.decoder(latent, ids_keep, xyz_vectors, num_patches, ids_masked)

    def forward_loss(self, signal_vectors: Tensor, pred: Tensor, mask: Tensor) -> Tensor | None:
        """Mean error over the timepoints of masked patches.

        signal_vectors (B, R, T), pred (B, R, P, W), mask (B, R, P), 1 = masked.
        """
        target = self.patchify(signal_vectors)  # (B, R, P, W)
        err = pred.float() - target.float()
        err = err.square() if self.config.loss_fn == "mse" else err.abs()
        num_masked = mask.sum()
        if num_masked == 0:
            return None
        return (err.mean(-1) * mask).sum() / num_masked

    def forward(
        self,
        signal_vectors: Tensor,
        xyz_vectors: Tensor,
        noise: Tensor | None = None,
        mask_ratio: float | None = None,
        output_cls_attentions: bool = False,
        decode_visible: bool = True,
    ) -> BrainLMOutput:
        """Mask, encode, decode and score one batch of windows.

        Args:
            signal_vectors: (B, R, T) normalised time series; T a multiple of W.
            xyz_vectors: (B, R, 3) region coordinates.
            noise: optional (B, R * P) noise; tokens with the smallest noise are kept.
            mask_ratio: overrides ``config.mask_ratio`` for this call (0.0 for embeddings).
            output_cls_attentions: also return the CLS token's attention in every encoder layer.
            decode_visible: when False, only masked patches are reconstructed (the loss and its
                gradients are unchanged, visible patches of ``logits`` are 0): the decoder's last
                layer then runs queries for masked tokens only, which training uses.
        """
        enc = self.forward_encoder(signal_vectors, xyz_vectors, noise, mask_ratio, output_cls_attentions)
        latent, mask, ids_restore, ids_keep = enc.latent, enc.mask, enc.ids_restore, enc.ids_keep
        B, R, T = signal_vectors.shape
        P = T // self.config.timepoint_patching_size
        ids_masked = None
        if not decode_visible:
            ids_masked = torch.argsort(ids_restore, dim=1)[:, ids_keep.shape[1]:]  # (B, L - K) encoder order
        pred = self.forward_decoder(latent, ids_keep, xyz_vectors, P, ids_masked)  # (B, R, P, W)
        mask = mask.view(B, R, P)  # (B, R, P)
        loss = self.forward_loss(signal_vectors, pred, mask)
        return BrainLMOutput(
            loss=loss,
            logits=pred,
            mask=mask,
            encoder_last_hidden_state=latent,
            ids_restore=ids_restore,
            ids_keep=ids_keep,
            cls_attentions=enc.cls_attentions if output_cls_attentions else None,
        )

    # -- the interface shared with BrainLMViTMAE ------------------------------------------------

    @property
    def num_regions(self) -> int:
        """R the model was trained for."""
        return self.config.num_brain_voxels

    @property
    def window_length(self) -> int:
        """T of a training window."""
        return self.config.num_timepoints_per_voxel

    def num_tokens(self, num_regions: int, num_timepoints: int) -> int:
        """L, the tokens of a (R, T) window: what masking noise covers."""
        return num_regions * (num_timepoints // self.config.timepoint_patching_size)

    def embed(self, signal_vectors: Tensor, xyz_vectors: Tensor, pooling: str = "cls", average_regions: bool = False,
              output_attentions: bool = False) -> EmbeddingOutput:
        """Embed windows with masking off (tokens in region-major order, so the result is deterministic).

        Args:
            signal_vectors: (B, R, T). xyz_vectors: (B, R, 3).
            pooling: ``"cls"`` the CLS token; ``"mean"`` the mean of the L patch tokens;
                ``"region_time"`` the tokens as (R, P, D) averaged over time, (B, R, D)
                (over regions too with ``average_regions``: (B, D)); ``"tokens"`` every
                patch token, (B, L, D), region-major (what attentive probes read).
            output_attentions: also return the last layer's CLS attention per region, (B, R).
        """
        if pooling not in ("cls", "mean", "region_time", "tokens"):
            raise UserError(f"--pooling must be cls, mean, region_time or tokens, got {pooling!r}")
        enc = self.forward_encoder(signal_vectors, xyz_vectors, mask_ratio=0.0, output_cls_attentions=output_attentions)
        hidden = enc.latent  # (B, 1 + L, D)
        B, R, T = signal_vectors.shape
        P = T // self.config.timepoint_patching_size
        if pooling == "cls":
            emb = hidden[:, 0]  # (B, D)
        elif pooling == "mean":
            emb = hidden[:, 1:].mean(1)  # (B, D)
        elif pooling == "tokens":
            emb = hidden[:, 1:]  # (B, L, D)
        else:
            emb = hidden[:, 1:].reshape(B, R, P, -1).mean(2)  # (B, R, D)
            if average_regions:
                emb = emb.mean(1)  # (B, D)
        attn = _token_attention(enc.cls_attentions[-1], R, P).sum(-1) if output_attentions else None  # (B, R)
        return EmbeddingOutput(emb, attn, hidden[:, 0])

    def cls_attention(self, signal_vectors: Tensor, xyz_vectors: Tensor, layer: int | None = -1) -> Tensor:
        """CLS attention over patch tokens in one encoder layer (None: the mean over layers), head
        mean: (B, R, P), each map sums to 1."""
        n = self.config.num_hidden_layers
        if layer is not None and not -n <= layer < n:
            raise UserError(f"--layer {layer}: the encoder has {n} layers (0..{n - 1}, -1 for the last)")
        enc = self.forward_encoder(signal_vectors, xyz_vectors, mask_ratio=0.0, output_cls_attentions=True)
        B, R, T = signal_vectors.shape
        maps = [_token_attention(a, R, T // self.config.timepoint_patching_size) for a in enc.cls_attentions]
        return torch.stack(maps).mean(0) if layer is None else maps[layer]  # (B, R, P)

    def reconstruct(self, signal_vectors: Tensor, xyz_vectors: Tensor, noise: Tensor | None = None,
                    mask_ratio: float | None = None) -> ReconstructionOutput:
        """Mask, encode and decode windows: prediction and mask, (B, R, T) each."""
        out = self(signal_vectors, xyz_vectors, noise=noise, mask_ratio=mask_ratio)
        B, R, T = signal_vectors.shape
        W = self.config.timepoint_patching_size
        return ReconstructionOutput(out.logits.reshape(B, R, T), out.mask.bool().repeat_interleave(W, dim=-1))

    def forecast(self, signal_vectors: Tensor, xyz_vectors: Tensor, k: int) -> Tensor:
        """The last ``k`` timepoints of every region predicted from the rest: (B, R, k).

        The last ``k / W`` patches of every region are hidden (k a positive multiple of W,
        smaller than T), as the original code's ``last_timepoints_masking``; the visible
        tokens keep their region-major order.
        """
        B, R, T = signal_vectors.shape
        W = self.config.timepoint_patching_size
        if k <= 0 or k % W or k >= T:
            raise UserError(f"k = {k} must be a positive multiple of the patch size W = {W} and smaller than the window "
                            f"T = {T}")
        P = T // W
        masked = torch.zeros(B, R, P, dtype=torch.bool, device=signal_vectors.device)
        masked[:, :, P - k // W:] = True
        noise, ratio = masking_noise(masked.view(B, -1))
        return self.reconstruct(signal_vectors, xyz_vectors, noise=noise, mask_ratio=ratio).pred[..., T - k:]


def _token_attention(cls_attn: Tensor, R: int, P: int) -> Tensor:
    """(B, H, 1 + L) CLS attention of one layer -> (B, R, P): head mean, the CLS token's attention
    to itself dropped, renormalised over the L tokens."""
    a = cls_attn.float().mean(1)[:, 1:]  # (B, L)
    a = a / a.sum(-1, keepdim=True)
    return a.view(-1, R, P)  # (B, R, P)

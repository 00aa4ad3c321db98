"""The original BrainLM forward pass, rebuilt from ``transformers``' ``NystromformerLayer``.

A reference for equivalence tests and side-by-side benchmarks, not for use: it wires the
original architecture (explicit n x n softmax attention in each layer, ``repeat`` copies,
gather-based masking and unshuffling) around the same layer class the original uses, with
the original's parameter names, so a state dict from
:func:`brainlm.checkpoint.to_original_state_dict` loads into it directly.

Requires ``transformers`` with the Nystromformer model (the ``hf`` or ``bench`` extra).
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from brainlm.model import BrainLMConfig, sinusoidal_table


def _nystromformer_config(config: BrainLMConfig, hidden: int, layers: int, heads: int, inter: int):
    from transformers import NystromformerConfig

    cfg = NystromformerConfig(
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=inter,
        hidden_act=config.hidden_act,
        hidden_dropout_prob=config.hidden_dropout_prob,
        attention_probs_dropout_prob=config.attention_probs_dropout_prob,
        layer_norm_eps=config.layer_norm_eps,
        segment_means_seq_len=config.segment_means_seq_len,
        num_landmarks=config.num_landmarks,
        conv_kernel_size=config.conv_kernel_size or 65,
        inv_coeff_init_option=config.inv_coeff_init_option,
    )
    if not config.conv_kernel_size:
        cfg.__dict__["conv_kernel_size"] = None  # newer configs type-check this field; the layer accepts None
    return cfg


class _Embeddings(nn.Module):
    def __init__(self, config: BrainLMConfig):
        super().__init__()
        D = config.hidden_size
        self.cls_token = nn.Parameter(torch.zeros(1, 1, D))
        self.signal_embedding_projection = nn.Linear(config.timepoint_patching_size, D)
        self.xyz_embedding_projection = nn.Linear(3, D)
        self.register_buffer("pe", sinusoidal_table(config.max_time_patches, D), persistent=False)
        self.drop = nn.Dropout(0.1)


class _Decoder(nn.Module):
    def __init__(self, config: BrainLMConfig):
        super().__init__()
        from transformers.models.nystromformer.modeling_nystromformer import (
            NystromformerLayer,
        )

        D, Dd = config.hidden_size, config.decoder_hidden_size
        self.mask_token = nn.Parameter(torch.zeros(1, 1, Dd))
        self.decoder_embed = nn.Linear(D, Dd)
        # As in the original, sized by the encoder width (so D must equal Dd).
        self.decoder_xyz_projection = nn.Linear(3, D)
        self.register_buffer("pe", sinusoidal_table(config.max_time_patches, D), persistent=False)
        self.drop = nn.Dropout(0.1)
        dcfg = _nystromformer_config(
            config, Dd, config.decoder_num_hidden_layers, config.decoder_num_attention_heads,
            config.decoder_intermediate_size,
        )
        self.decoder_layers = nn.ModuleList([NystromformerLayer(dcfg) for _ in range(config.decoder_num_hidden_layers)])
        self.decoder_norm = nn.LayerNorm(Dd, eps=config.layer_norm_eps)
        self.decoder_pred1 = nn.Linear(Dd, Dd // 2)
        self.decoder_pred2 = nn.Linear(Dd // 2, config.timepoint_patching_size)


class OriginalBrainLM(nn.Module):
    """The original architecture; ``forward`` returns (loss, logits, mask, encoder states)."""

    def __init__(self, config: BrainLMConfig):
        super().__init__()
        from transformers.models.nystromformer.modeling_nystromformer import (
            NystromformerLayer,
        )

        if config.decoder_hidden_size != config.hidden_size:
            raise ValueError("the original architecture needs decoder_hidden_size == hidden_size")
        self.config = copy.deepcopy(config)
        ecfg = _nystromformer_config(
            config, config.hidden_size, config.num_hidden_layers, config.num_attention_heads, config.intermediate_size
        )
        self.vit = nn.Module()
        self.vit.embeddings = _Embeddings(config)
        self.vit.encoder = nn.Module()
        self.vit.encoder.layer = nn.ModuleList([NystromformerLayer(ecfg) for _ in range(config.num_hidden_layers)])
        self.vit.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.decoder = _Decoder(config)

    def encode(self, signal_vectors: Tensor, xyz_vectors: Tensor, noise: Tensor | None = None, mask_ratio=None):
        """The encoder alone (``model.vit`` in the original): (latent, mask, ids_restore)."""
        cfg = self.config
        ratio = cfg.mask_ratio if mask_ratio is None else mask_ratio
        emb = self.vit.embeddings
        B, R, T = signal_vectors.shape
        W = cfg.timepoint_patching_size
        P = T // W
        x = emb.signal_embedding_projection(signal_vectors.reshape(B, R, P, W))
        x = x + emb.xyz_embedding_projection(xyz_vectors).unsqueeze(2).repeat(1, 1, P, 1)
        x = emb.drop(x + emb.pe[:P].unsqueeze(0).unsqueeze(0).repeat(B, R, 1, 1))
        x = x.flatten(1, 2)  # (B, L, D)
        L, D = x.shape[1], x.shape[2]
        keep = int(L * (1 - ratio))
        if noise is None:
            noise = torch.rand(B, L, device=x.device)
        ids_shuffle = torch.argsort(noise, dim=1)
        ids_restore = torch.argsort(ids_shuffle, dim=1)
        x = torch.gather(x, 1, ids_shuffle[:, :keep].unsqueeze(-1).repeat(1, 1, D))
        mask = torch.ones(B, L, device=x.device)
        mask[:, :keep] = 0
        mask = torch.gather(mask, 1, ids_restore)
        x = torch.cat([emb.cls_token.expand(B, -1, -1), x], dim=1)
        for layer in self.vit.encoder.layer:
            x = layer(x)[0]
        return self.vit.layernorm(x), mask, ids_restore

    def forward(self, signal_vectors: Tensor, xyz_vectors: Tensor, noise: Tensor | None = None, mask_ratio=None):
        cfg = self.config
        ratio = cfg.mask_ratio if mask_ratio is None else mask_ratio
        B, R, T = signal_vectors.shape
        W = cfg.timepoint_patching_size
        P = T // W
        L = R * P
        keep = int(L * (1 - ratio))
        latent, mask, ids_restore = self.encode(signal_vectors, xyz_vectors, noise, ratio)
        dec = self.decoder
        y = dec.decoder_embed(latent)
        Dd = y.shape[-1]
        y_ = torch.cat([y[:, 1:], dec.mask_token.repeat(B, L - keep, 1)], dim=1)
        y_ = torch.gather(y_, 1, ids_restore.unsqueeze(-1).repeat(1, 1, Dd)).reshape(B, R, P, Dd)
        y_ = y_ + dec.decoder_xyz_projection(xyz_vectors).unsqueeze(2).repeat(1, 1, P, 1)
        y_ = dec.drop(y_ + dec.pe[:P].unsqueeze(0).unsqueeze(0).repeat(B, R, 1, 1))
        y = torch.cat([y[:, :1], y_.flatten(1, 2)], dim=1)
        for layer in dec.decoder_layers:
            y = layer(y)[0]
        y = dec.decoder_norm(y)
        logits = dec.decoder_pred2(nn.functional.leaky_relu(dec.decoder_pred1(y), 0.1))
        if cfg.use_tanh_decoder:
            logits = torch.tanh(logits)
        logits = logits[:, 1:].reshape(B, R, P, W)
        mask = mask.reshape(B, R, P)
        m = mask.unsqueeze(-1).repeat(1, 1, 1, W)
        err = (logits - signal_vectors.reshape(B, R, P, W)) * m
        loss = (err**2).sum() / m.sum() if cfg.loss_fn == "mse" else err.abs().sum() / m.sum()
        return loss, logits, mask, latent

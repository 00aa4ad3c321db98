"""Brainmarks model plugin: any model ``brainlm`` opens, evaluated by Brainmarks' own code.

Brainmarks (PyPI ``brainmarks``) finds models as modules of its namespace package
``brainmarks.models``; ``brainlm`` ships one, ``brainmarks/models/brainlm_checkpoint.py``, which
registers the model ``brainlm_checkpoint`` built here, so that with both installed::

    python -m brainmarks.main_logistic brainlm_checkpoint cls hcpya_rest1lr_gender \\
        --overrides model_kwargs.checkpoint=PATH device=cpu amp=false

runs Brainmarks' protocol on our checkpoints, original BrainLM folders and the released ViT-MAE
(any folder or hub id :func:`brainlm.downstream.load_model` opens). The pieces Brainmarks asks
of a model (``brainmarks.models.base``):

- :class:`BrainmarksTransform`, the transform Brainmarks hands each sample through. Its
  samples are ``bold`` ``(T, 424)`` z-scored per region, ``mean`` / ``std`` ``(1, 424)``
  and ``tr``; the transform undoes the z-scoring, normalises with a :class:`Normalizer` fitted
  on the training split in ``fit`` (``brainmarks-brainlm`` by default: exactly the input
  Brainmarks' own BrainLM transform gives, resampled to TR 0.735 s), pads a short sample with
  its mean, and cuts non-overlapping windows of the model's length: ``bold`` ``(W, R, T)``.
- :class:`BrainmarksModel`, which embeds the windows with masking off and returns Brainmarks'
  triple: ``cls`` ``(B, 1, D)`` (the CLS token averaged over windows), no register tokens, and
  ``patch`` ``(B, W * L, D)`` (every token of every window), as Brainmarks' BrainLM wrapper does.

``num_workers=0`` is refused when the model is created: brainmarks 0.1.1's ``main_logistic``
passes it to ``LogisticRegressionCV(n_jobs=...)``, which fails only after every feature is extracted.

Departures from Brainmarks' own BrainLM wrapper, on purpose: the ViT-MAE orders regions by Y with
a stable sort, as the original BrainLM code does (Brainmarks' ``np.argsort`` of a pandas column
is not stable and puts 359 of the 424 tied regions elsewhere, on the machine this was checked
on); and nothing is downloaded unless a hub id is given.
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from brainlm.data import Normalizer, load_atlas
from brainlm.downstream.loading import load_model
from brainlm.errors import UserError

__all__ = ["BrainmarksTransform", "BrainmarksModel", "create_brainmarks_model"]


def _unscaled(sample: dict) -> np.ndarray:
    """A Brainmarks sample's parcellated signal, ``bold * std + mean``: ``(T, R)`` float32."""
    def array(v):
        return v.float().numpy() if torch.is_tensor(v) else np.asarray(v, np.float32)

    return (array(sample["bold"]) * array(sample["std"]) + array(sample["mean"])).astype(np.float32)


class BrainmarksTransform:
    """Brainmarks sample -> ``bold`` ``(W, R, window)`` float32 windows (module docstring).

    Args:
        window: timepoints per window (the model's).
        normalization: a method of :data:`brainlm.data.NORMALIZATIONS`; the store normalisation
            the model expects (``brainmarks-brainlm`` for the released models).
    """

    def __init__(self, window: int, normalization: str = "brainmarks-brainlm"):
        self.window = window
        self.normalizer = Normalizer(normalization)

    def fit(self, train_dataset) -> "BrainmarksTransform":
        """Learn the normaliser's statistics from Brainmarks' training split (its samples)."""
        self.normalizer.fit(_unscaled(sample) for sample in train_dataset)
        return self

    def __call__(self, sample: dict) -> dict:
        tr = float(sample["tr"]) if "tr" in sample else float("nan")
        x = torch.from_numpy(self.normalizer.transform(_unscaled(sample), tr=tr))  # (T, R)
        if len(x) < self.window:  # as Brainmarks, in torch (the same mean to the last bit): pad with the sample's mean
            x = torch.cat([x, x.mean(dim=0).repeat(self.window - len(x), 1)])
        W = len(x) // self.window
        windows = x[: W * self.window].reshape(W, self.window, -1).transpose(1, 2)  # (W, R, window)
        return {**sample, "bold": windows.contiguous()}


class BrainmarksModel(nn.Module):
    """A brainlm model as Brainmarks calls it: ``batch["bold"]`` ``(B, W, R, T)`` -> (cls, reg, patch)."""

    __space__ = "a424"

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        coords = load_atlas("A424").coords
        if int(model.num_regions) != len(coords):
            raise UserError(f"the model has {model.num_regions} regions; Brainmarks' a424 space has {len(coords)}")
        self.register_buffer("xyz", torch.from_numpy(np.asarray(coords, np.float32)), persistent=False)

    def forward(self, batch: dict):
        x = batch["bold"].float()
        B, W, R, T = x.shape
        flat = x.reshape(B * W, R, T)  # (B W, R, T)
        xyz = self.xyz.expand(B * W, R, 3)
        out = self.model.embed(flat, xyz, pooling="tokens")  # one encoder pass for both
        cls, tokens = out.cls, out.embeddings  # (B W, D), (B W, L, D)
        D = cls.shape[-1]
        cls = cls.reshape(B, W, D).mean(1, keepdim=True)  # (B, 1, D)
        patch = tokens.reshape(B, W * tokens.shape[1], D)  # (B, W L, D)
        return cls, None, patch


def _logistic_script_settings():
    """The settings (``args``) of Brainmarks' ``main_logistic`` when it is the caller creating the
    model, else None: the one Brainmarks setting the model must check before the run starts."""
    frame = inspect.currentframe()
    try:
        while frame is not None:
            source = Path(frame.f_globals.get("__file__") or "")
            if (source.parent.name, source.name) == ("brainmarks", "main_logistic.py") and "args" in frame.f_locals:
                return frame.f_locals["args"]
            frame = frame.f_back
    finally:
        del frame
    return None


def create_brainmarks_model(checkpoint: str | None = None, normalization: str = "brainmarks-brainlm",
                            trust_unverified: bool = False, **kwargs) -> tuple[BrainmarksTransform, BrainmarksModel]:
    """``(transform, model)`` for Brainmarks' registry.

    Args:
        checkpoint: anything :func:`brainlm.downstream.load_model` opens; default
            ``$BRAINLM_CHECKPOINT``.
        normalization: what the transform hands the model (see :class:`BrainmarksTransform`).
        trust_unverified: use a model folder that no complete ``manifest.json`` verifies.
        kwargs: Brainmarks passes its ``model_kwargs``; unknown keys are refused.
    """
    settings = _logistic_script_settings()
    if settings is not None and settings.get("num_workers") == 0:
        raise UserError("brainlm_checkpoint: num_workers=0 fails in brainmarks 0.1.1's main_logistic once the features "
                        "are extracted (it becomes LogisticRegressionCV(n_jobs=0)); pass num_workers=1 or more")
    if kwargs:
        raise UserError(f"brainlm_checkpoint: unknown model_kwargs {sorted(kwargs)} (checkpoint, normalization, trust_unverified)")
    checkpoint = checkpoint or os.environ.get("BRAINLM_CHECKPOINT")
    if not checkpoint:
        raise UserError("brainlm_checkpoint needs a model: --overrides model_kwargs.checkpoint=PATH "
                        "(or BRAINLM_CHECKPOINT=PATH)")
    model = load_model(checkpoint, trust_unverified=trust_unverified).eval()
    return BrainmarksTransform(model.window_length, normalization), BrainmarksModel(model)

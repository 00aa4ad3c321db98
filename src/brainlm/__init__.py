"""BrainLM: a masked-autoencoder foundation model for fMRI parcel time series."""

from brainlm.checkpoint import load_pretrained, save_pretrained
from brainlm.hub import open_model, resolve_checkpoint
from brainlm.model import (
    PRESETS,
    BrainLMConfig,
    BrainLMForPretraining,
    BrainLMOutput,
    brainlm_13m,
    brainlm_111m,
    brainlm_650m,
    brainlm_tiny,
)

from brainlm.vitmae import (  # transformers itself is imported only when a ViT-MAE is built or loaded
    BrainLMViTMAE,
    is_vitmae_checkpoint,
    load_vitmae,
    vitmae_111m_config,
    vitmae_650m_config,
)

__version__ = "0.1.0"

# Loaded on first use: scikit-learn is slow to import.
_LAZY = {"BrainLMEmbedder": "brainlm.sklearn"}

__all__ = [
    "open_model",
    "load_pretrained",
    "save_pretrained",
    "resolve_checkpoint",
    "BrainLMConfig",
    "BrainLMForPretraining",
    "BrainLMOutput",
    "PRESETS",
    "brainlm_13m",
    "brainlm_111m",
    "brainlm_650m",
    "brainlm_tiny",
    "BrainLMViTMAE",
    "is_vitmae_checkpoint",
    "load_vitmae",
    "vitmae_111m_config",
    "vitmae_650m_config",
    *_LAZY,
]


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'brainlm' has no attribute {name!r}")

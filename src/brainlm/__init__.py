"""BrainLM: a masked-autoencoder foundation model for fMRI parcel time series."""

from brainlm.checkpoint import load_pretrained, save_pretrained
from brainlm.hub import resolve_checkpoint
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

__version__ = "0.1.0"

# Loaded on first use: these pull in transformers or scikit-learn, which are slow to import.
_LAZY = {
    "BrainLMEmbedder": "brainlm.sklearn",
    "BrainLMViTMAE": "brainlm.vitmae",
    "is_vitmae_checkpoint": "brainlm.vitmae",
    "load_vitmae": "brainlm.vitmae",
    "vitmae_111m_config": "brainlm.vitmae",
    "vitmae_650m_config": "brainlm.vitmae",
}

__all__ = [
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
    *_LAZY,
]


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'brainlm' has no attribute {name!r}")

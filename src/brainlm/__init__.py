"""BrainLM: a masked-autoencoder foundation model for fMRI parcel time series.

Every name below is imported on first use (``from brainlm import BrainLMConfig`` works as
usual): importing the package itself costs nothing, so the command line answers Ctrl-C, bad
flags and ``--help`` at once instead of after torch has loaded.
"""

__version__ = "0.1.0"

# name -> the module that defines it
_LAZY = {
    "load_pretrained": "brainlm.checkpoint",
    "save_pretrained": "brainlm.checkpoint",
    "open_model": "brainlm.hub",
    "resolve_checkpoint": "brainlm.hub",
    **dict.fromkeys(["PRESETS", "BrainLMConfig", "BrainLMForPretraining", "BrainLMOutput", "brainlm_13m",
                     "brainlm_111m", "brainlm_650m", "brainlm_tiny"], "brainlm.model"),
    # transformers itself is imported only when a ViT-MAE is built or loaded
    **dict.fromkeys(["BrainLMViTMAE", "is_vitmae_checkpoint", "load_vitmae", "vitmae_111m_config",
                     "vitmae_650m_config"], "brainlm.vitmae"),
    "BrainLMEmbedder": "brainlm.sklearn",  # scikit-learn is slow to import
}

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
    "BrainLMEmbedder",
]


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'brainlm' has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *_LAZY])

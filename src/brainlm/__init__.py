"""BrainLM: a masked-autoencoder foundation model for fMRI parcel time series."""

__version__ = "0.1.0"

# Re-exported lazily so that `import brainlm` (and the CLI's --help) stays light.
_LAZY = {
    "BrainLMViTMAE": "brainlm.vitmae",
    "is_vitmae_checkpoint": "brainlm.vitmae",
    "load_vitmae": "brainlm.vitmae",
    "vitmae_111m_config": "brainlm.vitmae",
    "vitmae_650m_config": "brainlm.vitmae",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'brainlm' has no attribute {name!r}")

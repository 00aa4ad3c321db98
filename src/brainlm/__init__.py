"""BrainLM: a masked-autoencoder foundation model for fMRI parcel time series."""

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

__all__ = [
    "BrainLMConfig",
    "BrainLMForPretraining",
    "BrainLMOutput",
    "PRESETS",
    "brainlm_13m",
    "brainlm_111m",
    "brainlm_650m",
    "brainlm_tiny",
]

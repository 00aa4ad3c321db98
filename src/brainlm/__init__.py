"""BrainLM: a masked-autoencoder foundation model for fMRI parcel time series."""

__version__ = "0.1.0"

"""Using a trained model: embeddings, reconstruction, forecasting, probes, fine-tuning, fingerprinting.

Public API::

    load_model(path_or_id)                       our / original / ViT-MAE / run / fine-tuned folders
    open_recordings(store_or_files, split, coords) -> Recordings
    embed(model, data, pooling=..., windows=...) -> Embeddings;  write_embeddings / read_embeddings
    embed_windows(model, (B, R, T), (R, 3), pooling) -> (B, D) | (B, R, D);  cls_attention -> (B, R, P)
    reconstruct_recording(model, (T, R), (R, 3), mask_ratio) -> Reconstruction (true, pred, r2, baselines)
    forecast_windows(model, (B, R, T), (R, 3), k) -> (B, R, k);  forecast_recordings(...) -> ForecastResult
    probe(model, data, target) / run_probes(X, y, groups) -> ProbeResult (with the connectivity ladder)

Every command scores the model next to the baseline ladder of :mod:`brainlm.evaluate.baselines`,
fitted on the store's train split when there is one; the model kinds share one interface
(``model.embed``, ``model.reconstruct``, ``model.forecast``), so nothing here asks which kind it has.
    finetune(model, store, target, FinetuneConfig(...)) -> FinetuneResult;  load_finetuned(folder)
    fingerprint(model, data) -> (summary, matches);  identify(first, second)
"""

from brainlm.io import Embeddings, read_embeddings, write_embeddings

from .embed import (
    POOLINGS,
    WINDOW_MODES,
    cls_attention,
    embed,
    embed_recordings,
    embed_windows,
    window_starts,
)
from .finetune import (
    BrainLMFinetuner,
    FinetuneConfig,
    FinetuneResult,
    finetune,
    load_finetuned,
    save_finetuned,
)
from .fingerprint import fingerprint, identify
from .loading import (
    Recordings,
    check_layout,
    check_regions,
    Initial,
    load_initial,
    load_model,
    open_recordings,
    resolve_model_folder,
)
from .plots import plot_fingerprint, plot_forecast, plot_reconstruction
from .probe import (
    PROBES,
    ProbeResult,
    align_targets,
    fc_features,
    load_targets,
    probe,
    run_probes,
)
from .reconstruct import (
    ForecastResult,
    Reconstruction,
    forecast_recordings,
    forecast_windows,
    reconstruct_recording,
    reconstruct_recordings,
)
from .report import (
    run_embed,
    run_finetune,
    run_fingerprint,
    run_forecast,
    run_probe,
    run_reconstruct,
)

__all__ = [
    "POOLINGS", "WINDOW_MODES", "Embeddings", "cls_attention", "embed", "embed_recordings", "embed_windows",
    "read_embeddings", "window_starts", "write_embeddings",
    "BrainLMFinetuner", "FinetuneConfig", "FinetuneResult", "finetune", "load_finetuned", "save_finetuned",
    "fingerprint", "identify",
    "Recordings", "check_layout", "check_regions", "load_model", "load_initial", "Initial", "open_recordings", "resolve_model_folder",
    "plot_fingerprint", "plot_forecast", "plot_reconstruction",
    "run_embed", "run_reconstruct", "run_forecast", "run_probe", "run_finetune", "run_fingerprint",
    "PROBES", "ProbeResult", "align_targets", "fc_features", "load_targets", "probe",
    "run_probes",
    "ForecastResult", "Reconstruction", "forecast_recordings", "forecast_windows", "reconstruct_recording",
    "reconstruct_recordings",
]

"""Per-region normalisation and temporal resampling, scikit-learn style.

``Normalizer.fit`` sees the training recordings only; its fitted statistics are saved with the
store (``state_dict``) and re-applied unchanged to validation, test and new data.

Departure from the original BrainLM code, on purpose: its "Voxelwise RobustScaler" computes
``x - median / IQR`` (operator precedence), which only shifts the data. ``"robust"`` here is
``(x - median) / IQR``. The original expression stays available as ``"original_robust"`` to
reproduce the released datasets. The original divides by constants computed elsewhere
(global std 41.44, 99th percentile 111.13); here those statistics are fitted on the training
split.

``"brainmarks-brainlm"`` gives exactly the input that Brainmarks' BrainLM transform
(``brainmarks.models.brainlm.BrainLMTransform``, brainmarks 0.1.1) hands the released models,
in our units: per-region ``(x - median) / (IQR + 1e-6)`` with the median and IQR of every
training timepoint pooled (no reservoir sample, no per-recording mean removed), then, when the
TR differs from 0.735 s by 0.1 s or more, linear interpolation to 0.735 s (``torch``'s
``interpolate(mode="linear")``). Brainmarks then divides by 5.6430855 and reorders the regions
by Y for the ViT-MAE models; :class:`brainlm.vitmae.BrainLMViTMAE` does both itself, so the
stored values are what it must be handed.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Iterable

import numpy as np

from brainlm.errors import UserError

__all__ = ["Normalizer", "TemporalResampler", "NORMALIZATIONS", "resample_tr", "resample_linear", "BRAINMARKS_TR"]

# Brainmarks' BrainLM transform: the TR the released models expect, the TR difference below
# which it leaves a recording as it is, and the epsilon added to the IQR.
BRAINMARKS_TR = 0.735
BRAINMARKS_TR_TOLERANCE = 0.1
BRAINMARKS_IQR_EPS = 1e-6

# method -> (needs cohort statistics, one-line description). The table in docs/store.md
# mirrors this.
NORMALIZATIONS = {
    "robust": (True, "subtract each recording's region mean, then (x - median) / IQR per region, cohort statistics"),
    "robust_recording": (False, "(x - median) / IQR per region, statistics of the recording itself"),
    "zscore": (False, "(x - mean) / std per region, statistics of the recording itself"),
    "subtract_mean": (False, "subtract each region's mean (original Subtract_Mean)"),
    "subtract_mean_global_std": (True, "subtract region means, divide by the pooled cohort std (original ..._Global_STD)"),
    "subtract_mean_global_99th": (True, "subtract region means, divide by the cohort 99th percentile (original ..._Global_99thPercent)"),
    "original_robust": (True, "x - mean - median / IQR, the original Voxelwise_RobustScaler expression, kept for compatibility"),
    "all_patient_all_voxel": (True, "(x - min) / (max - min), one cohort min and max (original All_Patient_All_Voxel)"),
    "per_patient_all_voxel": (False, "(x - min) / (max - min) over the whole recording (original Per_Patient_All_Voxel)"),
    "per_patient_per_voxel": (False, "(x - min) / (max - min) per region of the recording (original Per_Patient_Per_Voxel)"),
    "per_voxel_all_patient": (True, "(x - min) / (max - min) per region, cohort min and max (original Per_Voxel_All_Patient)"),
    "brainmarks-brainlm": (True, "(x - median) / (IQR + 1e-6) per region over every training timepoint, then linear "
                           "resampling to TR 0.735 s: Brainmarks' BrainLM transform before its division by 5.643"),
    "none": (False, "values stored as given"),
}

_CENTRED = {"robust", "subtract_mean_global_std", "subtract_mean_global_99th", "original_robust"}


def _safe(scale: np.ndarray) -> np.ndarray:
    # Constant regions are rejected before normalisation; this only guards degenerate cohorts.
    return np.where(scale > 0, scale, 1.0)


class _RowReservoir:
    """A uniform random sample of at most ``capacity`` rows from a stream of ``(T, R)`` arrays.

    Each row gets a random key and the rows with the smallest keys are kept, so memory stays
    at ``capacity`` rows whatever the cohort size.
    """

    def __init__(self, capacity: int, rng: np.random.Generator):
        self.capacity, self.rng = capacity, rng
        self.keys = np.empty(0)
        self.buffer = None
        self.filled = 0

    def add(self, x: np.ndarray) -> None:
        if self.buffer is None:
            self.buffer = np.empty((min(self.capacity, 4096), x.shape[1]), np.float32)
            self.keys = np.full(len(self.buffer), np.inf)
        new_keys = self.rng.random(len(x))
        free = self.capacity - self.filled
        if free > 0:
            n = min(free, len(x))
            if self.filled + n > len(self.buffer):  # grow geometrically up to capacity
                size = min(self.capacity, max(2 * len(self.buffer), self.filled + n))
                self.buffer = np.resize(self.buffer, (size, self.buffer.shape[1]))
                self.keys = np.concatenate([self.keys, np.full(size - len(self.keys), np.inf)])
            self.buffer[self.filled:self.filled + n] = x[:n]
            self.keys[self.filled:self.filled + n] = new_keys[:n]
            self.filled += n
            x, new_keys = x[n:], new_keys[n:]
        if len(x) == 0:
            return
        # Candidates beat the current largest kept key; they replace the largest kept keys.
        cand = np.flatnonzero(new_keys < self.keys.max())
        if len(cand) == 0:
            return
        merged = np.concatenate([self.keys, new_keys[cand]])
        keep = np.argpartition(merged, self.capacity - 1)[: self.capacity]
        out_slots = np.setdiff1d(np.arange(self.capacity), keep[keep < self.capacity])
        incoming = cand[keep[keep >= self.capacity] - self.capacity]
        self.buffer[out_slots] = x[incoming]
        self.keys[out_slots] = new_keys[incoming]

    def rows(self) -> np.ndarray:
        return self.buffer[: self.filled] if self.buffer is not None else np.empty((0, 0))


def _brainmarks_statistics(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The median and ``IQR + 1e-6`` per region of every training timepoint, ``(T, R)`` float32,
    computed as Brainmarks' BrainLM transform computes them: ``torch.quantile`` in float32 (numpy's
    float64 quantiles differ in the last bits, and the normalised values by up to 2e-5)."""
    import torch

    pooled = torch.from_numpy(np.ascontiguousarray(rows, dtype=np.float32))
    q1, median, q3 = torch.quantile(pooled, torch.tensor([0.25, 0.5, 0.75], dtype=pooled.dtype), dim=0)
    return median.numpy(), ((q3 - q1) + BRAINMARKS_IQR_EPS).numpy()


class Normalizer:
    """Per-region normalisation of ``(T, R)`` recordings.

    Args:
        method: one of ``NORMALIZATIONS`` (default ``"robust"``).
        max_fit_rows: cohort statistics are computed from at most this many timepoints
            (rows), drawn uniformly from all training recordings (exact below it), so fitting
            a large cohort needs bounded memory.
        seed: seed of that draw.

    Fitted attributes (cohort methods only): ``center_`` and ``scale_`` (``(R,)`` or scalar),
    ``num_fit_recordings_``.
    """

    def __init__(self, method: str = "robust", *, max_fit_rows: int = 100_000, seed: int = 0):
        if method not in NORMALIZATIONS:
            raise UserError(f"unknown normalisation {method!r}; choose one of {', '.join(NORMALIZATIONS)}")
        self.method = method
        self.max_fit_rows = max_fit_rows
        self.seed = seed

    @property
    def needs_fit(self) -> bool:
        return NORMALIZATIONS[self.method][0]

    def fit(self, recordings: Iterable[np.ndarray]) -> "Normalizer":
        """Learn cohort statistics from training recordings.

        Args:
            recordings: iterable of ``(T, R)`` arrays, consumed once (may be a generator).
        """
        rng = np.random.default_rng(self.seed)
        sample = _RowReservoir(self.max_fit_rows, rng)
        every_row: list[np.ndarray] = []  # brainmarks-brainlm: Brainmarks pools every timepoint
        lo = hi = None
        count = 0
        for x in recordings:
            x = np.asarray(x, np.float64)
            count += 1
            lo = x.min(0) if lo is None else np.minimum(lo, x.min(0))
            hi = x.max(0) if hi is None else np.maximum(hi, x.max(0))
            if self.method == "brainmarks-brainlm":
                every_row.append(x.astype(np.float32))
            elif self.needs_fit:
                sample.add(x - x.mean(0) if self.method in _CENTRED else x)
        if count == 0:
            raise UserError("cannot fit a normaliser on zero recordings")
        self.num_fit_recordings_ = count
        if not self.needs_fit:
            return self
        m = self.method
        if m == "brainmarks-brainlm":
            self.center_, self.scale_ = _brainmarks_statistics(np.concatenate(every_row))
            return self
        rows = sample.rows().astype(np.float64)
        if m in {"robust", "original_robust"}:
            q25, q50, q75 = np.percentile(rows, [25, 50, 75], axis=0)
            self.center_, self.scale_ = q50, _safe(q75 - q25)
        elif m == "subtract_mean_global_std":
            self.center_, self.scale_ = np.zeros(rows.shape[1]), _safe(np.array(rows.std()))
        elif m == "subtract_mean_global_99th":
            self.center_, self.scale_ = np.zeros(rows.shape[1]), _safe(np.array(np.percentile(rows, 99)))
        elif m == "all_patient_all_voxel":
            self.center_, self.scale_ = np.array(lo.min()), _safe(np.array(hi.max() - lo.min()))
        elif m == "per_voxel_all_patient":
            self.center_, self.scale_ = lo, _safe(hi - lo)
        return self

    def output_tr(self, tr: float) -> float:
        """The TR of what :meth:`transform` returns for a recording at ``tr`` seconds."""
        if self.method == "brainmarks-brainlm" and abs(tr - BRAINMARKS_TR) >= BRAINMARKS_TR_TOLERANCE:
            return BRAINMARKS_TR
        return tr

    def transform(self, x: np.ndarray, tr: float | None = None) -> np.ndarray:
        """Normalise one recording: ``(T, R)`` -> ``(T, R)`` float32.

        Args:
            tr: the recording's TR in seconds; ``brainmarks-brainlm`` needs it (it resamples to
                0.735 s, which changes T, see :meth:`output_tr`), the other methods ignore it.
        """
        m = self.method
        x = np.asarray(x, np.float64)
        if self.needs_fit and not hasattr(self, "scale_"):
            raise RuntimeError(f"normaliser {m!r} needs fitted cohort statistics: call fit() first")
        if m == "brainmarks-brainlm":
            if tr is None or not np.isfinite(tr):
                raise UserError("the brainmarks-brainlm normalisation resamples to TR 0.735 s and needs each "
                                "recording's TR (pass --tr for inputs that do not carry one)")
            # in float32 throughout, operation for operation as Brainmarks (so the values are equal)
            x = (x.astype(np.float32) - np.float32(self.center_)) / np.float32(self.scale_)
            return resample_linear(x, tr, BRAINMARKS_TR) if self.output_tr(tr) != tr else x
        if m in _CENTRED or m == "subtract_mean":
            x = x - x.mean(0)
        if m == "robust" or m in {"subtract_mean_global_std", "subtract_mean_global_99th"}:
            x = (x - self.center_) / self.scale_
        elif m == "original_robust":
            x = x - self.center_ / self.scale_
        elif m in {"all_patient_all_voxel", "per_voxel_all_patient"}:
            x = (x - self.center_) / self.scale_
        elif m == "robust_recording":
            q25, q50, q75 = np.percentile(x, [25, 50, 75], axis=0)
            x = (x - q50) / _safe(q75 - q25)
        elif m == "zscore":
            x = (x - x.mean(0)) / _safe(x.std(0))
        elif m == "per_patient_all_voxel":
            x = (x - x.min()) / _safe(np.array(x.max() - x.min()))
        elif m == "per_patient_per_voxel":
            x = (x - x.min(0)) / _safe(x.max(0) - x.min(0))
        return x.astype(np.float32)

    def state_dict(self) -> dict:
        """JSON-ready parameters and fitted statistics."""
        state = {"method": self.method, "max_fit_rows": self.max_fit_rows, "seed": self.seed}
        if hasattr(self, "scale_"):
            state["center"] = np.asarray(self.center_, np.float64).tolist()
            state["scale"] = np.asarray(self.scale_, np.float64).tolist()
        if hasattr(self, "num_fit_recordings_"):
            state["num_fit_recordings"] = self.num_fit_recordings_
        return state

    @classmethod
    def from_state(cls, state: dict) -> "Normalizer":
        """Rebuild a fitted normaliser from ``state_dict()``."""
        norm = cls(state["method"], max_fit_rows=state.get("max_fit_rows", 100_000), seed=state.get("seed", 0))
        if "scale" in state:
            norm.center_, norm.scale_ = np.asarray(state["center"]), np.asarray(state["scale"])
        if "num_fit_recordings" in state:
            norm.num_fit_recordings_ = state["num_fit_recordings"]
        return norm

    def __repr__(self) -> str:
        return f"Normalizer(method={self.method!r})"


def resample_tr(x: np.ndarray, tr: float, target_tr: float) -> np.ndarray:
    """Resample ``(T, R)`` from repetition time ``tr`` to ``target_tr`` (seconds).

    Polyphase filtering (``scipy.signal.resample_poly``) with the rate ratio approximated by a
    fraction with denominator at most 100 (0.72 s -> 0.735 s is exactly 48/49).

    Returns:
        ``(T', R)`` float32, ``T' ~= T * tr / target_tr``.
    """
    from scipy.signal import resample_poly

    if not (np.isfinite(tr) and tr > 0 and target_tr > 0):
        raise UserError(f"resampling needs a known positive TR, got tr={tr}, target_tr={target_tr}")
    ratio = Fraction(tr / target_tr).limit_denominator(100)
    if ratio == 1:
        return np.asarray(x, np.float32)
    # Pad with edge values so the filter does not pull the ends towards zero.
    pad = 10 * max(ratio.numerator, ratio.denominator)
    xp = np.pad(np.asarray(x, np.float64), ((pad, pad), (0, 0)), mode="reflect")
    y = resample_poly(xp, ratio.numerator, ratio.denominator, axis=0)
    start = pad * ratio.numerator // ratio.denominator
    length = int(round(len(x) * ratio.numerator / ratio.denominator))
    return y[start:start + length].astype(np.float32)


def resample_linear(x: np.ndarray, tr: float, target_tr: float) -> np.ndarray:
    """Resample ``(T, R)`` to ``target_tr`` by linear interpolation: ``torch``'s
    ``interpolate(mode="linear", align_corners=False)`` to ``round(T * tr / target_tr)`` points, in
    float32, the call Brainmarks' BrainLM transform resamples with (so the values are the same).

    Output point ``i`` reads the input at ``(i + 0.5) * T / T' - 0.5`` (clamped at 0) and
    interpolates between its two neighbours.

    Returns:
        ``(T', R)`` float32.
    """
    import torch
    import torch.nn.functional as F

    x = np.asarray(x, np.float32)
    size = int(round(float(tr) * len(x) / float(target_tr)))
    if size < 1:
        raise UserError(f"resampling {len(x)} timepoints from TR {tr} to {target_tr} s leaves none")
    out = F.interpolate(torch.from_numpy(np.ascontiguousarray(x.T))[None], size=size, mode="linear")  # (1, R, T')
    return out[0].T.numpy()  # (T', R) in torch's layout, as Brainmarks' resampled recording


class TemporalResampler:
    """Resample recordings to a target TR (scikit-learn style; nothing to fit).

    Args:
        target_tr: seconds; the released BrainLM models expect about 0.72-0.735 s.
    """

    def __init__(self, target_tr: float = 0.735):
        self.target_tr = target_tr

    def fit(self, recordings=None) -> "TemporalResampler":
        return self

    def transform(self, x: np.ndarray, tr: float) -> np.ndarray:
        """``(T, R)`` at ``tr`` seconds -> ``(T', R)`` float32 at ``target_tr``."""
        return resample_tr(x, tr, self.target_tr)

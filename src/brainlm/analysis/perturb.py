"""``brainlm perturb``: in-silico perturbation. A model fine-tuned to forecast is used as a
simulator: perturb the visible past of some regions, forecast, and map how every region's
forecast changes; beside the ridge VAR, whose response to the same perturbation is its
impulse (or step) response.

For every held-out window (``--split``, default ``held-out``: every subject outside the train
split, that is the validation and test splits together, so that the figures rest on as many
subjects as the store keeps apart; at most ``--max-windows``, spread evenly over the
recordings) the last ``k`` timepoints are hidden and forecast twice, from the window as it is
and from the window with a perturbation added to the visible past of the chosen regions
(``--regions`` by index or name, or every region of ``--network``):

- ``impulse``: ``amplitude`` standard deviations at the last visible timepoint;
- ``step``: ``amplitude`` standard deviations over the last ``--duration`` visible timepoints
  (default ``k``);

where a region's standard deviation is that of its own visible past in that window, and
``0 < |amplitude| <= 100`` (a larger push tells nothing about the model and overflows it). The
**response** is the perturbed forecast minus the unperturbed one, per region and forecast
step, averaged over the windows (the store's units). The rival is the ridge VAR(p) of the
baseline ladder (:class:`brainlm.evaluate.baselines.ForecastBaselines`), fitted on the train
split and given the same windows and perturbations; being linear, its response is its impulse
response. The two responses are compared over regions and steps (all regions, and the
unperturbed ones only: the spread) by their **correlation** (the shape) and by their
**amplitude ratio**, the root mean square of the model's mean response over that of the VAR's
(the size: a model whose response is a thousandth of the VAR's can still correlate with it),
both with 95% intervals from resampling subjects. A model that does not respond at all has no
correlation, and the report says so in words. A simulator is only as credible as its
forecasts, so the verdict compares the two simulators' forecast R^2 on the unperturbed
held-out windows. Windows of the train split (``--split train``) are never called held out:
the VAR was fitted on them.

The model must have been fine-tuned to forecast, and its run must say so: the
``train_config.json`` of its checkpoint (or of the run that holds its ``best/``) with
``train_mask_scheme`` ``forecast`` (what :func:`brainlm.train.forecast_finetune`, the demo's
``forecast_run`` and cross-validation's ``--forecast-finetune`` write). Any other model is
refused with one line naming it, because a pretrained model's "forecast" of hidden timepoints
is a masked reconstruction and its response to a perturbation is not that of a simulator;
``--allow-untrained-forecaster`` runs it anyway (a model fine-tuned elsewhere), and the report
then says that the run does not record forecasting training.

For the released ViT-MAE models, ``predict_last`` hides whole patch columns, up to a patch
less one timepoint before ``T - k``; an impulse there is hidden from the encoder too, so use
``--kind step`` with a ``--duration`` longer than a patch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from brainlm.data.maps import map_outputs
from brainlm.downstream.embed import recording_windows
from brainlm.errors import UserError
from brainlm.evaluate.baselines import ForecastBaselines
from brainlm.evaluate.protocol import SubjectBootstrap
from brainlm.evaluate.verdict import compare
from brainlm.figures import pyplot
from brainlm.options import at_least, option, positive
from brainlm.progress import progress as progress_bar

from .common import Analysis, AnalysisOptions, open_analysis
from .plots import glass_brains

__all__ = ["PerturbOptions", "Perturbation", "PerturbationResult", "perturb_windows", "response_agreement",
           "select_regions", "forecast_training", "run_perturb"]

KINDS = ("impulse", "step")
HELD_OUT = "held-out"  # every recording of a subject outside the train split
MAX_AMPLITUDE = 100.0  # standard deviations


def _amplitude(value) -> str | None:
    if not isinstance(value, (int, float)) or not math.isfinite(value) or not 0 < abs(value) <= MAX_AMPLITUDE:
        return f"must be a number with 0 < |amplitude| <= {MAX_AMPLITUDE:g} standard deviations, got {value!r}"
    return None


@dataclass(kw_only=True)
class PerturbOptions(AnalysisOptions):
    """``brainlm perturb``: in-silico perturbation with a model fine-tuned to forecast, beside the ridge VAR's response."""

    split: str | None = option(HELD_OUT, "windows perturbed: held-out (every subject outside the train split: "
                               "validation and test), or one split (train, validation, test)")
    regions: tuple[str, ...] = option((), "regions to perturb: indices (0-based) or names", group="perturbation")
    network: str | None = option(None, "or every region of this network (a name from --networks)", group="perturbation")
    kind: str = option("impulse", "impulse (at the last visible timepoint) or step (over the last --duration visible "
                       "timepoints)", choices=KINDS, group="perturbation")
    amplitude: float = option(2.0, "size in standard deviations of each region's visible past (0 < |a| <= "
                              f"{MAX_AMPLITUDE:g})", check=_amplitude, group="perturbation")
    duration: int | None = option(None, "timepoints a step lasts (default: the forecast horizon)",
                                  check=at_least(1, optional=True), group="perturbation")
    last: int | None = option(None, "timepoints to forecast (default: one patch of a BrainLM model, else 20)",
                              aliases=("-k",), check=at_least(1, optional=True), group="perturbation")
    ar_order: int = option(3, "p of the ridge VAR(p), fitted on the train split", check=positive)
    max_windows: int = option(512, "held-out windows at most, spread evenly over the recordings", check=positive)
    allow_untrained_forecaster: bool = option(False, "run a model whose run does not record forecasting training "
                                              "(train_mask_scheme forecast), e.g. one fine-tuned elsewhere")


@dataclass(frozen=True)
class Perturbation:
    """What is added to the visible past: ``amplitude`` SDs to ``regions``, for ``duration`` timepoints
    ending at the last visible one (1 for an impulse)."""

    regions: np.ndarray
    amplitude: float
    duration: int = 1

    def apply(self, context: np.ndarray) -> np.ndarray:
        """``(B, R, V)`` visible past -> the perturbed copy."""
        if self.duration > context.shape[-1]:
            raise UserError(f"--duration {self.duration} is longer than the {context.shape[-1]} visible timepoints")
        sd = context[:, self.regions].std(-1, keepdims=True)  # (B, S, 1)
        out = np.array(context, dtype=np.float32, copy=True)
        out[:, self.regions, -self.duration:] += self.amplitude * sd
        return out


@dataclass
class PerturbationResult:
    """Forecasts of the held-out windows with and without the perturbation.

    Attributes:
        model_response, var_response: ``(N, R, k)`` perturbed minus unperturbed forecast.
        model_forecast, var_forecast, true: ``(N, R, k)`` unperturbed forecasts and the truth.
        subjects: ``(N,)`` subject of each window.
    """

    model_response: np.ndarray
    var_response: np.ndarray
    model_forecast: np.ndarray
    var_forecast: np.ndarray
    true: np.ndarray
    subjects: np.ndarray
    initial_forecast: np.ndarray | None = None  # (N, R, k) of the same model at initialisation

    def r2(self, which: str):
        """``r2(idx)``: pooled forecast R^2 (``1 - SSE / sum(y^2)``) of ``"model"``, ``"var"`` or
        ``"initial"`` on windows ``idx``."""
        pred = {"model": self.model_forecast, "var": self.var_forecast, "initial": self.initial_forecast}[which]
        sse = ((self.true - pred) ** 2).sum((1, 2))
        syy = (self.true ** 2).sum((1, 2))
        return lambda idx: float(1 - sse[idx].sum() / syy[idx].sum())


def perturb_windows(model, baselines: ForecastBaselines, windows: np.ndarray, coords: np.ndarray, subjects,
                    perturbation: Perturbation, k: int, *, batch_size: int = 32, dtype=None,
                    progress: bool = False) -> PerturbationResult:
    """Forecast ``(N, R, T)`` windows' last ``k`` timepoints with and without ``perturbation``, by the
    model and by the fitted ridge VAR (module docstring)."""
    import torch

    from brainlm.downstream import forecast_windows

    dtype = dtype or torch.float32
    T = windows.shape[-1]
    parts: dict[str, list] = {key: [] for key in ("m0", "m1", "v0", "v1")}
    for start in progress_bar(range(0, len(windows), batch_size), enabled=progress, desc="perturb", unit="batch"):
        x = np.asarray(windows[start : start + batch_size], np.float32)  # (B, R, T)
        context = x[..., : T - k]
        perturbed = np.concatenate([perturbation.apply(context), x[..., T - k :]], axis=-1)
        parts["m0"].append(forecast_windows(model, x, coords, k, dtype))
        parts["m1"].append(forecast_windows(model, perturbed, coords, k, dtype))
        parts["v0"].append(baselines.predict(context, k)["var"])
        parts["v1"].append(baselines.predict(perturbed[..., : T - k], k)["var"])
    m0, m1, v0, v1 = (np.concatenate(parts[key]).astype(np.float64) for key in ("m0", "m1", "v0", "v1"))
    return PerturbationResult(m1 - m0, v1 - v0, m0, v0, np.asarray(windows[..., T - k :], np.float64),
                              np.asarray(subjects).astype(str))


def response_agreement(result: PerturbationResult, regions: np.ndarray, bootstrap: int = 1000,
                       seed: int = 0) -> pd.DataFrame:
    """How the mean model and VAR responses agree over (region, step) cells: every region, and the
    unperturbed regions only; 95% intervals from resampling subjects.

    Returns:
        One row per set of cells: ``correlation`` (NaN where either response is constant over
        the cells) and ``amplitude_ratio`` (RMS of the model's mean response over the VAR's),
        each with ``*_ci_low`` / ``*_ci_high``.
    """
    others = np.setdiff1d(np.arange(result.model_response.shape[1]), regions)

    def means(idx, cells):
        return result.model_response[idx][:, cells].mean(0).ravel(), result.var_response[idx][:, cells].mean(0).ravel()

    def correlation(cells: np.ndarray):
        def stat(idx):
            m, v = means(idx, cells)
            return float(np.corrcoef(m, v)[0, 1]) if m.std() > 0 and v.std() > 0 else float("nan")

        return stat

    def amplitude_ratio(cells: np.ndarray):
        def stat(idx):
            m, v = means(idx, cells)
            var_rms = float(np.sqrt((v ** 2).mean()))
            return float(np.sqrt((m ** 2).mean())) / var_rms if var_rms > 0 else float("nan")

        return stat

    boot = SubjectBootstrap(result.subjects, bootstrap, seed)
    everyone = np.arange(len(result.subjects))
    rows = []
    for label, cells in (("every region", np.arange(result.model_response.shape[1])), ("unperturbed regions", others)):
        if not len(cells):
            continue
        row = {"cells": label, "regions": len(cells)}
        for name, statistic in (("correlation", correlation(cells)), ("amplitude_ratio", amplitude_ratio(cells))):
            lo, hi = boot.ci(statistic) if len(boot) else (np.nan, np.nan)
            row.update({name: statistic(everyone), f"{name}_ci_low": lo, f"{name}_ci_high": hi})
        rows.append(row)
    return pd.DataFrame(rows)


def forecast_training(checkpoint: str) -> tuple[bool, str]:
    """Whether the run of a model folder records forecasting training, and how it reads.

    The record is the ``train_config.json`` of the checkpoint folder (``RUN/checkpoints/step_*``),
    or of the run when the folder is its ``best/`` (a run folder opens as one of the two).

    Returns:
        (``train_mask_scheme`` is ``forecast``, a description for messages and reports).
    """
    from brainlm.hub import resolve_checkpoint, resolve_model_folder
    from brainlm.io import read_json

    folder = resolve_model_folder(resolve_checkpoint(checkpoint))
    record = next((f for f in (folder / "train_config.json", folder.parent / "train_config.json")
                   if f.is_file() and (f.parent == folder or folder.name == "best")), None)
    if record is None:
        return False, f"{folder} has no train_config.json recording how it was trained"
    settings = read_json(record, "training settings (train_config.json)")
    settings = settings if isinstance(settings, dict) else {}
    scheme = settings.get("train_mask_scheme")
    start = f", started from {settings['init_from']}" if settings.get("init_from") else ""
    if scheme == "forecast":
        return True, f"fine-tuned to forecast ({record}: train_mask_scheme forecast{start})"
    return False, f"{record} records train_mask_scheme {scheme!r}{start}, not forecast"


def select_regions(regions: tuple[str, ...], network: str | None, region_names, networks) -> np.ndarray:
    """Region indices from ``--regions`` (indices or names) or ``--network``.

    Raises:
        UserError: neither or both given, or a region or network the store does not have.
    """
    if bool(regions) == bool(network):
        raise UserError("give the regions to perturb: --regions (indices or names) or --network, one of the two")
    names = [str(n) for n in region_names]
    R = len(names)
    if network is not None:
        if network not in networks.names:
            raise UserError(f"--network {network!r} is not one of the networks ({', '.join(networks.names)})")
        return networks.members(network)
    chosen = []
    for r in regions:
        if r in names:
            chosen.append(names.index(r))
        elif r.lstrip("-").isdigit() and 0 <= int(r) < R:
            chosen.append(int(r))
        else:
            raise UserError(f"--regions {r}: the store has no such region ({R} regions: indices 0..{R - 1} or names "
                            f"such as {', '.join(names[:3])})")
    return np.unique(chosen)


def _forecasts(model, windows: np.ndarray, coords, k: int, batch_size: int, dtype) -> np.ndarray:
    """``(N, R, k)`` unperturbed forecasts of the last ``k`` timepoints of every window."""
    from brainlm.downstream import forecast_windows

    return np.concatenate([forecast_windows(model, np.asarray(windows[i : i + batch_size], np.float32), coords, k, dtype)
                           for i in range(0, len(windows), batch_size)]).astype(np.float64)


def _held_out_windows(a: Analysis, max_windows: int) -> tuple[np.ndarray, np.ndarray]:
    """Every whole window of the analysed recordings, thinned evenly to ``max_windows``: ``(N, R, T)``, subjects."""
    windows, subjects = [], []
    for m, ts in a.recordings:
        w = recording_windows(ts, a.window)
        windows.append(w)
        subjects += [m["subject_id"]] * len(w)
    X = np.concatenate(windows) if windows else np.zeros((0, a.store.num_regions, a.window), np.float32)
    if not len(X):
        raise UserError(f"no recording of {a.store.path} ({a.options.split}) holds a window of {a.window} timepoints")
    keep = np.unique(np.linspace(0, len(X) - 1, min(max_windows, len(X))).round().astype(int))
    return X[keep], np.asarray(subjects)[keep]


def run_perturb(options: PerturbOptions) -> dict:
    """Run ``brainlm perturb`` and write its report into ``options.out``; returns ``results.json``'s content.

    Raises:
        UserError: a model whose run does not record forecasting training (without
            ``allow_untrained_forecaster``), no held-out recordings, or forecasts that are not finite.
    """
    o = options
    trained, training = forecast_training(o.checkpoint)
    if not trained and not o.allow_untrained_forecaster:
        raise UserError(f"{o.checkpoint}: not a model fine-tuned to forecast ({training}); perturb needs one as its "
                        "simulator (a run with train_mask_scheme=forecast, as the demo's forecast_run), or pass "
                        "--allow-untrained-forecaster")
    outputs = ["perturb_response.csv", "perturb_agreement.csv", "perturb_map.png", "perturb_time.png",
               *map_outputs("perturb_map")]
    chosen: list[np.ndarray] = []

    def check(store, networks) -> None:
        chosen.append(select_regions(o.regions, o.network, store.region_names, networks))
        if "train" not in store.manifest["splits"] or not len(store.split_index("train")):
            raise UserError(f"{store.path}: no train split to fit the ridge VAR on")
        if o.split == HELD_OUT and not len(_held_out_rows(store)):
            raise UserError(f"{store.path}: every subject is in the train split; no held-out recordings to perturb "
                            "(--split)")

    with open_analysis(replace(o, split=None) if o.split == HELD_OUT else o, outputs, check=check) as a:
        from brainlm.downstream import open_recordings

        if o.split == HELD_OUT:
            held = set(_held_out_rows(a.store))
            a.options, a.recordings = o, a.recordings.rows(
                [i for i, m in enumerate(a.recordings.meta) if m["recording_id"] in held])
        regions = chosen[0]
        k = o.last or int(getattr(getattr(a.model, "config", None), "timepoint_patching_size", 20))
        if not 0 < k < a.window:
            raise UserError(f"--last {k} must be between 1 and the window {a.window} less one")
        duration = 1 if o.kind == "impulse" else (o.duration or k)
        perturbation = Perturbation(regions, o.amplitude, duration)
        baselines = ForecastBaselines(order=o.ar_order).fit(ts for _, ts in open_recordings(a.store, "train"))
        windows, subjects = _held_out_windows(a, o.max_windows)
        result = perturb_windows(a.model, baselines, windows, a.recordings.coords, subjects, perturbation, k,
                                 batch_size=o.batch_size, dtype=a.dtype, progress=o.progress)
        result.initial_forecast = _forecasts(a.initial.model, windows, a.recordings.coords, k, o.batch_size, a.dtype)
        report = a.report("In-silico perturbation")
        _write(a, report, result, perturbation, k, o, training if trained else
               f"not recorded as fine-tuned to forecast ({training}); run with --allow-untrained-forecaster")
        return report.finish()


def _held_out_rows(store) -> list[str]:
    """Recording IDs of every subject outside the train split."""
    rows = store.recordings
    train = set(rows.loc[rows["split"] == "train", "subject_id"].astype(str))
    return rows.loc[~rows["subject_id"].astype(str).isin(train), "recording_id"].astype(str).tolist()


def _which_windows(split: str | None) -> tuple[str, str]:
    """The windows perturbed, as the report says it, and where they come from: held out only when no
    subject of the train split is among them."""
    if split == HELD_OUT:
        return "held-out windows", "every subject outside the train split: validation and test"
    if split in ("validation", "test"):
        return "held-out windows", f"the {split} split"
    return ("windows of the train split" if split == "train" else "windows of every recording",
            "not held out: the ridge VAR was fitted on the train split")


def _estimate(value: float, low: float, high: float, number: str) -> str | None:
    """A value with its interval; None where it is not a number (the caller says why in words)."""
    if not np.isfinite(value):
        return None
    interval = f" [{low:{number}}, {high:{number}}]" if np.isfinite(low) and np.isfinite(high) else " (no interval)"
    return f"{value:{number}}{interval}"


def _agreement_text(row) -> str:
    r = _estimate(row.correlation, row.correlation_ci_low, row.correlation_ci_high, "+.2f")
    ratio = _estimate(row.amplitude_ratio, row.amplitude_ratio_ci_low, row.amplitude_ratio_ci_high, ".3g")
    return (f"{row.cells}: " + (f"r = {r}" if r else "no correlation (a response is constant over these cells)")
            + (f", amplitude {ratio} x the VAR's" if ratio else ", no amplitude ratio (the VAR does not respond)"))


def _write(a: Analysis, report, result: PerturbationResult, perturbation: Perturbation, k: int,
           o: PerturbOptions, training: str) -> None:
    names = a.store.region_names
    regions = perturbation.regions
    agreement = response_agreement(result, regions, o.bootstrap, o.seed)
    boot = SubjectBootstrap(result.subjects, o.bootstrap, o.seed)
    windows, source = _which_windows(o.split)
    num_subjects = len(set(result.subjects))
    # against the stronger of the VAR and the same model at initialisation (what fine-tuning started from)
    everyone = np.arange(len(result.subjects))
    against = "var" if result.initial_forecast is None or result.r2("var")(everyone) >= result.r2("initial")(everyone) \
        else "initial"
    rival = f"ridge VAR({o.ar_order})" if against == "var" else "the same model at initialisation"
    verdict = compare("BrainLM forecasting", rival, result.r2("model"), result.r2(against), boot,
                      len(result.subjects), metric=f"forecast R^2 of the unperturbed {windows}")
    initial_r2 = result.r2("initial")(everyone) if result.initial_forecast is not None else float("nan")
    model_mean, var_mean = result.model_response.mean(0), result.var_response.mean(0)  # (R, k)
    what = (f"{o.kind} of {o.amplitude:g} SD" + (f" over the last {perturbation.duration} visible timepoints"
                                                 if o.kind == "step" else " at the last visible timepoint")
            + f" in {', '.join(names[r] for r in regions[:6])}" + (f" and {len(regions) - 6} more" if len(regions) > 6
                                                                   else "")
            + (f" (network {o.network})" if o.network else ""))
    line = "; ".join(_agreement_text(row) for row in agreement.itertuples())
    report.say(f"perturb: {what}; {len(result.subjects)} {windows} ({source}) of {num_subjects} subjects; "
               f"response, model vs ridge VAR({o.ar_order}): {line}")
    report.verdict(verdict, f"on {len(result.subjects)} {windows}", say=True)
    per_network = pd.DataFrame({
        "network": list(a.networks.names),
        "model response (step 1)": [model_mean[a.networks.members(n), 0].mean() for n in a.networks.names],
        "VAR response (step 1)": [var_mean[a.networks.members(n), 0].mean() for n in a.networks.names],
        "model response (mean over steps)": [model_mean[a.networks.members(n)].mean() for n in a.networks.names],
        "VAR response (mean over steps)": [var_mean[a.networks.members(n)].mean() for n in a.networks.names]})
    report.section(
        "Response",
        f"The model: {training}.",
        f"{what}; the last {k} timepoints of {len(result.subjects)} {windows} ({source}), from {num_subjects} "
        f"subjects, forecast with and without it; the ridge VAR({o.ar_order}) fitted on the train split. Response: "
        "perturbed minus unperturbed forecast, mean over windows, in the store's units.",
        "Agreement of the two responses over (region, step) cells: the correlation (their shape) and the amplitude "
        "ratio (the root mean square of the model's response over the VAR's: their size); 95% intervals from "
        f"resampling the {num_subjects} subjects:",
        agreement,
        "Mean response per network:",
        per_network,
        f"Forecast R^2 of the unperturbed windows: the model {result.r2('model')(everyone):.3f}, ridge "
        f"VAR({o.ar_order}) {result.r2('var')(everyone):.3f}, the same model at initialisation {initial_r2:.3f} "
        f"({a.initial.kind}).",
        f"Verdict (which simulator forecasts the unperturbed data better): {verdict.line(f'on the {windows}')}.")
    report.tables["perturb_response.csv"] = pd.DataFrame(
        [{"region_index": r, "region": names[r], "network": a.networks.labels[r], "perturbed": r in set(regions),
          "step": s + 1, "model": model_mean[r, s], "var": var_mean[r, s]}
         for r in range(len(names)) for s in range(k)])
    report.tables["perturb_agreement.csv"] = agreement
    report.figure("perturb_map.png", "response of every region, model beside VAR",
                  lambda: glass_brains([(model_mean.mean(1), "BrainLM response (mean over steps)"),
                                        (var_mean.mean(1), f"ridge VAR({o.ar_order}) response")], a.recordings.coords,
                                       diverging=True), tight=False)
    report.region_map("perturb_map", {"model response": model_mean.mean(1), "VAR response": var_mean.mean(1)},
                      "response per region (mean over steps)", diverging=True)
    report.figure("perturb_time.png", "response over the forecast steps",
                  lambda: _time_figure(model_mean, var_mean, regions, names, o.ar_order))
    report.results.update(perturbation={"regions": [names[r] for r in regions], "kind": o.kind,
                                        "amplitude_sd": o.amplitude, "duration": perturbation.duration, "k": k},
                          model_training=training, held_out=o.split in (HELD_OUT, "validation", "test"),
                          windows=len(result.subjects), subjects=num_subjects, agreement=agreement.to_dict("records"),
                          verdict=verdict.to_dict(), per_network=per_network.to_dict("records"),
                          forecast_r2={"model": result.r2("model")(everyone), "var": result.r2("var")(everyone),
                                       "initial": initial_r2})


def _time_figure(model_mean: np.ndarray, var_mean: np.ndarray, regions: np.ndarray, names, order: int):
    steps = np.arange(1, model_mean.shape[1] + 1)
    others = np.setdiff1d(np.arange(len(names)), regions)
    top = others[np.argsort(-np.abs(var_mean[others]).sum(1))[:5]]
    fig, axes = pyplot().subplots(1, 2, figsize=(8, 2.8))
    axes[0].plot(steps, model_mean[regions].mean(0), "o-", color="tab:red", label="BrainLM")
    axes[0].plot(steps, var_mean[regions].mean(0), "s--", color="tab:blue", label=f"ridge VAR({order})")
    axes[0].set_title("perturbed regions (mean)", fontsize=9)
    axes[0].legend(fontsize=7, frameon=False)
    for i, r in enumerate(top):
        color = f"C{i + 2}"
        axes[1].plot(steps, model_mean[r], "o-", color=color, label=str(names[r]))
        axes[1].plot(steps, var_mean[r], "s--", color=color)
    axes[1].set_title("strongest VAR responses elsewhere (solid: BrainLM, dashed: VAR)", fontsize=8)
    axes[1].legend(fontsize=6, frameon=False)
    for ax in axes:
        ax.axhline(0, color="0.6", lw=0.7)
        ax.set_xlabel("forecast step")
    axes[0].set_ylabel("response")
    return fig

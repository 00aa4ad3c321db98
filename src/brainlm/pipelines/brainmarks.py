"""``brainlm benchmark MODEL STORE --protocol brainmarks``: Brainmarks' protocol beside the FC baseline.

Every feature set is scored by Brainmarks' logistic protocol (:mod:`brainlm.evaluate.brainmarks`)
on the same samples, splits and targets:

- the model's representations, as Brainmarks' BrainLM wrapper makes them: ``cls``, the CLS
  token averaged over the non-overlapping windows of a recording; ``patch``, every patch token
  of every window averaged;
- the connectivity ladder over each whole recording, first of all Pearson FC, computed as
  Brainmarks' ``connectome`` model does (the upper triangle of the correlation matrix, row by
  row, 0 for a flat region);
- precomputed feature tables (``--features NAME=FILE``: ``brainlm embed`` output or any table
  keyed by ``recording_id`` or ``subject_id``);
- with ``--heads``, the trained probe heads of :mod:`brainlm.downstream.heads` on the model's
  tokens (chosen on the validation split, scored on the test split).

Samples are the store's recordings. A store prepared from a Brainmarks dataset keeps
Brainmarks' splits and sample order (``brainmarks_split``, ``brainmarks_index``); any other
store uses its own splits, rows ordered by recording ID, so the result never depends on the
store's row order. Recordings shorter than the model's window are left out of every feature
set (Brainmarks pads them with their mean instead).

Outputs: ``report.md`` and ``report.html`` (Brainmarks' table form: fixed splits and the mean and standard
deviation over the random re-splits; then the verdict of the best model feature set against
the strongest baseline, on balanced accuracy, paired over Brainmarks' bootstrap of the test
split), ``eval_table.csv`` (every row of every feature set, as ``main_logistic`` writes them) and
``results.json``.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from brainlm.errors import InputError, UserError
from brainlm.evaluate.baselines import BASELINE_LABELS, CONNECTIVITY_FEATURES, connectivity_features
from brainlm.evaluate.brainmarks import (
    BINNINGS,
    BRAINMARKS_SEED,
    BRAINMARKS_TASKS,
    METRICS,
    LogisticProtocol,
    ProtocolResult,
    bootstrap_indices,
    brainmarks_bins,
    brainmarks_connectome,
    classification_scores,
    logistic_protocol,
    paired_comparison,
    summary_table,
)
from brainlm.evaluate.verdict import Verdict
from brainlm.io import output_folder, read_embeddings
from brainlm.report import Report
from brainlm.options import Options, at_least, option

from brainlm.downstream.heads import HEADS, HeadConfig, train_head

__all__ = ["BrainmarksOptions", "brainmarks_samples", "brainmarks_benchmark", "run_brainmarks_benchmark"]

_REPRESENTATIONS = {"cls": "cls", "patch": "mean"}  # Brainmarks' name -> our pooling


@dataclass(kw_only=True)
class BrainmarksOptions(Options):
    """The settings of ``brainlm benchmark --protocol brainmarks`` (docs/brainmarks.md)."""

    protocol: str = option("ladder", "ladder: our tasks against the baseline ladder; brainmarks: Brainmarks' "
                           "logistic protocol on the model, the FC baseline and --features", choices=("ladder", "brainmarks"),
                           group="Brainmarks protocol")
    representations: tuple[str, ...] = option(("cls",), "model representations: cls (CLS averaged over windows), "
                                              "patch (every patch token averaged)", choices=tuple(_REPRESENTATIONS),
                                              group="Brainmarks protocol")
    baselines: tuple[str, ...] = option(("fc",), "connectivity baselines: fc (Pearson, Brainmarks' connectome), "
                                        "fc_partial, fc_tangent, autocorr", choices=tuple(CONNECTIVITY_FEATURES),
                                        group="Brainmarks protocol")
    features: tuple[str, ...] = option((), "precomputed feature tables NAME=FILE (brainlm embed output, or keyed "
                                       "by recording_id / subject_id)", group="Brainmarks protocol")
    bins: str | None = option(None, "bin a continuous --target by a Brainmarks rule (" + ", ".join(BINNINGS) +
                              ") or a Brainmarks dataset's rule (e.g. aabc_age)", group="Brainmarks protocol")
    heads: tuple[str, ...] = option((), "also train probe heads on the model's tokens: " + ", ".join(HEADS),
                                    choices=HEADS, group="Brainmarks protocol")
    trials: int = option(100, "random stratified re-splits after the fixed splits (seed + trial)", check=at_least(0),
                         group="Brainmarks protocol")
    protocol_seed: int = option(BRAINMARKS_SEED, "seed of the folds, bootstrap and re-splits", group="Brainmarks protocol")
    engine: str = option("auto", "auto: brainmarks' own code for the tables when it is installed; brainlm: ours",
                         choices=("auto", "brainlm", "brainmarks"), group="Brainmarks protocol")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.protocol == "ladder":
            given = [f.name for f in dataclasses.fields(BrainmarksOptions)  # its own fields, also in a subclass
                     if f.name != "protocol" and getattr(self, f.name) != f.default]
            if given:
                raise UserError(f"{', '.join(self.flag(n) for n in given)}: only with --protocol brainmarks")
        if self.bins is not None and self.bins not in BINNINGS and self.bins not in BRAINMARKS_TASKS:
            raise UserError(f"--bins {self.bins!r}: choose a rule ({', '.join(BINNINGS)}) or a Brainmarks dataset "
                            f"({', '.join(BRAINMARKS_TASKS)})")
        for item in self.features:
            if "=" not in item or not item.split("=", 1)[0] or not item.split("=", 1)[1]:
                raise UserError(f"--features takes NAME=FILE, got {item!r}")


def brainmarks_samples(store, target: str, targets_file=None, subject_column=None, bins: str | None = None) -> pd.DataFrame:
    """One row per recording: ``recording_id``, ``subject_id``, ``split``, ``order``, ``target``.

    The split and order are Brainmarks' when the store kept them (``split_source`` in its
    manifest), else the store's split and the recording ID's rank.
    """
    from brainlm.downstream.probe import load_targets

    table = store.recordings
    kept = "split_source" in store.manifest
    split_col = store.manifest["split_source"]["phenotype"] if kept else "split"
    out = pd.DataFrame({"recording_id": table["recording_id"].astype(str), "subject_id": table["subject_id"].astype(str),
                        "split": table[split_col].astype(str)})
    out["order"] = (table["brainmarks_index"].to_numpy(np.float64) if kept and "brainmarks_index" in table
                    else out["recording_id"].rank(method="first").to_numpy())
    if targets_file is None:
        if target not in table.columns:
            raise UserError(f"{store.path}: no phenotype column {target!r} (--target); has {store.phenotype_columns}")
        y = table[target].to_numpy(dtype=object)
    else:
        y = out["subject_id"].map(load_targets(targets_file, target, subject_column)).to_numpy(dtype=object)
    if bins:
        _check_binnable(y, target, bins)
    out["target"] = brainmarks_bins(y, bins) if bins else y
    return out


def _check_binnable(values: np.ndarray, target: str, bins: str) -> None:
    """Refuse ``--bins`` on a target it cannot apply to: text (the rules bin numbers; HCP-YA age
    also takes its range text), or two values or fewer (already classes)."""
    given = pd.Series(values, dtype=object).dropna()
    numbers = pd.to_numeric(given, errors="coerce")
    if BRAINMARKS_TASKS.get(bins, (None, bins))[1] != "hcpya_age" and numbers.isna().any():
        raise UserError(f"--bins {bins}: the target {target!r} holds values that are not numbers (e.g. "
                        f"{given[numbers.isna()].iloc[0]!r}); its classes are used as they are without --bins")
    distinct = sorted(set(given.astype(str)))
    if len(distinct) <= 2:
        raise UserError(f"--bins {bins}: the target {target!r} has {len(distinct)} distinct values "
                        f"({', '.join(distinct)}), already classes: leave out --bins")


def _check_classes(samples: pd.DataFrame, target: str, bins: str | None) -> None:
    """Refuse targets Brainmarks' protocol cannot score, before any feature is computed: its
    stratified folds need two classes, and every class twice in train and validation together."""
    fit = samples.loc[samples["split"].isin(["train", "validation"]), "code"]
    counts = fit.value_counts()
    if len(counts) < 2:
        raise UserError(f"--target {target}: {len(counts)} class(es) in train and validation; the protocol needs two")
    if not (samples["split"] == "test").any():
        raise UserError(f"--target {target}: no test sample has a target")
    single = counts[counts < 2]
    if len(single):
        hint = ("; a continuous target needs --bins (e.g. qcut3)" if bins is None and len(counts) > len(fit) / 2
                else "")
        raise UserError(f"--target {target}: {len(single)} of its {len(counts)} classes have a single sample in "
                        f"train and validation (e.g. {str(single.index[0])!r}); Brainmarks' stratified folds need two"
                        f"{hint}")


def _precomputed(name: str, path: str, samples: pd.DataFrame) -> np.ndarray:
    emb = read_embeddings(path, flag="--features")
    key = "recording_id" if "recording_id" in emb.index.columns else "subject_id"
    ids = emb.index[key].astype(str).to_numpy()
    if len(set(ids)) != len(ids):
        raise InputError(f"--features {path}: several rows per {key} (embed with --windows average)")
    where = pd.Series(np.arange(len(ids)), index=ids)
    missing = sorted(set(samples[key]) - set(ids))
    if missing:
        raise InputError(f"--features {path}: no row for {len(missing)} recordings of the store, e.g. {missing[:3]}")
    return emb.X[where[samples[key]].to_numpy()].reshape(len(samples), -1)


def _model_features(model, store, rows: np.ndarray, options: BrainmarksOptions, batch_size: int, precision: str) -> dict:
    """``brainlm:<repr>`` -> (N, D) and, with heads, ``tokens`` -> (N, L, D), for the store rows ``rows``."""
    from brainlm.downstream.embed import embed_recordings
    from brainlm.downstream.loading import open_recordings

    recs = open_recordings(store).rows(rows)
    poolings = {f"brainlm:{r}": _REPRESENTATIONS[r] for r in options.representations}
    if options.heads:
        poolings["tokens"] = "tokens"
    out = {}
    for name, pooling in poolings.items():
        emb = embed_recordings(model, recs, pooling=pooling, windows="average", batch_size=batch_size,
                               precision=precision, progress=False)
        out[name] = emb.X
    return out


def _head_result(kind: str, tokens: np.ndarray, samples: pd.DataFrame, labels: np.ndarray, seed: int) -> ProtocolResult:
    """A head trained on the fixed splits, as a one-row Brainmarks table (test split, bootstrap std)."""
    ids = np.searchsorted(labels, samples["code"].to_numpy())
    parts = {s: (samples["split"] == s).to_numpy() for s in ("train", "validation", "test")}
    res = train_head(kind, *[(tokens[parts[s]], ids[parts[s]]) for s in ("train", "validation", "test")],
                     HeadConfig(seed=0))
    boot = [classification_scores(res.test_targets[i], res.test_predictions[i])
            for i in bootstrap_indices(res.test_targets, seed)]
    row = {"trial": np.nan, "C": np.nan, "split": "test", "lr": res.lr, "epoch": res.epoch}
    for m in METRICS:
        row[m], row[f"{m}_std"] = res.test_scores[m], float(np.std([b[m] for b in boot]))
    return ProtocolResult(pd.DataFrame([row]), res.test_targets, res.test_predictions, labels, "brainlm",
                          {s: int(p.sum()) for s, p in parts.items()})


def brainmarks_benchmark(model, store, target: str, options: BrainmarksOptions | None = None, *, targets_file=None,
                         subject_column=None, batch_size: int = 16, precision: str = "auto",
                         protocol: LogisticProtocol | None = None, initial=None) -> dict:
    """Every feature set through Brainmarks' protocol (module docstring).

    Args:
        model: a loaded model, or None to score only the baselines and ``options.features``.
        initial: the same model at initialisation; its representations (``initial:<repr>``, logistic
            probe only) are scored too, and the model's verdict is against the stronger of them and
            the best baseline.
        store: an opened store.
        protocol: other protocol settings than Brainmarks' (e.g. fewer solver iterations);
            its seed, trials and engine are those of ``options``.

    Returns:
        ``{"results": name -> ProtocolResult, "samples": the rows scored, "verdict": Verdict | None,
        "notes": [...]}``.
    """
    options = options or BrainmarksOptions(protocol="brainmarks")
    samples = brainmarks_samples(store, target, targets_file, subject_column, options.bins)
    notes = []
    keep = ~pd.isna(samples["target"]) & samples["split"].isin(["train", "validation", "test"]).to_numpy()
    if model is not None:
        short = store.recordings["num_timepoints"].to_numpy() < model.window_length
        if short.any():
            notes.append(f"{int((short & keep).sum())} recordings shorter than the model's window of "
                         f"{model.window_length} left out of every feature set")
        keep &= ~short
    if (~keep).sum() and "target" in samples:
        notes.append(f"{int((~keep).sum())} of {len(samples)} recordings without a target or outside train, "
                     "validation and test are left out")
    rows = np.flatnonzero(keep)
    samples = samples.iloc[rows].reset_index(drop=True)
    # The protocol's row order; heads and tables use the same order.
    order = np.lexsort((samples["order"].to_numpy(), samples["split"].map({"train": 0, "validation": 1, "test": 2})))
    samples, rows = samples.iloc[order].reset_index(drop=True), rows[order]
    numeric = pd.to_numeric(samples["target"], errors="coerce")
    samples["code"] = numeric if not numeric.isna().any() else samples["target"].astype(str)
    _check_classes(samples, target, options.bins)
    features: dict[str, np.ndarray] = {}
    if model is not None:
        features.update(_model_features(model, store, rows, options, batch_size, precision))
    if model is not None and initial is not None:
        first = _model_features(initial, store, rows, dataclasses.replace(options, heads=()), batch_size, precision)
        features.update({f"initial:{name.split(':', 1)[1]}": X for name, X in first.items()})
    series = [store.get(int(i)) for i in rows] if options.baselines else []
    for kind in options.baselines:
        features[kind] = brainmarks_connectome(series) if kind == "fc" else connectivity_features(series, kind)
    for item in options.features:
        name, path = item.split("=", 1)
        features[name] = _precomputed(name, path, samples)
    tokens = features.pop("tokens", None)
    protocol = dataclasses.replace(protocol or LogisticProtocol(), seed=options.protocol_seed, n_trials=options.trials,
                                   engine=options.engine)
    results: dict[str, ProtocolResult] = {}
    for name, X in features.items():
        results[name] = logistic_protocol(X, samples["target"].to_numpy(dtype=object), samples["split"].to_numpy(),
                                          order=np.arange(len(samples)), protocol=protocol)
    if tokens is not None:
        labels = next(iter(results.values())).labels if results else np.unique(samples["code"])
        for kind in options.heads:
            results[f"brainlm:tokens/{kind}"] = _head_result(kind, tokens, samples, labels, options.protocol_seed)
    return {"results": results, "samples": samples, "verdict": _verdict(results, options), "notes": notes}


def _fixed_test(res: ProtocolResult, metric: str = "bacc") -> float:
    t = res.table
    return float(t[t["trial"].isna() & (t["split"] == "test")][metric].iloc[0])


def _label(name: str) -> str:
    if name.startswith("brainlm:"):
        rep = name.split(":", 1)[1]
        return f"BrainLM ({rep.replace('/', ' head: ')})" if "/" in rep else f"BrainLM ({rep}, logistic)"
    if name.startswith("initial:"):
        return f"{BASELINE_LABELS['initial']} ({name.split(':', 1)[1]}, logistic)"
    return f"{BASELINE_LABELS.get(name, name)} (logistic)"


def _verdict(results: dict[str, ProtocolResult], options: BrainmarksOptions) -> Verdict | None:
    """The best model representation against the stronger of the best baseline and the model at
    initialisation, paired over the test split's bootstrap resamples (its samples are the units)."""
    baselines = [n for n in results if n in options.baselines]
    initial = [n for n in results if n.startswith("initial:")]
    models = [n for n in results if n not in options.baselines and n not in initial]
    if not baselines or not models:
        return None
    model = max(models, key=lambda n: _fixed_test(results[n]))
    base = max(baselines + initial, key=lambda n: _fixed_test(results[n]))
    comparison = paired_comparison(results[model], results[base], "bacc", options.protocol_seed)
    return Verdict(_label(model), _fixed_test(results[model]), _label(base), _fixed_test(results[base]),
                   "balanced accuracy", comparison, results[model].counts.get("test"), "test samples")


def _report(out: dict, header: list[str], dataset: str, summary: dict | None = None) -> Report:
    """The report (``summary``: what ``results.json`` holds)."""
    results = out["results"]
    report = Report("Benchmark: Brainmarks' protocol, the model against the strongest simple baseline", header, summary)
    logistic = {n: r for n, r in results.items() if "/" not in n}
    if logistic:
        report.section("Logistic probe (Brainmarks' `main_logistic`)",
                       "Fixed splits: the test split, ± the standard deviation over 500 stratified bootstrap resamples. "
                       "Random: mean ± standard deviation over the re-splits.")
        report.table(_formatted(summary_table(logistic, dataset=dataset)), key="logistic")
    heads = {n: r for n, r in results.items() if "/" in n}
    if heads:
        rows = [{"model": "brainlm", "repr": "tokens", "clf": n.split("/")[1], "dataset": dataset, "splits": "fixed",
                 "lr": r.table["lr"].iloc[0], "epoch": int(r.table["epoch"].iloc[0]),
                 **{k: r.table[k].iloc[0] for m in METRICS for k in (m, f"{m}_std")}} for n, r in heads.items()]
        report.section("Trained probe heads (Brainmarks' `main_probe`: chosen on validation, scored on test)")
        report.table(_formatted(pd.DataFrame(rows)), key="heads")
    if out["verdict"] is not None:
        report.section("Verdict")
        report.verdict(out["verdict"], "on the Brainmarks test split (paired over its 500 stratified bootstrap resamples)")
    report.bullets(out["notes"])
    return report


def _formatted(table: pd.DataFrame) -> pd.DataFrame:
    t = table.copy()
    for m in METRICS:
        t[m] = [f"{v:.3f} ± {s:.3f}" for v, s in zip(t[m], t[f"{m}_std"])]
    return t.drop(columns=[f"{m}_std" for m in METRICS])


def run_brainmarks_benchmark(checkpoint: str | None, store_path, out_dir, *, target: str, options: BrainmarksOptions,
                             targets_file=None, subject_column=None, batch_size: int = 16, precision: str = "auto",
                             device: str = "auto", overwrite: bool = False, trust_unverified: bool = False) -> dict:
    """``brainlm benchmark MODEL STORE --protocol brainmarks``: score, write the report, print the verdict.

    ``checkpoint`` ``None`` (``-`` on the command line) scores only the baselines and ``--features``.
    """
    from brainlm.data import open_store
    from brainlm.distributed import resolve_device

    from brainlm.downstream.loading import check_regions, load_initial, load_model

    if target is None:
        raise UserError("--protocol brainmarks needs --target (a class or a binned column of the store)")
    with output_folder(out_dir, ["report.md", "eval_table.csv", "results.json"], overwrite=overwrite) as folder:
        store = open_store(store_path)
        model = initial = None
        if checkpoint is not None:
            model = load_model(checkpoint, map_location=resolve_device(device), trust_unverified=trust_unverified).eval()
            check_regions(model, store.num_regions, str(store.path))
            initial = load_initial(checkpoint, model, seed=options.protocol_seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            out = brainmarks_benchmark(model, store, target, options, targets_file=targets_file,
                                       subject_column=subject_column, batch_size=batch_size, precision=precision,
                                       initial=initial.model if model is not None else None)
        counts = next(iter(out["results"].values())).counts if out["results"] else {}
        header = [f"Model `{checkpoint or 'none'}` on store `{store_path}`, target `{target}`"
                  + (f" binned by `{options.bins}`" if options.bins else "") + "; samples "
                  + ", ".join(f"{k} {v}" for k, v in counts.items()) + "; engine "
                  + ", ".join(sorted({r.engine for r in out["results"].values()})) + "."]
        if initial is not None:
            header.append("Beside the model, the same model at initialisation (no training step), and the model's "
                          f"verdict is against the stronger of it and the best baseline: {initial.description}.")
        report = _report(out, header, Path(str(store_path)).name, {
            "checkpoint": checkpoint, "store": str(store_path), "target": target, "options": options.to_dict(),
            "summary": summary_table({n: r for n, r in out["results"].items() if "/" not in n}).to_dict("records"),
            "verdict": out["verdict"].to_dict() if out["verdict"] else None, "notes": out["notes"],
            "initialisation": initial.to_dict() if initial is not None else None})
        report.tables["eval_table.csv"] = pd.concat([r.table.assign(features=name) for name, r in out["results"].items()],
                                                    ignore_index=True)
        report.write(folder)
    if out["verdict"] is not None:
        print(out["verdict"].line("on the Brainmarks test split"))
    print(f"report: {Path(out_dir) / 'report.md'}")
    return out

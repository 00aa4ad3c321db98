"""``brainlm networks``: does a region's representation know its network? Zero-shot network
identification, as the BrainLM paper did it, beside the rivals a reviewer asks about.

Features of a region (one row per region, ``R`` rows):

- **the model's**, and **the same model's at initialisation** (no training step: its run's
  ``RUN/init``), so that networks the initialisation already tells (a connectivity-initialised
  region table, above all) are not credited to training: its region-time embeddings (``model.embed(pooling="region_time")``: the
  region's tokens averaged over time), averaged over every window of every recording. For the
  released ViT-MAE models a region's vector comes from the image patches that hold it, so the
  regions of one patch row share a vector (:mod:`brainlm.vitmae`);
- **its FC profile**: its row of the group correlation matrix of the same recordings (Fisher z,
  itself left out);
- **its signal statistics**: its mean variance and lag-1 autocorrelation;
- **its coordinates**: the centre (x, y, z) the model is given with every token. Networks that
  are spatially compact (anatomical systems above all) are largely told by where a region is,
  and a BrainLM model sees where each region is, so a model that "identifies" them may only
  pass its coordinates on.

Each feature set is standardised (on the training regions of each fold) and classified by a kNN
(scikit-learn's neighbour search, majority vote) and a multinomial logistic regression (C = 1),
under region-level cross-validation: stratified folds of regions, so that no region is in both
the training and the test part of a fold, and every region is predicted once while held out.
Accuracy and macro-F1 come with their **chance** level and a **permutation p**, both from the
same classifiers rerun with the network labels permuted across regions (chance: the mean
under permutation; p: ``(1 + #{permuted >= observed}) / (1 + permutations)``), and with 95%
intervals from resampling regions. The verdict puts the model's better classifier against the
stronger of the best rival and the model at initialisation (feature set and classifier), paired
on the same region resamples.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from brainlm.data.maps import map_outputs
from brainlm.errors import UserError
from brainlm.evaluate.protocol import SubjectBootstrap, permutation_p
from brainlm.evaluate.verdict import compare
from brainlm.figures import pyplot
from brainlm.options import at_least, option, positive
from brainlm.progress import progress as progress_bar

from .common import Analysis, AnalysisOptions, open_analysis
from .plots import interval_bars, network_brain
from .signals import STATISTICS, GroupConnectivity, correlation_matrix, fc_profiles, region_statistics

__all__ = ["NetworksOptions", "region_features", "identify_networks", "network_verdict", "run_networks", "CLASSIFIERS"]

CLASSIFIERS = ("knn", "logistic")
FEATURES = {"model": "the model's region embeddings",
            "initial": "the same model at initialisation", "fc_profile": "FC profile (row of group FC)",
            "signal": "signal statistics (variance, lag-1 autocorrelation)",
            "coordinates": "coordinates (the region's x, y, z)"}


@dataclass(kw_only=True)
class NetworksOptions(AnalysisOptions):
    """``brainlm networks``: zero-shot network identification from region embeddings, beside FC profiles and signal statistics."""

    folds: int = option(5, "region folds of the cross-validation", check=at_least(2))
    neighbours: int = option(5, "k of the kNN classifier", check=positive)
    permutations: int = option(200, "network-label permutations for chance and p", check=at_least(0))


def region_features(a: Analysis) -> dict[str, np.ndarray]:
    """``{"model": (R, D), "initial": (R, D), "fc_profile": (R, R), "signal": (R, 2), "coordinates": (R, 3)}``
    from every recording analysed."""
    from brainlm.downstream import embed_recordings

    def regions(model) -> np.ndarray:
        emb = embed_recordings(model, a.recordings, pooling="region_time", average_regions=False, windows="average",
                               window=a.window, batch_size=a.options.batch_size, precision=a.options.precision,
                               progress=a.options.progress)
        return emb.X.mean(0)

    group, stats = GroupConnectivity(), []
    for _, ts in progress_bar(a.recordings, enabled=a.options.progress, total=len(a.recordings), desc="FC profiles",
                              unit="rec"):
        span = ts[: len(ts) // a.window * a.window]
        if len(span):
            group.add(correlation_matrix(span))
            stats.append(region_statistics(span))
    features = {"model": regions(a.model), "initial": regions(a.initial.model)}
    return {**features, "fc_profile": fc_profiles(group.matrix()), "signal": np.mean(stats, 0).T,
            "coordinates": np.asarray(a.recordings.coords, np.float64)}


@dataclass
class _Fold:
    """One fold's standardised features (the scaler fitted on its training regions)."""

    train: np.ndarray
    test: np.ndarray
    Z_train: np.ndarray
    Z_test: np.ndarray


def _folds(X: np.ndarray, folds: list) -> list[_Fold]:
    from sklearn.preprocessing import StandardScaler

    out = []
    for train, test in folds:
        scaler = StandardScaler().fit(X[train])
        out.append(_Fold(train, test, scaler.transform(X[train]), scaler.transform(X[test])))
    return out


def _knn(folds: list[_Fold], labels: np.ndarray, neighbours: int) -> np.ndarray:
    """Out-of-fold kNN votes for one or many labellings at once: ``(R,)`` or ``(n, R)`` -> same shape.

    The neighbours do not depend on the labels, so every permutation reuses them; ties go to
    the smallest label, as scikit-learn's ``KNeighborsClassifier`` breaks them.
    """
    from sklearn.neighbors import NearestNeighbors

    labels = np.atleast_2d(labels)
    K = int(labels.max()) + 1
    pred = np.empty_like(labels)
    for f in folds:
        k = min(neighbours, len(f.train))
        near = NearestNeighbors(n_neighbors=k).fit(f.Z_train).kneighbors(f.Z_test, return_distance=False)
        votes = labels[:, f.train][:, near]  # (n, test, k)
        counts = (votes[..., None] == np.arange(K)).sum(2)  # (n, test, K)
        pred[:, f.test] = counts.argmax(-1)
    return pred


def _logistic(folds: list[_Fold], labels: np.ndarray, seed: int) -> np.ndarray:
    """Out-of-fold predictions of a multinomial logistic regression (C = 1), one labelling ``(R,)``."""
    from sklearn.linear_model import LogisticRegression

    pred = np.empty_like(labels)
    for f in folds:
        model = LogisticRegression(C=1.0, max_iter=500, tol=1e-3, random_state=seed)
        pred[f.test] = model.fit(f.Z_train, labels[f.train]).predict(f.Z_test)
    return pred


def _scores(y: np.ndarray, pred: np.ndarray, K: int) -> tuple[float, float]:
    """Accuracy and macro-F1 (the mean over the K networks of each one's F1; 0 for a network never
    predicted nor present)."""
    confusion = np.bincount(y * K + pred, minlength=K * K).reshape(K, K)
    hit = np.diag(confusion).astype(float)
    denom = confusion.sum(0) + confusion.sum(1)
    f1 = np.divide(2 * hit, denom, out=np.zeros(K), where=denom > 0)
    return float(hit.sum() / len(y)), float(f1.mean())


def identify_networks(features: dict[str, np.ndarray], codes: np.ndarray, *, folds: int = 5, neighbours: int = 5,
                      permutations: int = 200, bootstrap: int = 1000, seed: int = 0,
                      progress: bool = False) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """Every feature set under every classifier (module docstring).

    Args:
        features: name -> ``(R, F)``.
        codes: ``(R,)`` network of each region.

    Returns:
        One row per feature set and classifier (``accuracy``, its interval, ``chance_accuracy``,
        ``p_accuracy``, ``macro_f1``, its interval, ``chance_macro_f1``, ``p_macro_f1``), and the
        out-of-fold predictions by ``"<features>/<classifier>"``.
    """
    from sklearn.model_selection import StratifiedKFold
    from threadpoolctl import threadpool_limits

    codes = np.asarray(codes, dtype=np.int64)
    K = int(codes.max()) + 1
    smallest = np.bincount(codes).min()
    if smallest < 2:
        raise UserError("every network needs at least two regions to be identified under cross-validation; "
                        f"one has {smallest} (--networks)")
    split = StratifiedKFold(min(folds, smallest), shuffle=True, random_state=seed)
    fold_list = list(split.split(np.zeros(len(codes)), codes))
    rng = np.random.default_rng(seed)
    shuffles = np.stack([rng.permutation(codes) for _ in range(permutations)]) if permutations else None
    boot = SubjectBootstrap(np.arange(len(codes)), bootstrap, seed)
    rows, predictions = [], {}
    jobs = [(f, c) for f in features for c in CLASSIFIERS]
    for feature, clf in progress_bar(jobs, enabled=progress, desc="networks", unit="classifier"):
        data = _folds(np.nan_to_num(np.asarray(features[feature], np.float64)), fold_list)
        if clf == "knn":
            pred = _knn(data, codes, neighbours)[0]
            null_pred = _knn(data, shuffles, neighbours) if permutations else np.zeros((0, len(codes)), np.int64)
        else:
            # Many tiny fits: BLAS threads only add overhead (several times slower on a busy machine).
            with threadpool_limits(limits=1):
                pred = _logistic(data, codes, seed)
                null_pred = np.stack([_logistic(data, s, seed) for s in shuffles]) if permutations else \
                    np.zeros((0, len(codes)), np.int64)
        acc, f1 = _scores(codes, pred, K)
        null = np.array([_scores(s, p, K) for s, p in zip(shuffles if permutations else [], null_pred)]).reshape(-1, 2)
        acc_ci = boot.ci(lambda idx: (pred[idx] == codes[idx]).mean()) if len(boot) else (np.nan, np.nan)
        f1_ci = boot.ci(lambda idx: _scores(codes[idx], pred[idx], K)[1]) if len(boot) else (np.nan, np.nan)
        row = {"features": feature, "classifier": clf, "accuracy": acc, "accuracy_ci_low": acc_ci[0],
               "accuracy_ci_high": acc_ci[1], "macro_f1": f1, "macro_f1_ci_low": f1_ci[0], "macro_f1_ci_high": f1_ci[1]}
        for i, metric in enumerate(("accuracy", "macro_f1")):
            observed = row[metric]
            row[f"chance_{metric}"] = float(null[:, i].mean()) if len(null) else np.nan
            row[f"p_{metric}"] = float(permutation_p(observed, null[:, i])) if len(null) else np.nan
        rows.append(row)
        predictions[f"{feature}/{clf}"] = pred
    table = pd.DataFrame(rows)
    table.attrs.update(folds=len(fold_list), boot=boot)
    return table, predictions


def network_verdict(table: pd.DataFrame, predictions: dict, codes: np.ndarray, boot):
    """The trained model's better classifier against the stronger of the best rival and the same
    model at initialisation (when the table has it), paired on the same region resamples.

    Returns:
        ``(verdict, best model row, best rival row, best initial row or None)``.
    """
    def best(rows: pd.DataFrame):
        return rows.loc[rows["accuracy"].idxmax()]

    best_model = best(table[table["features"] == "model"])
    best_rival = best(table[~table["features"].isin(["model", "initial"])])
    best_initial = best(table[table["features"] == "initial"]) if (table["features"] == "initial").any() else None
    against = best_rival if best_initial is None or best_rival.accuracy >= best_initial.accuracy else best_initial
    pm = predictions[f"model/{best_model.classifier}"]
    pa = predictions[f"{against.features}/{against.classifier}"]
    verdict = compare(f"the model's region embeddings ({best_model.classifier})",
                      f"{FEATURES[against.features]}, {against.classifier}",
                      lambda idx: (pm[idx] == codes[idx]).mean(), lambda idx: (pa[idx] == codes[idx]).mean(), boot,
                      len(codes), metric="accuracy", unit="regions")
    return verdict, best_model, best_rival, best_initial


def run_networks(options: NetworksOptions) -> dict:
    """Run ``brainlm networks`` and write its report into ``options.out``; returns ``results.json``'s content."""
    o = options
    outputs = ["networks_scores.csv", "networks_predictions.csv", "networks_scores.png", "networks_map.png",
               *map_outputs("networks_map")]

    def check(store, networks) -> None:
        if networks.num_networks < 2:
            raise UserError(f"--networks {o.networks}: every region is in one network ({networks.names[0]}); network "
                            "identification needs at least two networks")
        networks.require(2, "network identification")

    with open_analysis(o, outputs, check=check) as a:
        features = region_features(a)
        codes = a.networks.codes
        table, predictions = identify_networks(features, codes, folds=o.folds, neighbours=o.neighbours,
                                               permutations=o.permutations, bootstrap=o.bootstrap, seed=o.seed,
                                               progress=o.progress)
        report = a.report("Network identification from region representations")
        _write(a, report, table, predictions, features, o)
        return report.finish()


def _write(a: Analysis, report, table: pd.DataFrame, predictions: dict, features: dict, o: NetworksOptions) -> None:
    codes, names = a.networks.codes, list(a.networks.names)
    boot = table.attrs["boot"]
    verdict, best_model, best_rival, best_initial = network_verdict(table, predictions, codes, boot)
    pm = predictions[f"model/{best_model.classifier}"]
    pr = predictions[f"{best_rival.features}/{best_rival.classifier}"]
    initial = (f"; the same model at initialisation {best_initial.accuracy:.3f} ({best_initial.classifier}, "
               f"{a.initial.kind})" if best_initial is not None else "")
    report.say(f"networks: {len(names)} networks of {len(codes)} regions; accuracy {best_model.accuracy:.3f} "
               f"(trained model, {best_model.classifier}; chance {best_model.chance_accuracy:.3f}, permutation p "
               f"{best_model.p_accuracy:.3g}){initial}; best rival {best_rival.accuracy:.3f} "
               f"({FEATURES[best_rival.features]}, {best_rival.classifier})")
    report.verdict(verdict, "identifying networks of held-out regions", say=True)
    shown = table.assign(features=table["features"].map(FEATURES))
    report.section(
        "Scores",
        f"{table.attrs['folds']}-fold cross-validation over regions (stratified by network; no region in both parts of "
        f"a fold), kNN (k = {o.neighbours}) and logistic regression on standardised features; chance and p from "
        f"{o.permutations} permutations of the network labels across regions; 95% intervals from {len(boot)} "
        "region resamples.",
        shown,
        f"Verdict: {verdict.line('identifying networks of held-out regions')}.",
        f"Feature sizes: model {features['model'].shape[1]}, FC profile {features['fc_profile'].shape[1]}, "
        f"signal statistics {features['signal'].shape[1]} ({', '.join(STATISTICS)}), coordinates 3.")
    frame = pd.DataFrame({"region_index": np.arange(len(codes)), "region": a.store.region_names,
                          "network": [names[c] for c in codes]})
    for key, pred in predictions.items():
        frame[key] = [names[c] for c in pred]
    report.tables["networks_scores.csv"] = table
    report.tables["networks_predictions.csv"] = frame
    report.figure("networks_scores.png", "network identification: the model and its rivals, 95% region intervals",
                  lambda: _scores_figure(table))
    report.figure("networks_map.png", "networks given and predicted for held-out regions",
                  lambda: network_brain([(codes, "networks given"),
                                         (pm, f"predicted from the model's embeddings ({best_model.classifier})"),
                                         (pr, f"predicted from {best_rival.features} ({best_rival.classifier})")],
                                        a.recordings.coords, names), tight=False)
    report.region_map("networks_map", {"network given": codes + 1, "predicted (model)": pm + 1,
                                       f"predicted ({best_rival.features})": pr + 1},
                      "networks (numbered as in results.json's network names)")
    report.results.update(scores=table.to_dict("records"), verdict=verdict.to_dict(), folds=table.attrs["folds"])


def _scores_figure(table: pd.DataFrame):
    fig, axes = pyplot().subplots(1, 2, figsize=(8, 3))
    for ax, metric in zip(axes, ("accuracy", "macro_f1")):
        series = {clf: tuple(table[table["classifier"] == clf][c].to_numpy()
                             for c in (metric, f"{metric}_ci_low", f"{metric}_ci_high")) for clf in CLASSIFIERS}
        interval_bars(ax, list(table[table["classifier"] == CLASSIFIERS[0]]["features"]), series,
                      ylabel=metric.replace("_", "-"), reference=table[f"chance_{metric}"].mean())
        ax.set_title(f"{metric.replace('_', '-')} (dashed: chance)", fontsize=9)
    return fig

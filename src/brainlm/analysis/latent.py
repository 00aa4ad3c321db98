"""``brainlm latent``: maps of the latent space, coloured by phenotypes, and how well each label
is clustered there, beside the same on functional connectivity.

Each recording becomes one vector: the model's embedding (``--pooling cls`` or ``mean``)
averaged over its windows, and, beside it, the two rivals of the probes: its FC features (the
Pearson correlation of the same timepoints, :func:`brainlm.downstream.fc_features`) and each
region's lag-1 autocorrelation (the temporal structure FC leaves out, which tells recordings of
different sampling rates apart). All are standardised; the maps are their first two principal components and, when ``umap-learn`` is
installed (``pip install 'brainlm[analysis]'``), a 2-D UMAP. The maps are for looking; the
scores are computed in the full standardised space:

- **kNN purity** of a recording: the share of its ``k`` nearest recordings, among other
  subjects' recordings (so that a subject's own recordings cannot make a label look clustered),
  that share its label; per level, and overall (the mean over recordings), beside **chance**,
  the share of other subjects' recordings with the same label;
- **silhouette** (Euclidean) per level and overall, among other subjects' recordings too: for
  a recording, ``a`` is its mean distance to the recordings of its label from other subjects,
  ``b`` the smallest mean distance to another label's recordings from other subjects, and
  ``(b - a) / max(a, b)`` its score (scikit-learn's silhouette when every subject has one
  recording; NaN where no other subject shares its label).

Numeric columns with more than two values are split at the subjects' median (as the group
contrasts do). 95% intervals resample subjects; the verdict compares the model's overall kNN
purity with the stronger rival's, on the same subject resamples.

With ``--regions`` (default on) the regions get a map too: each region's representation (its
region-time embedding averaged over windows and recordings) coloured by its network, beside
the regions' FC profiles.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import pandas as pd

from brainlm.data.maps import map_outputs
from brainlm.errors import UserError
from brainlm.evaluate.protocol import SubjectBootstrap
from brainlm.evaluate.verdict import compare
from brainlm.figures import pyplot
from brainlm.options import option, positive

from .common import Analysis, AnalysisOptions, check_column, open_analysis
from .plots import network_colors
from .stats import as_label, median_split

__all__ = ["LatentOptions", "knn_purity", "subject_silhouette", "label_scores", "two_d_maps", "run_latent"]

RIVALS = {"FC": "FC features", "autocorrelation": "lag-1 autocorrelation per region"}
INITIAL = "the same model at initialisation"


@dataclass(kw_only=True)
class LatentOptions(AnalysisOptions):
    """``brainlm latent``: PCA / UMAP maps of recording embeddings by phenotype, with kNN purity and silhouette, beside FC."""

    color: tuple[str, ...] = option((), "phenotype columns to colour by and score (default: every phenotype column "
                                    "with two or more levels)")
    pooling: str = option("cls", "what a window becomes", choices=("cls", "mean"))
    neighbours: int = option(5, "k of the kNN purity", check=positive)
    umap: bool = option(True, "also a UMAP map when umap-learn is installed")
    regions: bool = option(True, "also map the regions' representations, coloured by network")


def _other_subjects_distances(X: np.ndarray, subjects: np.ndarray) -> np.ndarray:
    """``(N, N)`` Euclidean distances between rows, ``inf`` between two rows of the same subject
    (a subject's own recordings never count for or against its label)."""
    from scipy.spatial.distance import cdist

    subjects = np.asarray(subjects)
    dist = cdist(X, X)
    dist[subjects[:, None] == subjects[None, :]] = np.inf
    return dist


def knn_purity(X: np.ndarray, labels: np.ndarray, subjects: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row: the share of its ``k`` nearest rows of other subjects with its label, and chance
    (the share of all other subjects' rows with its label). NaN where no other subject exists."""
    labels = np.asarray(labels)
    dist = _other_subjects_distances(X, subjects)
    purity, chance = np.full(len(X), np.nan), np.full(len(X), np.nan)
    for i in range(len(X)):
        others = np.flatnonzero(np.isfinite(dist[i]))
        if not len(others):
            continue
        nearest = others[np.argsort(dist[i, others], kind="stable")[:k]]
        purity[i] = (labels[nearest] == labels[i]).mean()
        chance[i] = (labels[others] == labels[i]).mean()
    return purity, chance


def subject_silhouette(X: np.ndarray, labels: np.ndarray, subjects: np.ndarray) -> np.ndarray:
    """Per row: the silhouette of its label among other subjects' rows only (module docstring).

    Args:
        X: ``(N, F)`` one row per recording; labels, subjects: ``(N,)``.

    Returns:
        ``(N,)`` in [-1, 1]; NaN where no other subject's row shares the row's label or none has
        another label.
    """
    labels = np.asarray(labels)
    dist = _other_subjects_distances(X, subjects)
    usable = np.isfinite(dist)
    mean_to = {}  # label -> (N,) mean distance to that label's rows of other subjects
    for level in np.unique(labels):
        member = usable & (labels == level)[None, :]
        with np.errstate(invalid="ignore", divide="ignore"):
            mean_to[level] = np.where(member, dist, 0.0).sum(1) / member.sum(1)
    out = np.full(len(X), np.nan)
    for i, own in enumerate(labels):
        a = mean_to[own][i]
        b = min((m[i] for level, m in mean_to.items() if level != own and np.isfinite(m[i])), default=np.nan)
        if np.isfinite(a) and np.isfinite(b):
            out[i] = (b - a) / max(a, b) if max(a, b) > 0 else 0.0
    return out


def label_scores(X: np.ndarray, labels: np.ndarray, subjects: np.ndarray, k: int) -> pd.DataFrame:
    """Per row: ``purity``, ``chance``, ``silhouette`` (module docstring), each among other subjects' rows."""
    purity, chance = knn_purity(X, labels, subjects, k)
    silhouette = subject_silhouette(X, labels, subjects)
    return pd.DataFrame({"purity": purity, "chance": chance, "silhouette": silhouette})


def _standard(X: np.ndarray) -> np.ndarray:
    X = np.nan_to_num(np.asarray(X, np.float64).reshape(len(X), -1))
    return (X - X.mean(0)) / np.where(X.std(0) > 0, X.std(0), 1.0)


def two_d_maps(X: np.ndarray, *, umap: bool = True, seed: int = 0) -> tuple[dict[str, np.ndarray], str]:
    """``{"PCA": (N, 2), "UMAP": (N, 2)}`` of standardised rows (UMAP only when asked and installed),
    and a note on UMAP."""
    from sklearn.decomposition import PCA

    Z = _standard(X)
    maps = {"PCA": PCA(2, random_state=seed).fit_transform(Z) if min(Z.shape) >= 2 else np.zeros((len(Z), 2))}
    if not umap:
        return maps, "UMAP not asked for (--no-umap)"
    try:
        import umap as umap_learn
    except ImportError:
        return maps, "UMAP skipped: umap-learn is not installed (pip install 'brainlm[analysis]')"
    if len(Z) < 4:
        return maps, f"UMAP skipped: {len(Z)} points are too few"
    reducer = umap_learn.UMAP(n_neighbors=min(15, len(Z) - 1), random_state=seed, n_jobs=1)
    maps["UMAP"] = reducer.fit_transform(Z)
    return maps, "UMAP: umap-learn, 15 neighbours (fewer for small data), seeded"


def _columns(store, rows: pd.DataFrame, options: LatentOptions) -> list[str]:
    if options.color:
        for c in options.color:
            check_column(store, c, "--color")
        return list(options.color)
    usable = [c for c in store.phenotype_columns if len(set(_labels(rows, c)) - {""}) >= 2]
    if not usable:
        raise UserError(f"{store.path}: no phenotype column with two or more levels to colour by (--color)")
    return usable


def run_latent(options: LatentOptions) -> dict:
    """Run ``brainlm latent`` and write its report into ``options.out``; returns ``results.json``'s content."""
    o = options
    outputs = ["latent_scores.csv", "latent_coordinates.csv", "latent_maps.png"] + (
        ["latent_regions.png", *map_outputs("latent_regions_map")] if o.regions else [])
    columns: list[str] = []

    def check(store, networks) -> None:
        rows = store.recordings.iloc[store.split_index(o.split)]
        columns.extend(_columns(store, rows, o))
        for c in columns:
            if len(set(_labels(rows, c)) - {""}) < 2:
                raise UserError(f"--color {c!r} has fewer than two levels in {store.path}: nothing to tell apart")

    with open_analysis(o, outputs, check=check) as a:
        from brainlm.downstream import embed_recordings, fc_features

        emb, initial = (embed_recordings(model, a.recordings, pooling=o.pooling, windows="average", window=a.window,
                                         batch_size=o.batch_size, precision=o.precision, progress=o.progress)
                        for model in (a.model, a.initial.model))
        rivals = {kind: fc_features(a.recordings, window=a.window, windows="average", kind=kind, progress=o.progress)
                  for kind in ("correlation", "autocorrelation")}
        report = a.report("The latent space by phenotype")
        _write(a, report, emb, rivals, columns, o, initial)
        if o.regions:
            _regions(a, report, o)
        return report.finish()


def _labels(rows: pd.DataFrame, column: str) -> np.ndarray:
    """A label per recording of ``rows``: the value as text, or low / high at the median for numbers
    with more than two values; ``""`` where missing."""
    present = rows[column].dropna()
    if present.nunique() > 2 and pd.to_numeric(present, errors="coerce").notna().all():
        return median_split(rows[column], rows["subject_id"])[0]
    return rows[column].map(as_label).to_numpy()


def _score_column(report, column: str, labels: np.ndarray, spaces: dict, rows: pd.DataFrame, subjects: np.ndarray,
                  model_label: str, o: LatentOptions):
    """kNN purity and silhouette of one label column in every space, per level with subject intervals,
    and the model's verdict against the strongest of its rivals and the same model at initialisation
    (space ``initial``, when given); returns (per-recording scores, summary rows, verdict)."""
    keep = labels != ""
    per, scores, summary = {}, [], []
    for name, X in spaces.items():
        s = label_scores(X[keep], labels[keep], subjects[keep], o.neighbours)
        scores.append(s.assign(column=column, space=name, label=labels[keep],
                               recording_id=rows["recording_id"].to_numpy()[keep], subject_id=subjects[keep]))
        per[name] = s
    boot = SubjectBootstrap(subjects[keep], o.bootstrap, o.seed)
    for level in sorted(set(labels[keep])):
        members = labels[keep] == level
        for name, s in per.items():
            purity = s["purity"].to_numpy()
            lo, hi = boot.ci(lambda idx: np.nanmean(purity[idx][members[idx]]) if members[idx].any() else np.nan) \
                if len(boot) else (np.nan, np.nan)
            summary.append({"column": column, "level": level, "space": name, "recordings": int(members.sum()),
                            "purity": np.nanmean(purity[members]), "purity_ci_low": lo, "purity_ci_high": hi,
                            "chance": np.nanmean(s["chance"].to_numpy()[members]),
                            "silhouette": _finite_mean(s["silhouette"].to_numpy()[members])})
    candidates = {**RIVALS, **({"initial": INITIAL} if "initial" in per else {})}
    rival = max(candidates, key=lambda n: np.nanmean(per[n]["purity"]))
    model_p, rival_p = per["model"]["purity"].to_numpy(), per[rival]["purity"].to_numpy()
    verdict = compare(model_label, candidates[rival], lambda idx: np.nanmean(model_p[idx]),
                      lambda idx: np.nanmean(rival_p[idx]), boot, int(keep.sum()),
                      metric=f"kNN purity of {column} (k = {o.neighbours})")
    chance = np.nanmean(per["model"]["chance"])
    report.say(f"latent, {column}: kNN purity {np.nanmean(model_p):.3f} (model) vs "
               + ", ".join(f"{np.nanmean(per[n]['purity']):.3f} ({n})" for n in candidates)
               + f", chance {chance:.3f}; silhouette {_silhouette_text(per['model']['silhouette'])} vs "
               + ", ".join(_silhouette_text(per[n]["silhouette"]) for n in candidates))
    report.verdict(verdict, f"on {column}", say=True)
    return scores, summary, verdict


def _finite_mean(values) -> float:
    """The mean of the finite values; NaN (without a warning) where there is none."""
    values = np.asarray(values, float)
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if len(finite) else float("nan")


def _silhouette_text(values) -> str:
    mean = _finite_mean(values)
    return f"{mean:+.3f}" if np.isfinite(mean) else "n/a (no label shared by two subjects)"


def _write(a: Analysis, report, emb, rivals: dict, columns: list[str], o: LatentOptions, initial=None) -> None:
    rows = a.store.recordings.set_index("recording_id").loc[emb.index["recording_id"]].reset_index()
    subjects = emb.index["subject_id"].astype(str).to_numpy()
    spaces = {"model": _standard(emb.X), "FC": _standard(rivals["correlation"].X),
              "autocorrelation": _standard(rivals["autocorrelation"].X)}
    model_label = f"the model ({o.pooling} embedding)"
    maps, notes = {}, []
    for name, X in spaces.items():
        started = time.perf_counter()
        maps[name], note = two_d_maps(X, umap=o.umap, seed=o.seed)
        notes.append(f"{name}: {note} ({time.perf_counter() - started:.1f} s)")
    scores, summary, verdicts = [], [], {}
    scored = {**spaces, **({"initial": _standard(initial.X)} if initial is not None else {})}
    for column in columns:
        column_scores, column_summary, verdicts[column] = _score_column(report, column, _labels(rows, column), scored,
                                                                        rows, subjects, model_label, o)
        scores += column_scores
        summary += column_summary
    table = pd.DataFrame(summary)
    report.section(
        "Scores",
        f"{len(rows)} recordings of {len(set(subjects))} subjects; kNN purity with k = {o.neighbours} and the "
        "silhouette, both among other subjects' recordings only, in the full standardised space (model: "
        f"{emb.X.reshape(len(emb.X), -1).shape[1]} dimensions, FC: {spaces['FC'].shape[1]}, autocorrelation: "
        f"{spaces['autocorrelation'].shape[1]}); 95% intervals from "
        f"{o.bootstrap} subject resamples.",
        table,
        *[f"Verdict ({c}): {v.line(f'on {c}')}." for c, v in verdicts.items()],
        "Maps: " + "; ".join(notes) + ".")
    coordinates = rows[["recording_id", "subject_id", *columns]].copy()
    for space, m in maps.items():
        for method, xy in m.items():
            coordinates[f"{space}_{method}_1"], coordinates[f"{space}_{method}_2"] = xy[:, 0], xy[:, 1]
    report.tables["latent_scores.csv"] = pd.concat([table.assign(kind="summary"),
                                                    pd.concat(scores, ignore_index=True).assign(kind="recording")],
                                                   ignore_index=True)
    report.tables["latent_coordinates.csv"] = coordinates
    report.figure("latent_maps.png", "maps of the recordings, model beside FC", lambda: _map_figure(maps, rows, columns))
    report.results.update(columns=columns, scores=table.to_dict("records"),
                          verdicts={c: v.to_dict() for c, v in verdicts.items()}, maps=notes)


def _map_figure(maps: dict, rows: pd.DataFrame, columns: list[str]):
    panels = [(space, method) for space in maps for method in maps[space]]
    plt = pyplot()
    fig, axes = plt.subplots(len(columns), len(panels), figsize=(2.2 * len(panels), 2.2 * len(columns)), squeeze=False)
    for row, column in enumerate(columns):
        labels = _labels(rows, column)
        levels = sorted(set(labels) - {""})
        colors = dict(zip(levels, network_colors(len(levels))))
        for ax, (space, method) in zip(axes[row], panels):
            xy = maps[space][method]
            for level in levels:
                ax.scatter(*xy[labels == level].T, s=12, color=colors[level], label=level)
            ax.set_title(f"{space}, {method}: {column}", fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[row, 0].legend(fontsize=6, frameon=False, loc="best")
    return fig


def _regions(a: Analysis, report, o: LatentOptions) -> None:
    from .identify import region_features

    features = region_features(a)
    codes, names = a.networks.codes, list(a.networks.names)
    maps, purity = {}, {}
    for key in ("model", "fc_profile"):
        Z = _standard(features[key])
        maps[key] = two_d_maps(Z, umap=False, seed=o.seed)[0]["PCA"]
        purity[key] = float(np.nanmean(knn_purity(Z, codes, np.arange(len(codes)), o.neighbours)[0]))
    report.section("Regions", f"Each region's representation (PCA), coloured by network; kNN purity of the network "
                              f"label among the other regions: model {purity['model']:.3f}, FC profile "
                              f"{purity['fc_profile']:.3f} (network identification with cross-validation, chance and "
                              "p: `brainlm networks`).")
    report.figure("latent_regions.png", "regions by network: model embeddings beside FC profiles",
                  lambda: _regions_figure(maps, purity, codes, names))
    report.region_map("latent_regions_map", {"model PC1": maps["model"][:, 0], "model PC2": maps["model"][:, 1],
                                             "FC profile PC1": maps["fc_profile"][:, 0]},
                      "the first principal component of the region embeddings", diverging=True)
    report.results["region_purity"] = purity


def _regions_figure(maps: dict, purity: dict, codes: np.ndarray, names: list[str]):
    colors = network_colors(len(names))
    fig, axes = pyplot().subplots(1, 2, figsize=(6.4, 3))
    for ax, key, title in zip(axes, ("model", "fc_profile"), ("region embeddings", "FC profiles")):
        for k, n in enumerate(names):
            ax.scatter(*maps[key][codes == k].T, s=10, color=colors[k], label=n)
        ax.set_title(f"{title}: network kNN purity {purity[key]:.2f}", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0].legend(fontsize=6, frameon=False)
    return fig

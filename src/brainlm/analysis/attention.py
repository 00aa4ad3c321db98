"""``brainlm attention``: where the CLS token looks, per region and per network, and whether that
differs between groups, beside the simple statistics that could explain it.

For every recording, every whole window (back to back) is encoded with masking off; the CLS
token's attention over the tokens of one encoder layer (``--layer``; ``all`` averages the
layers), averaged over heads, is summed per region (both model kinds: ``model.cls_attention``)
and averaged over the windows: an ``(R,)`` map summing to 1. A network's attention is the sum
over its regions; its **enrichment** is that mass over its share of the regions (1 = what a
uniform map gives it).

Before any network is called enriched, the map is tested against a uniform one
(:func:`brainlm.analysis.stats.distance_test`): each subject's map (the mean over its
recordings) minus the uniform map is that subject's deviation; the statistic is the total
variation distance of the mean deviation from uniform, over the regions (from ``1 / R``) and
over the networks (from each network's share of the regions), and its null flips the signs of
whole subjects' deviations (``--permutations``), what a uniform map plus each subject's noise
gives. The most enriched network is named only when the map differs from uniform over the
networks (p < 0.05); otherwise the headline says the map is not distinguishable from uniform,
with the distance and p.

The rivals, from the same timepoints: each region's **variance** and **lag-1 autocorrelation**
(a network's: the mean over its regions) and each network's **within-network connectivity**
(the mean correlation between two of its regions). The attention map is correlated with the
variance and autocorrelation maps across regions (Spearman; intervals resample subjects): a
map that follows amplitude says little beyond amplitude.

With ``--group``, every feature is contrasted between the two levels
(:mod:`brainlm.analysis.stats`: subject-level permutations, Benjamini-Hochberg FDR over the
networks). So that a difference amplitude already explains is said to be one, each network's
attention is also contrasted after removing what its variance and autocorrelation predict of it,
absolute and relative to the whole brain's (attention sums to 1, so a network loses attention
when another's amplitude grows; least squares across recordings): a difference in attention
that is gone once amplitude is removed is reported as explained by amplitude. The verdict compares how strongly
attention and its strongest rival separate the groups: the largest absolute effect size over
the networks, with the paired interval from resampling subjects.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from brainlm.data.maps import map_outputs
from brainlm.distributed import autocast_context
from brainlm.downstream.embed import recording_windows
from brainlm.errors import UserError
from brainlm.evaluate.protocol import SubjectBootstrap
from brainlm.evaluate.verdict import compare
from brainlm.options import at_least, option
from brainlm.progress import progress as progress_bar

from .common import Analysis, AnalysisOptions, check_column, open_analysis
from .plots import bar_figure, glass_brains
from .signals import STATISTICS, correlation_matrix, region_statistics, within_network_connectivity
from .stats import Groups, SubjectValues, distance_test, group_contrast, resolve_groups, subject_means

__all__ = ["AttentionOptions", "AttentionMaps", "attention_maps", "run_attention"]

RIVALS = {"variance": "signal variance", "autocorrelation": "lag-1 autocorrelation",
          "connectivity": "within-network FC"}
INITIAL = "CLS attention of the same model at initialisation"


def _layer(text: str) -> int | None:
    return None if str(text).lower() == "all" else int(text)


_layer.__name__ = "layer index or 'all'"


@dataclass(kw_only=True)
class AttentionOptions(AnalysisOptions):
    """``brainlm attention``: CLS attention per region and network, group contrasts beside signal statistics and FC."""

    group: str | None = option(None, "phenotype column to contrast (two levels; numbers with more are split at the "
                               "median)")
    levels: tuple[str, ...] = option((), "the two levels of --group to contrast, when it has more")
    layer: int | None = option(-1, "encoder layer: 0 the first, -1 the last, or 'all' (the mean over layers)",
                               parse=_layer)
    permutations: int = option(1000, "subject-level permutations per test (the group contrasts, and the map "
                               "against a uniform map)", check=at_least(0))


@dataclass
class AttentionMaps:
    """Per-recording maps from the same windows.

    Attributes:
        attention: ``(N, R)`` CLS attention per region (each row sums to 1).
        statistics: ``(N, 2, R)`` variance and lag-1 autocorrelation per region.
        connectivity: ``(N, K)`` within-network connectivity.
        meta: the ``N`` recordings (those with at least one window).
        num_windows: windows encoded in all.
        skipped: recordings shorter than one window.
    """

    attention: np.ndarray
    statistics: np.ndarray
    connectivity: np.ndarray
    meta: list[dict]
    num_windows: int
    skipped: list[str]

    @property
    def subjects(self) -> np.ndarray:
        return np.array([m["subject_id"] for m in self.meta])


def attention_maps(a: Analysis, layer: int | None = -1, model=None) -> AttentionMaps:
    """CLS attention (of ``model``, default the analysed one), signal statistics and within-network
    connectivity of every recording."""
    from brainlm.downstream import cls_attention

    model = a.model if model is None else model
    device = next(model.parameters()).device
    codes, K = a.networks.codes, a.networks.num_networks
    attn, stats, conn, meta, skipped, count = [], [], [], [], [], 0
    for m, ts in progress_bar(a.recordings, enabled=a.options.progress, total=len(a.recordings), desc="attention",
                              unit="rec"):
        windows = recording_windows(ts, a.window)  # (n, R, W)
        if not len(windows):
            skipped.append(m["recording_id"])
            continue
        per_window = []
        for start in range(0, len(windows), a.options.batch_size):
            with autocast_context(device, a.dtype):
                maps = cls_attention(model, windows[start : start + a.options.batch_size], a.recordings.coords, layer)
            per_window.append(maps.sum(-1))  # (B, R)
        span = ts[: len(windows) * a.window]
        attn.append(np.concatenate(per_window).mean(0))
        stats.append(region_statistics(span))
        conn.append(within_network_connectivity(correlation_matrix(span), codes, K))
        meta.append(m)
        count += len(windows)
    if not meta:
        raise UserError(f"no recording of {a.store.path} holds a window of {a.window} timepoints")
    return AttentionMaps(np.stack(attn), np.stack(stats), np.stack(conn), meta, count, skipped)


def _check_layer(a: Analysis, layer: int | None) -> None:
    """Refuse a layer the encoder does not have before any work: the model checks it on one blank window."""
    from brainlm.downstream import cls_attention

    cls_attention(a.model, np.zeros((1, a.store.num_regions, a.window), np.float32), a.recordings.coords, layer)


def _per_network(values: np.ndarray, codes: np.ndarray, K: int, reduce: str) -> np.ndarray:
    """``(N, R)`` -> ``(N, K)``: the sum (attention mass) or mean over each network's regions."""
    out = np.stack([values[:, codes == k].sum(1) for k in range(K)], 1)
    return out if reduce == "sum" else out / np.bincount(codes, minlength=K)


def _residual(y: np.ndarray, covariates: list[np.ndarray]) -> np.ndarray:
    """``y`` (N, K) minus its least-squares prediction from covariates (N, K) each, network by network
    (the mean of ``y`` kept)."""
    out = np.empty_like(y)
    for k in range(y.shape[1]):
        X = np.column_stack([np.ones(len(y))] + [c[:, k] for c in covariates])
        out[:, k] = y[:, k] - X @ np.linalg.lstsq(X, y[:, k], rcond=None)[0] + y[:, k].mean()
    return out


def _layer_name(layer: int | None) -> str:
    if layer is None:
        return "the mean over the encoder layers"
    return {-1: "the last encoder layer", 0: "the first encoder layer"}.get(layer, f"encoder layer {layer}")


def _amplitude_covariates(maps: AttentionMaps, codes: np.ndarray, K: int) -> list[np.ndarray]:
    """What could explain a network's attention, per recording ``(N, K)`` each: its variance and
    autocorrelation, and both relative to the whole brain's (attention sums to 1, so a network
    also loses attention when another one's amplitude grows)."""
    variance = _per_network(maps.statistics[:, 0], codes, K, "mean")
    autocorr = _per_network(maps.statistics[:, 1], codes, K, "mean")
    overall_var = maps.statistics[:, 0].mean(1, keepdims=True)
    overall_ac = maps.statistics[:, 1].mean(1, keepdims=True)
    return [variance, autocorr, variance / np.where(overall_var > 0, overall_var, 1.0), autocorr - overall_ac]


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic) if np.std(a) > 0 and np.std(b) > 0 else float("nan")


def _groups(store, options: AttentionOptions, recording_ids: list[str] | None = None) -> Groups:
    """The grouping of the analysed recordings (all of the split, or those in ``recording_ids``, in that order)."""
    rows = store.recordings.iloc[store.split_index(options.split)].set_index("recording_id", drop=False)
    if recording_ids is not None:
        rows = rows.loc[recording_ids]
    return resolve_groups(rows[options.group].tolist(), rows["subject_id"].astype(str).to_numpy(), options.group,
                          options.levels, where=f"{store.path}" + (f" ({options.split})" if options.split else ""))


def _check_inputs(options: AttentionOptions):
    def check(store, networks) -> None:
        if options.levels and options.group is None:
            raise UserError("--levels chooses two levels of --group: give --group too")
        if options.group is not None:
            check_column(store, options.group, "--group")
            _groups(store, options)
            networks.require(2, "the within-network connectivity contrasted with --group")

    return check


def run_attention(options: AttentionOptions) -> dict:
    """Run ``brainlm attention`` and write its report into ``options.out``; returns ``results.json``'s content."""
    o = options
    outputs = ["attention_regions.csv", "attention_networks.csv", "attention_recordings.csv", "attention_map.png",
               "attention_networks.png", *map_outputs("attention_map")]
    if o.group:
        outputs += ["attention_contrasts.csv", "attention_contrast_map.png", "attention_contrast_networks.png"]
    with open_analysis(o, outputs, check=_check_inputs(o)) as a:
        _check_layer(a, o.layer)
        maps = attention_maps(a, o.layer)
        report = a.report("CLS attention by region and network")
        _describe(a, maps, report, o)
        if o.group:
            initial = attention_maps(a, o.layer, a.initial.model) if a.initial is not None else None
            _contrast(a, maps, report, o, initial)
        return report.finish()


def _describe(a: Analysis, maps: AttentionMaps, report, o: AttentionOptions) -> None:
    """The maps, per region and per network, and their correlation with the signal statistics."""
    nets, names = a.networks, a.store.region_names
    layer = _layer_name(o.layer)
    regions, networks, correlations, num_resamples = _attention_tables(a, maps, o)
    mean_map, variance_map = regions["attention"].to_numpy(), regions[STATISTICS[0]].to_numpy()
    uniform = _uniformity(a, maps, o)
    v, ac = correlations["variance"], correlations["autocorrelation"]
    report.say(f"attention ({layer}): {_enrichment_text(networks, uniform)}; the map vs signal variance across "
               f"regions: {_spearman_text(v)}, vs lag-1 autocorrelation: {_spearman_text(ac)}")
    explained = [s for s in STATISTICS if correlations[s]["ci_low"] > 0 or correlations[s]["ci_high"] < 0]
    report.section(
        "Attention by network",
        f"CLS attention of {layer}, heads averaged, summed per region and averaged over {maps.num_windows} windows of "
        f"{len(maps.meta)} recordings, then over each subject's recordings; 95% intervals from {num_resamples} subject "
        "resamples. Enrichment: a network's attention over its share of the regions (1 = a uniform map).",
        f"Against a uniform map (total variation distance of the subjects' mean map; {o.permutations} sign flips of "
        f"whole subjects' deviations, {uniform['subjects']} subjects): over the regions "
        f"{_distance_text(uniform['regions'])}, over the networks {_distance_text(uniform['networks'])}. "
        + ("The map differs from uniform over the networks: the enrichments below are more than noise."
           if uniform["differs"] else "The map is not distinguishable from uniform over the networks: no network is "
           "enriched, whatever the table's point estimates say."),
        networks,
        "Beside it, the rivals: is the map the signal's amplitude or slowness? The Spearman correlation, across "
        "regions, of the attention map with each region's variance and lag-1 autocorrelation:",
        pd.DataFrame(correlations).T.reset_index().rename(columns={"index": "statistic"}),
        ("The map follows " + " and ".join(RIVALS[s] for s in explained) + " (the interval excludes 0): that part "
         "of it, the signal statistics already show.") if explained else
        "Neither correlation is distinguishable from 0: the map is not the signal's amplitude or slowness.")
    if maps.skipped:
        report.section("Skipped", f"{len(maps.skipped)} recordings shorter than one window: {', '.join(maps.skipped)}")
    report.tables["attention_regions.csv"] = regions
    report.tables["attention_networks.csv"] = networks
    report.tables["attention_recordings.csv"] = pd.concat(
        [pd.DataFrame(maps.meta)[["recording_id", "subject_id"]], pd.DataFrame(maps.attention, columns=names)], axis=1)
    report.figure("attention_map.png", "CLS attention and signal variance per region",
                  lambda: glass_brains([(mean_map, f"CLS attention ({layer})"),
                                        (variance_map, "signal variance (the rival)")], a.recordings.coords),
                  tight=False)
    report.region_map("attention_map", {"attention": mean_map, "variance": variance_map}, "CLS attention per region")
    report.figure("attention_networks.png", "attention per network with 95% intervals",
                  lambda: bar_figure(list(nets.names), {"enrichment": (networks["enrichment"],
                                                                       networks["enrichment_ci_low"],
                                                                       networks["enrichment_ci_high"])},
                                     ylabel="attention / share of regions", reference=1.0,
                                     title=f"CLS attention by network ({layer})"))
    report.results.update(layer="all" if o.layer is None else o.layer, recordings=len(maps.meta),
                          windows=maps.num_windows, skipped=maps.skipped, networks_attention=networks.to_dict("records"),
                          uniformity=uniform, map_correlations=correlations)


def _uniformity(a: Analysis, maps: AttentionMaps, o: AttentionOptions) -> dict:
    """The subjects' maps against a uniform map, over the regions and over the networks (module docstring);
    ``most_enriched`` is set only when the map differs from uniform over the networks."""
    nets = a.networks
    attention = subject_means(maps.attention, maps.subjects)[1]  # (S, R)
    R = attention.shape[1]
    share = nets.sizes() / R
    mass = _per_network(attention, nets.codes, nets.num_networks, "sum")  # (S, K)
    tests = {}
    for cells, values, expected in (("regions", attention, np.full(R, 1.0 / R)), ("networks", mass, share)):
        distance, p = distance_test(values, expected, permutations=o.permutations, seed=o.seed)
        tests[cells] = {"total_variation": distance, "p": p}
    differs = bool(tests["networks"]["p"] < 0.05)
    most = nets.names[int(np.argmax(mass.mean(0) / share))] if differs else None
    return {**tests, "subjects": len(attention), "permutations": o.permutations, "differs": differs,
            "most_enriched": most}


def _spearman_text(c: dict) -> str:
    """A correlation of maps with its interval, in words where there is none (a constant map)."""
    if not np.isfinite(c["spearman"]):
        return "no correlation (a map is constant)"
    interval = f" [{c['ci_low']:+.2f}, {c['ci_high']:+.2f}]" if np.isfinite(c["ci_low"]) else " (no interval)"
    return f"Spearman {c['spearman']:+.2f}{interval}"


def _distance_text(test: dict) -> str:
    p = f"p {test['p']:.3f}" if np.isfinite(test["p"]) else "no p (--permutations 0)"
    return f"{test['total_variation']:.3f}, sign-flip {p}"


def _enrichment_text(networks: pd.DataFrame, uniform: dict) -> str:
    """The most enriched network, only when the map differs from uniform over the networks."""
    test = (f"total variation from uniform over networks {_distance_text(uniform['networks'])} over "
            f"{uniform['subjects']} subjects")
    if uniform["most_enriched"] is None:
        return f"the map is not distinguishable from uniform ({test}): no network is enriched"
    top = networks.set_index("network", drop=False).loc[uniform["most_enriched"]]
    return (f"the map differs from uniform ({test}); most enriched network {top.network} ({top.enrichment:.3f} times "
            f"its share of regions [95% CI {top.enrichment_ci_low:.3f}, {top.enrichment_ci_high:.3f}])")


def _readings(tables: dict) -> list[str]:
    """Per network: no difference in attention, one beyond what amplitude explains, or one that amplitude explains."""
    readings = []
    for att, adj in zip(tables["attention"].itertuples(), tables["attention_adjusted"].itertuples()):
        if not att.q < 0.05:
            readings.append("no difference in attention")
        elif adj.p < 0.05:
            readings.append("attention differs beyond what variance and autocorrelation explain")
        else:
            readings.append("attention differs, but amplitude explains it: gone once variance and autocorrelation "
                            "are removed")
    return readings


def _contrast_verdict(features: dict, groups, o: AttentionOptions):
    """How strongly attention separates the groups (its largest |d| over networks) against the
    strongest of the rivals and the same model's attention at initialisation (``features["initial"]``,
    when given), on the same subject resamples."""
    candidates = {**RIVALS, **({"initial": INITIAL} if "initial" in features else {})}
    values = {name: SubjectValues.of(features[name], groups) for name in ("attention", *candidates)}
    boot = values["attention"].bootstrap(o.bootstrap, o.seed)

    def strongest(name):
        def stat(idx):
            d = np.abs(values[name].effect_size(idx))
            return float(np.nanmax(d)) if np.isfinite(d).any() else float("nan")

        return stat

    everyone = np.arange(len(values["attention"].subjects))
    rival = max(candidates, key=lambda n: strongest(n)(everyone))
    return compare("CLS attention", candidates[rival], strongest("attention"), strongest(rival), boot, len(everyone),
                   metric="largest |effect size| over networks")


def _contrast_figures(a: Analysis, report, o: AttentionOptions, tables: dict, regions: pd.DataFrame, groups) -> None:
    first, second = groups.levels
    report.figure("attention_contrast_map.png", f"difference in CLS attention per region, {second} minus {first}",
                  lambda: glass_brains([(regions["difference"].to_numpy(), f"CLS attention: {second} minus {first}")],
                                       a.recordings.coords, diverging=True), tight=False)
    series, marks = {}, {}
    for name, label in (("attention", "CLS attention"), *RIVALS.items()):
        t = tables[name]
        series[label] = (t["effect_size"], t["effect_ci_low"], t["effect_ci_high"])
        marks[label] = ["*" if q < 0.05 else "" for q in t["q"]]
    report.figure("attention_contrast_networks.png", "effect size per network: attention and its rivals",
                  lambda: bar_figure(list(a.networks.names), series, ylabel=f"effect size d ({second} - {first})",
                                     reference=0.0, marks=marks,
                                     title=f"{o.group}: effect size per network, 95% subject intervals (* q < 0.05)"))


def _attention_tables(a: Analysis, maps: AttentionMaps, o: AttentionOptions):
    """Attention per region and per network with subject intervals, and the map's correlation with each
    signal statistic; returns (regions, networks, correlations, number of resamples)."""
    nets, names = a.networks, a.store.region_names
    codes, K, R = nets.codes, nets.num_networks, len(names)
    subjects, attention = subject_means(maps.attention, maps.subjects)  # (S,), (S, R)
    statistics = subject_means(maps.statistics, maps.subjects)[1]  # (S, 2, R)
    boot = SubjectBootstrap(subjects, o.bootstrap, o.seed)
    draws = np.stack([attention[idx].mean(0) for idx in boot.resamples]) if len(boot) else np.full((1, R), np.nan)
    mean_map, stat_maps = attention.mean(0), statistics.mean(0)  # (R,), (2, R)
    regions = pd.DataFrame({"region_index": np.arange(R), "region": names, "network": list(nets.labels),
                            "attention": mean_map, "ci_low": np.percentile(draws, 2.5, 0),
                            "ci_high": np.percentile(draws, 97.5, 0),
                            **{s: stat_maps[i] for i, s in enumerate(STATISTICS)}})
    share = nets.sizes() / R
    mass = _per_network(draws, codes, K, "sum")  # (n_boot, K)
    networks = pd.DataFrame({"network": list(nets.names), "regions": nets.sizes(),
                             "attention": _per_network(mean_map[None], codes, K, "sum")[0]})
    networks["enrichment"] = networks["attention"] / share
    networks["enrichment_ci_low"] = np.percentile(mass, 2.5, 0) / share
    networks["enrichment_ci_high"] = np.percentile(mass, 97.5, 0) / share
    correlations = {}
    for i, s in enumerate(STATISTICS):
        rs = np.array([_spearman(attention[idx].mean(0), statistics[idx, i].mean(0)) for idx in boot.resamples])
        lo, hi = boot.interval(rs) if len(boot) else (np.nan, np.nan)
        correlations[s] = {"spearman": _spearman(mean_map, stat_maps[i]), "ci_low": lo, "ci_high": hi}

    return regions, networks, correlations, len(boot)


def _contrast(a: Analysis, maps: AttentionMaps, report, o: AttentionOptions, initial: AttentionMaps | None = None) -> None:
    """Group contrasts of attention and of its rivals, per network (FDR) and per region; ``initial``:
    the same recordings' maps from the model at initialisation, which the verdict also weighs."""
    nets = a.networks
    codes, K = nets.codes, nets.num_networks
    groups = _groups(a.store, o, [m["recording_id"] for m in maps.meta])
    attention = _per_network(maps.attention, codes, K, "sum")
    variance = _per_network(maps.statistics[:, 0], codes, K, "mean")
    autocorr = _per_network(maps.statistics[:, 1], codes, K, "mean")
    features = {"attention": attention, "attention_adjusted": _residual(attention, _amplitude_covariates(maps, codes, K)),
                "variance": variance, "autocorrelation": autocorr, "connectivity": maps.connectivity}
    kw = dict(permutations=o.permutations, bootstrap=o.bootstrap, seed=o.seed)
    tables = {name: group_contrast(v, groups, nets.names, **kw) for name, v in features.items()}
    regions = group_contrast(maps.attention, groups, a.store.region_names, **kw)
    first, second = groups.levels
    readings = _readings(tables)
    summary = pd.DataFrame({"network": list(nets.names)})
    for name, t in tables.items():
        summary[f"{name} d"] = t["effect_size"].to_numpy()
        summary[f"{name} q"] = t["q"].to_numpy()
    summary["reading"] = readings
    long = pd.concat([t.assign(measure=name) for name, t in tables.items()]
                     + [regions.assign(measure="attention per region")], ignore_index=True)
    report.tables["attention_contrasts.csv"] = long[["measure", *[c for c in long.columns if c != "measure"]]]

    extra = {"initial": _per_network(initial.attention, codes, K, "sum")} if initial is not None else {}
    verdict = _contrast_verdict({**features, **extra}, groups, o)
    found = [n for n, q in zip(nets.names, tables["attention"]["q"]) if q < 0.05]
    explained = [n for n, r in zip(nets.names, readings) if "amplitude explains" in r]
    report.say(f"attention contrast, {groups.describe()}: networks with q < 0.05: {', '.join(found) or 'none'}"
               + (f"; explained by amplitude: {', '.join(explained)}" if explained else ""))
    report.verdict(verdict, f"on {o.group}", say=True)
    report.section(
        f"Contrast: {o.group}",
        f"{groups.describe()}; {o.permutations} permutations, Benjamini-Hochberg FDR over the {K} networks (q); "
        f"effect sizes d ({'d_z of the within-subject differences' if groups.design == 'within' else 'Cohen'}; "
        f"{second} minus {first}). `attention_adjusted`: each network's attention after removing what its variance "
        "and autocorrelation, absolute and relative to the whole brain's, predict (least squares across recordings).",
        summary,
        f"Every measure per network (the mean per level, {second} minus {first} with its 95% subject interval, p, q) "
        "and attention per region: `attention_contrasts.csv`.",
        f"Verdict: {verdict.line(f'on {o.group}')}.")
    _contrast_figures(a, report, o, tables, regions, groups)
    report.results["contrast"] = {"groups": groups.describe(), "design": groups.design, "levels": list(groups.levels),
                                  "networks_q05": found, "explained_by_amplitude": explained,
                                  "verdict": verdict.to_dict(), "per_network": summary.to_dict("records"),
                                  "tables": {name: t.to_dict("records") for name, t in tables.items()}}

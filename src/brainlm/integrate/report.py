"""Short reports with PNG plots (matplotlib, Agg backend) for each analysis (:class:`brainlm.report.Report`).

Each ``write_*_report(analysis, out_dir, ...)`` writes ``<out_dir>/report.md``, ``report.html`` and
``results.json`` (the tables of the report) plus its figures next to it, and returns the report
path. ``notes`` lines (data description, join summary) go at the top.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from brainlm.figures import interval_errors, pyplot
from brainlm.report import Report


def _plt():
    return pyplot()


def _report(title: str, notes) -> Report:
    """A report whose ``results.json`` holds its tables by name (:func:`_table`)."""
    return Report(title, notes or [], {"title": title, "tables": {}})


def _table(report: Report, name: str, frame) -> None:
    report.results["tables"][name] = frame.reset_index(drop=True).to_dict("records")
    report.table(frame, key=name)


def write_cca_report(analysis, out_dir, title: str = "CCA: brain vs genetic embeddings", notes=None) -> Path:
    """Report of a fitted :class:`~brainlm.integrate.cca.CCAAnalysis`: table, null histogram."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    k = np.arange(1, analysis.n_components + 1)
    axes[0].bar(k, analysis.test_corr_, yerr=analysis.fold_corr_.std(0), color="tab:blue", label="held-out r")
    if analysis.n_permutations:
        axes[0].plot(k, np.percentile(analysis.null_corr_, 95, axis=0), "k_", ms=20, label="null 95th pct")
        axes[1].hist(analysis.null_corr_[:, 0], bins=30, color="0.7")
    axes[1].axvline(analysis.test_corr_[0], color="tab:red", label="observed")
    axes[0].set(xlabel="component", ylabel="held-out canonical r", xticks=k)
    axes[0].legend(fontsize=8)
    p_title = f"p = {analysis.p_value_:.3g} ({analysis.n_permutations} permutations)"
    axes[1].set(xlabel="held-out r (component 1)", ylabel="permutations", title=p_title)
    axes[1].legend(fontsize=8)
    report = _report(title, notes)
    report.paragraph(
        f"{len(analysis.folds_)}-fold cross-validation, {analysis.n_permutations} subject-label permutations; "
        "held-out r is the correlation of the canonical variates of held-out subjects, averaged over folds; "
        "stability is the mean |cosine| of fold weight vectors (1 = same direction in every fold).")
    _table(report, "cca", analysis.summary())
    report.figure("cca.png", "held-out canonical correlations and permutation null", fig, dpi=110)
    return report.write(out_dir)


def write_fusion_report(analysis, out_dir, title: str = "Late fusion: genetic vs brain vs both", notes=None) -> Path:
    """Report of a fitted :class:`~brainlm.integrate.fusion.FusionAnalysis`: tables, CI plot."""
    plt = _plt()
    main = analysis.gains_.metric.iloc[0]
    res = analysis.results_
    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    labels = [f"{r.features}\n{r.model}" for r in res.itertuples()]
    val = res[main].to_numpy()
    err = interval_errors(val, res[f"{main}_lo"], res[f"{main}_hi"])
    colors = [{"genetic": "tab:green", "brain": "tab:blue", "fusion": "tab:purple"}[f] for f in res.features]
    ax.bar(range(len(res)), val, yerr=err, color=colors, capsize=3)
    ax.axhline(0.5 if main == "auroc" else 0.0, color="k", lw=0.8, ls="--")
    ax.set_xticks(range(len(res)), labels, fontsize=7)
    ax.set_ylabel(main.upper() if main == "auroc" else "R^2")
    report = _report(title, notes)
    report.paragraph(
        f"Task: {analysis.task_}; {len(analysis.folds_)} subject-grouped folds; out-of-fold predictions scored once; "
        f"95% bootstrap intervals over {analysis.n_bootstrap} subject resamples.")
    report.section("Performance")
    _table(report, "performance", res)
    report.section("Fusion minus best single modality (paired bootstrap)")
    _table(report, "gains", analysis.gains_)
    report.figure("fusion.png", "performance with 95% intervals", fig, dpi=110)
    return report.write(out_dir)


def write_contrastive_report(
    analysis, out_dir, title: str = "Two-tower contrastive alignment", notes=None
) -> Path:
    """Report of a fitted :class:`~brainlm.integrate.contrastive.ContrastiveAnalysis`."""
    plt = _plt()
    m = analysis.metrics_
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    ks = [1, 5, 10]
    n_cand = m.n_candidates.iloc[0]
    for _, row in m.iterrows():
        axes[0].plot(ks, [row[f"recall@{k}"] for k in ks], "o-", label=row["direction"])
    axes[0].plot(ks, [min(1.0, k / n_cand) for k in ks], "k--", label="chance")
    axes[0].set(xlabel="k", ylabel="recall@k (held-out)", xticks=ks, ylim=(0, 1.05))
    axes[0].legend(fontsize=8)
    for f, al in enumerate(analysis.aligners_):
        axes[1].plot(al.history_.epoch, al.history_.val_loss, label=f"fold {f}")
    axes[1].set(xlabel="epoch", ylabel="validation InfoNCE")
    best = [al.best_epoch_ for al in analysis.aligners_]
    temps = [al.temperature_ for al in analysis.aligners_]
    report = _report(title, notes)
    report.paragraph(
        f"{len(analysis.folds_)}-fold cross-validation; candidates are the held-out subjects of a fold "
        f"(about {n_cand:.0f}); null: the same similarity matrix scored against {analysis.n_null} shuffled pairings "
        "(`null_*`, `p_*`)"
        + ("; `shuffled_fit_*`: towers trained on shuffled training pairs, scored on the true held-out pairs. "
           if analysis.shuffled_fit else ". ")
        + f"Best epochs per fold: {best}; learnt temperatures: {[round(t, 3) for t in temps]}.")
    _table(report, "retrieval", m)
    report.figure("contrastive.png", "retrieval and validation loss", fig, dpi=110)
    return report.write(out_dir)

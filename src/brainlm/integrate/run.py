"""File-to-report pipelines behind ``brainlm integrate {cca,fusion,contrastive}``.

Each ``run_*`` reads the two embedding tables (and covariates), joins them on subject ID,
runs one analysis, and writes ``report.md``, its plots and CSV tables into ``out_dir``.
The join summary (matched / unmatched IDs per input) heads every report.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from brainlm.integrate.cca import CCAAnalysis
from brainlm.integrate.contrastive import ContrastiveAligner, ContrastiveAnalysis
from brainlm.integrate.fusion import FusionAnalysis
from brainlm.integrate.io import JoinedCohort, join_modalities, read_covariates, read_embedding_table
from brainlm.integrate.report import write_cca_report, write_contrastive_report, write_fusion_report
from brainlm.errors import MissingInputError, UserError


def load_cohort(
    brain,
    genetic,
    covariates=None,
    id_col: str = "subject_id",
    covariate_cols: list[str] | None = None,
    aggregate: str = "auto",
) -> JoinedCohort:
    """Read and join a brain table, a genetic table and optional covariates (paths)."""
    ids_b, B = read_embedding_table(brain, id_col, aggregate)
    ids_g, G = read_embedding_table(genetic, id_col, aggregate)
    cov = None if covariates is None else read_covariates(covariates, id_col, covariate_cols)
    return join_modalities(ids_b, B, ids_g, G, cov)


def _notes(cohort: JoinedCohort, brain, genetic) -> list[str]:
    return [
        f"Brain embeddings: `{brain}` ({cohort.A.shape[1]} dims). Genetic embeddings: `{genetic}` "
        f"({cohort.B.shape[1]} dims). Covariates: {', '.join(cohort.covariate_names) or 'none'}.",
        cohort.summary().replace("\n", "  \n"),
    ]


def run_cca(
    brain,
    genetic,
    out_dir,
    covariates=None,
    *,
    n_components: int = 2,
    n_splits: int = 5,
    n_permutations: int = 1000,
    scale: str = "zscore",
    pca_components: int | None = None,
    reg: float = 0.01,
    seed: int = 0,
    id_col: str = "subject_id",
) -> CCAAnalysis:
    """CCA with permutation test from files; writes ``report.md``, ``cca.png``, ``cca.csv``."""
    cohort = load_cohort(brain, genetic, covariates, id_col)
    cca = CCAAnalysis(n_components, n_splits, n_permutations, scale, pca_components, reg, seed)
    cca.fit(cohort.A, cohort.B, cohort.covariates)
    out_dir = Path(out_dir)
    write_cca_report(cca, out_dir, notes=_notes(cohort, brain, genetic))
    cca.summary().to_csv(out_dir / "cca.csv", index=False)
    return cca


def run_fusion(
    brain,
    genetic,
    phenotypes,
    target: str,
    out_dir,
    covariates=None,
    *,
    task: str = "auto",
    models: tuple[str, ...] = ("linear", "gbm"),
    n_splits: int = 5,
    n_bootstrap: int = 1000,
    scale: str = "zscore",
    pca_components: int | None = None,
    seed: int = 0,
    id_col: str = "subject_id",
) -> FusionAnalysis:
    """Late-fusion prediction of ``target`` (a column of the ``phenotypes`` TSV/CSV) from files.

    Subjects without a target value are left out and listed in the report.
    """
    cohort = load_cohort(brain, genetic, covariates, id_col)
    phenotypes = Path(phenotypes)
    if not phenotypes.exists():
        raise MissingInputError(f"phenotype file not found: {phenotypes}")
    pheno = pd.read_csv(phenotypes, sep="," if phenotypes.suffix.lower() == ".csv" else "\t")
    if id_col not in pheno.columns or target not in pheno.columns:
        raise UserError(f"{phenotypes}: needs columns {id_col!r} and {target!r}")
    pheno[id_col] = pheno[id_col].astype(str)
    if pheno[id_col].duplicated().any():
        raise UserError(f"{phenotypes}: duplicated subject IDs")
    y = pheno.dropna(subset=[target]).set_index(id_col)[target]
    keep = np.isin(cohort.ids, y.index)
    missing = cohort.ids[~keep].tolist()
    if keep.sum() == 0:
        raise UserError(f"no joined subject has a value of {target!r} in {phenotypes}")
    fusion = FusionAnalysis(task, tuple(models), n_splits, n_bootstrap, scale, pca_components, seed)
    cov = None if cohort.covariates is None else cohort.covariates[keep]
    fusion.fit(cohort.A[keep], cohort.B[keep], y.loc[cohort.ids[keep]].to_numpy(), cov)
    out_dir = Path(out_dir)
    notes = _notes(cohort, brain, genetic) + [
        f"Target `{target}` from `{phenotypes}`; {len(missing)} joined subjects without it"
        + (f": {', '.join(missing[:10])}" if missing else ".")
    ]
    write_fusion_report(fusion, out_dir, notes=notes)
    fusion.results_.to_csv(out_dir / "fusion.csv", index=False)
    fusion.gains_.to_csv(out_dir / "fusion_gain.csv", index=False)
    return fusion


def run_contrastive(
    brain,
    genetic,
    out_dir,
    covariates=None,
    *,
    n_splits: int = 5,
    n_null: int = 1000,
    shuffled_fit: bool = True,
    export: bool = True,
    seed: int = 0,
    id_col: str = "subject_id",
    **aligner_params,
) -> ContrastiveAnalysis:
    """Two-tower alignment from files; writes the report, ``contrastive.csv`` and, with
    ``export``, ``brain_shared.parquet`` / ``genetic_shared.parquet`` ([N, 512]) from
    projectors refitted on all subjects.

    ``aligner_params`` go to :class:`~brainlm.integrate.contrastive.ContrastiveAligner`.
    """
    cohort = load_cohort(brain, genetic, covariates, id_col)
    analysis = ContrastiveAnalysis(
        n_splits=n_splits, n_null=n_null, shuffled_fit=shuffled_fit, random_state=seed, **aligner_params
    )
    analysis.fit(cohort.A, cohort.B, cohort.covariates)
    out_dir = Path(out_dir)
    notes = _notes(cohort, brain, genetic)
    if export:
        final = ContrastiveAligner(**{"random_state": seed, **aligner_params})
        final.fit(cohort.A, cohort.B, cohort.covariates)
        paths = final.export(out_dir, cohort.ids, cohort.A, cohort.B, cohort.covariates)
        notes.append(
            "Shared-space tables from projectors refitted on all subjects: "
            + ", ".join(f"`{p.name}`" for p in paths.values())
        )
    write_contrastive_report(analysis, out_dir, notes=notes)
    analysis.metrics_.to_csv(out_dir / "contrastive.csv", index=False)
    return analysis

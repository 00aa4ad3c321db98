"""File-to-report pipelines behind ``brainlm integrate {cca,fusion,contrastive}``.

Each ``run_*`` reads the two embedding tables (and covariates), joins them on subject ID,
runs one analysis, and writes ``report.md``, its plots and CSV tables into ``out_dir``.
The join summary (matched / unmatched IDs per input) heads every report.
"""

from __future__ import annotations

import numpy as np

from brainlm.errors import UserError
from brainlm.integrate.cca import CCAAnalysis
from brainlm.integrate.contrastive import ContrastiveAligner, ContrastiveAnalysis
from brainlm.integrate.fusion import FusionAnalysis
from brainlm.integrate.io import (
    JoinedCohort,
    join_modalities,
    read_covariates,
    read_embedding_table,
)
from brainlm.integrate.report import (
    write_cca_report,
    write_contrastive_report,
    write_fusion_report,
)
from brainlm.io import output_folder, read_subject_table, write_csv


def load_cohort(
    brain,
    genetic,
    covariates=None,
    id_col: str = "subject_id",
    covariate_cols: list[str] | None = None,
    aggregate: str = "auto",
) -> JoinedCohort:
    """Read and join a brain table, a genetic table and optional covariates (paths)."""
    ids_b, B = read_embedding_table(brain, id_col, aggregate, flag="--brain")
    ids_g, G = read_embedding_table(genetic, id_col, aggregate, flag="--genetic")
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
    overwrite: bool = False,
) -> CCAAnalysis:
    """CCA with permutation test from files; writes ``report.md``, ``cca.png``, ``cca.csv``."""
    with output_folder(out_dir, ["report.md", "cca.png", "cca.csv"], overwrite=overwrite) as out:
        cohort = load_cohort(brain, genetic, covariates, id_col)
        cca = CCAAnalysis(n_components, n_splits, n_permutations, scale, pca_components, reg, seed)
        cca.fit(cohort.A, cohort.B, cohort.covariates)
        write_cca_report(cca, out, notes=_notes(cohort, brain, genetic))
        write_csv(cca.summary(), out / "cca.csv")
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
    overwrite: bool = False,
) -> FusionAnalysis:
    """Late-fusion prediction of ``target`` (a column of the ``phenotypes`` table) from files.

    Subjects without a target value are left out and listed in the report.
    """
    outputs = ["report.md", "fusion.png", "fusion.csv", "fusion_gain.csv"]
    with output_folder(out_dir, outputs, overwrite=overwrite) as out:
        cohort = load_cohort(brain, genetic, covariates, id_col)
        pheno = read_subject_table(phenotypes, id_col=id_col, columns=[target], flag="--phenotypes")
        y = pheno[target].dropna()
        keep = np.isin(cohort.ids, y.index)
        missing = cohort.ids[~keep].tolist()
        if keep.sum() == 0:
            raise UserError(f"--phenotypes {phenotypes}: no joined subject has a value of {target!r}")
        fusion = FusionAnalysis(task, tuple(models), n_splits, n_bootstrap, scale, pca_components, seed)
        cov = None if cohort.covariates is None else cohort.covariates[keep]
        fusion.fit(cohort.A[keep], cohort.B[keep], y.loc[cohort.ids[keep]].to_numpy(), cov)
        notes = _notes(cohort, brain, genetic) + [
            f"Target `{target}` from `{phenotypes}`; {len(missing)} joined subjects without it"
            + (f": {', '.join(missing[:10])}" if missing else ".")
        ]
        write_fusion_report(fusion, out, notes=notes)
        write_csv(fusion.results_, out / "fusion.csv")
        write_csv(fusion.gains_, out / "fusion_gain.csv")
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
    overwrite: bool = False,
    **aligner_params,
) -> ContrastiveAnalysis:
    """Two-tower alignment from files; writes the report, ``contrastive.csv`` and, with
    ``export``, ``brain_shared.parquet`` / ``genetic_shared.parquet`` ([N, 512]) from
    projectors refitted on all subjects.

    ``aligner_params`` go to :class:`~brainlm.integrate.contrastive.ContrastiveAligner`.
    """
    outputs = ["report.md", "contrastive.png", "contrastive.csv", "brain_shared.parquet", "genetic_shared.parquet"]
    with output_folder(out_dir, outputs, overwrite=overwrite) as out:
        cohort = load_cohort(brain, genetic, covariates, id_col)
        analysis = ContrastiveAnalysis(
            n_splits=n_splits, n_null=n_null, shuffled_fit=shuffled_fit, random_state=seed, **aligner_params
        )
        analysis.fit(cohort.A, cohort.B, cohort.covariates)
        notes = _notes(cohort, brain, genetic)
        if export:
            final = ContrastiveAligner(**{"random_state": seed, **aligner_params})
            final.fit(cohort.A, cohort.B, cohort.covariates)
            paths = final.export(out, cohort.ids, cohort.A, cohort.B, cohort.covariates)
            notes.append(
                "Shared-space tables from projectors refitted on all subjects: "
                + ", ".join(f"`{p.name}`" for p in paths.values())
            )
        write_contrastive_report(analysis, out, notes=notes)
        write_csv(analysis.metrics_, out / "contrastive.csv")
    return analysis

"""File-to-report pipelines behind ``brainlm integrate {cca,fusion,contrastive}``.

Each ``run_*`` reads the two embedding tables (and covariates), joins them on subject ID,
runs one analysis, and writes ``report.md``, its plots and CSV tables into ``out_dir``.
The join summary (matched / unmatched IDs per input) heads every report.
"""

from __future__ import annotations

from dataclasses import dataclass

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
from brainlm.evaluate.protocol import TASK_CHOICES
from brainlm.io import output_folder, read_subject_table, write_csv
from brainlm.options import Options, at_least, option, positive

__all__ = ["IntegrateOptions", "CCAOptions", "FusionOptions", "ContrastiveOptions", "run_cca", "run_fusion",
           "run_contrastive", "load_cohort"]

SCALES = ("zscore", "layernorm", "none")


@dataclass(kw_only=True)
class IntegrateOptions(Options):
    """What every brain-genetics analysis takes: two embedding tables keyed by subject, and where to report."""

    brain: str = option(help="brain embedding table (.parquet/.csv/.tsv/.npy)")
    genetic: str = option(help="genetic embedding table, keyed by the same subject IDs")
    covariates: str | None = option(None, "covariate TSV with a subject_id column (regressed out per fold)")
    out: str = option(help="output folder for the report, plots and tables")
    id_col: str = option("subject_id", "subject-ID column name")
    folds: int = option(5, "cross-validation folds", check=at_least(2))
    seed: int = option(0, "seed of folds, permutations and training")
    overwrite: bool = option(False, "replace the outputs of an earlier run in --out")
    pca: int | None = option(None, "PCA dimensions per modality (fitted on training folds)",
                             check=at_least(1, optional=True))
    scale: str = option("zscore", "per-modality scaling", choices=SCALES)


@dataclass(kw_only=True)
class CCAOptions(IntegrateOptions):
    """Cross-validated CCA with subject-label permutation tests."""

    components: int = option(2, "canonical pairs", check=positive)
    permutations: int = option(1000, "subject-label permutations", check=positive)
    reg: float = option(0.01, "covariance shrinkage", check=at_least(0.0))


@dataclass(kw_only=True)
class FusionOptions(IntegrateOptions):
    """Genetic vs brain vs concatenated prediction of a phenotype (late fusion)."""

    phenotypes: str = option(help="TSV/CSV with subject_id and the target column")
    target: str = option(help="target column")
    task: str = option("auto", "auto: classification for text, boolean or two-valued targets", choices=TASK_CHOICES)
    models: tuple[str, ...] = option(("linear", "gbm"), "comma-separated", choices=("linear", "gbm"))
    bootstrap: int = option(1000, "subject resamples for the intervals", check=at_least(0))


@dataclass(kw_only=True)
class ContrastiveOptions(IntegrateOptions):
    """Two-tower InfoNCE alignment, held-out retrieval, shared-space export."""

    null: int = option(1000, "shuffled pairings for the null", check=positive)
    epochs: int = option(200, "maximum epochs", check=positive)
    patience: int = option(10, "early-stopping patience (epochs)", check=positive)
    batch_size: int = option(64, "pairs per step", check=positive)
    lr: float = option(1e-3, "learning rate", check=at_least(0.0))
    device: str = option("cpu", "cpu, cuda, cuda:1 ...")
    export: bool = option(True, "skip the [N, 512] shared-space tables", flag="--no-export")
    shuffled_fit: bool = option(True, "skip the towers trained on shuffled pairs", flag="--no-shuffled-fit")


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


def run_cca(options: CCAOptions) -> CCAAnalysis:
    """CCA with permutation test from files; writes ``report.md``, ``cca.png``, ``cca.csv``."""
    o = options
    with output_folder(o.out, ["report.md", "cca.png", "cca.csv"], overwrite=o.overwrite) as out:
        cohort = load_cohort(o.brain, o.genetic, o.covariates, o.id_col)
        cca = CCAAnalysis(o.components, o.folds, o.permutations, o.scale, o.pca, o.reg, o.seed)
        cca.fit(cohort.A, cohort.B, cohort.covariates)
        write_cca_report(cca, out, notes=_notes(cohort, o.brain, o.genetic))
        write_csv(cca.summary(), out / "cca.csv")
    print(f"held-out r1 = {cca.test_corr_[0]:.3f}, p = {cca.p_value_:.3g}; report in {o.out}")
    return cca


def run_fusion(options: FusionOptions) -> FusionAnalysis:
    """Late-fusion prediction of ``target`` (a column of the ``phenotypes`` table) from files.

    Subjects without a target value are left out and listed in the report.
    """
    o = options
    brain, genetic, phenotypes, target = o.brain, o.genetic, o.phenotypes, o.target
    outputs = ["report.md", "fusion.png", "fusion.csv", "fusion_gain.csv"]
    with output_folder(o.out, outputs, overwrite=o.overwrite) as out:
        cohort = load_cohort(brain, genetic, o.covariates, o.id_col)
        pheno = read_subject_table(phenotypes, id_col=o.id_col, columns=[target], flag="--phenotypes")
        y = pheno[target].dropna()
        keep = np.isin(cohort.ids, y.index)
        missing = cohort.ids[~keep].tolist()
        if keep.sum() == 0:
            raise UserError(f"--phenotypes {phenotypes}: no joined subject has a value of {target!r}")
        fusion = FusionAnalysis(o.task, tuple(o.models), o.folds, o.bootstrap, o.scale, o.pca, o.seed)
        cov = None if cohort.covariates is None else cohort.covariates[keep]
        fusion.fit(cohort.A[keep], cohort.B[keep], y.loc[cohort.ids[keep]].to_numpy(), cov)
        notes = _notes(cohort, brain, genetic) + [
            f"Target `{target}` from `{phenotypes}`; {len(missing)} joined subjects without it"
            + (f": {', '.join(missing[:10])}" if missing else ".")
        ]
        write_fusion_report(fusion, out, notes=notes)
        write_csv(fusion.results_, out / "fusion.csv")
        write_csv(fusion.gains_, out / "fusion_gain.csv")
    print(fusion.gains_.to_string(index=False))
    return fusion


def run_contrastive(options: ContrastiveOptions) -> ContrastiveAnalysis:
    """Two-tower alignment from files; writes the report, ``contrastive.csv`` and, with
    ``export``, ``brain_shared.parquet`` / ``genetic_shared.parquet`` ([N, 512]) from
    projectors refitted on all subjects.

    The training settings go to :class:`~brainlm.integrate.contrastive.ContrastiveAligner`.
    """
    o = options
    brain, genetic, seed = o.brain, o.genetic, o.seed
    aligner_params = dict(pca_components=o.pca, scale=o.scale, max_epochs=o.epochs, patience=o.patience,
                          batch_size=o.batch_size, lr=o.lr, device=o.device)
    outputs = ["report.md", "contrastive.png", "contrastive.csv", "brain_shared.parquet", "genetic_shared.parquet"]
    with output_folder(o.out, outputs, overwrite=o.overwrite) as out:
        cohort = load_cohort(brain, genetic, o.covariates, o.id_col)
        analysis = ContrastiveAnalysis(
            n_splits=o.folds, n_null=o.null, shuffled_fit=o.shuffled_fit, random_state=seed, **aligner_params
        )
        analysis.fit(cohort.A, cohort.B, cohort.covariates)
        notes = _notes(cohort, brain, genetic)
        if o.export:
            final = ContrastiveAligner(**{"random_state": seed, **aligner_params})
            final.fit(cohort.A, cohort.B, cohort.covariates)
            paths = final.export(out, cohort.ids, cohort.A, cohort.B, cohort.covariates)
            notes.append(
                "Shared-space tables from projectors refitted on all subjects: "
                + ", ".join(f"`{p.name}`" for p in paths.values())
            )
        write_contrastive_report(analysis, out, notes=notes)
        write_csv(analysis.metrics_, out / "contrastive.csv")
    print(analysis.metrics_[["direction", "recall@1", "chance_recall@1", "mrr", "p_recall@1"]].to_string(index=False))
    return analysis

"""Brain-genetics integration: shared latent space, late fusion, CCA, contrastive alignment.

Works on any two embedding tables keyed by subject ID (BrainLM embeddings from
``brainlm embed``, DNA-model embeddings from ``brainlm embed-dna`` or elsewhere).

- :mod:`~brainlm.integrate.io`: read/write embedding tables, covariates, the subject join.
- :mod:`~brainlm.integrate.preprocess`: per-modality scaling, covariate residualisation, PCA.
- :mod:`~brainlm.integrate.cca`: cross-validated CCA with permutation p-values.
- :mod:`~brainlm.integrate.fusion`: genetic vs brain vs fused prediction.
- :mod:`~brainlm.integrate.contrastive`: two-tower InfoNCE alignment and retrieval.
- :mod:`~brainlm.integrate.synthetic`: seeded cohorts with a planted shared factor.
- :mod:`~brainlm.integrate.dna`: reverse-complement averaging, local DNA-model embedding.
- :mod:`~brainlm.integrate.run` / :mod:`~brainlm.integrate.demo`: file pipelines, real-data demo.
"""

from brainlm.integrate.cca import CCAAnalysis, RegularizedCCA
from brainlm.integrate.contrastive import (
    ContrastiveAligner,
    ContrastiveAnalysis,
    Projector,
    TwoTower,
    info_nce,
    retrieval_metrics,
)
from brainlm.integrate.demo import load_demo_subjects, run_real_demo
from brainlm.integrate.dna import (
    average_strands,
    embed_dna,
    embed_dna_to_table,
    read_fasta,
    reverse_complement,
    write_dna_table,
)
from brainlm.integrate.fusion import FusionAnalysis
from brainlm.integrate.io import (
    JoinedCohort,
    check_table,
    encode_covariates,
    join_modalities,
    read_covariates,
    read_embedding_table,
    write_embedding_table,
)
from brainlm.integrate.preprocess import (
    CovariateResidualizer,
    ModalityPreprocessor,
    ModalityScaler,
)
from brainlm.integrate.report import (
    write_cca_report,
    write_contrastive_report,
    write_fusion_report,
)
from brainlm.integrate.run import load_cohort, run_cca, run_contrastive, run_fusion
from brainlm.integrate.synthetic import (
    SyntheticCohort,
    make_null_cohort,
    make_synthetic_cohort,
)

__all__ = [
    "CCAAnalysis",
    "ContrastiveAligner",
    "ContrastiveAnalysis",
    "CovariateResidualizer",
    "FusionAnalysis",
    "JoinedCohort",
    "ModalityPreprocessor",
    "ModalityScaler",
    "Projector",
    "RegularizedCCA",
    "SyntheticCohort",
    "TwoTower",
    "average_strands",
    "check_table",
    "embed_dna",
    "embed_dna_to_table",
    "encode_covariates",
    "info_nce",
    "join_modalities",
    "load_demo_subjects",
    "load_cohort",
    "make_null_cohort",
    "make_synthetic_cohort",
    "read_covariates",
    "read_embedding_table",
    "read_fasta",
    "retrieval_metrics",
    "reverse_complement",
    "run_cca",
    "run_contrastive",
    "run_fusion",
    "run_real_demo",
    "write_cca_report",
    "write_contrastive_report",
    "write_dna_table",
    "write_embedding_table",
    "write_fusion_report",
]

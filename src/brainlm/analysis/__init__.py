"""What a model has learned: the BrainLM paper's analyses, for any model, each beside its simplest rival.

One command each (``brainlm attention|networks|latent|perturb MODEL STORE --out DIR``), one
options dataclass and one library function each, all sharing :class:`AnalysisOptions` (the
model, the store, ``--networks``, ``--out``, ``--overwrite``, device and precision):

    run_attention(AttentionOptions(...))   CLS attention per region and network; group contrasts
                                           beside variance, autocorrelation and within-network FC
    run_networks(NetworksOptions(...))     network identification from region embeddings beside
                                           FC profiles and signal statistics
    run_latent(LatentOptions(...))         PCA / UMAP maps of recording embeddings, kNN purity and
                                           silhouette per label, beside FC features
    run_perturb(PerturbOptions(...))       in-silico perturbation with a forecasting model beside
                                           the ridge VAR's response
    quick_analyses(model, store, out)      the quick ones, as the demo runs them

Each writes ``report.md``, ``results.json``, tables and figures into ``--out``, and the
networks used (``networks.tsv``; :mod:`brainlm.analysis.networks`). Both model kinds go through
the same code (``model.embed``, ``model.cls_attention``, ``model.forecast``).
"""

from __future__ import annotations

from pathlib import Path

from .attention import AttentionOptions, attention_maps, run_attention
from .common import AnalysisOptions
from .identify import NetworksOptions, identify_networks, region_features, run_networks
from .latent import LatentOptions, knn_purity, run_latent
from .networks import (
    BUNDLED_NETWORKS,
    Networks,
    estimate_networks,
    networks_from_image,
    read_network_table,
    resolve_networks,
)
from .perturb import Perturbation, PerturbOptions, perturb_windows, response_agreement, run_perturb
from .stats import group_contrast, resolve_groups

__all__ = [
    "AnalysisOptions", "AttentionOptions", "NetworksOptions", "LatentOptions", "PerturbOptions",
    "run_attention", "run_networks", "run_latent", "run_perturb", "quick_analyses",
    "attention_maps", "region_features", "identify_networks", "knn_purity", "Perturbation", "perturb_windows",
    "response_agreement", "group_contrast", "resolve_groups",
    "Networks", "BUNDLED_NETWORKS", "read_network_table", "networks_from_image", "estimate_networks",
    "resolve_networks",
]


def quick_analyses(model, store, out, *, forecast_model=None, seed: int = 0, progress: bool = False,
                   figures: bool = True, permutations: int = 50) -> list[str]:
    """The analyses that take seconds to minutes on a small store, each beside its rival, as printable lines.

    Attention (contrasted by the first phenotype column with two levels of at least two subjects
    each, when there is one), network identification and the latent maps (PCA only) of ``model``;
    with ``forecast_model`` (a model fine-tuned to forecast), a perturbation of the first
    network's regions. Networks: the bundled AAL2 systems when the store has those regions,
    else estimated. Reports go to ``out/attention``, ``out/networks``, ``out/latent`` and
    ``out/perturb`` (replaced when they exist).

    Args:
        permutations: of the network labels, for network identification's chance and p (its
            logistic regression is refitted each time; the group contrasts always use 1000).

    Returns:
        The headline lines of every analysis, in order, then where the reports are.
    """
    from brainlm.data import open_store
    from brainlm.errors import UserError

    from .networks import resolve_networks as _resolve

    opened = open_store(store)
    spec = next((name for name in BUNDLED_NETWORKS if _fits(name, opened)), None)
    common = dict(checkpoint=str(model), store=str(store), networks=spec, seed=seed, overwrite=True, progress=progress,
                  echo=False, figures=figures)
    group = None
    for column in opened.phenotype_columns:
        try:
            resolve_groups(opened.recordings[column].tolist(), opened.recordings["subject_id"].astype(str), column)
        except UserError:
            continue
        group = column
        break
    out = Path(out)
    lines = []
    lines += run_attention(AttentionOptions(**common, out=str(out / "attention"), group=group))["headline"]
    lines += run_networks(NetworksOptions(**common, out=str(out / "networks"), permutations=permutations))["headline"]
    lines += run_latent(LatentOptions(**common, out=str(out / "latent"), umap=False, regions=False))["headline"]
    if forecast_model is not None:
        first = _resolve(spec, opened, seed=seed, progress=False).names[0]
        lines += run_perturb(PerturbOptions(**{**common, "checkpoint": str(forecast_model)}, out=str(out / "perturb"),
                                            network=first))["headline"]
    lines.append(f"reports: {out}/{{attention,networks,latent{',perturb' if forecast_model is not None else ''}}}/report.md")
    return lines


def _fits(name: str, store) -> bool:
    from brainlm.data.atlas import bundled_path
    from brainlm.io import read_table

    return list(read_table(bundled_path(BUNDLED_NETWORKS[name][0]))["region"]) == list(store.region_names)

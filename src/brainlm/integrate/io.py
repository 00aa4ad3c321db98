"""The subject join of two modalities, on top of :mod:`brainlm.io`.

Embedding tables (BrainLM embeddings from ``brainlm embed``, DNA-model embeddings from
``brainlm embed-dna`` or elsewhere) are read and written by :mod:`brainlm.io` in every
format it knows (Parquet, CSV/TSV, ``.npy`` with its index); here they become one row per
subject (:func:`read_embedding_table`), covariates become a numeric frame
(:func:`read_covariates`), and :func:`join_modalities` aligns them on subject ID. Several
rows of one subject (per session, run or window) are averaged when row-key columns tell
them apart (see :func:`brainlm.io.subject_matrix`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from brainlm.errors import UserError
from brainlm.io import (
    Embeddings,
    read_embeddings,
    read_subject_table,
    subject_matrix,
    write_embeddings,
)


def check_table(ids: np.ndarray, X: np.ndarray, name: str = "table") -> None:
    """Raise ``ValueError`` unless ``ids`` (N,) and ``X`` (N, D) form a clean table.

    Clean means: X is 2-D with as many rows as IDs, no NaN/inf, and no repeated ID.
    """
    X = np.asarray(X)
    if X.ndim != 2:
        raise UserError(f"{name}: embeddings must be 2-D (N, D), got shape {X.shape}")
    if len(ids) != X.shape[0]:
        raise UserError(f"{name}: {len(ids)} subject IDs but {X.shape[0]} embedding rows")
    bad = ~np.isfinite(X).all(axis=1)
    if bad.any():
        shown = ", ".join(map(str, np.asarray(ids)[bad][:5]))
        raise UserError(f"{name}: {int(bad.sum())} rows contain NaN or inf (subjects {shown})")
    uniq, counts = np.unique(np.asarray(ids, dtype=str), return_counts=True)
    if (counts > 1).any():
        shown = ", ".join(uniq[counts > 1][:5])
        raise UserError(f"{name}: duplicated subject IDs ({shown})")


def read_embedding_table(
    path: str | Path, id_col: str = "subject_id", aggregate: str = "auto", flag: str = ""
) -> tuple[np.ndarray, np.ndarray]:
    """One embedding per subject from any table :func:`brainlm.io.read_embeddings` reads.

    Returns:
        ids: (N,) str array, unique, in first-appearance order. X: (N, D) float32.
    """
    emb = read_embeddings(path, id_col, flag=flag)
    return subject_matrix(emb, aggregate, name=f"{flag} {path}".strip())


def write_embedding_table(path: str | Path, ids, X, id_col: str = "subject_id") -> Path:
    """Write ``ids`` (N,) and ``X`` (N, D) as a table :func:`read_embedding_table` reads back."""
    ids = np.asarray(ids, dtype=str)
    X = np.asarray(X, dtype=np.float32)
    check_table(ids, X, name=str(path))
    write_embeddings(Embeddings(X, pd.DataFrame({id_col: ids}), pooling="shared"), path, overwrite=True)
    return Path(path)


def read_covariates(path: str | Path, id_col: str = "subject_id", columns: list[str] | None = None) -> pd.DataFrame:
    """Read a covariate table into a numeric frame indexed by subject ID.

    Text columns (sex, site, ...) are one-hot coded with the first level dropped, so the
    frame can go straight into a linear residualisation.

    Returns:
        (N, C) float frame, index = subject IDs (str).
    """
    frame = read_subject_table(path, id_col=id_col, columns=columns, flag="--covariates")
    if columns is not None:
        frame = frame[list(columns)]
    return encode_covariates(frame, name=str(path))


def encode_covariates(frame: pd.DataFrame, name: str = "covariates") -> pd.DataFrame:
    """One-hot code text columns (first level dropped) and check for missing values.

    Args:
        frame: (N, C) frame indexed by subject ID.

    Returns:
        (N, C') float frame with the same index.
    """
    if frame.isna().any(axis=1).any():
        shown = ", ".join(map(str, frame.index[frame.isna().any(axis=1)][:5]))
        raise UserError(f"{name}: missing covariate values (subjects {shown})")
    text = [c for c in frame.columns if not pd.api.types.is_numeric_dtype(frame[c])]
    out = pd.get_dummies(frame, columns=text, drop_first=True, dtype=float)
    out.index = out.index.astype(str)
    return out.astype(float)


@dataclass
class JoinedCohort:
    """Two modalities (and optional covariates) aligned on shared subject IDs.

    Attributes:
        ids: (N,) subject IDs present in every input, in the order of the first table.
        A: (N, Da) first modality. B: (N, Db) second modality.
        covariates: (N, C) float array or None. covariate_names: its column names.
        unmatched: input name -> IDs of that input that were left out of the join.
    """

    ids: np.ndarray
    A: np.ndarray
    B: np.ndarray
    covariates: np.ndarray | None = None
    covariate_names: list[str] = field(default_factory=list)
    unmatched: dict[str, list[str]] = field(default_factory=dict)

    def summary(self) -> str:
        """A few lines saying how many subjects matched and which did not."""
        lines = [f"{len(self.ids)} subjects in the join."]
        for name, left in self.unmatched.items():
            shown = ", ".join(left[:10]) + (" ..." if len(left) > 10 else "")
            lines.append(f"{len(left)} {name} subjects without a match" + (f": {shown}" if left else "."))
        return "\n".join(lines)


def join_modalities(
    ids_a,
    A,
    ids_b,
    B,
    covariates: pd.DataFrame | None = None,
    names: tuple[str, str] = ("brain", "genetic"),
) -> JoinedCohort:
    """Inner-join two embedding tables (and a covariate frame) on subject ID.

    Unmatched IDs are kept in ``JoinedCohort.unmatched`` for the report, never dropped
    silently.

    Args:
        ids_a, A: (Na,) IDs and (Na, Da) features of the first modality.
        ids_b, B: (Nb,) IDs and (Nb, Db) features of the second modality.
        covariates: optional (Nc, C) frame indexed by subject ID (see :func:`read_covariates`).
        names: labels of the two modalities in messages and the report.

    Returns:
        A :class:`JoinedCohort` with N = |ids_a ∩ ids_b (∩ covariate IDs)| rows.

    Raises:
        ValueError: duplicated IDs, NaN rows, or no subject in common.
    """
    ids_a, ids_b = np.asarray(ids_a, dtype=str), np.asarray(ids_b, dtype=str)
    check_table(ids_a, A, names[0])
    check_table(ids_b, B, names[1])
    common = set(ids_a) & set(ids_b)
    if covariates is not None:
        common &= set(covariates.index.astype(str))
    keep = [i for i in ids_a if i in common]
    if not keep:
        raise UserError(
            f"no overlapping subject IDs between {names[0]} ({len(ids_a)} IDs, e.g. {ids_a[:3].tolist()}) "
            f"and {names[1]} ({len(ids_b)} IDs, e.g. {ids_b[:3].tolist()})"
            + ("" if covariates is None else " and the covariates")
        )
    pos_a = {s: i for i, s in enumerate(ids_a)}
    pos_b = {s: i for i, s in enumerate(ids_b)}
    unmatched = {
        names[0]: [s for s in ids_a if s not in common],
        names[1]: [s for s in ids_b if s not in common],
    }
    cov, cov_names = None, []
    if covariates is not None:
        covariates = covariates.copy()
        covariates.index = covariates.index.astype(str)
        unmatched["covariate"] = [s for s in covariates.index if s not in common]
        cov = covariates.loc[keep].to_numpy(dtype=np.float64)
        cov_names = list(covariates.columns)
    return JoinedCohort(
        ids=np.asarray(keep, dtype=str),
        A=np.asarray(A, dtype=np.float32)[[pos_a[s] for s in keep]],
        B=np.asarray(B, dtype=np.float32)[[pos_b[s] for s in keep]],
        covariates=cov,
        covariate_names=cov_names,
        unmatched=unmatched,
    )

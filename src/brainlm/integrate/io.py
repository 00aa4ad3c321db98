"""Embedding tables, covariates and the subject join.

An *embedding table* maps subject IDs to one vector each. On disk it is one of

- Parquet / CSV / TSV with an ID column (``subject_id`` by default) and either one
  list-typed column ``embedding`` or numeric columns ``emb_0 .. emb_{D-1}``;
  when neither exists, every numeric column other than the ID and the row-key columns
  (``session_id``, ``run_id``, ``window``, ``sequence_id``) is a feature;
- ``.npy`` (N, D) plus an index file next to it with the N subject IDs, one per line
  (``<stem>.txt``), as a CSV/TSV with an ID column (``<stem>.csv``) or as a JSON list
  (``<stem>.json``).

Several rows for one subject (one per session, run or window, as ``brainlm embed`` may
write) are averaged per subject when ``aggregate="mean"`` or, with the default
``aggregate="auto"``, when the table has row-key columns that tell the rows apart.
Otherwise a repeated subject ID is an error: silently averaging two different people who
share an ID is worse than stopping.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from brainlm.errors import MissingInputError, UserError

ROW_KEY_COLUMNS = ("session_id", "run_id", "window", "sequence_id")
_EMB_COL = re.compile(r"^emb_(\d+)$")


def _read_frame(path: Path) -> pd.DataFrame:
    suffix = path.suffix.lower()
    if suffix == ".parquet" or suffix == ".pq":
        return pd.read_parquet(path)
    if suffix == ".csv":
        return pd.read_csv(path)
    if suffix in (".tsv", ".txt"):
        return pd.read_csv(path, sep="\t")
    raise UserError(f"unsupported table format {suffix!r} for {path} (use .parquet, .csv, .tsv or .npy)")


def _read_npy_index(path: Path, id_col: str) -> np.ndarray:
    for ext in (".txt", ".csv", ".tsv", ".json"):
        idx = path.with_suffix(ext)
        if not idx.exists():
            continue
        if ext == ".txt":
            return np.array([ln.strip() for ln in idx.read_text().splitlines() if ln.strip()], dtype=str)
        if ext == ".json":
            return np.asarray([str(v) for v in json.loads(idx.read_text())], dtype=str)
        frame = pd.read_csv(idx, sep="," if ext == ".csv" else "\t", dtype=str)
        col = id_col if id_col in frame.columns else frame.columns[0]
        return frame[col].astype(str).to_numpy()
    raise MissingInputError(f"no index file for {path}: expected {path.stem}.txt, .csv, .tsv or .json next to it")


def _feature_matrix(frame: pd.DataFrame, id_col: str, path: Path) -> np.ndarray:
    if "embedding" in frame.columns:
        lengths = frame["embedding"].map(lambda v: -1 if v is None else len(v))
        if lengths.nunique() != 1 or int(lengths.iloc[0]) < 1:
            raise UserError(
                f"{path}: rows of the 'embedding' column have different lengths {sorted(lengths.unique())[:5]}"
            )
        return np.stack([np.asarray(v, dtype=np.float64) for v in frame["embedding"]])
    emb = sorted(((int(m.group(1)), c) for c in frame.columns if (m := _EMB_COL.match(str(c)))))
    if emb:
        cols = [c for _, c in emb]
    else:
        skip = {id_col, *ROW_KEY_COLUMNS}
        cols = [c for c in frame.columns if c not in skip and pd.api.types.is_numeric_dtype(frame[c])]
    if not cols:
        raise UserError(f"{path}: no embedding columns found ('embedding', 'emb_<i>' or numeric columns)")
    return frame[cols].to_numpy(dtype=np.float64)


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
    path: str | Path, id_col: str = "subject_id", aggregate: str = "auto"
) -> tuple[np.ndarray, np.ndarray]:
    """Read one embedding table into subject IDs and a feature matrix.

    Args:
        path: ``.parquet``, ``.csv``, ``.tsv`` or ``.npy`` (with an index file beside it).
        id_col: name of the subject-ID column.
        aggregate: ``"auto"`` averages rows of the same subject only when row-key columns
            (``session_id``, ``run_id``, ``window``, ``sequence_id``) distinguish them;
            ``"mean"`` always averages rows with the same ID; ``"none"`` never does.

    Returns:
        ids: (N,) str array, unique, in first-appearance order.
        X: (N, D) float32.

    Raises:
        FileNotFoundError: missing file or index. ValueError: NaN rows, ragged
        embeddings, repeated IDs that may not be averaged, unknown format.
    """
    path = Path(path)
    if aggregate not in ("auto", "mean", "none"):
        raise UserError(f"aggregate must be 'auto', 'mean' or 'none', got {aggregate!r}")
    if not path.exists():
        raise MissingInputError(f"embedding table not found: {path}")
    if path.suffix.lower() == ".npy":
        X = np.load(path).astype(np.float64)
        ids = _read_npy_index(path, id_col)
        keys = pd.DataFrame(index=range(len(ids)))
        if X.ndim != 2 or len(ids) != X.shape[0]:
            raise UserError(f"{path}: array of shape {X.shape} does not match {len(ids)} IDs in its index")
    else:
        frame = _read_frame(path)
        if id_col not in frame.columns:
            raise UserError(f"{path}: no ID column {id_col!r} (columns: {list(frame.columns)[:8]})")
        ids = frame[id_col].astype(str).to_numpy()
        X = _feature_matrix(frame, id_col, path)
        keys = frame[[c for c in ROW_KEY_COLUMNS if c in frame.columns]]

    bad = ~np.isfinite(X).all(axis=1)
    if bad.any():
        shown = ", ".join(map(str, ids[bad][:5]))
        raise UserError(f"{path}: {int(bad.sum())} rows contain NaN or inf (subjects {shown})")
    dup = pd.Series(ids).duplicated(keep=False).to_numpy()
    if dup.any():
        rows_distinct = keys.shape[1] > 0 and not pd.concat(
            [pd.Series(ids, name="_id"), keys.reset_index(drop=True)], axis=1
        ).duplicated().any()
        if aggregate == "none" or (aggregate == "auto" and not rows_distinct):
            shown = ", ".join(sorted(set(ids[dup]))[:5])
            raise UserError(
                f"{path}: duplicated subject IDs ({shown}); pass aggregate='mean' to average them"
            )
        order = pd.unique(pd.Series(ids))
        X = pd.DataFrame(X).groupby(ids, sort=False).mean().loc[order].to_numpy()
        ids = np.asarray(order, dtype=str)
    return np.asarray(ids, dtype=str), X.astype(np.float32)


def write_embedding_table(path: str | Path, ids, X, id_col: str = "subject_id") -> Path:
    """Write ``ids`` (N,) and ``X`` (N, D) as a table :func:`read_embedding_table` reads back.

    Parquet/CSV/TSV get numeric columns ``emb_0 .. emb_{D-1}``; ``.npy`` gets the array
    plus ``<stem>.txt`` with one ID per line.

    Returns:
        The path written.
    """
    path = Path(path)
    ids = np.asarray(ids, dtype=str)
    X = np.asarray(X, dtype=np.float32)
    check_table(ids, X, name=str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix.lower()
    if suffix == ".npy":
        np.save(path, X)
        path.with_suffix(".txt").write_text("\n".join(ids) + "\n")
        return path
    frame = pd.DataFrame(X, columns=[f"emb_{i}" for i in range(X.shape[1])])
    frame.insert(0, id_col, ids)
    if suffix in (".parquet", ".pq"):
        frame.to_parquet(path, index=False)
    elif suffix == ".csv":
        frame.to_csv(path, index=False)
    elif suffix == ".tsv":
        frame.to_csv(path, sep="\t", index=False)
    else:
        raise UserError(f"unsupported table format {suffix!r} (use .parquet, .csv, .tsv or .npy)")
    return path


def read_covariates(path: str | Path, id_col: str = "subject_id", columns: list[str] | None = None) -> pd.DataFrame:
    """Read a covariate TSV/CSV into a numeric frame indexed by subject ID.

    Text columns (sex, site, ...) are one-hot coded with the first level dropped, so the
    frame can go straight into a linear residualisation.

    Args:
        path: TSV (or CSV by suffix) with ``id_col`` and covariate columns.
        columns: the covariate columns to keep (default: all but the ID).

    Returns:
        (N, C) float frame, index = subject IDs (str).
    """
    path = Path(path)
    if not path.exists():
        raise MissingInputError(f"covariate file not found: {path}")
    frame = pd.read_csv(path, sep="," if path.suffix.lower() == ".csv" else "\t")
    if id_col not in frame.columns:
        raise UserError(f"{path}: no ID column {id_col!r}")
    frame[id_col] = frame[id_col].astype(str)
    if frame[id_col].duplicated().any():
        shown = ", ".join(frame.loc[frame[id_col].duplicated(), id_col].head(5))
        raise UserError(f"{path}: duplicated subject IDs ({shown})")
    frame = frame.set_index(id_col)
    if columns is not None:
        missing = [c for c in columns if c not in frame.columns]
        if missing:
            raise UserError(f"{path}: missing covariate columns {missing}")
        frame = frame[columns]
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

"""Two-tower contrastive alignment of frozen brain and genetic embeddings.

Each modality gets a :class:`Projector` (as in BrainLM's integration notes for the
brain side: ``in -> 1024, GELU, dropout -> 512, LayerNorm``; the genetic side uses the
same shape). The input embeddings are frozen: only the projectors and the temperature
learn. The loss is the symmetric InfoNCE of CLIP,

    logits = (z_b @ z_g^T) / T,   z L2-normalised, T = exp(log_temperature) >= 0.01
    loss   = (CE(logits, diag) + CE(logits^T, diag)) / 2,

with ``log_temperature`` a learnt scalar. Training stops early when the loss on a
validation split of the training subjects has not improved for ``patience`` epochs, and
the best state is restored.

Retrieval is scored on held-out subjects only, in both directions (brain -> genetic and
genetic -> brain): recall@1/5/10, median rank and mean reciprocal rank (MRR), where the
rank of the true partner among the held-out candidates is 1 for a perfect match (ties
count against it). The
shuffled-pair null comes in two forms: (a) the same held-out similarity matrix scored
against ``n_null`` random pairings (its mean is chance, recall@k = k / n; it gives the
p-values), and (b) with ``shuffled_fit=True``, a second pair of towers per fold trained on
the training subjects with their brain-genetic pairing shuffled, then scored on the true
held-out pairs: what the whole pipeline finds when there is nothing to find.

Shapes: B batch, D_b / D_g input widths, E = 512 shared-space width.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy.stats import rankdata
from torch import nn
from torch.nn import functional as F

from brainlm.errors import UserError
from brainlm.evaluate.protocol import EarlyStopping, permutation_p, subject_folds
from brainlm.integrate.io import write_embedding_table
from brainlm.integrate.preprocess import ModalityPreprocessor, check_pair

RECALL_AT = (1, 5, 10)


class Projector(nn.Module):
    """``in_dim -> hidden_dim, GELU, dropout -> out_dim, LayerNorm``.

    Args:
        in_dim: width of the frozen input embedding. hidden_dim: 1024 by default.
        out_dim: shared-space width E (512). dropout: after the GELU.
    """

    def __init__(self, in_dim: int, hidden_dim: int = 1024, out_dim: int = 512, dropout: float = 0.1):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden_dim),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden_dim, out_dim),
            nn.LayerNorm(out_dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_dim) -> (B, out_dim)."""
        return self.net(x)


class TwoTower(nn.Module):
    """A projector per modality and a learnable log-temperature.

    Args:
        brain_dim, genetic_dim: input widths D_b, D_g.
        hidden_dim, out_dim, dropout: :class:`Projector` sizes.
        init_temperature: starting T (CLIP's 0.07).
    """

    def __init__(
        self,
        brain_dim: int,
        genetic_dim: int,
        hidden_dim: int = 1024,
        out_dim: int = 512,
        dropout: float = 0.1,
        init_temperature: float = 0.07,
    ):
        super().__init__()
        self.brain = Projector(brain_dim, hidden_dim, out_dim, dropout)
        self.genetic = Projector(genetic_dim, hidden_dim, out_dim, dropout)
        self.log_temperature = nn.Parameter(torch.tensor(math.log(init_temperature)))

    @property
    def temperature(self) -> torch.Tensor:
        return self.log_temperature.exp().clamp(min=0.01)

    def forward(self, xb: torch.Tensor, xg: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, D_b), (B, D_g) -> L2-normalised (B, E), (B, E)."""
        return F.normalize(self.brain(xb), dim=-1), F.normalize(self.genetic(xg), dim=-1)


def info_nce(zb: torch.Tensor, zg: torch.Tensor, temperature: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE; row i of ``zb`` and of ``zg`` are the positive pair.

    Args:
        zb, zg: (B, E) L2-normalised embeddings. temperature: scalar T > 0.

    Returns:
        Scalar loss, the mean of the brain->genetic and genetic->brain cross-entropies.
    """
    logits = zb @ zg.T / temperature  # (B, B)
    target = torch.arange(zb.shape[0], device=zb.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


def _rank_matrix(S: np.ndarray) -> np.ndarray:
    """ranks[i, j] = number of candidates scoring at least as high as j for query i.

    Ties count against the query, so collapsed (identical) embeddings score as badly as
    they deserve rather than all sharing rank 1.
    """
    return rankdata(-S, axis=1, method="max").astype(np.int64)


def _scores(ranks: np.ndarray) -> dict[str, float]:
    out = {f"recall@{k}": float((ranks <= k).mean()) for k in RECALL_AT}
    out["median_rank"] = float(np.median(ranks))
    out["mrr"] = float((1.0 / ranks).mean())
    return out


def retrieval_metrics(zb, zg) -> dict[str, dict[str, float]]:
    """Retrieval of each subject's partner among all rows, both directions.

    Args:
        zb, zg: (N, E) embeddings; row i of each is the same subject.

    Returns:
        ``{"brain->genetic": {...}, "genetic->brain": {...}}`` with recall@1/5/10,
        median_rank (1 = best) and mrr.
    """
    zb = np.asarray(zb, dtype=np.float64)
    zg = np.asarray(zg, dtype=np.float64)
    S = zb @ zg.T
    diag = np.arange(len(S))
    return {
        "brain->genetic": _scores(_rank_matrix(S)[diag, diag]),
        "genetic->brain": _scores(_rank_matrix(S.T)[diag, diag]),
    }


class ContrastiveAligner:
    """Train the two towers on (brain, genetic) pairs of training subjects.

    Args:
        hidden_dim, out_dim, dropout: projector sizes (1024, 512, 0.1).
        lr, weight_decay: AdamW settings. batch_size: pairs per step.
        max_epochs: upper bound; patience: epochs without validation improvement
            before stopping. val_fraction: share of the fitted subjects held out for
            early stopping (at least 2 subjects).
        scale, pca_components: per-modality preprocessing fitted on the training rows.
        device: torch device string. random_state: seed.

    Fitted attributes:
        brain_pre_, genetic_pre_: the fitted :class:`ModalityPreprocessor` s.
        model_: the :class:`TwoTower` at its best validation epoch (eval mode).
        history_: frame with epoch, train_loss, val_loss. best_epoch_: int.
        temperature_: learnt T.
    """

    def __init__(
        self,
        hidden_dim: int = 1024,
        out_dim: int = 512,
        dropout: float = 0.1,
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        batch_size: int = 64,
        max_epochs: int = 200,
        patience: int = 10,
        val_fraction: float = 0.2,
        scale: str = "zscore",
        pca_components: int | tuple[int | None, int | None] | None = None,
        device: str = "cpu",
        random_state: int = 0,
    ):
        self.hidden_dim = hidden_dim
        self.out_dim = out_dim
        self.dropout = dropout
        self.lr = lr
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.max_epochs = max_epochs
        self.patience = patience
        self.val_fraction = val_fraction
        self.scale = scale
        self.pca_components = pca_components
        self.device = device
        self.random_state = random_state

    def fit(self, X, Y, covariates=None, genetic_covariates=None) -> "ContrastiveAligner":
        """Fit preprocessing and projectors.

        Args:
            X: (N, D_b) brain embeddings. Y: (N, D_g) genetic embeddings, row-aligned.
            covariates: optional (N, C), regressed out of both modalities.
            genetic_covariates: covariates of the genetic rows when they differ from the
                brain rows' (shuffled pairings); default ``covariates``.

        Returns:
            self.
        """
        X, Y = check_pair(X, Y)
        n = X.shape[0]
        n_val = max(2, int(round(self.val_fraction * n)))
        if n - n_val < 2:
            raise UserError(f"{n} subjects are too few to train with a validation split of {n_val}")
        p = self.pca_components
        pca_x, pca_y = tuple(p) if isinstance(p, (tuple, list)) else (p, p)
        self.brain_pre_ = ModalityPreprocessor(self.scale, pca_x, self.random_state).fit(X, covariates)
        cov_g = covariates if genetic_covariates is None else genetic_covariates
        self.genetic_pre_ = ModalityPreprocessor(self.scale, pca_y, self.random_state).fit(Y, cov_g)
        dev = torch.device(self.device)
        xb = torch.as_tensor(self.brain_pre_.transform(X, covariates), device=dev)
        xg = torch.as_tensor(self.genetic_pre_.transform(Y, cov_g), device=dev)

        gen = torch.Generator().manual_seed(self.random_state)
        torch.manual_seed(self.random_state)
        order = torch.randperm(n, generator=gen)
        val, tr = order[:n_val].to(dev), order[n_val:].to(dev)
        model = TwoTower(xb.shape[1], xg.shape[1], self.hidden_dim, self.out_dim, self.dropout).to(dev)
        opt = torch.optim.AdamW(model.parameters(), lr=self.lr, weight_decay=self.weight_decay)

        stop, history = EarlyStopping(self.patience, min_delta=1e-6), []
        for epoch in range(self.max_epochs):
            train_loss = self._epoch(model, opt, xb, xg, tr[torch.randperm(len(tr), generator=gen).to(dev)])
            model.eval()
            with torch.no_grad():
                val_loss = info_nce(*model(xb[val], xg[val]), model.temperature).item()
            history.append({"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss})
            if stop.update(val_loss, epoch, model.state_dict()):
                break
        model.load_state_dict(stop.best_state)
        self.best_epoch_ = stop.best_epoch
        self.model_ = model.eval()
        self.history_ = pd.DataFrame(history)
        self.temperature_ = float(model.temperature.item())
        return self

    def _epoch(self, model: TwoTower, opt, xb, xg, order) -> float:
        """One pass over the training pairs in ``order``; the mean batch loss."""
        model.train()
        losses = []
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            if len(idx) < 2:
                continue  # one pair has no negatives
            loss = info_nce(*model(xb[idx], xg[idx]), model.temperature)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        return float(np.mean(losses))

    @torch.no_grad()
    def transform_brain(self, X, covariates=None) -> np.ndarray:
        """(N, D_b) brain embeddings -> (N, E) L2-normalised shared-space vectors."""
        x = torch.as_tensor(self.brain_pre_.transform(X, covariates), device=torch.device(self.device))
        return F.normalize(self.model_.brain(x), dim=-1).cpu().numpy()

    @torch.no_grad()
    def transform_genetic(self, Y, covariates=None) -> np.ndarray:
        """(N, D_g) genetic embeddings -> (N, E) L2-normalised shared-space vectors."""
        y = torch.as_tensor(self.genetic_pre_.transform(Y, covariates), device=torch.device(self.device))
        return F.normalize(self.model_.genetic(y), dim=-1).cpu().numpy()

    def export(self, out_dir, ids, X, Y, covariates=None, fmt: str = "parquet") -> dict[str, Path]:
        """Write the shared-space tables ``brain_shared.<fmt>`` and ``genetic_shared.<fmt>``.

        Args:
            ids: (N,) subject IDs. X, Y: (N, D_b), (N, D_g) inputs.

        Returns:
            modality -> path of its (N, E) table.
        """
        out_dir = Path(out_dir)
        return {
            "brain": write_embedding_table(out_dir / f"brain_shared.{fmt}", ids, self.transform_brain(X, covariates)),
            "genetic": write_embedding_table(
                out_dir / f"genetic_shared.{fmt}", ids, self.transform_genetic(Y, covariates)
            ),
        }


def _similarity(aligner: ContrastiveAligner, X, Y, covariates) -> np.ndarray:
    """(N, N) cosine similarities of held-out brain rows (queries) and genetic rows."""
    zb = aligner.transform_brain(X, covariates).astype(np.float64)
    zg = aligner.transform_genetic(Y, covariates).astype(np.float64)
    return zb @ zg.T


class ContrastiveAnalysis:
    """Cross-validated two-tower alignment with held-out retrieval and a shuffled-pair null.

    Args:
        n_splits: K-fold splits (shuffled, seeded); retrieval candidates are the
            held-out subjects of a fold.
        n_null: shuffled pairings per fold for the null.
        shuffled_fit: also train towers on shuffled training pairs per fold (null (b)).
        random_state: seed of folds and null.
        **aligner_params: passed to :class:`ContrastiveAligner`.

    Fitted attributes:
        folds_: list of (train_idx, test_idx).
        fold_metrics_: frame, one row per (fold, direction) with the retrieval metrics.
        metrics_: frame, one row per direction: mean over folds, chance level of
            recall@1 and MRR, null mean and p-values (``(1 + #null >= observed) /
            (1 + n_null)`` for recall@1 and MRR averaged over folds), and with
            ``shuffled_fit`` the recall@1 / MRR of the towers trained on shuffled pairs.
        aligners_: the fitted aligner of each fold.
    """

    def __init__(
        self, n_splits: int = 5, n_null: int = 1000, shuffled_fit: bool = True, random_state: int = 0, **aligner_params
    ):
        self.n_splits = n_splits
        self.n_null = n_null
        self.shuffled_fit = shuffled_fit
        self.random_state = random_state
        self.aligner_params = aligner_params

    def fit(self, X, Y, covariates=None) -> "ContrastiveAnalysis":
        """Run the analysis on row-aligned (N, D_b) brain and (N, D_g) genetic embeddings."""
        X, Y = check_pair(X, Y, self.n_splits)
        cov = None if covariates is None else np.asarray(covariates, dtype=np.float64)
        n = X.shape[0]
        if n // self.n_splits < 2:
            raise UserError(f"{n} subjects in {self.n_splits} folds leave fewer than 2 held-out subjects per fold")
        self.folds_ = subject_folds(np.zeros(n), np.arange(n), "regression", self.n_splits, self.random_state)
        rng = np.random.default_rng(self.random_state)
        rows, null_rows, self.aligners_ = [], [], []
        c_tr, c_te = (None, None)
        for f, (tr, te) in enumerate(self.folds_):
            if cov is not None:
                c_tr, c_te = cov[tr], cov[te]
            params = {"random_state": self.random_state + f, **self.aligner_params}
            al = ContrastiveAligner(**params).fit(X[tr], Y[tr], c_tr)
            self.aligners_.append(al)
            S = _similarity(al, X[te], Y[te], c_te)
            S0 = None
            if self.shuffled_fit:
                shuffle = rng.permutation(len(tr))
                al0 = ContrastiveAligner(**params).fit(
                    X[tr], Y[tr][shuffle], c_tr, None if c_tr is None else c_tr[shuffle]
                )
                S0 = _similarity(al0, X[te], Y[te], c_te)
            for direction, R, R0 in (
                ("brain->genetic", _rank_matrix(S), None if S0 is None else _rank_matrix(S0)),
                ("genetic->brain", _rank_matrix(S.T), None if S0 is None else _rank_matrix(S0.T)),
            ):
                diag = np.arange(len(te))
                row = {"fold": f, "direction": direction, "n_candidates": len(te), **_scores(R[diag, diag])}
                if R0 is not None:
                    shuffled = _scores(R0[diag, diag])
                    row["shuffled_fit_recall@1"], row["shuffled_fit_mrr"] = shuffled["recall@1"], shuffled["mrr"]
                rows.append(row)
                perms = np.array([rng.permutation(len(te)) for _ in range(self.n_null)]).reshape(self.n_null, len(te))
                null_ranks = R[diag[None, :], perms]  # (n_null, n_test)
                null_rows.append({
                    "fold": f, "direction": direction,
                    "recall@1": (null_ranks <= 1).mean(1), "mrr": (1.0 / null_ranks).mean(1),
                })
        self.fold_metrics_ = pd.DataFrame(rows)
        summary = []
        for direction, grp in self.fold_metrics_.groupby("direction", sort=False):
            nulls = [r for r in null_rows if r["direction"] == direction]
            row = {"direction": direction, **grp.drop(columns=["fold", "direction"]).mean().to_dict()}
            row["chance_recall@1"] = float(np.mean(1.0 / grp.n_candidates))
            for key in ("recall@1", "mrr"):
                if not self.n_null:
                    row[f"null_{key}"] = row[f"p_{key}"] = float("nan")
                    continue
                null = np.mean([r[key] for r in nulls], axis=0)  # (n_null,) averaged over folds
                row[f"null_{key}"] = float(null.mean())
                row[f"p_{key}"] = float(permutation_p(row[key], null))
            summary.append(row)
        self.metrics_ = pd.DataFrame(summary)
        return self

"""Trained probe heads on frozen embeddings, as Brainmarks runs them (``main_probe``).

Dimension letters: N samples, B a batch of them, L tokens per sample, D embedding size, E the
head's inner size, C classes.

Heads (``HEADS``), each ``(B, L, D)`` or ``(B, D)`` -> ``(B, C)`` logits:

- ``linear``: the mean over tokens, ``BatchNorm1d`` without affine parameters, then one
  ``Linear`` (MAE's linear probe). Brainmarks 0.1.1 builds that BatchNorm (``norm: true``)
  but its forward skips it; it is applied here, as the MAE recipe it cites does.
- ``attentive``: one learned query attends over the tokens (``E // 64`` heads of 64, keys and
  values from one ``Linear(D, 2E)``), then ``Linear(E, C)``: the head that can find a signal
  carried by a few tokens, which averaging drowns.
- ``mlp``: ``Linear(D, E)``, ReLU, dropout, ``LayerNorm``, ``Linear(E, C)`` on every token,
  logits averaged over tokens.

Training (:func:`train_head`): AdamW with a linear warm-up and cosine decay, weight decay off
for biases and norms, one run per learning rate of ``HeadConfig.lrs`` from the same
initialisation; the learning rate and epoch with the best validation accuracy are kept
(Brainmarks' grid over learning-rate scales with early stopping on ``cv_metric: acc``), and
only they score the test split. Inputs are held in memory: ``N x L x D`` float32.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from brainlm.errors import UserError
from brainlm.evaluate.brainmarks import classification_scores

__all__ = ["HEADS", "LinearHead", "AttentiveHead", "MLPHead", "make_head", "HeadConfig", "HeadResult", "train_head"]

HEADS = ("linear", "attentive", "mlp")


def _tokens(x: torch.Tensor) -> torch.Tensor:
    return x if x.dim() == 3 else x.unsqueeze(1)  # (B, L, D)


class LinearHead(nn.Module):
    """Mean over tokens, BatchNorm (no affine), Linear: ``(B, L, D)`` or ``(B, D)`` -> ``(B, C)``."""

    def __init__(self, dim: int, num_classes: int):
        super().__init__()
        self.norm = nn.BatchNorm1d(dim, affine=False)
        self.linear = nn.Linear(dim, num_classes)
        nn.init.xavier_uniform_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.norm(_tokens(x).mean(1)))  # (B, C)


class AttentiveHead(nn.Module):
    """One learned query attending over the tokens: ``(B, L, D)`` -> ``(B, C)``."""

    def __init__(self, dim: int, num_classes: int, inner: int | None = None):
        super().__init__()
        E = max(64, 64 * ((inner or dim) // 64))
        self.inner, self.num_heads = E, E // 64
        self.query = nn.Parameter(torch.empty(E))
        self.kv = nn.Linear(dim, 2 * E)
        self.linear = nn.Linear(E, num_classes)
        for w in (self.query, self.kv.weight, self.linear.weight):
            nn.init.trunc_normal_(w, std=0.02)
        nn.init.zeros_(self.kv.bias)
        nn.init.zeros_(self.linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _tokens(x)
        B, L, _ = x.shape
        H, E = self.num_heads, self.inner
        q = self.query.expand(B, 1, E).reshape(B, 1, H, E // H).transpose(1, 2)  # (B, H, 1, E/H)
        kv = self.kv(x).reshape(B, L, 2, H, E // H).permute(2, 0, 3, 1, 4)  # (2, B, H, L, E/H)
        pooled = F.scaled_dot_product_attention(q, kv[0], kv[1])  # (B, H, 1, E/H)
        return self.linear(pooled.reshape(B, E))  # (B, C)


class MLPHead(nn.Module):
    """Two layers on every token, logits averaged over tokens: ``(B, L, D)`` -> ``(B, C)``."""

    def __init__(self, dim: int, num_classes: int, inner: int | None = None, dropout: float = 0.0):
        super().__init__()
        E = inner or dim
        self.fc1, self.fc2 = nn.Linear(dim, E), nn.Linear(E, num_classes)
        self.norm, self.drop = nn.LayerNorm(E), nn.Dropout(dropout)
        for fc in (self.fc1, self.fc2):
            nn.init.trunc_normal_(fc.weight, std=0.02)
            nn.init.zeros_(fc.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(self.drop(F.relu(self.fc1(_tokens(x)))))  # (B, L, E)
        return self.fc2(h).mean(1)  # (B, C)


def make_head(kind: str, dim: int, num_classes: int, inner: int | None = None) -> nn.Module:
    """A head of ``HEADS`` for ``dim``-wide embeddings and ``num_classes`` classes."""
    if kind == "linear":
        return LinearHead(dim, num_classes)
    if kind == "attentive":
        return AttentiveHead(dim, num_classes, inner)
    if kind == "mlp":
        return MLPHead(dim, num_classes, inner)
    raise UserError(f"--heads: unknown head {kind!r}; choose from {', '.join(HEADS)}")


@dataclass(kw_only=True)
class HeadConfig:
    """How a head is trained and selected (:func:`train_head`)."""

    lrs: tuple[float, ...] = (3e-4, 1e-3, 3e-3, 1e-2)  # one run each; the best on validation is kept
    weight_decay: float = 0.05
    epochs: int = 30
    warmup_epochs: int = 3
    batch_size: int = 64
    inner: int | None = None  # E of the attentive and MLP heads (default: D)
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.lrs or min(self.lrs) <= 0:
            raise UserError(f"learning rates must be positive, got {self.lrs}")
        if self.epochs < 1 or self.batch_size < 1:
            raise UserError("epochs and batch_size must be >= 1")


@dataclass
class HeadResult:
    """A trained head: the chosen ``lr`` and ``epoch``, its validation accuracy, and the test
    split's class ids, predictions and Brainmarks scores (``acc``, ``f1``, ``bacc``)."""

    kind: str
    lr: float
    epoch: int
    val_score: float
    test_targets: np.ndarray
    test_predictions: np.ndarray
    test_scores: dict[str, float]
    model: nn.Module = field(repr=False)


def _batches(n: int, size: int, gen: torch.Generator | None):
    order = torch.randperm(n, generator=gen) if gen is not None else torch.arange(n)
    return [order[s:s + size] for s in range(0, n, size)]


@torch.no_grad()
def _predict(head: nn.Module, X: torch.Tensor, batch_size: int) -> np.ndarray:
    head.eval()
    return torch.cat([head(X[idx]).argmax(1) for idx in _batches(len(X), batch_size, None)]).numpy()


def _optimizer(head: nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    decay = [p for n, p in head.named_parameters() if not (n.endswith("bias") or "norm" in n)]
    rest = [p for n, p in head.named_parameters() if n.endswith("bias") or "norm" in n]
    return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}],
                             lr=lr)


def train_head(kind: str, train: tuple, validation: tuple, test: tuple, config: HeadConfig | None = None) -> HeadResult:
    """Train a head on ``train``, choose its learning rate and epoch on ``validation``, score ``test``.

    Args:
        kind: one of ``HEADS``.
        train, validation, test: ``(X, y)``: ``X`` ``(N, L, D)`` tokens or ``(N, D)`` vectors,
            ``y`` ``(N,)`` class ids ``0 .. C-1``.
        config: :class:`HeadConfig`.

    Raises:
        UserError: an empty split, fewer than two training classes, mismatched shapes.
    """
    config = config or HeadConfig()
    data = []
    for name, (X, y) in (("train", train), ("validation", validation), ("test", test)):
        X, y = torch.as_tensor(np.asarray(X, np.float32)), torch.as_tensor(np.asarray(y, np.int64))
        if len(X) == 0 or len(X) != len(y):
            raise UserError(f"the {name} split needs samples with one class id each (got {len(X)} rows, {len(y)} ids)")
        data.append((X, y))
    (Xtr, ytr), (Xva, yva), (Xte, yte) = data
    num_classes = int(max(y.max() for _, y in data)) + 1
    if len(torch.unique(ytr)) < 2:
        raise UserError("the training split holds one class: nothing to learn")
    torch.manual_seed(config.seed)
    initial = make_head(kind, Xtr.shape[-1], num_classes, config.inner)
    steps_per_epoch = math.ceil(len(Xtr) / config.batch_size)
    best = (-1.0, None, None, None)  # (val accuracy, lr, epoch, state)
    for lr in config.lrs:
        head = copy.deepcopy(initial)
        opt = _optimizer(head, lr, config.weight_decay)
        total, warm = config.epochs * steps_per_epoch, config.warmup_epochs * steps_per_epoch
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: (s + 1) / warm if s < warm else
                                                  0.5 * (1 + math.cos(math.pi * (s - warm) / max(1, total - warm))))
        gen = torch.Generator().manual_seed(config.seed)
        for epoch in range(1, config.epochs + 1):
            head.train()
            for idx in _batches(len(Xtr), config.batch_size, gen):
                if len(idx) < 2 and kind == "linear":
                    continue  # BatchNorm needs two samples
                loss = F.cross_entropy(head(Xtr[idx]), ytr[idx])
                opt.zero_grad()
                loss.backward()
                nn.utils.clip_grad_norm_(head.parameters(), 1.0)
                opt.step()
                sched.step()
            score = classification_scores(yva.numpy(), _predict(head, Xva, config.batch_size))["acc"]
            if score > best[0]:
                best = (score, lr, epoch, copy.deepcopy(head.state_dict()))
    score, lr, epoch, state = best
    head = make_head(kind, Xtr.shape[-1], num_classes, config.inner)
    head.load_state_dict(state)
    pred = _predict(head, Xte, config.batch_size)
    return HeadResult(kind, lr, epoch, score, yte.numpy(), pred, classification_scores(yte.numpy(), pred), head.eval())

"""Probe heads (linear, attentive, MLP) on token embeddings, as Brainmarks trains them."""

import numpy as np
import pytest
import torch

from brainlm.downstream import embed_windows
from brainlm.downstream.heads import HEADS, HeadConfig, make_head, train_head
from brainlm.errors import UserError

from downstream_synth import R, WINDOW, tiny_model


def planted(n: int, seed: int, L: int = 16, D: int = 32, strength: float = 4.0):
    """Class 1 has two tokens at +u and two at -u, class 0 the same along w (w orthogonal to u):
    the token mean is the same for both classes, only a few tokens tell them apart."""
    rng = np.random.default_rng(seed)
    u, w = np.eye(D)[0], np.eye(D)[1]
    X = rng.normal(size=(n, L, D)).astype(np.float32)
    y = rng.integers(0, 2, n)
    for i in range(n):
        where = rng.choice(L, 4, replace=False)
        direction = u if y[i] == 1 else w
        X[i, where[:2]] += strength * direction
        X[i, where[2:]] -= strength * direction
    return X, y


def test_attentive_beats_linear_where_the_signal_lives_in_a_few_tokens():
    train, val, test = planted(160, 0), planted(60, 1), planted(100, 2)
    config = HeadConfig(lrs=(3e-2,), epochs=12, seed=0)
    attentive = train_head("attentive", train, val, test, config)
    linear = train_head("linear", train, val, test, config)
    assert attentive.test_scores["acc"] >= 0.85, attentive.test_scores
    assert linear.test_scores["acc"] <= 0.65, linear.test_scores  # the token mean carries nothing
    assert attentive.lr in config.lrs and 1 <= attentive.epoch <= config.epochs
    np.testing.assert_array_equal(attentive.test_targets, test[1])


@pytest.mark.parametrize("kind", HEADS)
def test_every_head_shapes_and_gradients(kind):
    head = make_head(kind, 32, 3)
    tokens = torch.randn(5, 7, 32)
    for x in (tokens, tokens.mean(1)):  # tokens or pooled vectors
        out = head(x)
        assert out.shape == (5, 3) and torch.isfinite(out).all()
    head(tokens).sum().backward()
    for name, p in head.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_heads_read_tokens_of_both_model_kinds():
    from test_vitmae import tiny_model as tiny_vitmae

    x = np.random.default_rng(0).normal(size=(2, R, WINDOW)).astype(np.float32)
    brainlm = tiny_model()
    tokens = embed_windows(brainlm, x, np.zeros((R, 3), np.float32), pooling="tokens")
    P = WINDOW // brainlm.config.timepoint_patching_size
    assert tokens.shape == (2, R * P, brainlm.config.hidden_size)
    np.testing.assert_allclose(tokens.mean(1), embed_windows(brainlm, x, np.zeros((R, 3), np.float32), pooling="mean"),
                               atol=1e-5)
    vit = tiny_vitmae()
    windows = np.random.default_rng(1).normal(size=(2, 424, 200)).astype(np.float32)
    vt = embed_windows(vit, windows, np.zeros((424, 3), np.float32), pooling="tokens")
    assert vt.shape == (2, vit.num_patches, vit.hidden_size)
    for model, w, xyz in ((brainlm, x, torch.zeros(2, R, 3)), (vit, windows, None)):
        w = torch.from_numpy(w)
        with torch.no_grad():  # one pass gives the tokens and the CLS token
            both = model.embed(w, xyz, pooling="tokens")
            torch.testing.assert_close(both.cls, model.embed(w, xyz, pooling="cls").embeddings)
    for X in (tokens, vt):
        y = np.array([0, 1])
        assert train_head("attentive", (X, y), (X, y), (X, y), HeadConfig(lrs=(1e-3,), epochs=1)).test_predictions.shape == (2,)


def test_bad_inputs():
    X, y = planted(10, 0)
    with pytest.raises(UserError, match="unknown head"):
        make_head("transformer", 8, 2)
    with pytest.raises(UserError, match="one class"):
        train_head("linear", (X, np.zeros(10, int)), (X, y), (X, y))
    with pytest.raises(UserError, match="validation split needs samples"):
        train_head("linear", (X, y), (X[:0], y[:0]), (X, y))
    with pytest.raises(UserError, match="learning rates must be positive"):
        HeadConfig(lrs=(0.0,))

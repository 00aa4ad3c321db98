"""BrainLM embeddings as a scikit-learn transformer, for pipelines, grid searches and cross-validation.

``BrainLMEmbedder(model=...)`` turns recordings into one vector each: every sliding window
of a recording is embedded with masking off and the window embeddings are averaged
(:func:`brainlm.downstream.embed_recordings` with ``windows="average"``; the windowing and
batching are that function's). So ``Pipeline([("embed", BrainLMEmbedder(...)), ("clf",
LogisticRegression())])`` is a probe that ``cross_val_score`` can run.

Input ``X`` follows the package's layout of a recording, ``(T, R)`` (timepoints x regions):

- ``(N, T, R)`` array, or a list of ``N`` arrays ``(T_i, R)`` of any lengths;
- a store folder (its recordings in store order, with the store's coordinates): handy for
  ``transform``; cross-validation needs arrays, which scikit-learn can index.

Output: ``(N, D)`` float32. Recordings must be normalised as the model's training data was,
and pass the checks ``prepare`` makes (real, finite, no constant region: see
:mod:`brainlm.data.validate`); a bad recording raises ``InputError`` naming it.

Region coordinates (BrainLM models read the ``(x, y, z)`` of every region): ``coords=`` (an
``(R, 3)`` array or a coordinate file, as ``prepare --coords``); for a 424-region model they
default to the bundled A424 centres, the atlas both released model kinds were trained on;
ViT-MAE models ignore them. A store brings its own.

What ``sklearn.utils.estimator_checks`` can check: the estimator's tags say that it takes
3-D input, not 2-D arrays, so ``check_estimator`` runs none of its data checks (they feed
2-D tables). The API checks that do not fit on a 2-D table apply and pass (tested):
cloning, ``get_params``/``set_params``, nothing set or validated in ``__init__``, the repr,
the tags, mixin order, and ``NotFittedError`` before ``fit``. ``n_features_in_`` is not set:
the input has no feature columns.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted

from brainlm.errors import UserError

__all__ = ["BrainLMEmbedder"]

A424_REGIONS = 424


class BrainLMEmbedder(TransformerMixin, BaseEstimator):
    """One embedding per recording: the mean over its sliding windows, masking off.

    Args:
        model: a model folder or hub id (anything :func:`brainlm.downstream.load_model`
            accepts), or a loaded model (used as is when it is already on ``device`` in eval
            mode, else a copy is moved there).
        coords: ``(R, 3)`` region centres or a coordinate file, for array input (module
            docstring); ``None``: the A424 centres for a 424-region model.
        pooling: ``"cls"`` (the CLS token) or ``"mean"`` (mean of the patch tokens).
        window: timepoints per window; ``None``: the model's training window.
        stride: step between windows; ``None``: ``window`` (no overlap).
        batch_size: windows per forward pass.
        device: ``"cpu"``, ``"cuda"``, ``"auto"``, ...
        precision: ``"fp32"``, ``"bf16"``, ``"fp16"`` or ``"auto"``.
        trust_unverified: use a model folder that no complete ``manifest.json`` verifies.

    Attributes:
        model_: the loaded model, in eval mode on ``device``.
        num_regions_: R the model expects.
        window_: the window length used.
    """

    def __init__(self, model=None, *, coords=None, pooling: str = "cls", window: int | None = None,
                 stride: int | None = None, batch_size: int = 32, device: str = "cpu", precision: str = "fp32",
                 trust_unverified: bool = False):
        self.model = model
        self.coords = coords
        self.pooling = pooling
        self.window = window
        self.stride = stride
        self.batch_size = batch_size
        self.device = device
        self.precision = precision
        self.trust_unverified = trust_unverified

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = False
        tags.input_tags.three_d_array = True
        tags.transformer_tags.preserves_dtype = ["float32"]
        return tags

    def fit(self, X=None, y=None):
        """Load the model (nothing is learned); check ``X`` when given.

        Returns:
            self.
        """
        from brainlm.distributed import resolve_device
        from brainlm.downstream import load_model

        if self.pooling not in ("cls", "mean"):
            raise UserError(f"pooling must be 'cls' or 'mean' (one vector per window), got {self.pooling!r}")
        if self.model is None:
            raise UserError("BrainLMEmbedder needs model=: a model folder, a hub id or a loaded model")
        device = resolve_device(self.device)
        if isinstance(self.model, (str, os.PathLike)):
            model = load_model(self.model, map_location=device, trust_unverified=self.trust_unverified)
        else:
            model = self.model
            if model.training or next(model.parameters()).device != device:
                model = copy.deepcopy(model).to(device).eval()  # the parameter itself stays untouched
        self.model_ = model
        self.num_regions_ = int(model.num_regions)
        self.window_ = int(self.window or model.window_length)
        if X is not None:
            self._recordings(X)
        return self

    def transform(self, X) -> np.ndarray:
        """Embed each recording of ``X`` (module docstring).

        Returns:
            ``(N, D)`` float32, in the order of ``X``.
        """
        from brainlm.downstream import embed_recordings

        check_is_fitted(self, "model_")
        recordings = self._recordings(X)
        emb = embed_recordings(self.model_, recordings, pooling=self.pooling, windows="average", window=self.window_,
                               stride=self.stride, batch_size=self.batch_size, precision=self.precision,
                               progress=False)
        if emb.skipped:
            raise UserError(f"recordings {', '.join(emb.skipped)} of {recordings.source} are shorter than one "
                            f"window ({self.window_} timepoints); pass a smaller window= or drop them")
        return emb.X

    def _recordings(self, X):
        from brainlm.downstream.loading import check_layout, open_recordings

        if isinstance(X, (str, os.PathLike)) and Path(X).is_dir():
            return open_recordings(X)
        if isinstance(X, np.ndarray) and X.ndim != 3:
            raise UserError(f"X must be an (n_recordings, T, R) array, a list of (T, R) arrays or a store folder, "
                            f"got an array of shape {X.shape}")
        arrays = [np.asarray(x) for x in X]  # not cast yet: open_recordings refuses complex, NaN, constant...
        check_layout(arrays, self.num_regions_, "the model's regions")
        return open_recordings(arrays, coords=self._coords())

    def _coords(self):
        if self.coords is not None:
            return self.coords
        if self.num_regions_ == A424_REGIONS:
            from brainlm.data.atlas import bundled_path, read_coordinates

            return read_coordinates(bundled_path("A424_Coordinates.dat"))[0]
        raise UserError(f"coords=: the model has {self.num_regions_} regions, not the 424 of A424; pass their "
                        "(R, 3) centres (an array or a coordinate file) for array input")

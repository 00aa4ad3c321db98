"""A small dataset written the way Brainmarks writes its evaluation datasets.

``datasets.DatasetDict.save_to_disk`` into ``<name>.a424.arrow/{train,validation,test}``; per
sample ``bold`` (timepoints x 424, float16, each region z-scored over the sample, a region whose
std is <= 1e-6 stored as zeros with mean and std 0, as Brainmarks' ``nisc.scale`` does),
``mean`` / ``std`` (1 x 424, float32), ``tr``, ``sub`` and targets: ``gender`` (text) and
``age_q`` (class ids 0..2) as columns, and a ``targets/<prefix>_target_map_sex.json`` beside the
dataset. Used by the tests and by ``benchmarks/bench_brainmarks_plugin.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

R = 424


def scale(series: np.ndarray, eps: float = 1e-6):
    """Z-score each region over time; regions with std <= eps become zeros (mean and std 0)."""
    mean = series.mean(0, keepdims=True)
    std = series.std(0, keepdims=True)
    valid = std > eps
    out = (series - mean) / std.clip(min=eps) * valid
    return out, mean * valid, std * valid


def brainmarks_samples(counts=(12, 4, 4), *, length=300, tr=0.72, flat=True, signal=0.0, seed=0) -> dict:
    """Samples per split, one subject each; ``gender`` alternates F/M, ``age_q`` cycles 0, 1, 2.

    With ``flat``, the second training sample has region 7 constant (stored as zeros). With
    ``signal`` > 0, the M samples share a slow common fluctuation in regions 0..19 (a
    connectivity difference a probe can find).
    """
    rng = np.random.default_rng(seed)
    out, k = {}, 0
    for split, n in zip(("train", "validation", "test"), counts):
        rows = []
        for _ in range(n):
            sub = f"{1000 + k:06d}"
            gender = "FM"[k % 2]
            raw = 300 + 20 * rng.normal(size=(length, R)) + np.arange(R)  # region means differ
            if gender == "M" and signal:
                raw[:, :20] += signal * 20 * rng.normal(size=(length, 1))
            if flat and split == "train" and len(rows) == 1:
                raw[:, 7] = 123.0
            bold, mean, std = scale(raw)
            rows.append({"sub": sub, "gender": gender, "age_q": k % 3, "tr": tr, "start": 0, "end": length,
                         "bold": bold.astype(np.float16), "mean": mean.astype(np.float32),
                         "std": std.astype(np.float32)})
            k += 1
        out[split] = rows
    return out


def write_brainmarks_dataset(root, samples: dict) -> Path:
    """Save ``samples`` (split -> rows) as ``root`` (``.../<name>.a424.arrow``) and a sex target map."""
    import datasets as hfds

    hfds.disable_progress_bars()
    root = Path(root)
    features = hfds.Features({
        "sub": hfds.Value("string"), "gender": hfds.Value("string"), "age_q": hfds.Value("int32"),
        "tr": hfds.Value("float32"), "start": hfds.Value("int32"), "end": hfds.Value("int32"),
        "bold": hfds.Array2D(shape=(None, R), dtype="float16"),
        "mean": hfds.Array2D(shape=(1, R), dtype="float32"),
        "std": hfds.Array2D(shape=(1, R), dtype="float32"),
    })
    splits = {split: hfds.Dataset.from_dict({key: [r[key] for r in rows] for key in features}, features=features,
                                            split=hfds.NamedSplit(split)) for split, rows in samples.items()}
    hfds.DatasetDict(splits).save_to_disk(str(root))
    targets = root.parent / "targets"
    targets.mkdir(exist_ok=True)
    prefix = root.name.split(".")[0].split("-")[0]
    sex = {r["sub"]: int(r["gender"] == "M") for rows in samples.values() for r in rows}
    (targets / f"{prefix}_target_map_sex.json").write_text(json.dumps(sex))
    return root


def brainmarks_brainlm_transform(workdir) -> type:
    """Brainmarks' own ``BrainLMTransform`` class (brainmarks 0.1.1, ``brainmarks/models/brainlm.py``).

    That module imports the original BrainLM packages for its model wrapper, which the transform
    does not use: they are stood in for by empty modules, and ``brainlm_toolkit`` by a folder in
    ``workdir`` holding the A424 coordinate file (brainlm's bundled copy) where the transform
    reads it. Nothing of brainlm's code runs in the transform.
    """
    import importlib
    import shutil
    import sys
    import types

    from brainlm.data.atlas import bundled_path

    toolkit = Path(workdir) / "stand-ins" / "brainlm_toolkit"
    (toolkit / "atlases").mkdir(parents=True, exist_ok=True)
    (toolkit / "__init__.py").write_text("")
    shutil.copy(bundled_path("A424_Coordinates.dat"), toolkit / "atlases" / "A424_Coordinates.dat")
    sys.path.insert(0, str(toolkit.parent))
    try:
        for name, attr in (("brainlm_mae", None), ("brainlm_mae.modeling_vit_mae_with_padding", "ViTMAEForPreTraining"),
                           ("brainlm_mae.modeling_brainlm", "BrainLMForPretraining")):
            module = sys.modules.setdefault(name, types.ModuleType(name))
            if attr:
                setattr(module, attr, object)
        return importlib.import_module("brainmarks.models.brainlm").BrainLMTransform
    finally:
        sys.path.remove(str(toolkit.parent))

"""Downstream uses of a BrainLM model on the real demo recordings (12 subjects, 94 AAL2 regions).

    python examples/downstream_demo.py --out runs/downstream_demo [--checkpoint runs/demo]

Without ``--checkpoint`` a small model is pre-trained here first with a short masked-
autoencoder loop on the training subjects (a few minutes on 2 CPU cores). Then:

1. subject identification from the first to the second half of each recording, model
   embeddings vs the functional connectivity fingerprint (all 12 subjects, and the 4
   held-out validation + test subjects alone);
2. whole-recording reconstruction and last-timepoint forecasting on the held-out subjects,
   against persistence and autoregressive baselines;
3. probes of the cohort label (HCP vs the second cohort) on embeddings and on FC.

Figures and ``summary.json`` go to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from brainlm.checkpoint import save_pretrained
from brainlm.data import WindowDataset, build_demo_store, collate_windows
from brainlm.downstream import (
    fingerprint,
    forecast_recordings,
    load_model,
    open_recordings,
    plot_fingerprint,
    plot_forecast,
    plot_reconstruction,
    probe,
    reconstruct_recordings,
)
from brainlm.model import BrainLMForPretraining, brainlm_tiny


def pretrain_small(store, out: Path, *, window: int = 40, steps: int = 600, batch_size: int = 32, seed: int = 0) -> Path:
    """A minimal masked-autoencoder loop on the training split; saves the model to ``out``."""
    torch.manual_seed(seed)
    config = brainlm_tiny(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, decoder_hidden_size=64,
        decoder_num_hidden_layers=1, decoder_num_attention_heads=4, decoder_intermediate_size=128,
        conv_kernel_size=9, timepoint_patching_size=10, mask_ratio=0.5, time_encoding_dropout=0.0,
        num_brain_voxels=store.num_regions, num_timepoints_per_voxel=window,
    )
    model = BrainLMForPretraining(config).train()
    data = WindowDataset(store, "train", window=window, mode="sliding", stride=5)
    loader = torch.utils.data.DataLoader(data, batch_size=batch_size, shuffle=True, collate_fn=collate_windows,
                                         drop_last=True, generator=torch.Generator().manual_seed(seed))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 20) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    step, losses, t0 = 0, [], time.time()
    while step < steps:
        for batch in loader:
            loss = model(batch["signal_vectors"], batch["xyz_vectors"]).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.item())
            step += 1
            if step % 50 == 0:
                print(f"step {step}: masked MSE {np.mean(losses[-50:]):.3f} ({time.time() - t0:.0f} s)")
            if step >= steps:
                break
    save_pretrained(model.eval(), out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/downstream_demo")
    parser.add_argument("--checkpoint", help="model folder or training run (default: pre-train a small one here)")
    parser.add_argument("--steps", type=int, default=600, help="pre-training steps when no checkpoint is given")
    parser.add_argument("--bootstrap", type=int, default=500)
    args = parser.parse_args()
    torch.set_num_threads(1)  # faster than 2 on a shared 2-core machine for a model this small
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    store = build_demo_store(out / "store", progress=False)
    ckpt = args.checkpoint or str(pretrain_small(store, out / "model", steps=args.steps))
    model = load_model(ckpt)
    window = model.config.num_timepoints_per_voxel
    W = model.config.timepoint_patching_size
    summary: dict = {"checkpoint": ckpt, "window": window, "patch": W, "num_parameters": model.num_parameters()}

    # 1. Fingerprinting: all subjects, then the held-out ones alone.
    fp_all, _ = fingerprint(model, store, pooling="cls")
    fp_mean, _ = fingerprint(model, store, pooling="mean")
    fp_rt, _ = fingerprint(model, store, pooling="region_time", keep_regions=True)
    held = [s for sp in ("validation", "test") for s in store.splits[sp]]
    fp_held, _ = fingerprint(model, open_recordings(store).subset(held), pooling="cls")
    table = fp_all.copy()
    table.loc[0, "features"] = "BrainLM CLS"
    table.loc[1, "features"] = "FC"
    mean_row = fp_mean.iloc[[0]].assign(features="BrainLM mean")
    rt_row = fp_rt.iloc[[0]].assign(features="BrainLM region x time")
    table = pd.concat([table.iloc[[0]], mean_row, rt_row, table.iloc[[1]]], ignore_index=True)
    plot_fingerprint(table, out / "fingerprint.png", title=f"Subject identification, {int(fp_all.num_subjects[0])} demo subjects")
    summary["fingerprint_all"] = table[["features", "accuracy", "chance", "num_subjects"]].to_dict("records")
    summary["fingerprint_held_out"] = fp_held[["features", "accuracy", "chance", "num_subjects"]].to_dict("records")
    print(table.to_string(index=False))
    print(fp_held.to_string(index=False))

    # 2. Reconstruction and forecasting on held-out subjects.
    test = open_recordings(store, "test")
    r2, results = reconstruct_recordings(model, test, mask_ratio=0.5, progress=False)
    rid = next(iter(results))
    plot_reconstruction(results[rid], out / "reconstruction.png", region_names=store.region_names,
                        tr=float(store.recordings.set_index("recording_id").loc[rid, "tr"]) if not np.isnan(
                            store.recordings.set_index("recording_id").loc[rid, "tr"]) else None,
                        title=f"{rid} (held out): every patch predicted while hidden, mask ratio 0.5")
    summary["reconstruction_r2"] = {k: {"median": float(v["r2"].median()), "mean": float(v["r2"].mean())}
                                    for k, v in r2.groupby("recording_id")}
    fc = forecast_recordings(model, test, W, stride=window, progress=False)
    plot_forecast(fc, out / "forecast.png", regions=(0, 40, 80), region_names=store.region_names,
                  title=f"last {W} of {window} timepoints, held-out {fc.index['recording_id'].iloc[0]}")
    summary["forecast"] = fc.metrics.to_dict("records")
    print(fc.metrics.to_string(index=False))

    # 3. Probes of the cohort label.
    res = probe(model, store, "cohort", n_splits=3, inner_splits=2, n_boot=args.bootstrap,
                probes=("dummy", "ridge", "knn", "svm"), progress=False)
    summary["probe_cohort"] = res.metrics.to_dict("records")
    print(res.table().to_string())
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=float) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

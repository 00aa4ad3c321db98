"""Planted data for the analysis tests: regions in planted networks, a VAR(1) with strong coupling
inside networks, a group difference in one network's coupling, and a null grouping.

Each recording follows ``x_t = A x_{t-1} + e_t`` (unit Gaussian noise) with
``A = 0.3 I + c M``, where ``M[i, j] = 1 / n_k`` for two regions of the same network ``k`` (of
size ``n_k``) and 0 otherwise: every network's mean mode decays at ``0.3 + c``, differences
within a network at 0.3, so regions of a network are strongly correlated and regions of two
networks are not. Patients have a stronger coupling in network 0 (``c + boost``). Networks are
placed at random among the region indices, and coordinates are random.
"""

from __future__ import annotations

import numpy as np

from brainlm.data import Atlas, Recording, Source, StoreOptions, write_store

COUPLING, BOOST, PLANTED = 0.45, 0.2, 0


def planted_labels(num_regions: int, num_networks: int = 4, seed: int = 0) -> np.ndarray:
    """``(R,)`` network of each region, equal sizes, randomly placed."""
    rng = np.random.default_rng((seed, 1))
    return rng.permutation(np.arange(num_regions) % num_networks)


def coupling(labels: np.ndarray, boost: float = 0.0) -> np.ndarray:
    """``A`` of the module docstring; ``boost`` adds to network ``PLANTED``'s coupling."""
    same = labels[:, None] == labels[None, :]
    sizes = np.bincount(labels)[labels]
    c = np.where(labels == PLANTED, COUPLING + boost, COUPLING)
    return 0.3 * np.eye(len(labels)) + same * (c / sizes)[:, None]


def simulate(A: np.ndarray, T: int, rng: np.random.Generator, burn: int = 100) -> np.ndarray:
    x = np.zeros(len(A))
    out = np.empty((T + burn, len(A)))
    for t in range(T + burn):
        x = A @ x + rng.normal(size=len(A))
        out[t] = x
    return out[burn:].astype(np.float32)  # (T, R)


def planted_store(out, *, num_regions: int = 24, n_subjects: int = 20, T: int = 120, window: int = 20,
                  split=(12, 4, 4), seed: int = 0, boost: float = BOOST, recordings_per_subject: int = 1):
    """A store of planted recordings. Phenotypes: ``group`` (control / patient, alternating; patients
    have network 0's coupling boosted), ``null`` (x / y, balanced, unrelated to the data),
    ``score`` (a number, higher for patients), ``site`` (three levels), ``lonely`` (one patient
    is "b", everyone else "a"), ``constant`` (one level)."""
    labels = planted_labels(num_regions, seed=seed)
    rng = np.random.default_rng((seed, 2))
    coords = rng.normal(size=(num_regions, 3)).astype(np.float32) * 40
    atlas = Atlas(name="PLANTED", coords=coords, region_names=[f"r{i:03d}" for i in range(num_regions)])
    null = rng.permutation(np.arange(n_subjects) % 2)
    tasks = []
    for i in range(n_subjects):
        patient = i % 2
        A = coupling(labels, boost if patient else 0.0)
        for run in range(recordings_per_subject):
            def load(i=i, run=run, A=A, patient=patient):
                x = simulate(A, T, np.random.default_rng((seed, 3, i, run)))
                return Recording(x, subject_id=f"s{i:02d}", run_id=str(run + 1), tr=1.0, source=f"planted{i}_{run}",
                                 phenotypes={"group": "patient" if patient else "control", "null": "xy"[null[i]],
                                             "score": patient + 0.01 * i, "site": "abc"[i % 3],
                                             "lonely": "b" if i == 1 else "a", "constant": "same"})

            tasks.append((f"planted{i}_{run}", load))
    options = StoreOptions(split=split, seed=seed, dtype="float32", normalization="none", window=window,
                           progress=False)
    return write_store(Source("planted", atlas, tasks), out, options), labels


def network_table(path, labels: np.ndarray, by: str = "index") -> None:
    """Write the planted networks as a ``--networks`` table (``by`` index or name)."""
    rows = [("region_index" if by == "index" else "region", "network")]
    rows += [(str(r) if by == "index" else f"r{r:03d}", f"net{k}") for r, k in enumerate(labels)]
    path.write_text("\n".join("\t".join(r) for r in rows) + "\n")


def tiny_vitmae(folder, seed: int = 0):
    """A small random ViT-MAE (424 regions, 200-timepoint windows, 48 x 48 patches) saved as a released folder."""
    import torch
    from transformers import ViTMAEForPreTraining

    from brainlm.vitmae import vitmae_111m_config

    torch.manual_seed(seed)
    config = vitmae_111m_config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                                patch_size=48, decoder_hidden_size=16, decoder_num_hidden_layers=1,
                                decoder_num_attention_heads=2, decoder_intermediate_size=32)
    ViTMAEForPreTraining(config).save_pretrained(folder)
    return folder


def amplitude_attention_model(num_regions: int, window: int = 20, strength: float = 1.5, seed: int = 0):
    """A tiny BrainLM whose first-layer CLS attention follows the signal, built by hand: a token
    is its patch's values (no coordinates), the CLS query is ``strength`` times the sum of a
    token's values, so attention to a token grows as ``exp(strength * sum)`` and, averaged over
    windows, the regions of larger amplitude get more of it."""
    import torch

    from downstream_synth import PATCH, tiny_model

    model = tiny_model(num_regions=num_regions, window=window, seed=seed)
    enc = model.encoder
    D = model.config.hidden_size
    heads = model.config.num_attention_heads
    d = D // heads
    with torch.no_grad():
        enc.signal_proj.weight.zero_()
        enc.signal_proj.bias.zero_()
        enc.signal_proj.weight[:PATCH, :PATCH] = torch.eye(PATCH)  # token dims 0..W-1: the patch
        enc.xyz_proj.weight.zero_()
        enc.xyz_proj.bias.zero_()
        enc.cls_token.zero_()
        enc.cls_token[0, 0, PATCH] = 1.0  # dim W marks the CLS token
        qkv = enc.blocks.layers[0].attn.qkv
        qkv.weight.zero_()
        qkv.bias.zero_()
        for h in range(heads):
            for i in range(PATCH):
                qkv.weight[h * d + i, PATCH] = strength * d ** 0.5  # query: the CLS marker
                qkv.weight[D + h * d + i, i] = 1.0  # key: the patch values
    return model


def uniform_attention_model(num_regions: int, window: int = 20, seed: int = 0):
    """A tiny BrainLM whose CLS attention is exactly uniform over the tokens in every layer: every
    query and key is 0, so every attention score is the same."""
    import torch

    from downstream_synth import tiny_model

    model = tiny_model(num_regions=num_regions, window=window, seed=seed)
    D = model.config.hidden_size
    with torch.no_grad():
        for block in model.encoder.blocks.layers:
            block.attn.qkv.weight[: 2 * D].zero_()
            block.attn.qkv.bias[: 2 * D].zero_()
    return model


def quiet_model(num_regions: int, window: int = 20, scale: float = 1e-4, seed: int = 0):
    """A tiny BrainLM whose every output (and so every forecast and response) is ``scale`` times that
    of the same random model: its response to a perturbation is tiny beside the VAR's."""
    import torch

    from downstream_synth import tiny_model

    model = tiny_model(num_regions=num_regions, window=window, seed=seed)
    with torch.no_grad():
        model.decoder.pred2.weight.mul_(scale)
        model.decoder.pred2.bias.mul_(scale)
    return model


def forecast_run(store, init_from, out, steps: int = 2):
    """Fine-tune the tiny model saved in ``init_from`` to forecast on ``store`` for ``steps`` steps,
    as the demo does (``brainlm.train.forecast_finetune``): a run whose ``train_config.json``
    records ``train_mask_scheme`` forecast. Returns the run folder."""
    from brainlm.train import TrainConfig, forecast_finetune, pretrain

    from downstream_synth import PATCH, WINDOW

    base = TrainConfig(model="tiny", window=WINDOW, data=str(store), batch_size=2, precision="fp32", device="cpu",
                       num_threads=1, progress=False, plots=False, seed=0, keep_last=1, log_every=1,
                       model_overrides=dict(timepoint_patching_size=PATCH, hidden_size=16, intermediate_size=32,
                                            decoder_hidden_size=16, decoder_intermediate_size=32,
                                            time_encoding_dropout=0.0))
    return pretrain(forecast_finetune(base, init_from, out, steps=steps)).run_dir

"""Side-by-side model benchmark: brainlm vs the original architecture, same config and weights.

The reference is the original BrainLM forward wired around ``transformers``' own
``NystromformerLayer`` (``brainlm.reference``), loaded with the same weights as ours. Every
case runs in a fresh process so that its peak resident memory is its own; the fp32 GEMM rate
is measured in the same run, and achieved FLOP rates are reported as a fraction of it.

    python benchmarks/bench_model.py                      # 13M at mask 0.2 / 0.75 / 0.9 + embeddings
    python benchmarks/bench_model.py --preset 111m --steps 2 --masks 0.75
    python benchmarks/bench_model.py --long-context       # exact SDPA vs Nystrom as tokens grow

Figures are printed as a Markdown table (and written with ``--json``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch


def _threads() -> int:
    return int(os.environ.get("BENCH_THREADS", "2"))


# -------------------------------------------------------------------------------------------
# FLOP counting (analytic; matmul-like work only, multiply-add = 2 FLOPs)
# -------------------------------------------------------------------------------------------


def _layer_flops(n: int, dim: int, inter: int, kernel: int) -> float:
    linear = 2 * n * dim * (3 * dim + dim + 2 * inter)
    attention = 2 * 2 * n * n * dim
    conv = 2 * n * dim * kernel
    return linear + attention + conv


def encoder_flops(cfg, B: int, R: int, T: int, mask_ratio: float) -> float:
    """FLOPs of the encoder alone (embedding extraction)."""
    W = cfg.timepoint_patching_size
    L = R * (T // W)
    K = int(L * (1 - mask_ratio))
    D = cfg.hidden_size
    layers = cfg.num_hidden_layers * _layer_flops(K + 1, D, cfg.intermediate_size, cfg.conv_kernel_size or 0)
    return B * (2 * L * (W * D + 3 * D) + layers)


def _last_layer_masked_flops(n: int, m: int, dim: int, inter: int, kernel: int) -> float:
    """A layer whose queries (and per-token work) cover m of its n tokens."""
    linear = 2 * n * dim * 2 * dim + 2 * m * dim * (dim + dim + 2 * inter)
    attention = 2 * 2 * m * n * dim
    return linear + attention + 2 * n * dim * kernel


def forward_flops(cfg, B: int, R: int, T: int, mask_ratio: float, decode_visible: bool = True) -> float:
    """FLOPs of one forward pass: linear layers, attention (QK^T and PV), value convolution."""
    W = cfg.timepoint_patching_size
    P = T // W
    L = R * P
    K = int(L * (1 - mask_ratio))
    D, Dd = cfg.hidden_size, cfg.decoder_hidden_size
    k = cfg.conv_kernel_size or 0

    enc = encoder_flops(cfg, 1, R, T, mask_ratio)
    dec = 2 * (K + 1) * D * Dd + 2 * L * 3 * Dd
    layers = cfg.decoder_num_hidden_layers
    if decode_visible or layers == 0:
        dec += layers * _layer_flops(L + 1, Dd, cfg.decoder_intermediate_size, k)
        dec += 2 * L * (Dd * (Dd // 2) + (Dd // 2) * W)
    else:  # brainlm training: last layer and head for masked tokens only
        dec += (layers - 1) * _layer_flops(L + 1, Dd, cfg.decoder_intermediate_size, k)
        dec += _last_layer_masked_flops(L + 1, L - K, Dd, cfg.decoder_intermediate_size, k)
        dec += 2 * (L - K) * (Dd * (Dd // 2) + (Dd // 2) * W)
    return B * (enc + dec)


def gemm_rate(n: int = 2048, repeats: int = 6) -> float:
    """Sustained fp32 matrix-multiply rate in FLOP/s (best of ``repeats``)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


# -------------------------------------------------------------------------------------------
# One case, run in a child process
# -------------------------------------------------------------------------------------------


def _build(impl: str, preset: str, **overrides):
    from brainlm.checkpoint import to_original_state_dict
    from brainlm.model import PRESETS, BrainLMForPretraining

    cfg = PRESETS[preset](**overrides)
    torch.manual_seed(0)
    model = BrainLMForPretraining(cfg)
    if impl == "original":
        from brainlm.reference import OriginalBrainLM

        ref = OriginalBrainLM(cfg)
        ref.load_state_dict(to_original_state_dict(model.state_dict()))
        model = ref
    return cfg, model


def _call(model, impl, x, xyz, ratio):
    if impl == "original":
        return model(x, xyz, mask_ratio=ratio)[0]
    # As in brainlm's training loop: visible patches are not decoded (same loss and gradients).
    return model(x, xyz, mask_ratio=ratio, decode_visible=False)


def run_case(case: dict) -> dict:
    torch.set_num_threads(_threads())
    impl, kind, B, steps = case["impl"].split("-")[0], case["kind"], case["batch"], case["steps"]
    overrides = case.get("overrides", {})
    cfg, model = _build(impl, case["preset"], **overrides)
    if case.get("compile"):
        model = torch.compile(model)
    R, T = case.get("regions", cfg.num_brain_voxels), case.get("timepoints", cfg.num_timepoints_per_voxel)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(B, R, T, generator=g)
    xyz = torch.randn(B, R, 3, generator=g) * 40
    dtype = torch.bfloat16 if case.get("bf16") else None
    ctx = (lambda: torch.autocast("cpu", dtype=dtype)) if dtype else (lambda: torch.autocast("cpu", enabled=False))
    times = []
    if kind == "train":
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        for i in range(steps + 1):  # first step is warm-up
            t = time.perf_counter()
            with ctx():
                out = _call(model, impl, x, xyz, case["mask"])
            loss = out if impl == "original" else out.loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if i:
                times.append(time.perf_counter() - t)
        # FLOPs actually executed (train = 3 x forward): brainlm skips visible decoder queries.
        flops = 3 * forward_flops(cfg, B, R, T, case["mask"], decode_visible=impl == "original")
    else:
        # Embeddings need the encoder only (``model.vit`` in the original's notebooks).
        encode = model.encode if impl == "original" else model.forward_encoder
        model.eval()
        with torch.inference_mode():
            for i in range(steps + 1):
                t = time.perf_counter()
                with ctx():
                    encode(x, xyz, mask_ratio=0.0)
                if i:
                    times.append(time.perf_counter() - t)
        flops = encoder_flops(cfg, B, R, T, 0.0)
    if case.get("overrides", {}).get("attention_type") == "nystrom":
        flops = float("nan")  # an approximation: the exact-attention count does not apply
    sec = statistics.median(times)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {**case, "seconds": sec, "flops": flops, "peak_rss_mb": peak_mb}


def _spawn(case: dict) -> dict:
    proc = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps(case)], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        return {**case, "error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


# -------------------------------------------------------------------------------------------
# Suites
# -------------------------------------------------------------------------------------------


def _fmt_row(r: dict, gemm: float) -> str:
    if "error" in r:
        return f"| {r['label']} | {r['impl']} | error: {r['error']} | | | |"
    rate = r["flops"] / r["seconds"]
    per = r["batch"] / r["seconds"]
    flop_text = "n/a" if rate != rate else f"{rate / 1e9:.1f} GFLOP/s ({100 * rate / gemm:.0f}% of GEMM)"
    return (
        f"| {r['label']} | {r['impl']} | {r['seconds']:.2f} s | {per:.2f} windows/s | "
        f"{r['peak_rss_mb'] / 1024:.2f} GB | {flop_text} |"
    )


def model_suite(args) -> list[dict]:
    overrides = json.loads(args.overrides) if args.overrides else {}
    cases = []
    for mask in args.masks:
        for impl in args.impls:
            cases.append(dict(label=f"{args.preset} train mask {mask} batch {args.batch}", impl=impl, kind="train",
                              preset=args.preset, batch=args.batch, mask=mask, steps=args.steps, bf16=False,
                              overrides=overrides))
        if args.bf16:
            cases.append(dict(label=f"{args.preset} train mask {mask} batch {args.batch} bf16", impl="brainlm",
                              kind="train", preset=args.preset, batch=args.batch, mask=mask, steps=args.steps, bf16=True,
                              overrides=overrides))
        if args.compile:
            cases.append(dict(label=f"{args.preset} train mask {mask} batch {args.batch} compiled", impl="brainlm",
                              kind="train", preset=args.preset, batch=args.batch, mask=mask, steps=args.steps,
                              bf16=False, compile=True, overrides=overrides))
    if args.embed:
        for impl in args.impls:
            cases.append(dict(label=f"{args.preset} embed mask 0 batch {args.embed_batch}", impl=impl, kind="embed",
                              preset=args.preset, batch=args.embed_batch, mask=0.0, steps=args.steps, bf16=False,
                              overrides=overrides))
        if args.bf16:
            cases.append(dict(label=f"{args.preset} embed mask 0 batch {args.embed_batch} bf16", impl="brainlm",
                              kind="embed", preset=args.preset, batch=args.embed_batch, mask=0.0, steps=args.steps, bf16=True,
                              overrides=overrides))
    return cases


def long_context_suite(args) -> list[dict]:
    cases = []
    for P in (2, 5, 10, 30, 60):
        for attn in ("exact", "nystrom"):
            cases.append(dict(label=f"embed 424 x {P} patches ({424 * P} tokens)", impl=f"brainlm-{attn}", kind="embed",
                              preset="13m", batch=1, mask=0.0, steps=args.steps, bf16=False, timepoints=20 * P,
                              overrides=dict(attention_type=attn, num_timepoints_per_voxel=20 * P)))
    return cases


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--preset", default="13m")
    ap.add_argument("--overrides", help='config overrides as JSON, e.g. \'{"decoder_hidden_size": 768}\'')
    ap.add_argument("--masks", type=float, nargs="+", default=[0.2, 0.75, 0.9])
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--embed-batch", type=int, default=4)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--impls", nargs="+", default=["original", "brainlm"])
    ap.add_argument("--no-embed", dest="embed", action="store_false")
    ap.add_argument("--bf16", action="store_true", help="also run brainlm under bf16 autocast")
    ap.add_argument("--compile", action="store_true", help="also run brainlm under torch.compile")
    ap.add_argument("--long-context", action="store_true")
    ap.add_argument("--json", help="write all results to this file")
    args = ap.parse_args()
    if args.child:
        case = json.loads(args.child)
        result = run_case(case)
        print(json.dumps(result))
        return

    torch.set_num_threads(_threads())
    gemm = gemm_rate()
    print(f"# {' '.join(sys.argv)}")
    print(f"torch {torch.__version__}, {_threads()} threads, fp32 GEMM 2048^3: {gemm / 1e9:.1f} GFLOP/s\n")
    cases = long_context_suite(args) if args.long_context else model_suite(args)
    print("| case | implementation | time per step | throughput | peak RSS | achieved FLOP rate |")
    print("| --- | --- | --- | --- | --- | --- |")
    results = []
    for case in cases:
        r = _spawn(case)
        results.append(r)
        print(_fmt_row(r, gemm), flush=True)
    by_label: dict[str, dict] = {}
    for r in results:
        by_label.setdefault(r["label"], {})[r["impl"]] = r
    ratios = [
        f"- {label}: {d['original']['seconds'] / d['brainlm']['seconds']:.2f}x the original's speed, "
        f"{d['brainlm']['peak_rss_mb'] / d['original']['peak_rss_mb']:.2f}x its peak memory"
        for label, d in by_label.items()
        if "original" in d and "brainlm" in d and "error" not in d["original"] and "error" not in d["brainlm"]
    ]
    if ratios:
        print("\n" + "\n".join(ratios))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"gemm_flops": gemm, "results": results}, f, indent=1)


if __name__ == "__main__":
    main()

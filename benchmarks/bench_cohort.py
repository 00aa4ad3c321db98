"""Cohort-scale figures, side by side in one run: prepare on 1 process vs 2 parts merged,
parcellation vs reading the image, embeddings in fp32 vs bf16, and the bf16 training step,
each FLOP rate against the same run's GEMM rate in the same precision.

    python benchmarks/bench_cohort.py [--recordings 12] [--embed-recordings 8] [--steps 2]

Prints the machine (CPU model and the flags that decide bf16 speed), then Markdown tables.
Nothing is asserted: these are measurements (BENCHMARKS.md records them with this command).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_model import encoder_flops, forward_flops  # noqa: E402
from bench_parcellate import cpu_model  # noqa: E402


CASES = ("prepare", "embed", "train", "demo-train", "gemm-sizes", "parcellation")


def cpu_flags() -> str:
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")).split()
    except (OSError, StopIteration):
        return "unknown"
    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "avx512_vnni")
    return ", ".join(f for f in wanted if f in flags) or "none of avx2/avx512/amx"


def gemm_rate(dtype: torch.dtype, n: int = 2048, repeats: int = 5) -> float:
    """Sustained matrix-multiply rate in FLOP/s in ``dtype`` (best of ``repeats``).

    Measured the way the model computes: ``F.linear`` under autocast (the oneDNN kernels of
    its linear layers; on CPUs without native bf16 a plain bf16 ``a @ b`` takes a far slower
    path, about 0.3 GFLOP/s here, which would not be a fair reference).
    """
    from brainlm.distributed import autocast_context

    a, b = torch.randn(n, n), torch.randn(n, n)
    linear = torch.nn.functional.linear
    best = float("inf")
    with autocast_context(torch.device("cpu"), dtype):
        linear(a, b)
        for _ in range(repeats):
            t = time.perf_counter()
            linear(a, b)
            best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


# ---------------------------------------------------------------------------------------------
# 1. prepare: one process vs two parts (two processes at once) merged
# ---------------------------------------------------------------------------------------------

_PART = """
import sys
from brainlm.data import StoreOptions, open_source, prepare_part
prepare_part(open_source([sys.argv[1]]), sys.argv[2], StoreOptions(window=50, progress=False), (int(sys.argv[3]), 2))
"""


def bench_prepare(root: Path, recordings: int, timepoints: int) -> list[str]:
    """BOLD images (3 mm MNI, A424 parcellation): one process, then two parts at once and a merge."""
    from bench_parcellate import make_image

    from brainlm.data import StoreOptions, merge_parts, prepare

    inputs = root / "inputs"
    inputs.mkdir()
    for i in range(recordings):
        make_image(inputs / f"sub-{i:04d}_task-rest_bold.nii.gz", timepoints, seed=i)
    t = time.perf_counter()
    whole = prepare([inputs], root / "whole", None, StoreOptions(window=50, progress=False))
    t_whole = time.perf_counter() - t
    t = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, "-c", _PART, str(inputs), str(root / f"part{i}"), str(i)])
             for i in range(2)]
    for p in procs:
        if p.wait() != 0:
            raise SystemExit("a part failed")
    t_parts = time.perf_counter() - t
    t = time.perf_counter()
    merged = merge_parts([root / "part0", root / "part1"], root / "merged", progress_bars=False)
    t_merge = time.perf_counter() - t
    same = json.dumps(whole.manifest, sort_keys=True) == json.dumps(merged.manifest, sort_keys=True)
    return [
        f"| prepare {recordings} BOLD images of 61 x 73 x 61 x {timepoints}, 1 process | {t_whole:.1f} s | "
        f"{recordings / t_whole:.2f} images/s | |",
        f"| prepare, 2 parts at once + merge | {t_parts:.1f} s + {t_merge:.1f} s = {t_parts + t_merge:.1f} s | "
        f"{recordings / (t_parts + t_merge):.2f} images/s | merged store equals the 1-process store: {same}; each "
        "part pays its own start-up (imports, atlas resampling) |",
    ]


# ---------------------------------------------------------------------------------------------
# 3 and 4. embeddings and the training step
# ---------------------------------------------------------------------------------------------


def bench_embed(recordings: int, gemm: dict[torch.dtype, float]) -> list[str]:
    from brainlm.downstream import Recordings, embed_recordings
    from brainlm.model import BrainLMForPretraining, brainlm_13m

    cfg = brainlm_13m()
    torch.manual_seed(0)
    model = BrainLMForPretraining(cfg).eval()
    rng = np.random.default_rng(1)
    series = [rng.normal(size=(200, 424)).astype(np.float32) for _ in range(recordings)]
    recs = Recordings(rng.normal(size=(424, 3)).astype(np.float32) * 40,
                      [{"recording_id": f"r{i}", "subject_id": f"s{i}", "session_id": "", "run_id": ""}
                       for i in range(recordings)], lambda i: series[i], "synthetic")
    rows, results = [], {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        embed_recordings(model, recs, windows="first", batch_size=8, precision=name, progress=False)  # warm
        t = time.perf_counter()
        emb = embed_recordings(model, recs, windows="first", batch_size=8, precision=name, progress=False)
        dt = time.perf_counter() - t
        results[name] = emb.X
        rate = recordings * encoder_flops(cfg, 1, 424, 200, 0.0) / dt
        rows.append(f"| embed 13M, {name} | {dt / recordings * 1000:.0f} ms/recording | {recordings / dt:.2f} recordings/s "
                    f"| {rate / 1e9:.1f} GFLOP/s = {100 * rate / gemm[dtype]:.0f}% of the {name} GEMM |")
    a, b = results["fp32"].astype(np.float64), results["bf16"].astype(np.float64)
    cos = ((a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))).min()
    rows.append(f"| embed 13M, bf16 vs fp32 | | | smallest cosine similarity {cos:.5f} |")
    return rows


def bench_train(steps: int, gemm: dict[torch.dtype, float], preset: str = "13m", regions: int = 424,
                batch: int = 2) -> list[str]:
    """Training steps of one training preset's model (its window and mask ratio) in fp32 and in
    bf16, on random data of ``batch`` windows of ``regions`` regions."""
    from brainlm.distributed import autocast_context
    from brainlm.model import BrainLMForPretraining
    from brainlm.train import train_preset

    tc = train_preset(preset)
    cfg, T = tc.model_config(regions), tc.window
    label = f"{preset} preset, {regions} x {T}, mask {cfg.mask_ratio:g}, batch {batch}"
    rows = []
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        torch.manual_seed(0)
        model = BrainLMForPretraining(cfg).train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        x, xyz = torch.randn(batch, regions, T), torch.randn(batch, regions, 3) * 40

        def step():
            with autocast_context(torch.device("cpu"), dtype):
                loss = model(x, xyz, decode_visible=False).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        step()  # warm
        t = time.perf_counter()
        for _ in range(steps):
            step()
        dt = (time.perf_counter() - t) / steps
        rate = 3 * forward_flops(cfg, batch, regions, T, cfg.mask_ratio, decode_visible=False) / dt
        rows.append(f"| train step {label}, {name} | {dt * 1000:.0f} ms/step | {batch / dt:.2f} windows/s "
                    f"| {rate / 1e9:.1f} GFLOP/s = {100 * rate / gemm[dtype]:.0f}% of the {name} GEMM |")
    return rows


def bench_gemm_sizes() -> list[str]:
    """GEMM rate by matrix size in fp32 and bf16: where native bf16 starts to pay."""
    rows = []
    for n in (64, 256, 1024, 2048):
        rates = {name: gemm_rate(dt, n, repeats=max(5, int(2e9 / (2 * n**3))))
                 for name, dt in (("fp32", torch.float32), ("bf16", torch.bfloat16))}
        rows.append(f"| GEMM {n}^3 | | fp32 {rates['fp32'] / 1e9:.1f}, bf16 {rates['bf16'] / 1e9:.1f} GFLOP/s "
                    f"| bf16 / fp32 = {rates['bf16'] / rates['fp32']:.2f} |")
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recordings", type=int, default=12, help="BOLD images (100 volumes) to prepare")
    parser.add_argument("--embed-recordings", type=int, default=8)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cases", default=",".join(CASES), help="comma separated: " + ", ".join(CASES))
    args = parser.parse_args(argv)
    cases = set(args.cases.split(","))
    if cases - set(CASES):
        parser.error(f"--cases: unknown {sorted(cases - set(CASES))}; known: {', '.join(CASES)}")
    torch.set_num_threads(args.threads)
    from brainlm.distributed import cpu_supports_bf16

    print("command:", " ".join([Path(sys.executable).name, *sys.argv]))
    print(f"machine: {cpu_model()}; flags: {cpu_flags()}; native bf16: {cpu_supports_bf16()}; "
          f"torch {torch.__version__}, {args.threads} threads")
    gemm = {dt: gemm_rate(dt) for dt in (torch.float32, torch.bfloat16)}
    print(f"GEMM 2048^3 in this run: fp32 {gemm[torch.float32] / 1e9:.1f} GFLOP/s, "
          f"bf16 {gemm[torch.bfloat16] / 1e9:.1f} GFLOP/s\n")
    print("| case | time | throughput | notes |\n| --- | --- | --- | --- |")
    if "prepare" in cases:
        with tempfile.TemporaryDirectory() as tmp:
            for row in bench_prepare(Path(tmp), args.recordings, 100):
                print(row, flush=True)
    rows = ((bench_embed(args.embed_recordings, gemm) if "embed" in cases else [])
            + (bench_train(args.steps, gemm) if "train" in cases else [])
            + (bench_train(max(args.steps, 20), gemm, "demo", 94, 16) if "demo-train" in cases else [])
            + (bench_gemm_sizes() if "gemm-sizes" in cases else []))
    for row in rows:
        print(row, flush=True)
    if "parcellation" in cases:
        print("\nparcellation vs reading (benchmarks/bench_parcellate.py, same run):", flush=True)
        from bench_parcellate import main as parcellate

        parcellate(["--repeats", "3"])
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Demo-preset training steps per second, side by side in one run: threads, the fused AdamW,
torch.compile, bf16 autocast, and model shapes with fewer small kernels. Each variant runs the
real ``Trainer.train_step`` on the demo store (94 regions, batch 16, window 20) from the same
seed, so the losses show whether the numbers stay the same (the last two variants change the
model, so their losses differ by design).

    python benchmarks/bench_demo_steps.py [--steps 60] [--store runs/demo/store]

Prints the machine (CPU model and the flags that decide bf16 speed), then a Markdown table.
``--kernels`` adds the kernels behind the table, at the demo model's shapes (forward and
backward): SDPA's flash kernel in fp32 and bf16 and the math path, a 64-wide linear layer in
fp32 and bf16, and the value convolution in its 2-D channels-last form (the model's) against
the same depthwise convolution in 1-D over H x d channels.
Nothing is asserted: these are measurements (BENCHMARKS.md records them with this command).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_cohort import cpu_flags  # noqa: E402
from bench_parcellate import cpu_model  # noqa: E402


def _model(**changes) -> dict:
    from brainlm.train import train_preset

    return {"model_overrides": {**train_preset("demo").model_overrides, **changes}}


# name -> (training settings changed from the demo preset, fused AdamW)
VARIANTS = {
    "1 thread, per-parameter AdamW (the preset before)": (dict(num_threads=1), False),
    "2 threads, per-parameter AdamW": (dict(num_threads=2), False),
    "2 threads, fused AdamW (the preset now)": (dict(num_threads=2), True),
    "2 threads, fused AdamW, torch.compile": (dict(num_threads=2, compile=True), True),
    "2 threads, fused AdamW, bf16 autocast": (dict(num_threads=2, precision="bf16"), True),
    "model change: 1 attention head of 64": (dict(num_threads=2, **_model(num_attention_heads=1,
                                                                          decoder_num_attention_heads=1)), True),
    "model change: 1 head of 64, no value convolution": (dict(num_threads=2, **_model(
        num_attention_heads=1, decoder_num_attention_heads=1, conv_kernel_size=0)), True),
}


def measure(store: str, steps: int, changes: dict, fused: bool) -> tuple[float, float, float]:
    """(seconds of the first 5 steps, ms per step after them, loss after ``steps + 5`` steps)."""
    from brainlm.train import train_preset
    from brainlm.train.trainer import Trainer

    with tempfile.TemporaryDirectory() as tmp:
        config = train_preset("demo").replace(data=store, out_dir=str(Path(tmp) / "run"), progress=False,
                                              plots=False, **changes)
        trainer = Trainer(config)
        trainer.build()
        for group in trainer.optimizer.param_groups:
            group["fused"] = fused  # False: the per-parameter loop, torch's default on a CPU
        batches = trainer.batches()
        t = time.perf_counter()
        for _ in range(5):
            trainer.train_step(batches)
        warm = time.perf_counter() - t
        t = time.perf_counter()
        for _ in range(steps):
            loss = trainer.train_step(batches)["loss"]
        return warm, (time.perf_counter() - t) / steps * 1000, loss


def _fwd_bwd_ms(fn, inputs, reps: int = 20) -> float:
    for _ in range(3):
        fn(*inputs).sum().backward()
    t = time.perf_counter()
    for _ in range(reps):
        fn(*inputs).sum().backward()
    return (time.perf_counter() - t) / reps * 1000


def _conv_1d(conv, v):
    """``conv`` (a (k, 1) kernel per head) as a depthwise 1-D convolution over H x d channels."""
    import torch.nn.functional as F

    B, H, N, d = v.shape
    k = conv.weight.shape[2]
    w = conv.weight.view(H, 1, k).repeat_interleave(d, dim=0)  # (H*d, 1, k)
    out = F.conv1d(v.transpose(-1, -2).reshape(B, H * d, N), w, padding=k // 2, groups=H * d)
    return out.view(B, H, d, N).transpose(-1, -2)  # (B, H, N, d)


def kernels(threads: int) -> None:
    """The kernel timings quoted in BENCHMARKS.md, at the demo model's shapes."""
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from brainlm.model import Attention
    from brainlm.train import train_preset

    torch.set_num_threads(threads)
    print(f"\nKernels, forward + backward, {threads} threads (ms):\n")
    print("| kernel | shape | fp32 | bf16 | other |")
    print("|---|---|---|---|---|")

    def sdpa(backend):
        def run(q, k, v):
            with sdpa_kernel(backend):
                return F.scaled_dot_product_attention(q, k, v)
        return run

    for n in (189, 377):
        qkv = {dt: [torch.randn(16, 4, n, 16, dtype=dt, requires_grad=True) for _ in range(3)]
               for dt in (torch.float32, torch.bfloat16)}
        flash = sdpa(SDPBackend.FLASH_ATTENTION)
        print(f"| SDPA flash (math path under other) | 16 x 4 heads x {n} tokens x 16 | "
              f"{_fwd_bwd_ms(flash, qkv[torch.float32]):.2f} | {_fwd_bwd_ms(flash, qkv[torch.bfloat16]):.2f} | "
              f"{_fwd_bwd_ms(sdpa(SDPBackend.MATH), qkv[torch.float32]):.2f} |")
    w = {dt: torch.randn(192, 64, dtype=dt, requires_grad=True) for dt in (torch.float32, torch.bfloat16)}
    x = {dt: torch.randn(16 * 377, 64, dtype=dt, requires_grad=True) for dt in w}
    print(f"| linear | 6032 x 64 -> 192 | {_fwd_bwd_ms(F.linear, (x[torch.float32], w[torch.float32]), 50):.2f} | "
          f"{_fwd_bwd_ms(F.linear, (x[torch.bfloat16], w[torch.bfloat16]), 50):.2f} | |")
    config = train_preset("demo").model_config(94)
    for heads in (4, 1):
        cfg = config.replace(num_attention_heads=heads)
        layer = Attention(cfg.hidden_size, heads, cfg)
        v = torch.randn(16, heads, 377, 64 // heads, requires_grad=True)
        two_d = _fwd_bwd_ms(lambda t: layer.conv(t.contiguous(memory_format=torch.channels_last)), (v,))
        one_d = _fwd_bwd_ms(lambda t: _conv_1d(layer.conv, t), (v,))
        print(f"| value convolution, {heads} head(s), kernel 9 | 16 x {heads} x 377 x {64 // heads} | 2-D "
              f"channels-last {two_d:.2f} | | 1-D depthwise over H x d channels {one_d:.2f} |")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=3, help="passes over all variants; the fastest pass counts")
    parser.add_argument("--store", default="runs/demo/store", help="demo store (built if missing)")
    parser.add_argument("--kernels", action="store_true", help="also time the kernels behind the table")
    args = parser.parse_args(argv)
    if not (Path(args.store) / "manifest.json").exists():
        from brainlm.data import build_demo_store

        build_demo_store(args.store, seed=0, progress=False)
    print(f"CPU: {cpu_model()}; flags: {cpu_flags()}; {torch.get_num_threads()} threads available; "
          f"torch {torch.__version__}")
    print(f"`python benchmarks/bench_demo_steps.py --steps {args.steps} --rounds {args.rounds}`: demo preset, batch 16 "
          "x 94 regions x 20 timepoints, the trainer's own step; the variants take turns, each pass in the same "
          "order, and the fastest of its passes counts (a shared machine slows some passes)\n")
    runs: dict[str, list] = {name: [] for name in VARIANTS}
    for _ in range(args.rounds):
        for name, (changes, fused) in VARIANTS.items():
            runs[name].append(measure(args.store, args.steps, changes, fused))
    print("| variant | first 5 steps | ms/step (fastest pass; all passes) | steps/s | vs the first row | loss after the run |")
    print("|---|---|---|---|---|---|")
    base = None
    for name, results in runs.items():
        warm, ms, loss = min(results, key=lambda r: r[1])
        base = base or ms
        every = ", ".join(f"{r[1]:.0f}" for r in results)
        print(f"| {name} | {warm:.1f} s | {ms:.1f} ({every}) | {1000 / ms:.1f} | {base / ms:.2f}x | {loss:.6f} |")
    if args.kernels:
        kernels(threads=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

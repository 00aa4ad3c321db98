"""Brainmarks' own ``main_logistic`` on a brainlm model through the shipped plugin, on CPU.

Needs brainmarks next to brainlm (docs/brainmarks.md: ``pip install --no-deps brainmarks==0.1.1``
and its short list). Writes a small dataset the way Brainmarks writes them
(``hcpya-rest1lr.a424.arrow``, registered by Brainmarks as ``hcpya_rest1lr_gender``), a small
random-weight brainlm model, then runs::

    python -m brainmarks.main_logistic brainlm_checkpoint cls hcpya_rest1lr_gender \\
        --overrides model_kwargs.checkpoint=MODEL device=cpu amp=false num_workers=1 n_trials=N

and, for comparison, ``brainlm prepare --normalization brainmarks-brainlm`` of the same dataset
and ``brainlm benchmark MODEL STORE --protocol brainmarks``: the two paths should print the same
table. Prints the commands, their tables and wall times.

    python benchmarks/bench_brainmarks_plugin.py [--trials 5] [--keep DIR]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from brainmarks_synth import brainmarks_samples, write_brainmarks_dataset  # noqa: E402

from brainlm.model import BrainLMForPretraining, brainlm_tiny  # noqa: E402


def run(cmd: list[str], env: dict) -> tuple[str, float]:
    print("$", " ".join(cmd), flush=True)
    start = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode:
        print(done.stdout[-4000:], done.stderr[-4000:], sep="\n")
        raise SystemExit(f"failed ({done.returncode})")
    return done.stdout + done.stderr, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=5, help="random re-splits (Brainmarks' default is 100)")
    parser.add_argument("--keep", help="work in this folder instead of a temporary one")
    args = parser.parse_args()
    work = Path(args.keep or tempfile.mkdtemp(prefix="bench-brainmarks-"))
    work.mkdir(parents=True, exist_ok=True)

    samples = brainmarks_samples((40, 12, 16), length=300, signal=1.0, seed=0)
    write_brainmarks_dataset(work / "eval" / "hcpya-rest1lr.a424.arrow", samples)
    torch.manual_seed(0)
    config = brainlm_tiny(num_brain_voxels=424, num_timepoints_per_voxel=200, timepoint_patching_size=20,
                          hidden_size=32, intermediate_size=64, decoder_hidden_size=16, decoder_intermediate_size=32)
    BrainLMForPretraining(config).eval().save_pretrained(work / "model")

    env = {**os.environ, "HCPYA_ROOT": str(work / "eval"), "HF_DATASETS_CACHE": str(work / "hf-cache"),
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    py = sys.executable
    brainmarks_cmd = [py, "-m", "brainmarks.main_logistic", "brainlm_checkpoint", "cls", "hcpya_rest1lr_gender",
                      "--overrides", f"model_kwargs.checkpoint={work / 'model'}", "device=cpu", "amp=false",
                      "num_workers=1", f"n_trials={args.trials}", f"output_root={work / 'brainmarks-out'}"]
    _, t_brainmarks = run(brainmarks_cmd, env)
    theirs = pd.read_csv(next((work / "brainmarks-out").rglob("eval_table.csv")))

    brainlm = [py, "-m", "brainlm.cli"]
    _, t_prepare = run([*brainlm, "prepare", str(work / "eval" / "hcpya-rest1lr.a424.arrow"), "--out",
                        str(work / "store"), "--normalization", "brainmarks-brainlm", "--dtype", "float32"], env)
    _, t_ours = run([*brainlm, "benchmark", str(work / "model"), str(work / "store"), "--out", str(work / "ours"),
                     "--overwrite", "--protocol", "brainmarks", "--target", "gender", "--trials", str(args.trials),
                     "--precision", "fp32", "--device", "cpu"], env)
    ours = pd.read_csv(work / "ours" / "eval_table.csv")
    ours = ours[ours["features"] == "brainlm:cls"]

    columns = ["trial", "split", "C", "acc", "acc_std", "f1", "f1_std", "bacc", "bacc_std"]
    print("\nBrainmarks main_logistic with the brainlm_checkpoint plugin (eval_table.csv):")
    print(theirs[columns].to_markdown(index=False, floatfmt=".4f"))
    print("\nbrainlm benchmark --protocol brainmarks, BrainLM (cls) rows of eval_table.csv:")
    print(ours[columns].to_markdown(index=False, floatfmt=".4f"))
    diff = (theirs[columns[2:]].to_numpy(float) - ours[columns[2:]].to_numpy(float))
    print(f"\nlargest difference between the two tables: {abs(diff).max():.3g}")
    print(f"wall time: brainmarks main_logistic {t_brainmarks:.1f} s; brainlm prepare {t_prepare:.1f} s + "
          f"benchmark --protocol brainmarks {t_ours:.1f} s (model and FC baseline); trials {args.trials}")
    print(f"work folder: {work}")


if __name__ == "__main__":
    main()

"""Brain-vs-second-modality integration on the 12 real demo subjects.

    python examples/integrate_demo.py --out runs/integrate_demo
    python examples/integrate_demo.py --brain runs/embed/embeddings.parquet --out runs/integrate_brainlm

Without ``--brain`` the brain side is functional-connectivity features (not BrainLM
embeddings); with it, a BrainLM embedding table whose subject IDs are the demo folder
names (``101309``, ..., ``NAP_001``, ...). The second modality is structural
connectivity. Same as ``brainlm integrate demo``; see docs/integrate.md.
"""

import argparse

from brainlm.integrate.demo import run_real_demo

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--brain", help="BrainLM embedding table of the demo subjects")
    parser.add_argument("--out", default="runs/integrate_demo")
    parser.add_argument("--permutations", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    for key, value in run_real_demo(args.brain, args.out, n_permutations=args.permutations, seed=args.seed).items():
        print(f"{key}: {value}")

"""Brain-vs-second-modality integration on the 12 real demo subjects.

    python examples/integrate_demo.py --out runs/integrate_demo
    python examples/integrate_demo.py --brain runs/embed/embeddings.parquet --out runs/integrate_brainlm

Without ``--brain`` the brain side is functional-connectivity features (not BrainLM
embeddings); with it, a BrainLM embedding table whose subject IDs are the demo folder
names (``101309``, ..., ``NAP_001``, ...). The second modality is structural
connectivity. Same as ``brainlm integrate demo``; see docs/integrate.md.
"""

import argparse

from brainlm.integrate.demo import IntegrateDemoOptions, run_real_demo

if __name__ == "__main__":
    parser = IntegrateDemoOptions.add_to(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    run_real_demo(IntegrateDemoOptions.from_args(parser.parse_args()))

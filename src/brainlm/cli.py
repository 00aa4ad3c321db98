"""The ``brainlm`` command line: parse arguments, build a config, call one library function.

Each sub-command is registered by a small ``_add_<name>(subparsers)`` function that sets
``func`` to a thin runner; all logic lives in the library modules.
"""

from __future__ import annotations

import argparse
import sys


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run the end-to-end demo on the bundled real recordings")
    p.add_argument("--out", default="runs/demo", help="folder for the demo store and run")
    p.add_argument("--smoke", action="store_true", help="a few training steps only, to check the pipeline")

    def run(args: argparse.Namespace) -> int:
        from brainlm.demo import run_demo
        from brainlm.train import parse_overrides

        return run_demo(out_dir=args.out, overrides=parse_overrides(args.overrides), smoke=args.smoke)

    p.set_defaults(func=run, accepts_overrides=True)


def _add_pretrain(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "pretrain",
        help="pretrain BrainLM (also under torchrun for DDP / FSDP)",
        description="Pretrain BrainLM. Any training setting can be changed with --key=value "
        "(e.g. --max_steps=500, --model.hidden_size=128); see docs/training.md.",
    )
    p.add_argument("--preset", default=None, help="training preset: demo, 13m, 111m, 650m (default 13m)")
    p.add_argument("--data", default=None, help="store folder (brainlm.data)")
    p.add_argument("--out", default=None, help="run folder")
    p.add_argument("--resume", default=None, metavar="RUN_DIR", help="continue the run in RUN_DIR")
    p.add_argument("--fsdp", action="store_true", help="shard the model with FSDP2 (under torchrun)")

    def run(args: argparse.Namespace) -> int:
        from brainlm.train import parse_overrides, run_pretrain

        run_pretrain(args.preset, data=args.data, out=args.out, resume=args.resume, fsdp=args.fsdp,
                     overrides=parse_overrides(args.overrides))
        return 0

    p.set_defaults(func=run, accepts_overrides=True)


_COMMANDS = [_add_demo, _add_pretrain]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="brainlm", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for add in _COMMANDS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "accepts_overrides", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.overrides = extra
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, RuntimeError) as err:
        # Bad input is reported as one clear line, not a stack trace.
        print(f"brainlm {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

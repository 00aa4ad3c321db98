"""The ``brainlm`` command line: parse arguments, build a config, call one library function.

Each sub-command is registered by a small ``_add_<name>(subparsers)`` function that sets
``func`` to a thin runner; all logic lives in the library modules.
"""

from __future__ import annotations

import argparse
import sys


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run the end-to-end demo on the bundled real recordings")
    p.add_argument("--out", default="runs/demo", help="run folder")

    def run(args: argparse.Namespace) -> int:
        from brainlm.demo import run_demo

        return run_demo(out_dir=args.out)

    p.set_defaults(func=run)


_COMMANDS = [_add_demo]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="brainlm", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for add in _COMMANDS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, RuntimeError) as err:
        # Bad input is reported as one clear line, not a stack trace.
        print(f"brainlm {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

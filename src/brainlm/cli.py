"""The ``brainlm`` command line: parse arguments, build the command's options, call one library function.

Every command is one line of :data:`COMMANDS`: its options dataclass (:mod:`brainlm.options`:
the fields own the flags, defaults, help and checks) and the library function that takes it.
Only the command being run is imported, so ``brainlm --help`` stays fast.

Exit status: 0 done; 2 bad input or an error of the machine (a full or read-only disk, no
permission: :func:`brainlm.errors.environment_error`), one line on standard error; 130
interrupted (Ctrl-C), one line that says how to continue when the command can
(:meth:`brainlm.options.Options.resume_hint`), from the first instant: importing this module
and the ``brainlm`` package loads nothing heavy, so an interrupt while torch loads is caught here
too, and one that comes as the command ends is ignored. (Under ``python -m brainlm.cli``, CPython
may still end an interrupted run by SIGINT after that line, when the interrupt landed while an
extension module was starting; a shell reports 130 either way.) Any other exception is a bug and
keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
from dataclasses import dataclass

from brainlm.errors import UserError, environment_error

__all__ = ["COMMANDS", "Command", "build_parser", "main"]


class _ArgumentError(UserError):
    """A command line that does not parse (unknown flag, missing or malformed value)."""


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (and exit status 2), like every other bad input."""

    def error(self, message: str):
        raise _ArgumentError(f"{message} (see {self.prog} --help)")


@dataclass(frozen=True)
class Command:
    """One sub-command: its options dataclass and the function that runs it (``"module:name"``
    each), or, for a group such as ``integrate``, its sub-commands."""

    name: str
    help: str
    options: str = ""
    run: str = ""
    children: tuple["Command", ...] = ()

    def _load(self, what: str):
        module, name = getattr(self, what).split(":")
        return getattr(importlib.import_module(module), name)

    def add(self, sub: argparse._SubParsersAction, words: list[str] | None) -> None:
        """Register the sub-command; its arguments only when ``words`` (the command line's words)
        name it, or are empty (every command's); ``None`` builds none."""
        build = words is not None and (not words or words[0] == self.name)
        if not self.children:
            if not build:
                sub.add_parser(self.name, help=self.help)
                return
            cls = self._load("options")
            p = sub.add_parser(self.name, help=self.help, description=(cls.__doc__ or self.help).strip(),
                               formatter_class=argparse.RawDescriptionHelpFormatter)
            cls.add_to(p)
            p.set_defaults(options_class=cls, run=self._load("run"))
            return
        p = sub.add_parser(self.name, help=self.help, description=self.help)
        inner = p.add_subparsers(dest=f"{self.name}_command", required=True, metavar="{" + ",".join(
            c.name for c in self.children) + "}")
        for child in self.children:
            child.add(inner, words[1:] if build else None)


COMMANDS = (
    Command("demo", "run the end-to-end demo on the bundled real recordings",
            "brainlm.pipelines.demo:DemoOptions", "brainlm.pipelines.demo:run_demo"),
    Command("prepare", "build a dataset store from BOLD images, a BIDS/fMRIPrep folder, parcellated files or "
            "original BrainLM datasets", "brainlm.data.prepare:PrepareOptions", "brainlm.data.prepare:run_prepare"),
    Command("verify", "check every file of a store (or a checkpoint) against its manifest",
            "brainlm.pipelines.verify:VerifyOptions", "brainlm.pipelines.verify:run_verify"),
    Command("benchmark", "reconstruction, forecasting, fingerprinting and probes against the baseline ladder",
            "brainlm.pipelines.benchmark_command:BenchmarkOptions", "brainlm.pipelines.benchmark_command:run_benchmark"),
    Command("pretrain", "pretrain BrainLM (also under torchrun for DDP / FSDP)",
            "brainlm.train.run:PretrainOptions", "brainlm.train.run:run_pretrain"),
    Command("integrate", "brain-genetics integration: CCA, late fusion, contrastive alignment", children=(
        Command("cca", "cross-validated CCA with subject-label permutation tests",
                "brainlm.integrate.run:CCAOptions", "brainlm.integrate.run:run_cca"),
        Command("fusion", "genetic vs brain vs concatenated prediction",
                "brainlm.integrate.run:FusionOptions", "brainlm.integrate.run:run_fusion"),
        Command("contrastive", "two-tower InfoNCE alignment, held-out retrieval, shared-space export",
                "brainlm.integrate.run:ContrastiveOptions", "brainlm.integrate.run:run_contrastive"),
        Command("demo", "the three analyses on the 12 real demo subjects (FC or BrainLM vs structural)",
                "brainlm.integrate.demo:IntegrateDemoOptions", "brainlm.integrate.demo:run_real_demo"),
    )),
    Command("embed-dna", "embed FASTA sequences with a local Hugging Face DNA model folder",
            "brainlm.integrate.dna:EmbedDNAOptions", "brainlm.integrate.dna:embed_dna_to_table"),
    Command("embed", "embeddings of recording windows (masking off), as Parquet or .npy",
            "brainlm.downstream.report:EmbedOptions", "brainlm.downstream.report:run_embed"),
    Command("reconstruct", "reconstruct whole recordings window by window; R^2 per region and a plot",
            "brainlm.downstream.report:ReconstructOptions", "brainlm.downstream.report:run_reconstruct"),
    Command("forecast", "predict the last k timepoints of each window; vs persistence and AR baselines",
            "brainlm.downstream.report:ForecastOptions", "brainlm.downstream.report:run_forecast"),
    Command("probe", "probes on frozen embeddings and on functional connectivity, grouped CV by subject",
            "brainlm.downstream.report:ProbeOptions", "brainlm.downstream.report:run_probe"),
    Command("finetune", "train a CLS -> MLP head (encoder frozen or not) with early stopping",
            "brainlm.downstream.report:FinetuneOptions", "brainlm.downstream.report:run_finetune"),
    Command("fingerprint", "identify subjects from the first half of a recording to the second",
            "brainlm.downstream.report:FingerprintOptions", "brainlm.downstream.report:run_fingerprint"),
    Command("attention", "CLS attention per region and network, group contrasts beside signal statistics and FC",
            "brainlm.analysis.attention:AttentionOptions", "brainlm.analysis.attention:run_attention"),
    Command("networks", "zero-shot network identification from region embeddings, beside FC profiles",
            "brainlm.analysis.identify:NetworksOptions", "brainlm.analysis.identify:run_networks"),
    Command("latent", "PCA / UMAP maps of recording embeddings by phenotype, with kNN purity, beside FC",
            "brainlm.analysis.latent:LatentOptions", "brainlm.analysis.latent:run_latent"),
    Command("perturb", "in-silico perturbation with a forecasting model, beside the ridge VAR's response",
            "brainlm.analysis.perturb:PerturbOptions", "brainlm.analysis.perturb:run_perturb"),
    Command("report", "rebuild report.html (and a demo folder's index.html) from a folder's report.md, results.json "
            "and figures", "brainlm.report:ReportOptions", "brainlm.report:run_report"),
)


def _no_abbreviations(parser: argparse.ArgumentParser) -> None:
    """Refuse abbreviated flags everywhere: ``--part`` must not silently mean ``--participants``."""
    parser.allow_abbrev = False
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                _no_abbreviations(child)


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser; only the arguments of the command that ``argv`` names are built (all when None)."""
    words = [a for a in argv if not a.startswith("-")] if argv is not None else []
    parser = _Parser(prog="brainlm", allow_abbrev=False, description="BrainLM, a masked-autoencoder "
                                     "foundation model for fMRI: data, pretraining, embeddings, benchmarks, analyses. "
                                     "'brainlm COMMAND --help' lists a command's options.")
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add(sub, words if argv is not None else [])
    _no_abbreviations(parser)
    return parser


def _resume_hint(options) -> str | None:
    """How to continue an interrupted command, when it can (None when there is nothing to say)."""
    try:
        return options.resume_hint() if options is not None else None
    except (UserError, OSError, KeyboardInterrupt):
        return None


def main(argv: list[str] | None = None) -> int:
    """Run ``brainlm ARGV`` (the process's own arguments when None); returns the exit status."""
    process = argv is None  # the command line of this process: brainlm ..., python -m brainlm.cli ...
    try:
        return _run(sys.argv[1:] if process else list(argv))
    finally:
        if process:  # the command has answered: an interrupt while Python exits has nothing left to stop
            signal.signal(signal.SIGINT, signal.SIG_IGN)


def _run(argv: list[str]) -> int:
    command = next((a for a in argv if not a.startswith("-")), "")
    prefix = f"brainlm {command}:" if command else "brainlm:"
    options = None
    try:
        args = build_parser(argv).parse_args(argv)
        options = args.options_class.from_args(args)
        result = args.run(options)
    except UserError as err:
        # Bad input is one clear line; anything else is a bug and keeps its traceback.
        print(f"{prefix} error: {err.one_line()}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prefix} interrupted" + (f"; {hint}" if (hint := _resume_hint(options)) else ""), file=sys.stderr)
        return 130
    except Exception as err:
        line = environment_error(err)
        if line is None:
            raise
        print(f"{prefix} error: {line}", file=sys.stderr)
        return 2
    # Library functions return their results; only a command that decides an exit status (demo) returns an int.
    return result if isinstance(result, int) and not isinstance(result, bool) else 0


if __name__ == "__main__":
    sys.exit(main())

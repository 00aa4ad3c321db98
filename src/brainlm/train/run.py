"""``brainlm pretrain``: resolve the settings, train, print where the results are."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from brainlm.distributed import destroy_distributed, init_distributed
from brainlm.evaluate.reconstruction import ladder_verdict
from brainlm.errors import UserError
from brainlm.options import ModelOptions, command_line, option

from .config import TrainConfig, TrainingOverrides, resolve_config
from .trainer import RunResult, pretrain

__all__ = ["PretrainOptions", "run_pretrain"]


@dataclass(kw_only=True)
class PretrainOptions(TrainingOverrides, ModelOptions):
    """Pretrain BrainLM (also under torchrun for DDP / FSDP); any training setting as --key=value
    (e.g. --max_steps=500, --model.hidden_size=128), see docs/training.md."""

    preset: str | None = option(None, "training preset: demo, 13m, 111m, 650m (default 13m)")
    data: str | None = option(None, "store folder (brainlm.data)")
    out: str | None = option(None, "run folder")
    resume: str | None = option(None, "continue the run in RUN_DIR", metavar="RUN_DIR")
    fsdp: bool = option(False, "shard the model with FSDP2 (under torchrun)")

    def config(self) -> TrainConfig:
        """The run's settings: the preset (or the resumed run's) with the overrides."""
        changes = dict(self.overrides)
        if self.data is not None:
            changes["data"] = self.data
        if self.fsdp:
            changes["fsdp"] = True
        return resolve_config(self.preset, changes, resume=self.resume, out=self.out)

    def resume_hint(self) -> str | None:
        run = Path(self.config().out_dir)
        if (run / "train_config.json").is_file():
            return f"continue with: {command_line('brainlm', 'pretrain', '--resume', run)}"
        return "nothing was saved yet; run the same command again to start"


def run_pretrain(options: PretrainOptions) -> RunResult:
    """Train (or continue) a run and print the validation numbers next to the strongest baseline."""
    config = options.config()
    try:
        if options.trust_unverified and not config.init_from:
            raise UserError("--trust-unverified applies to the model folder of --init_from; none was given")
        result = pretrain(config, resume=options.resume is not None, trust_unverified=options.trust_unverified)
        if init_distributed().is_main:
            _report(result)
    finally:
        destroy_distributed()
    return result


def _report(result: RunResult) -> None:
    m = result.metrics
    if m:
        methods = ["model", *(k[:-3] for k in m if k.endswith("_r2") and k != "model_r2")]
        verdict = ladder_verdict(m, methods, result.validation_windows, n_boot=1000, seed=0)
        print(f"step {result.step}, masked-value R^2 on the validation subjects: "
              + ", ".join(f"{k} {m[f'{k}_r2']:.3f}" for k in methods))
        print(verdict.line("on the validation subjects"))
    print(f"checkpoint: {result.checkpoint}\nbest: {result.best}\nmetrics: {result.metrics_file}")
    for p in result.plots:
        print(f"plot: {p}")

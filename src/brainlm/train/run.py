"""``brainlm pretrain``: resolve the settings, train, print where the results are."""

from __future__ import annotations

from typing import Any

from brainlm.distributed import destroy_distributed, init_distributed
from brainlm.evaluate.reconstruction import ladder_verdict
from brainlm.train.config import resolve_config
from brainlm.train.trainer import RunResult, pretrain

__all__ = ["run_pretrain"]


def run_pretrain(
    preset: str | None = None,
    *,
    data: str | None = None,
    out: str | None = None,
    resume: str | None = None,
    fsdp: bool = False,
    overrides: dict[str, Any] | None = None,
) -> RunResult:
    """Train (or continue) a run and print the validation numbers next to the strongest baseline."""
    changes = dict(overrides or {})
    if data is not None:
        changes["data"] = data
    if fsdp:
        changes["fsdp"] = True
    config = resolve_config(preset, changes, resume=resume, out=out)
    try:
        result = pretrain(config, resume=resume is not None)
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

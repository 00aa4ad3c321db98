"""The demo's last lines: the model against the strongest baseline, with the paired subject interval."""

import numpy as np
import pandas as pd

from brainlm.pipelines.demo import _verdict
from brainlm.evaluate.reconstruction import ReconstructionEval

METHODS = ("model", "zero", "mean", "interp", "conn")


def _eval(model_sse, conn_sse, subjects=("a", "b", "c", "d", "e", "f")):
    """Four windows per subject; every method has sum(y^2) = 1 per window."""
    rows = []
    for i, s in enumerate(np.repeat(subjects, 4)):
        row = {"index": i, "subject_id": s}
        sse = {"model": model_sse[s], "zero": 1.0, "mean": 1.2, "interp": 1.5, "conn": conn_sse[s]}
        for m in METHODS:
            row[f"{m}_sse"], row[f"{m}_syy"] = sse[m], 1.0
        rows.append(row)
    frame = pd.DataFrame(rows)
    metrics = {f"{m}_r2": 1 - frame[f"{m}_sse"].sum() / frame[f"{m}_syy"].sum() for m in METHODS}
    return ReconstructionEval(metrics=metrics, windows=frame, methods=METHODS)


def test_consistent_win_is_outside_noise(capsys):
    ev = _eval({"a": 0.5, "b": 0.55, "c": 0.5, "d": 0.52, "e": 0.5, "f": 0.51},
               {"a": 0.6, "b": 0.62, "c": 0.6, "d": 0.61, "e": 0.6, "f": 0.6})
    assert _verdict(ev) == 0
    out = capsys.readouterr().out
    assert "BrainLM vs the strongest baseline (connectivity-conditional fill) on the held-out test subjects: wins;" in out
    assert "over 6 subjects" in out and "Recorded" not in out


def test_mixed_win_is_within_noise(capsys):
    ev = _eval({"a": 0.4, "b": 0.8, "c": 0.4, "d": 0.8, "e": 0.4, "f": 0.8},
               {"a": 0.6, "b": 0.61, "c": 0.6, "d": 0.61, "e": 0.6, "f": 0.61})
    assert _verdict(ev) == 0
    out = capsys.readouterr().out
    assert ": level (within noise);" in out and "wins" not in out


def test_loss_to_the_baseline_is_said_and_worse_than_trivial_fails(capsys):
    ev = _eval(dict.fromkeys("abcdef", 0.7), dict.fromkeys("abcdef", 0.6))
    assert _verdict(ev) == 0
    assert "(connectivity-conditional fill) on the held-out test subjects: loses;" in capsys.readouterr().out
    ev = _eval(dict.fromkeys("abcdef", 1.1), dict.fromkeys("abcdef", 0.6))
    assert _verdict(ev) == 1
    assert "training failed" in capsys.readouterr().out


def test_demo_forecast_table_sets_the_model_beside_ar_and_var(tmp_path, capsys):
    from types import SimpleNamespace

    from downstream_synth import synthetic_store, tiny_model

    from brainlm.evaluate.reconstruction import windows_with_initial
    from brainlm.pipelines.benchmark import BenchmarkConfig, forecasting_windows
    from brainlm.pipelines.demo import _forecast_table

    store = synthetic_store(tmp_path / "store", n_subjects=6, split=(4, 1, 1), T=60)
    score = BenchmarkConfig(seed=0, precision="fp32", bootstrap=200)
    tuned = tiny_model()
    pretrained = tiny_model(seed=1)
    held = SimpleNamespace(forecast_model=tuned, model=pretrained,
                           forecasting=windows_with_initial(forecasting_windows(tuned, store, score),
                                                            forecasting_windows(pretrained, store, score)))
    _forecast_table(held, store, score)
    out = capsys.readouterr().out
    assert "BrainLM, fine-tuned to forecast" in out and "BrainLM, pretrained only" in out
    assert "Forecasting the last 5 timepoints of every 20-timepoint window from the 15 before" in out
    for label in ("persistence", "AR(p) per region", "ridge VAR across regions"):
        assert label in out
    verdict = next(line for line in out.splitlines() if line.startswith("forecasting: "))
    # one test subject: the interval is shown, the verdict is not drawn
    assert ": too few subjects to tell (n = 1);" in verdict and "[95% CI" in verdict
    assert out.count(" *") == 1  # the strongest baseline marked


def test_two_held_out_subjects_give_no_verdict_and_the_recorded_cross_validation(capsys):
    """The demo's split: 2 test subjects. Its line draws no verdict, names the cross-validation, and the
    last lines are the recorded 12-subject figures, labelled as recorded."""
    from brainlm.pipelines.demo import RECORDED_CV

    ev = _eval({"a": 0.5, "b": 0.51}, {"a": 0.6, "b": 0.62}, subjects=("a", "b"))
    assert _verdict(ev, remedy="every subject held out once: brainlm benchmark demo S --cv 6") == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert "on the held-out test subjects: too few subjects to tell (n = 2) (every subject held out once: " \
           "brainlm benchmark demo S --cv 6);" in lines[0]
    assert not any(f": {w};" in lines[0] for w in ("wins", "loses"))
    assert lines[1].startswith("Recorded, not rerun here (docs/training.md")
    assert len(lines) == 2 + len(RECORDED_CV["tasks"])
    assert "forecasting the last 5 of 20 timepoints, fine-tuned: BrainLM vs the strongest baseline (ridge VAR across " \
           "regions) over every subject held out once: wins; R^2 0.222 vs 0.203" in lines[-1]
    assert "over 12 subjects" in lines[-1] and ": level (within noise);" in lines[-2]
    # the differences as recorded, not recomputed from the rounded values (0.489 - 0.481)
    assert "difference +0.009 [95% CI -0.002, +0.015]" in lines[-2] and "difference +0.018 [95% CI" in lines[-1]


def test_the_recorded_cross_validation_is_what_the_docs_record():
    from pathlib import Path

    from brainlm.pipelines.demo import RECORDED_CV

    root = Path(__file__).resolve().parents[1]
    training, readme = (root / "docs/training.md").read_text(), (root / "README.md").read_text()
    for t in RECORDED_CV["tasks"]:
        cells = f"{t['difference']:+.3f} [{t['diff_ci_low']:+.3f}, {t['diff_ci_high']:+.3f}]"
        assert cells in training and cells in readme
        assert f"{t['model']:.3f}" in readme and f"{t['baseline_value']:.3f}" in readme
        assert f"| {t['p_boot']:.3f} |" in training

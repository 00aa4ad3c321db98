"""``brainlm benchmark``: every task against the ladder, with intervals, a report and figures."""

import json

import pytest
from downstream_synth import synthetic_store, tiny_model

from brainlm import save_pretrained
from brainlm.cli import main


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    store = synthetic_store(root / "store", n_subjects=12, split=(8, 2, 2), T=160)
    save_pretrained(tiny_model(), root / "model")
    return root, store


def test_benchmark_report_results_and_figures(setup, capsys):
    root, store = setup
    out = root / "out"
    args = ["benchmark", str(root / "model"), str(store.path), "--out", str(out), "--target", "score", "--folds", "3",
            "--bootstrap", "50", "--device", "cpu"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "reconstruction:" in printed and "fingerprinting:" in printed
    report = (out / "report.md").read_text()
    for task in ("## reconstruction", "## forecasting", "## fingerprinting", "## probes"):
        assert task in report
    assert "Brainmarks" not in report  # Brainmarks' protocol is --protocol brainmarks, nothing rough beside it
    assert "connectivity-conditional fill" in report and "ridge VAR across regions" in report
    assert "tangent-space FC" in report and report.count("95% CI") >= 5
    results = json.loads((out / "results.json").read_text())
    tasks = {t["task"]: t for t in results["tasks"]}
    rec = tasks["reconstruction"]
    methods = {row["method"] for row in rec["table"]}
    assert methods == {"model", "zero", "mean", "interp", "conn", "initial"}  # the ladder and the model at step 0
    # a saved model outside a training run: no record of its initialisation, so a fresh one, named as such
    assert results["initialisation"]["kind"] == "unknown" and "fresh random initialisation" in report
    for task in ("forecasting", "fingerprinting", "probes"):
        assert any(row["method"].startswith("initial") for row in tasks[task]["table"]), task
    for row in rec["table"]:
        assert row["ci_low"] <= row["value"] <= row["ci_high"] or row["method"] == "zero"
    cmp = rec["comparison"]
    assert cmp["baseline"] == "conn" and cmp["winner"] in ("model", "conn") and 0 <= cmp["p_boot"] <= 1
    assert {p.name for p in out.glob("*.png")} == {"reconstruction.png", "forecasting.png", "fingerprinting.png",
                                                   "probes.png"}
    assert main(args) == 2  # outputs exist: refused without --overwrite
    assert "pass --overwrite" in capsys.readouterr().err
    assert main([*args, "--overwrite", "--brainmarks"]) == 2  # the rough Brainmarks mode is gone
    assert "unrecognized arguments: --brainmarks" in capsys.readouterr().err


def test_benchmark_bad_inputs_are_one_line(setup, tmp_path, capsys):
    root, store = setup
    assert main(["benchmark", str(root / "model"), str(tmp_path / "nostore"), "--out", str(tmp_path / "o")]) == 2
    assert "not a brainlm store" in capsys.readouterr().err
    assert main(["benchmark", str(root / "model"), str(store.path), "--out", str(tmp_path / "o"),
                 "--tasks", "reconstruction,dreaming"]) == 2
    assert "--tasks must be one of reconstruction, forecasting, fingerprinting, probes, got dreaming" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_benchmark_probes_read_targets_like_probe(setup, tmp_path, capsys):
    """--targets/--subject-column/--task mean what they mean for ``brainlm probe``: a table keyed by
    another column, ``sub-`` prefixes and all, and a numeric target forced to classification."""
    import pandas as pd

    root, store = setup
    ids = sorted(store.recordings["subject_id"].unique())
    table = tmp_path / "targets.tsv"
    pd.DataFrame({"participant": [f"sub-{s}" for s in ids],
                  "dx": [int(s[1:]) % 2 for s in ids]}).to_csv(table, sep="\t", index=False)
    out = tmp_path / "out"
    args = ["benchmark", str(root / "model"), str(store.path), "--out", str(out), "--tasks", "probes",
            "--targets", str(table), "--target", "dx", "--subject-column", "participant", "--task", "classification",
            "--folds", "3", "--bootstrap", "20", "--device", "cpu"]
    assert main(args) == 0
    probes = {t["task"]: t for t in json.loads((out / "results.json").read_text())["tasks"]}["probes"]
    assert probes["metric"] == "balanced_accuracy"
    bad = [a if a != "participant" else "subject" for a in args] + ["--overwrite"]
    assert main(bad) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'subject'" in err and "targets.tsv" in err
    assert probes == {t["task"]: t for t in json.loads((out / "results.json").read_text())["tasks"]}["probes"]


@pytest.mark.parametrize("lo, hi, expected", [(-0.02, 0.04, "level (within noise)"), (0.01, 0.04, "wins"),
                                              (-0.30, -0.20, "loses"),
                                              (-0.50, 0.0, "level (within noise)")])  # an end at 0 is no evidence
def test_verdict_says_within_noise_when_the_paired_interval_spans_zero(lo, hi, expected):
    from types import SimpleNamespace

    import pandas as pd

    from brainlm.pipelines.benchmark import task_verdict

    table = pd.DataFrame({"method": ["model", "conn"], "label": ["BrainLM", "connectivity-conditional fill"]})
    winner = "model" if hi > 0 else "conn"
    comparison = {"model": "model", "baseline": "conn", "winner": winner, "model_value": 0.43, "baseline_value": 0.40,
                  "difference": (lo + hi) / 2, "diff_ci_low": lo, "diff_ci_high": hi, "p_boot": 0.2}
    line = task_verdict(SimpleNamespace(table=table, comparison=comparison, metric="R^2"))
    assert line.startswith(f"BrainLM vs the strongest baseline (connectivity-conditional fill): **{expected}**; R^2 0.430 vs 0.400")
    assert f"[95% CI {lo:+.3f}, {hi:+.3f}]" in line

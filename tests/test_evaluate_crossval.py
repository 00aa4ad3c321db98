"""``brainlm benchmark PRESET STORE --cv K``: fold logic, training-only ladders, resume after a kill."""

import json

import numpy as np
import pandas as pd
import pytest
from downstream_synth import synthetic_store

import brainlm.pipelines.heldout
import brainlm.train
from brainlm.cli import main
from brainlm.errors import UserError
from brainlm.evaluate import baselines as baseline_module
from brainlm.pipelines.crossval import fold_assignments

SUBJECTS = [f"s{i:02d}" for i in range(9)]
TRAIN = ["--max_steps=3", "--eval_every=3", "--save_every=1", "--log_every=1", "--batch_size=4", "--window=20",
         "--num_threads=1", "--progress=false"]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return synthetic_store(tmp_path_factory.mktemp("cv") / "store", n_subjects=9, split=(5, 2, 2), T=60)


def cv_args(store, out, *extra):
    return ["benchmark", "demo", str(store.path), "--cv", "3", "--out", str(out), "--bootstrap", "50",
            "--device", "cpu", *TRAIN, *extra]


def test_fold_assignments_hold_every_subject_out_once():
    folds = fold_assignments(SUBJECTS, 3, seed=0)
    tests = [sorted(s for s, v in f.items() if v == "test") for f in folds]
    assert sorted(sum(tests, [])) == SUBJECTS  # each subject a test subject exactly once
    for i, f in enumerate(folds):
        assert set(f) == set(SUBJECTS) and set(f.values()) == {"train", "validation", "test"}
        assert sorted(s for s, v in f.items() if v == "validation") == tests[(i + 1) % 3]
    assert fold_assignments(SUBJECTS, 3, seed=0) == folds and fold_assignments(SUBJECTS, 3, seed=1) != folds
    with pytest.raises(UserError, match="at least 3 folds"):
        fold_assignments(SUBJECTS, 2)
    with pytest.raises(UserError, match="fewer than the 10 folds"):
        fold_assignments(SUBJECTS, 10)


def test_resplit_moves_subjects_between_splits_in_memory(store):
    view = store.resplit({s: ("test" if s == "s00" else "train") for s in SUBJECTS})
    assert view.splits["test"] == ["s00"] and len(view.split_index("train")) == 8
    assert store.splits["test"] != ["s00"]  # the store itself is unchanged
    (i,) = view.split_index("test")
    assert view.recordings["subject_id"].iloc[i] == "s00"
    np.testing.assert_array_equal(view.get(int(i)), store.get(int(i)))
    with pytest.raises(UserError, match="no split given"):
        store.resplit({"s00": "test"})


def _fingerprints(store):
    """subject -> sum of its recording, to recognise the arrays a baseline is fitted on."""
    return {str(m["subject_id"]): float(np.asarray(x, np.float64).sum()) for m, x in store.iter_recordings()}


def test_cv_trains_and_fits_ladders_on_training_subjects_only(store, tmp_path, monkeypatch, capsys):
    seen = {"pretrain": [], "ladders": []}
    real_pretrain = brainlm.train.pretrain

    def spy_pretrain(config, *, train_dataset, val_dataset, **kw):
        seen["pretrain"].append((train_dataset.store.splits, set(train_dataset.store.splits["train"])))
        return real_pretrain(config, train_dataset=train_dataset, val_dataset=val_dataset, **kw)

    def spy_fit(cls):
        real = cls.fit

        def fit(self, recordings):
            arrays = list(recordings)
            seen["ladders"].append((cls.__name__, [float(np.asarray(x, np.float64).sum()) for x in arrays]))
            return real(self, arrays)
        return fit

    monkeypatch.setattr(brainlm.pipelines.heldout, "pretrain", spy_pretrain)
    for cls in (baseline_module.ReconstructionBaselines, baseline_module.ForecastBaselines):
        monkeypatch.setattr(cls, "fit", spy_fit(cls))
    out = tmp_path / "cv"
    assert main(cv_args(store, out)) == 0
    assert "reconstruction (3-fold CV)" in capsys.readouterr().out

    sums = _fingerprints(store)
    plan = json.loads((out / "cv.json").read_text())
    assert len(seen["pretrain"]) == 3
    for (splits, train), test in zip(seen["pretrain"], plan["pretraining"]["folds"]):
        assert splits["test"] == test and not train & set(test) and not train & set(splits["validation"])
    # three ladders per fold (the trainer's, for validation and the region-embedding start; then
    # reconstruction and forecasting), each on exactly that fold's training subjects
    assert [name for name, _ in seen["ladders"]] == ["ReconstructionBaselines", "ReconstructionBaselines",
                                                     "ForecastBaselines"] * 3
    for i, (_, fitted) in enumerate(seen["ladders"]):
        splits, train = seen["pretrain"][i // 3]
        assert sorted(fitted) == sorted(sums[s] for s in train)
    windows = [np.unique(np.concatenate([pd.read_parquet(p)["subject_id"]
                                          for p in sorted(out.glob(f"folds/fold_*/{t}.parquet"))]))
               for t in ("reconstruction", "forecasting")]
    for w in windows:
        assert list(w) == SUBJECTS
    results = json.loads((out / "results.json").read_text())
    rec = results["tasks"][0]
    # the ladder, and the same model at initialisation (each fold's run/init) beside it
    assert rec["task"] == "reconstruction" and {r["method"] for r in rec["table"]} == {"model", "zero", "mean",
                                                                                         "interp", "conn", "initial"}
    assert "9 of 9 subjects each scored once" in (out / "report.md").read_text()
    assert (out / "per_subject.png").stat().st_size > 0
    page = (out / "report.html").read_text()  # the same report, with the per-subject figure inline
    assert page.count("data:image/png;base64,") == 3 and page.count('class="verdict v-') == 2


def test_cv_resumes_after_a_killed_fold_with_the_same_result(store, tmp_path, monkeypatch, capsys):
    fresh = tmp_path / "fresh"
    assert main(cv_args(store, fresh)) == 0

    real_pretrain = brainlm.train.pretrain
    calls = []

    def killed_in_fold_2(config, **kw):
        calls.append(kw.get("resume"))
        if len(calls) == 2:  # fold 2 dies after 2 of its 3 steps (checkpointed every step)
            real_pretrain(config.replace(stop_at_step=2), **kw)
            raise KeyboardInterrupt
        return real_pretrain(config, **kw)

    monkeypatch.setattr(brainlm.pipelines.heldout, "pretrain", killed_in_fold_2)
    out = tmp_path / "killed"
    capsys.readouterr()
    assert main(cv_args(store, out)) == 130  # Ctrl-C: one line that says how to continue
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("brainlm benchmark: interrupted; run the "
                                                                       "same command again to continue")
    assert (out / "folds/fold_0/reconstruction.parquet").exists()
    assert not (out / "folds/fold_1/reconstruction.parquet").exists() and not (out / "results.json").exists()

    capsys.readouterr()
    assert main(cv_args(store, out, "--max_steps=4")) == 2  # other settings: refused, nothing replaced
    err = capsys.readouterr().err
    assert "cv.json" in err and "--overwrite" in err and len(err.strip().splitlines()) == 1
    assert (out / "folds/fold_0/reconstruction.parquet").exists()

    calls.clear()
    monkeypatch.setattr(brainlm.pipelines.heldout, "pretrain", lambda config, **kw: calls.append(kw["resume"]) or
                        real_pretrain(config, **kw))
    assert main(cv_args(store, out)) == 0
    assert calls == [True, False]  # fold 1 read back, fold 2 continued, fold 3 trained
    a, b = (json.loads((d / "results.json").read_text())["tasks"] for d in (fresh, out))
    for ta, tb in zip(a, b):
        assert [r["value"] for r in ta["table"]] == pytest.approx([r["value"] for r in tb["table"]], abs=1e-6)
    assert main(cv_args(store, out)) == 2  # a finished cross-validation is not redone without --overwrite
    assert "pass --overwrite" in capsys.readouterr().err


def test_cv_refuses_bad_flags_in_one_line(store, tmp_path, capsys):
    assert main(cv_args(store, tmp_path / "o", "--tasks", "fingerprinting")) == 2
    assert "with --cv only reconstruction, forecasting" in capsys.readouterr().err
    assert main(["benchmark", "demo", str(store.path), "--out", str(tmp_path / "p"), "--max_steps=3"]) == 2
    assert "training settings need --cv" in capsys.readouterr().err
    assert main(cv_args(store, tmp_path / "q", "--no_such_setting=1")) == 2
    assert capsys.readouterr().err.count("\n") == 1
    assert not (tmp_path / "o").exists() and not (tmp_path / "p").exists() and not (tmp_path / "q").exists()


def test_cv_forecast_finetune_is_a_per_fold_stage_rescored_without_repeating_pretraining(store, tmp_path, capsys):
    out = tmp_path / "cv"
    assert main(cv_args(store, out)) == 0
    runs = {p: p.stat().st_mtime_ns for p in out.glob("folds/fold_*/run/train_config.json")}
    plain = json.loads((out / "results.json").read_text())["tasks"]
    assert main(cv_args(store, out, "--forecast-finetune", "2")) == 2  # other scoring: refused
    assert "pass --overwrite" in capsys.readouterr().err
    assert main(cv_args(store, out, "--forecast-finetune", "2", "--overwrite")) == 0
    assert {p: p.stat().st_mtime_ns for p in runs} == runs  # the pretraining runs were kept, not redone
    for fold in out.glob("folds/fold_*"):
        assert json.loads((fold / "forecast_run" / "train_config.json").read_text())["train_mask_scheme"] == "forecast"
        assert set(json.loads((fold / "timing.json").read_text())) >= {"pretrain_s", "forecast_finetune_s", "score_s"}
    tuned = json.loads((out / "results.json").read_text())["tasks"]
    assert tuned[0]["table"] == plain[0]["table"]  # reconstruction: the same pretrained models
    assert tuned[1]["comparison"]["model_value"] != plain[1]["comparison"]["model_value"]
    assert "fine-tuned per fold for 2 steps" in (out / "report.md").read_text()
    assert main(cv_args(store, tmp_path / "x", "--forecast-finetune", "-1")) == 2
    assert main(["benchmark", "demo", str(store.path), "--out", str(tmp_path / "y"), "--forecast-finetune", "5"]) == 2
    assert "--forecast-finetune needs --cv" in capsys.readouterr().err


def test_python_callers_get_the_cross_validation_tasks_by_default_too():
    from brainlm.pipelines.benchmark import CV_TASKS, TASKS
    from brainlm.pipelines.benchmark_command import BenchmarkOptions

    assert BenchmarkOptions(checkpoint="demo", store="s", out="o", cv=3).tasks == CV_TASKS
    assert BenchmarkOptions(checkpoint="m", store="s", out="o").tasks == TASKS
    assert BenchmarkOptions(checkpoint="demo", store="s", out="o", cv=3, tasks=("forecasting",)).tasks == ("forecasting",)

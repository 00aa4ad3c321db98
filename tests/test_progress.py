"""Progress bars write whole lines, not carriage returns, when the output is a log file."""

import io
import time

from brainlm.progress import progress


def test_lines_not_carriage_returns_off_a_terminal():
    log = io.StringIO()  # not a terminal, like a SLURM log
    for _ in progress(range(5), stream=log, log_interval=0.0, desc="work"):
        time.sleep(0.01)
    text = log.getvalue()
    assert "\r" not in text and text.count("\n") >= 2
    assert text.splitlines()[-1].startswith("work: 100%")


def test_disabled_prints_nothing():
    log = io.StringIO()
    assert list(progress(range(3), stream=log, enabled=False)) == [0, 1, 2]
    assert log.getvalue() == ""


def test_training_bar_in_a_log_prints_a_few_lines(tmp_path, capsys, monkeypatch):
    """A 12-step run logging every step writes a start and an end line, not one per log record."""
    from _train_helpers import ToyWindows, tiny_config

    from brainlm.train import pretrain

    monkeypatch.setenv("BRAINLM_LOG_INTERVAL", "30")
    pretrain(tiny_config(tmp_path / "run", progress=True, log_every=1), train_dataset=ToyWindows(),
             val_dataset=ToyWindows(8, seed=1))
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("pretrain")]
    assert "\r" not in err and 1 <= len(lines) <= 3, lines


def test_log_bar_gives_tqdm_monitor_no_reason_to_redraw():
    """tqdm's monitor thread redraws a bar whose ``miniters`` grew above 1 and then went quiet,
    without resetting its clock, so the next update printed the same line twice in a log. A log
    bar checks the clock on every update instead, so ``miniters`` stays 1 however fast it runs."""
    log = io.StringIO()
    bar = progress(total=100_000, stream=log, log_interval=0.05, desc="fast")
    for _ in range(100_000):
        bar.update()
    assert bar.miniters == 1 and not bar.dynamic_miniters
    bar.close()
    lines = log.getvalue().splitlines()
    assert len(lines) == len(set(lines)), lines

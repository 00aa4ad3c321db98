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

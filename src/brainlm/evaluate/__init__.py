"""Evaluation shared by every command: the protocol pieces (task inference, subject folds,
subject bootstrap, early stopping), metrics, the baseline ladder and the benchmark report.
"""

from brainlm.evaluate.protocol import (
    Comparison,
    EarlyStopping,
    SubjectBootstrap,
    infer_task,
    subject_folds,
)

__all__ = ["Comparison", "EarlyStopping", "SubjectBootstrap", "infer_task", "subject_folds"]

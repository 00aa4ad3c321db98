"""Markdown tables for the reports (benchmark, analyses, brain-genetics integration, model cards)."""

from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = ["markdown_table", "format_cell"]


def format_cell(v, digits: int = 3) -> str:
    """A table cell as the reports show it: floats rounded to ``digits`` (tiny ones in ``g`` form), an
    undefined value (NaN, e.g. the correlation of a constant prediction) as ``-``, as the terminal tables."""
    if isinstance(v, (float, np.floating)) and np.isnan(v):
        return "-"
    if isinstance(v, (float, np.floating)):
        return f"{v:.{digits}g}" if abs(v) < 1e-3 and v != 0 else f"{v:.{digits}f}"
    return str(v)


def markdown_table(frame: pd.DataFrame, digits: int = 3) -> str:
    """A GitHub-flavoured Markdown table; floats rounded to ``digits``."""
    head = "| " + " | ".join(map(str, frame.columns)) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    body = ["| " + " | ".join(format_cell(v, digits) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([head, rule, *body])

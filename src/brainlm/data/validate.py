"""One validation path for recordings: what ``prepare`` checks, every command that reads files checks.

A recording is usable when it is

- real and numeric (a complex array is refused, not cast: casting would drop its imaginary part),
- ``(T, R)`` with the ``R`` regions of the coordinates (a file's orientation is decided by
  :func:`~brainlm.data.readers.read_timeseries`),
- finite (no NaN or inf),
- at least one window long (when a window is given),
- without constant (zero-variance) regions, unless its source stores regions without signal
  as constants on purpose (Brainmarks),
- within the range of the type it is stored or computed in (float16: +-65504),
- and not a second recording of the same subject, session, task and run (the first, in input
  order, is kept).

A recording that is not usable is skipped with one line naming its file and the reason
(``on_error="skip"``, the default of ``brainlm prepare`` and of the commands that apply a model
to files), or stops the command (``on_error="raise"``). Arrays handed in from Python are always
checked with ``"raise"``: skipping one would misalign them with their labels.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

import numpy as np

from brainlm.errors import InputError, UserError
from brainlm.progress import progress

from .normalize import resample_tr
from .readers import Recording
from .sources import Source

__all__ = ["ON_ERROR", "FLOAT16_MAX", "check_recording", "duplicate_reason", "read_checked", "no_usable_recordings"]

log = logging.getLogger(__name__)
ON_ERROR = ("skip", "raise")
FLOAT16_MAX = float(np.finfo(np.float16).max)
_FLOAT32_MAX = float(np.finfo(np.float32).max)


def check_recording(x: np.ndarray, source: str, *, num_regions: int, window: int | None = None,
                    allow_flat: bool = False, max_abs: float | None = None) -> None:
    """Raise ``InputError`` naming ``source`` if a ``(T, R)`` recording cannot be used (module docstring).

    Args:
        window: the shortest usable length (None: any length).
        allow_flat: accept constant (zero-variance) regions, for sources that store regions
            without signal as zeros on purpose (Brainmarks).
        max_abs: the largest magnitude the values may have (:data:`FLOAT16_MAX` for float16).
    """
    x = np.asarray(x)
    if np.iscomplexobj(x):
        raise InputError(f"{source}: complex values (dtype {x.dtype}); a recording must be real")
    if not np.issubdtype(x.dtype, np.number):  # booleans too, as the file readers refuse them
        raise InputError(f"{source}: not numeric (dtype {x.dtype}); a recording holds numbers")
    if x.ndim != 2:
        raise InputError(f"{source}: expected timepoints x regions, got shape {x.shape}")
    if x.shape[1] != num_regions:
        hint = "; it looks like (R, T): transpose it to (T, R)" if x.shape[0] == num_regions else ""
        raise InputError(f"{source}: {x.shape[1]} regions (shape {x.shape}) but the coordinates list "
                         f"{num_regions}{hint}")
    bad = ~np.isfinite(x)
    if bad.any():
        t, r = np.argwhere(bad)[0]
        raise InputError(f"{source}: {int(bad.sum())} NaN/Inf values (first at timepoint {t}, region {r})")
    if window is not None and x.shape[0] < window:
        raise InputError(f"{source}: {x.shape[0]} timepoints, shorter than one window of {window} (--window)")
    flat = np.flatnonzero(x.std(0) == 0)
    if len(flat) and not allow_flat:
        raise InputError(f"{source}: {len(flat)} constant (zero-variance) regions, e.g. region index {flat[:5].tolist()}")
    limit = _FLOAT32_MAX if max_abs is None else max_abs
    if x.size and float(np.abs(x).max()) > limit:
        kind = "float32" if max_abs is None else "float16"
        raise InputError(f"{source}: values up to {float(np.abs(x).max()):.3g} exceed the {kind} range (+-{limit:.6g})"
                         + ("; use --dtype float32" if kind == "float16" else ""))


def duplicate_reason(source: str, recording_id: str, first: str) -> str:
    """The skip reason of a second recording with the same subject, session, task and run."""
    return f"{source}: duplicate subject/session/run {recording_id!r} (also {first})"


def no_usable_recordings(total: int, skipped: list[dict]) -> UserError:
    """The error when every recording was skipped: how many, and the first reason."""
    first = skipped[0]["reason"] if skipped else "none"
    return UserError(f"no usable recordings among {total} inputs; first problem: {first}")


def _load(source: str, load: Callable[[], Recording]) -> Recording | InputError:
    try:
        return load()
    except InputError as err:
        return err  # reported by the caller, who decides to skip or stop
    except (OSError, EOFError) as err:
        # I/O errors raised deep inside third-party readers still name the file.
        return InputError(f"{source}: {type(err).__name__}: {err}")


_FORKED_TASKS: list = []  # inherited by forked workers: loaders are closures, not picklable


def _load_forked(i: int) -> Recording | InputError:
    return _load(*_FORKED_TASKS[i])


def _read_items(items, jobs: int, show: bool) -> Iterator[Recording | InputError]:
    """Load inputs in order, in ``jobs`` forked processes when more than one."""
    import multiprocessing as mp

    if jobs == 1 or len(items) < 2 or "fork" not in mp.get_all_start_methods():
        for item in progress(items, enabled=show, desc="reading inputs", unit="file"):
            yield _load(*item)
        return
    _FORKED_TASKS[:] = items
    try:
        with mp.get_context("fork").Pool(min(jobs, len(items))) as pool:
            results = pool.imap(_load_forked, range(len(items)), chunksize=1)
            yield from progress(results, enabled=show, total=len(items), desc="reading inputs", unit="file")
    finally:
        _FORKED_TASKS.clear()


def read_checked(source: Source, skipped: list[dict], *, indices: list[int] | None = None, window: int | None = None,
                 on_error: str = "skip", target_tr: float | None = None, max_abs: float | None = None,
                 unique: bool = False, jobs: int = 1, show_progress: bool = False
                 ) -> Iterator[tuple[int, Recording, np.ndarray]]:
    """Read the items of ``source`` (those at ``indices``, all by default) and yield the usable ones.

    Yields ``(item index, recording, (T, R) float32 data resampled to target_tr)``; every
    recording that is not usable is appended to ``skipped`` (``input_index``, ``source``,
    ``reason``) and logged, or raised as ``InputError`` with ``on_error="raise"``.

    Args:
        unique: skip a recording whose ID was seen before (a multi-part ``prepare`` finds
            duplicates when its parts are merged instead).
    """
    if on_error not in ON_ERROR:
        raise UserError(f"--on-error must be one of {', '.join(ON_ERROR)}, got {on_error!r}")
    indices = list(range(len(source.items))) if indices is None else list(indices)
    R = source.atlas.num_regions
    seen: dict[str, str] = {}
    for k, item in zip(indices, _read_items([source.items[j] for j in indices], jobs, show_progress)):
        name = source.items[k][0]
        try:
            if isinstance(item, InputError):
                raise item
            data = item.data
            if target_tr:
                if not np.isfinite(item.tr):
                    raise InputError(f"{item.source}: TR unknown, cannot resample to {target_tr} s (pass --tr)")
                data = resample_tr(data, item.tr, target_tr)
            check_recording(data, item.source or name, num_regions=R, window=window,
                            allow_flat=source.keep_flat_regions, max_abs=max_abs)
            if unique:
                rid = item.recording_id
                if rid in seen:
                    raise InputError(duplicate_reason(item.source or name, rid, seen[rid]))
                seen[rid] = item.source or name
        except InputError as err:
            if on_error == "raise":
                raise
            log.warning("skipped: %s", err)
            skipped.append({"input_index": k, "source": name, "reason": str(err)})
            continue
        yield k, item, np.ascontiguousarray(data, dtype=np.float32)

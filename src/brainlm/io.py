"""Files in and out, one way each: subject tables, embedding tables, atomic writes, locks.

- **Subject IDs** are always text (``0012`` stays ``0012``) and a BIDS ``sub-`` prefix is
  dropped in one place, :func:`normalize_subject_id`, so every table joins with every other.
- **Subject tables** (participants, targets, covariates, phenotypes: CSV, TSV or Parquet) are
  read by :func:`read_subject_table`, indexed by subject ID.
- **Embedding tables** (``brainlm embed`` output, DNA-model embeddings, any table keyed by
  subject) are written by :func:`write_embeddings` and read by :func:`read_embeddings`:
  Parquet with a list column ``embedding``, CSV/TSV with ``emb_0 .. emb_{D-1}`` columns, or
  ``.npy`` with its index ``<stem>.index.tsv`` beside it.
- **Writes** go to a temporary name in the same folder and are renamed into place
  (:func:`atomic_write`), so a reader never sees half a file; JSON is strict (NaN becomes
  ``null``).
- **Folders we own** (:func:`claim_folder`, the one rule every command follows): a command
  writes only into a folder that is new, empty, or holds the same kind of artefact written by
  brainlm (a store, a prepare part, a training run, a checkpoint, a cross-validation, the demo,
  a report). A folder that brainlm claims gets a marker file, ``.brainlm.json``
  (``{"kind": ...}``), written before anything else, so a folder left half-written by a killed
  command is still recognised as ours; folders written before the marker existed are recognised
  by their signature files (a store's ``manifest.json`` format, a run's ``train_config.json``,
  ...). A non-empty folder that is none of these, or another kind of artefact, is refused with
  one line: nothing in it is replaced or deleted, with or without ``--overwrite``. A marker file
  rather than a key in a manifest, because runs and reports have no manifest, a checkpoint's
  manifest maps file names to checksums, and a manifest is written last while the marker must
  be there from the first file on.
- **Outputs** that exist are replaced only with ``--overwrite`` (:func:`check_overwrite`,
  :func:`claim_file` for a single file), and a folder being written holds a lock inside it
  (:class:`OutputLock`): a second writer is refused, a killed writer's lock is taken over.
  Overwriting deletes only what brainlm recorded writing (:func:`remove_outputs`).
- **Content identity** (:func:`content_id`): size and SHA-256 of an input, for fingerprints
  that do not change with the spelling of a path or a ``touch``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import socket
import time
import uuid
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from brainlm.errors import (
    CorruptFileError,
    InputError,
    MissingInputError,
    OutputExistsError,
    OutputLockedError,
    UserError,
)

__all__ = [
    "sha256_file",
    "write_manifest",
    "unlisted_files",
    "verify_manifest",
    "verify_file",
    "atomic_write",
    "atomic_write_text",
    "atomic_write_json",
    "read_json",
    "fsync_file",
    "write_csv",
    "json_safe",
    "json_line",
    "check_overwrite",
    "check_writable",
    "MARKER",
    "FOLDER_KINDS",
    "folder_kind",
    "claim_folder",
    "claim_file",
    "remove_if_unused",
    "remove_outputs",
    "content_id",
    "LOCK",
    "NOT_OUTPUTS",
    "OutputLock",
    "output_folder",
    "normalize_subject_id",
    "read_table",
    "read_subject_table",
    "Embeddings",
    "INDEX_COLUMNS",
    "write_embeddings",
    "read_embeddings",
    "subject_matrix",
]


# ---------------------------------------------------------------------------------------------
# Checksums and atomic writes
# ---------------------------------------------------------------------------------------------


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def fsync_file(path: Path) -> None:
    """Flush a file (or a folder's entries) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _manifest_files(folder: Path) -> list[str]:
    """Every file under ``folder`` (sub-folders too, as ``sub/name``) but the manifest, the
    marker and hidden files (temporary files of a write in progress)."""
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")
                  if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)
                  and p.relative_to(folder).as_posix() != "manifest.json")


def write_manifest(folder: str | os.PathLike) -> Path:
    """``manifest.json``: the size and SHA-256 of every other file of ``folder`` (sub-folders
    too, keyed ``sub/name``); written last, all fsynced."""
    folder = Path(folder)
    files = _manifest_files(folder)
    manifest = {name: {"bytes": (folder / name).stat().st_size, "sha256": sha256_file(folder / name)} for name in files}
    atomic_write_text(folder / "manifest.json", json.dumps(manifest, indent=1) + "\n")
    for name in [*files, "manifest.json"]:
        fsync_file(folder / name)
    return folder / "manifest.json"


def unlisted_files(folder: str | os.PathLike, manifest: dict) -> list[str]:
    """The files of ``folder`` (as :func:`write_manifest` lists them) that ``manifest`` does not list."""
    return [name for name in _manifest_files(Path(folder)) if name not in manifest]


def _cache_file() -> Path:
    """The machine's record of files already verified (``$BRAINLM_CACHE/verified.json``)."""
    root = os.environ.get("BRAINLM_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "brainlm")
    return Path(root) / "verified.json"


_VERIFIED: set[str] = set()  # keys verified by this process (inherited by forked workers)


def _cache_key(path: Path, sha256: str) -> str:
    st = path.stat()
    return f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{st.st_ino}|{sha256}"


def _disk_cache() -> set[str]:
    try:
        return set(json.loads(_cache_file().read_text()))
    except (OSError, ValueError, TypeError):
        return set()


def _remember(key: str) -> None:
    _VERIFIED.add(key)
    path = _cache_file()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        keys = sorted((_disk_cache() | {key}))[-100_000:]
        atomic_write_json(path, keys, indent=None)
    except OSError:
        pass  # a read-only home only costs a re-verification next time


def verify_file(path: Path, expected: dict, *, use_cache: bool = True, what: str = "file", remedy: str = "") -> None:
    """Check one file against its manifest entry (``bytes``, ``sha256``); one-line error naming it.

    The one check of a manifest entry, for stores and checkpoints alike.

    Args:
        use_cache: skip the SHA-256 when this process or this machine's cache has already
            verified the same file (same path, size, modification time and inode).
        what: what the file is, for messages. remedy: what to do about a bad one, appended to them.
    """
    end = f"; {remedy}" if remedy else ""
    path = Path(path)
    if not path.is_file():
        raise CorruptFileError(f"{path}: this {what} is missing (listed in the manifest){end}")
    size = path.stat().st_size
    if "bytes" in expected and size != expected["bytes"]:
        raise CorruptFileError(f"{path}: {size} bytes, the manifest says {expected['bytes']} (truncated or replaced){end}")
    if "sha256" not in expected:
        return
    key = _cache_key(path, expected["sha256"])
    if use_cache and (key in _VERIFIED or key in _disk_cache()):
        _VERIFIED.add(key)
        return
    if sha256_file(path) != expected["sha256"]:
        raise CorruptFileError(f"{path}: contents do not match the SHA-256 in the manifest (damaged or altered){end}")
    _remember(key)




def verify_manifest(folder: str | os.PathLike, what: str = "checkpoint", *, use_cache: bool = False) -> dict:
    """Check every file listed in ``folder/manifest.json`` (:func:`verify_file`: size and SHA-256);
    returns the manifest.

    Args:
        use_cache: trust this machine's record of files already verified unchanged (opening a
            model); False (``verify``, resuming) hashes every file again.

    Raises:
        CorruptFileError: the manifest is missing or unreadable, or a file is missing,
            truncated or altered (the message names it).
    """
    folder = Path(folder)
    if not (folder / "manifest.json").is_file():
        raise CorruptFileError(f"{what} {folder} is incomplete: no manifest.json")
    manifest = read_json(folder / "manifest.json", f"the {what}'s manifest")
    if not isinstance(manifest, dict) or not all(isinstance(m, dict) for m in manifest.values()):
        raise CorruptFileError(f"{folder / 'manifest.json'}: not a manifest (a JSON object of file entries)")
    for name, meta in manifest.items():
        parts = name.split("/")
        if Path(name).is_absolute() or "\\" in name or any(part in ("", ".", "..") for part in parts):
            raise CorruptFileError(f"{folder / 'manifest.json'}: the file name {name!r} leads out of the {what}")
        verify_file(folder / name, meta, use_cache=use_cache, what=f"{what} file",
                    remedy=f"the {what} {folder} is damaged; use another one")
    return manifest


_CONTENT: dict[str, str] = {}  # "path|size|mtime|inode|" -> SHA-256, for this process


def content_id(path: str | os.PathLike) -> str:
    """What a file (or a folder of files) holds, independent of how its path is spelled and of its
    modification time: ``"<bytes>:<sha256>"``; a folder's is the hash of its files' names and ids.

    A file's SHA-256 is computed once per process (and once per machine while its size,
    modification time and inode stay the same: the cache of :func:`verify_file`).
    """
    path = Path(os.path.abspath(path))
    if path.is_dir():
        digest = hashlib.sha256()
        for p in sorted(q for q in path.rglob("*") if q.is_file()):
            digest.update(f"{p.relative_to(path).as_posix()}|{content_id(p)}\n".encode())
        return f"folder:{digest.hexdigest()}"
    if not _CONTENT:  # the machine's cache, read once per process
        _CONTENT.update((k[:k.rindex("|") + 1], k[k.rindex("|") + 1:]) for k in _disk_cache() | _VERIFIED)
    prefix = _cache_key(path, "")
    if prefix not in _CONTENT:
        _CONTENT[prefix] = sha256_file(path)
        _remember(prefix + _CONTENT[prefix])
    return f"{path.stat().st_size}:{_CONTENT[prefix]}"


def temporary_path(path: str | os.PathLike) -> Path:
    """A hidden, unique sibling of ``path`` to write into before renaming."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def atomic_write(path: str | os.PathLike, write: Callable[[Path], Any], *, fsync: bool = False) -> Path:
    """Call ``write(tmp)`` to fill a temporary sibling of ``path``, then rename it into place.

    The temporary file is removed if ``write`` fails, so ``path`` is either the old file or the
    complete new one, never half of either.
    """
    path = Path(path)
    tmp = temporary_path(path)
    try:
        write(tmp)
        if fsync:
            fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str, *, fsync: bool = False) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text), fsync=fsync)


def write_csv(frame: pd.DataFrame, path: str | os.PathLike, *, sep: str = ",") -> Path:
    """A table as CSV (or TSV with ``sep="\\t"``), written atomically, without the index."""
    return atomic_write(path, lambda tmp: frame.to_csv(tmp, sep=sep, index=False))


def json_safe(obj: Any) -> Any:
    """``obj`` with NaN / inf floats replaced by None and numpy scalars by Python ones."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def json_line(record: dict) -> str:
    """One strict-JSON line (NaN -> null), for ``.jsonl`` logs."""
    return json.dumps(json_safe(record), allow_nan=False)


def read_json(path: str | os.PathLike, what: str = "file") -> Any:
    """JSON from a file; one clear error naming it when it is missing or not JSON."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise MissingInputError(f"{path}: {what} not found") from None
    except (ValueError, UnicodeDecodeError) as err:
        raise CorruptFileError(f"{path}: not valid JSON ({err})") from err


def atomic_write_json(path: str | os.PathLike, obj: Any, *, indent: int | None = 2, sort_keys: bool = False,
                      fsync: bool = False) -> Path:
    """Strict JSON (NaN and inf written as ``null``), written atomically."""
    text = json.dumps(json_safe(obj), indent=indent, sort_keys=sort_keys, allow_nan=False) + "\n"
    return atomic_write_text(path, text, fsync=fsync)


# ---------------------------------------------------------------------------------------------
# Outputs: overwrite policy and locks
# ---------------------------------------------------------------------------------------------


def check_overwrite(paths: Iterable[str | os.PathLike], overwrite: bool, flag: str = "--overwrite") -> None:
    """Refuse outputs that exist unless ``overwrite``; checked before any work starts."""
    existing = [str(p) for p in paths if Path(p).exists()]
    if existing and not overwrite:
        raise OutputExistsError(f"not overwriting {', '.join(existing)} (pass {flag} to replace)")


def check_writable(path: str | os.PathLike, flag: str = "--out", *, create: bool = True) -> Path:
    """The folder ``path`` (created if missing, unless ``create=False``) after checking it can be
    written; one clear error otherwise."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{flag} {path} is a file, not a folder")
    parent = path if path.exists() else next((p for p in path.parents if p.exists()), Path("."))
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"{flag} {path}: {parent} is not writable")
    if create:
        path.mkdir(parents=True, exist_ok=True)
    return path


# The name of the marker brainlm leaves in every folder it claims (see the module docstring).
MARKER = ".brainlm.json"
# The lock of a folder being written (:class:`OutputLock`), inside it.
LOCK = ".brainlm.lock"
# What brainlm keeps in a folder besides its outputs: never listed as one, never deleted as one.
NOT_OUTPUTS = (MARKER, LOCK)
# What a folder can hold, and how the folders of earlier versions (no marker) are recognised.
FOLDER_KINDS = {
    "store": "manifest.json of format brainlm-store/*",
    "part": "part.json (a staged part of brainlm prepare --part)",
    "run": "train_config.json, checkpoints/ or best/ (brainlm pretrain)",
    "checkpoint": "config.json of model_type brainlm with model.safetensors",
    "cross-validation": "cv.json (brainlm benchmark --cv)",
    "demo": "store/manifest.json (brainlm demo)",
    "report": "the outputs of the command writing it (report.md, results.json, ...)",
}


def _json_field(path: Path, key: str) -> str:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return ""
    return str(value.get(key, "")) if isinstance(value, dict) else ""


def _signature_kind(path: Path) -> str | None:
    """The kind of a folder written before markers existed, from its signature files (see FOLDER_KINDS)."""
    if _json_field(path / "part.json", "format").startswith("brainlm-part/"):
        return "part"
    if _json_field(path / "manifest.json", "format").startswith("brainlm-store/"):
        return "store"
    if (path / "cv.json").is_file():
        return "cross-validation"
    if (path / "train_config.json").is_file() or any(path.glob("checkpoints/step_*/config.json")) or \
            (path / "best" / "config.json").is_file():
        return "run"
    # only brainlm's own model type: a model folder of another library is not ours to replace
    if _json_field(path / "config.json", "model_type") == "brainlm" and (path / "model.safetensors").is_file():
        return "checkpoint"
    if (path / "store" / "manifest.json").is_file():
        return "demo"
    return None


def folder_kind(path: str | os.PathLike) -> str | None:
    """What brainlm wrote in the folder ``path``: the kind its marker names, else the kind its
    signature files show (folders of earlier versions), else None (missing, empty, or not ours).

    Raises:
        CorruptFileError: a marker that cannot be read.
    """
    path = Path(path)
    marker = path / MARKER
    if marker.exists() and not marker.is_file():
        raise CorruptFileError(f"{marker}: not a brainlm folder marker (not a file); remove it or choose another folder")
    if marker.is_file():
        value = read_json(marker, "brainlm folder marker")
        if not isinstance(value, dict) or value.get("kind") not in FOLDER_KINDS:
            raise CorruptFileError(f"{marker}: not a brainlm folder marker (expected {{\"kind\": one of "
                                   f"{', '.join(FOLDER_KINDS)}}})")
        return str(value["kind"])
    return _signature_kind(path) if path.is_dir() else None


def claim_folder(path: str | os.PathLike, kind: str, *, outputs: Iterable[str] = (), overwrite: bool = False,
                 flag: str = "--out") -> Path:
    """The one rule for writing a folder: may ``kind`` be written into ``path``? Checked before any work.

    Allowed: a new folder, an empty one, or one that holds a ``kind`` written by brainlm (its
    marker, or the signature files of an earlier version, or for a report one of ``outputs``).
    The command's own rule decides what happens to what is there (continue, rebuild with
    ``--overwrite``); ``outputs`` that exist are replaced only with ``overwrite``. On success
    the folder exists and carries the marker.

    Args:
        kind: one of :data:`FOLDER_KINDS`.
        outputs: file names the command writes (a report's), refused when present without ``overwrite``.
        flag: the flag the folder came from, for messages.

    Returns:
        The folder.

    Raises:
        UserError: ``path`` is a file or not writable. OutputExistsError: the folder holds
            files brainlm did not write, another kind of artefact, or (without ``overwrite``)
            one of ``outputs``.
    """
    if kind not in FOLDER_KINDS:
        raise ValueError(f"unknown folder kind {kind!r}; one of {', '.join(FOLDER_KINDS)}")
    path = Path(path)
    check_writable(path, flag, create=False)
    outputs = list(outputs)
    found = folder_kind(path)
    if found is None and path.is_dir() and any(p.name not in NOT_OUTPUTS for p in path.iterdir()):
        if kind == "report" and any((path / name).exists() for name in outputs):
            found = "report"  # a report folder of an earlier version
        else:
            raise OutputExistsError(f"{flag} {path} is not empty and was not written by brainlm (no {MARKER}); "
                                    f"nothing in it is replaced: choose a new or empty folder")
    if found is not None and found != kind:
        raise OutputExistsError(f"{flag} {path} holds a brainlm {found}, not a {kind}: a {kind} needs a folder of "
                                "its own; choose another folder")
    check_overwrite([path / name for name in outputs], overwrite)
    path.mkdir(parents=True, exist_ok=True)
    if not (path / MARKER).is_file():
        atomic_write_json(path / MARKER, {"kind": kind})
    return path


def claim_file(path: str | os.PathLike, *, overwrite: bool = False, flag: str = "--out",
               companions: Iterable[str | os.PathLike] = ()) -> Path:
    """The rule for a single output file (``embed --out x.parquet``): not a folder, in a writable
    folder, and replaced (with its ``companions``, e.g. an ``.npy``'s index) only with ``overwrite``."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{flag} {path} is a folder, not a file")
    check_writable(path.parent, flag, create=False)
    check_overwrite([path, *companions], overwrite)
    return path


def _process_start(pid: int) -> str | None:
    """The start time of a process (clock ticks since boot), to tell a reused pid apart."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(pid: int, started: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return started is None or _process_start(pid) in (None, started)


class OutputLock:
    """An exclusive claim on an output path, held by a lock file.

    The lock of a folder (``folder=True``) is ``<folder>/.brainlm.lock``, inside it: an
    existing folder is locked without writing to its parent, and the lock goes wherever the
    folder goes. The lock of a single file is ``<parent>/.<name>.lock`` beside it. The lock file
    is created with ``O_CREAT | O_EXCL`` (atomic on local and NFSv3+ file systems) and holds the
    owner's host, pid and start time. A second writer is refused with a message naming the
    owner. A lock whose process has ended on this host (a killed run) is stale and taken over;
    a lock from another host cannot be checked, so the message says how to remove it. A folder
    the lock created is removed again on release when nothing but the marker was written in it.

    Use as a context manager; ``enabled=False`` (non-zero ranks) makes it a no-op.
    """

    def __init__(self, path: str | os.PathLike, *, what: str = "output", enabled: bool = True, folder: bool = False):
        self.path = Path(path)
        self.folder = folder
        self.lock_path = self.path / LOCK if folder else self.path.parent / f".{self.path.name}.lock"
        self.what = what
        self.enabled = enabled
        self._held = False
        self._made = False

    def _owner(self) -> dict:
        try:
            return json.loads(self.lock_path.read_text())
        except (OSError, ValueError):
            return {}

    def acquire(self) -> "OutputLock":
        if not self.enabled or self._held:
            return self
        self._made = not self.lock_path.parent.exists()
        self.lock_path.parent.mkdir(parents=True, exist_ok=True)
        me = {"host": socket.gethostname(), "pid": os.getpid(), "started": _process_start(os.getpid()),
              "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        for _ in range(3):
            try:
                fd = os.open(self.lock_path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = self._owner()
                same_host = owner.get("host") == me["host"]
                if owner and same_host and not _alive(int(owner.get("pid", -1)), owner.get("started")):
                    # The owner died without cleaning up: take the lock over (rename first so that
                    # two processes doing this at once cannot both win).
                    try:
                        os.replace(self.lock_path, self.lock_path.with_name(self.lock_path.name + f".stale-{os.getpid()}"))
                        self.lock_path.with_name(self.lock_path.name + f".stale-{os.getpid()}").unlink(missing_ok=True)
                    except FileNotFoundError:
                        pass
                    continue
                if not owner:  # being written this very moment by another process
                    time.sleep(0.05)
                    owner = self._owner()
                who = (f"process {owner.get('pid')} on {owner.get('host')} since {owner.get('since')}"
                       if owner else "another process")
                hint = "" if same_host else f"; if that process is gone, delete {self.lock_path}"
                raise OutputLockedError(f"{self.path}: this {self.what} is being written by {who}{hint}")
            with os.fdopen(fd, "w") as f:
                f.write(json.dumps(me))
            self._held = True
            return self
        raise OutputLockedError(f"{self.path}: could not take the lock {self.lock_path}")

    def release(self) -> None:
        if self._held:
            self.lock_path.unlink(missing_ok=True)
            self._held = False
            if self.folder and self._made:
                remove_if_unused(self.path)

    def __enter__(self) -> "OutputLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


@contextmanager
def output_folder(path: str | os.PathLike, outputs: Iterable[str] = (), *, kind: str = "report",
                  overwrite: bool = False, what: str | None = None, flag: str = "--out"):
    """Claim an output folder (:func:`claim_folder`) and hold its lock while the body writes it.

    Yields the folder. If it did not exist and the body fails, it is removed again, so a
    failed command leaves nothing behind. A report records in the marker the files it wrote
    (``reports``: the command's ``outputs`` and its files); a rerun with ``overwrite`` removes
    the files its previous run recorded that it did not write again, and nothing else.
    """
    path, outputs = Path(path), list(outputs)
    check_writable(path, flag, create=False)
    with OutputLock(path, what=what or f"{kind} folder", folder=True):
        folder = claim_folder(path, kind, outputs=outputs, overwrite=overwrite, flag=flag)
        if kind != "report":
            yield folder
            return
        before = _snapshot(folder)
        yield folder
        _record_report(folder, sorted(outputs), before, overwrite)


def _snapshot(folder: Path) -> dict[str, tuple]:
    """relative path -> (size, mtime, inode) of every file under ``folder``."""
    out = {}
    for p in folder.rglob("*"):
        if p.is_file() and not p.is_symlink():
            st = p.stat()
            out[p.relative_to(folder).as_posix()] = (st.st_size, st.st_mtime_ns, st.st_ino)
    return out


def _record_report(folder: Path, outputs: list[str], before: dict[str, tuple], overwrite: bool) -> None:
    """Record in the marker the files this report command wrote (new or changed); with ``overwrite``,
    remove those the previous run of the same command recorded and this one did not write."""
    after = _snapshot(folder)
    written = sorted(rel for rel, meta in after.items() if before.get(rel) != meta and Path(rel).name not in NOT_OUTPUTS)
    marker = read_json(folder / MARKER, "brainlm folder marker")
    runs = [r for r in marker.get("reports", []) if isinstance(r, dict)]
    previous = next((r for r in runs if r.get("outputs") == outputs), None)
    if previous is not None:
        old = [rel for rel in previous.get("files", []) if rel not in written]
        if overwrite:
            remove_outputs(folder, old)
        else:
            written = sorted({*written, *(rel for rel in old if (folder / rel).is_file())})
    runs = [r for r in runs if r is not previous] + [{"outputs": outputs, "files": written}]
    atomic_write_json(folder / MARKER, {**marker, "reports": runs})


def remove_outputs(folder: str | os.PathLike, names: Iterable[str]) -> list[Path]:
    """Delete files brainlm recorded writing in ``folder`` (an old manifest's, a report's), and of
    those only regular files (not links, not folders) by relative paths that stay inside
    ``folder``, never a manifest, the marker or the lock. Returns the files removed."""
    folder = Path(folder)
    root = folder.resolve()
    removed = []
    for rel in names:
        rel_path = Path(str(rel))
        if rel_path.is_absolute() or ".." in rel_path.parts or rel_path.name in ("manifest.json", *NOT_OUTPUTS):
            continue
        path = folder / rel_path
        if path.is_symlink() or not path.is_file() or root not in path.resolve().parents:
            continue
        path.unlink()
        removed.append(path)
    return removed


def remove_if_unused(path: str | os.PathLike) -> None:
    """Remove a folder that holds nothing but brainlm's marker (a claim whose command then failed)."""
    path = Path(path)
    try:
        if path.is_dir() and all(p.name == MARKER for p in path.iterdir()):
            (path / MARKER).unlink(missing_ok=True)
            path.rmdir()
    except OSError:
        pass


# ---------------------------------------------------------------------------------------------
# Subject tables
# ---------------------------------------------------------------------------------------------

SUBJECT_COLUMNS = ("subject_id", "participant_id")


def normalize_subject_id(value: Any) -> str:
    """A subject ID as text without a BIDS ``sub-`` prefix (``"sub-0012"`` -> ``"0012"``)."""
    text = str(value).strip()
    return text[4:] if text.startswith("sub-") else text


def _separator(path: Path) -> str:
    return "\t" if path.suffix.lower() in (".tsv", ".txt") else ","


def read_table(path: str | os.PathLike, text_columns: Iterable[str] = (), *, flag: str = "") -> pd.DataFrame:
    """A CSV / TSV / Parquet table; ``text_columns`` (and ID-like columns) are read as text.

    Columns named like IDs (``subject_id``, ``participant_id``, ``recording_id``,
    ``session_id``, ``run_id``, ``eid``) are always text, so leading zeros survive.
    """
    path = Path(path)
    where = f"{flag} {path}" if flag else str(path)
    if not path.is_file():
        raise MissingInputError(f"{where}: file not found")
    suffix = path.suffix.lower()
    try:
        if suffix in (".parquet", ".pq"):
            frame = pd.read_parquet(path)
        elif suffix in (".csv", ".tsv", ".txt"):
            sep = _separator(path)
            header = pd.read_csv(path, sep=sep, nrows=0).columns
            text = set(text_columns) | {c for c in header if str(c).lower() in _ID_LIKE}
            frame = pd.read_csv(path, sep=sep, dtype={c: str for c in header if c in text}, keep_default_na=True)
        else:
            raise InputError(f"{where}: unsupported table format {suffix!r} (use .csv, .tsv or .parquet)")
    except (UserError, MissingInputError):
        raise
    except Exception as err:  # pandas / pyarrow raise many types for malformed files
        raise InputError(f"{where}: cannot read the table ({type(err).__name__}: {err})") from err
    for c in frame.columns:
        if str(c).lower() in _ID_LIKE or c in set(text_columns):
            # IDs are text; an empty cell is an empty ID ("" session), not a number.
            frame[c] = frame[c].map(lambda v: "" if pd.isna(v) else str(v))
    return frame


_ID_LIKE = {"subject_id", "participant_id", "recording_id", "session_id", "run_id", "eid", "sequence_id"}


def read_subject_table(
    path: str | os.PathLike,
    *,
    id_col: str | None = None,
    columns: Iterable[str] | None = None,
    flag: str = "",
    unique: bool = True,
) -> pd.DataFrame:
    """A table keyed by subject: the index is the normalised subject ID (text, no ``sub-``).

    Args:
        path: CSV / TSV / Parquet.
        id_col: the subject column; default ``subject_id``, else ``participant_id``, else the
            first column.
        columns: columns that must be present (the frame keeps all columns).
        flag: the command-line flag the file came from, for messages (``--targets``).
        unique: refuse a subject that appears twice.

    Raises:
        MissingInputError / InputError: missing file, missing column, duplicated subject.
    """
    path = Path(path)
    where = f"{flag} {path}" if flag else str(path)
    frame = read_table(path, [id_col] if id_col else [], flag=flag)
    if id_col is None:
        id_col = next((c for c in SUBJECT_COLUMNS if c in frame.columns), frame.columns[0] if len(frame.columns) else None)
        if id_col is not None and id_col not in SUBJECT_COLUMNS:
            frame[id_col] = frame[id_col].map(lambda v: "" if pd.isna(v) else str(v))
    if id_col is None or id_col not in frame.columns:
        raise InputError(f"{where}: no subject column {id_col or 'subject_id'!r} (has {list(frame.columns)[:10]})")
    missing = [c for c in (columns or []) if c not in frame.columns]
    if missing:
        raise InputError(f"{where}: no column {missing[0]!r} (has {list(frame.columns)[:10]})")
    empty = frame[id_col].astype(str).str.strip() == ""
    if empty.any():
        raise InputError(f"{where}: {int(empty.sum())} rows have no subject ID in column {id_col!r}")
    frame = frame.assign(**{id_col: frame[id_col].map(normalize_subject_id)}).set_index(id_col)
    frame.index.name = "subject_id"
    if unique and frame.index.duplicated().any():
        dup = frame.index[frame.index.duplicated()].unique().tolist()
        raise InputError(f"{where}: subject {dup[0]!r} appears more than once ({len(dup)} duplicated IDs)")
    return frame


# ---------------------------------------------------------------------------------------------
# Embedding tables
# ---------------------------------------------------------------------------------------------

INDEX_COLUMNS = ["recording_id", "subject_id", "session_id", "run_id", "window", "window_start"]
# Columns that tell several rows of one subject apart (and are never features).
ROW_KEY_COLUMNS = ("recording_id", "session_id", "run_id", "window", "window_start", "sequence_id")
_EMB_COL = re.compile(r"^emb_(\d+)$")


@dataclass
class Embeddings:
    """Embeddings with their keys.

    Attributes:
        X: ``(N, D)`` or ``(N, R, D)`` float32.
        index: ``N`` rows of ID columns; always ``subject_id`` (text, no ``sub-``), and as
            written by ``brainlm embed``: ``recording_id, session_id, run_id, window,
            window_start`` (``window = -1`` for a recording average).
        attention: ``(N, R)`` CLS attention per region, or None.
        pooling: how the vectors were made (``cls``, ``mean``, ``region_time``, ``fc``, ...).
        skipped: recordings not embedded (shorter than one window), by ``recording_id``.
    """

    X: np.ndarray
    index: pd.DataFrame
    attention: np.ndarray | None = None
    pooling: str = "cls"
    skipped: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.X)


def _embedding_targets(path: Path, with_attention: bool) -> list[Path]:
    if path.suffix.lower() != ".npy":
        return [path]
    targets = [path, path.with_suffix(".index.tsv")]
    if with_attention:
        targets.append(path.with_suffix(".attention.npy"))
    return targets


def write_embeddings(emb: Embeddings, path: str | os.PathLike, overwrite: bool = False) -> list[Path]:
    """Write embeddings; :func:`read_embeddings` reads every format back.

    - ``.parquet``: the index columns, ``embedding`` (list of float32, flattened per row) and,
      when computed, ``attention``; the per-row shape is in the file metadata (``brainlm.shape``).
    - ``.csv`` / ``.tsv``: the index columns and ``emb_0 .. emb_{D-1}`` (2-D embeddings only).
    - ``.npy``: the array, its index as ``<stem>.index.tsv`` and attention as ``<stem>.attention.npy``.

    Every file is written atomically. Raises ``OutputExistsError`` for an existing target
    without ``overwrite`` (nothing is written then).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".parquet", ".npy", ".csv", ".tsv"):
        raise UserError(f"--out {path}: embeddings are written as .parquet, .npy, .csv or .tsv")
    targets = _embedding_targets(path, emb.attention is not None)
    check_overwrite(targets, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    index = emb.index.reset_index(drop=True)
    if suffix == ".parquet":
        table = pa.Table.from_pandas(index, preserve_index=False)
        flat = np.asarray(emb.X, np.float32).reshape(len(emb.X), -1)
        table = table.append_column("embedding", pa.array(list(flat), type=pa.list_(pa.float32())))
        if emb.attention is not None:
            att = np.asarray(emb.attention, np.float32)
            table = table.append_column("attention", pa.array(list(att), type=pa.list_(pa.float32())))
        meta = dict(table.schema.metadata or {})
        meta[b"brainlm.shape"] = ",".join(map(str, emb.X.shape[1:])).encode()
        meta[b"brainlm.pooling"] = str(emb.pooling).encode()
        atomic_write(path, lambda tmp: pq.write_table(table.replace_schema_metadata(meta), tmp))
    elif suffix in (".csv", ".tsv"):
        if emb.X.ndim != 2:
            raise UserError(f"--out {path}: {emb.X.ndim - 1}-D embeddings per row need .parquet or .npy")
        frame = pd.concat([index, pd.DataFrame(emb.X, columns=[f"emb_{i}" for i in range(emb.X.shape[1])])], axis=1)
        atomic_write(path, lambda tmp: frame.to_csv(tmp, sep=_separator(path), index=False))
    else:
        atomic_write(path, lambda tmp: save_npy(tmp, emb.X))
        atomic_write(targets[1], lambda tmp: index.to_csv(tmp, sep="\t", index=False))
        if emb.attention is not None:
            atomic_write(targets[2], lambda tmp: save_npy(tmp, emb.attention))
    return targets


def save_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    """``np.save`` to exactly ``path`` (numpy would append ``.npy`` to a temporary name)."""
    with open(path, "wb") as f:
        np.save(f, np.asarray(array, np.float32))


def _npy_index(path: Path, id_col: str) -> pd.DataFrame:
    """The index of an ``.npy`` table: ``<stem>.index.tsv``, or one ID per line in ``<stem>.txt``,
    or a ``<stem>.csv`` / ``<stem>.tsv`` / ``<stem>.json`` list of IDs."""
    candidates = [path.with_suffix(".index.tsv"), path.with_suffix(".tsv"), path.with_suffix(".csv")]
    for idx in candidates:
        if idx.is_file():
            frame = read_table(idx, [id_col])
            if id_col not in frame.columns and not any(c in frame.columns for c in SUBJECT_COLUMNS):
                frame = frame.rename(columns={frame.columns[0]: id_col})  # a bare list of IDs
            return frame
    txt, js = path.with_suffix(".txt"), path.with_suffix(".json")
    if txt.is_file():
        return pd.DataFrame({id_col: [ln.strip() for ln in txt.read_text().splitlines() if ln.strip()]})
    if js.is_file():
        return pd.DataFrame({id_col: [str(v) for v in json.loads(js.read_text())]})
    raise MissingInputError(f"{path}: no index beside it (expected {path.with_suffix('.index.tsv').name}, "
                            f"or {path.stem}.txt with one subject ID per line)")


def _feature_matrix(frame: pd.DataFrame, id_col: str, path: Path) -> tuple[np.ndarray, list[str]]:
    """Features of a table and the columns they came from."""
    if "embedding" in frame.columns:
        lengths = frame["embedding"].map(lambda v: -1 if v is None else len(v))
        if lengths.nunique() != 1 or int(lengths.iloc[0]) < 1:
            raise InputError(f"{path}: rows of the 'embedding' column have different lengths {sorted(lengths.unique())[:5]}")
        return np.stack([np.asarray(v, dtype=np.float32) for v in frame["embedding"]]), ["embedding"]
    emb = sorted((int(m.group(1)), c) for c in frame.columns if (m := _EMB_COL.match(str(c))))
    if emb:
        cols = [c for _, c in emb]
    else:
        skip = {id_col, *SUBJECT_COLUMNS, *ROW_KEY_COLUMNS, "attention"}
        cols = [c for c in frame.columns if c not in skip and pd.api.types.is_numeric_dtype(frame[c])]
    if not cols:
        raise InputError(f"{path}: no embedding columns ('embedding', 'emb_<i>' or numeric columns)")
    return frame[cols].to_numpy(dtype=np.float32), cols


def read_embeddings(path: str | os.PathLike, id_col: str = "subject_id", *, flag: str = "") -> Embeddings:
    """Read an embedding table in any format :func:`write_embeddings` writes (and plain tables).

    Plain tables (e.g. DNA-model embeddings from elsewhere) need an ID column (``id_col``,
    or ``subject_id`` / ``participant_id``) and features as ``embedding``, ``emb_<i>`` or
    numeric columns. Subject IDs are normalised (:func:`normalize_subject_id`).

    Raises:
        MissingInputError, InputError: missing file or index, no ID column, ragged or non-finite rows.
    """
    path = Path(path)
    where = f"{flag} {path}" if flag else str(path)
    if not path.is_file():
        raise MissingInputError(f"{where}: embedding table not found")
    attention, shape, pooling = None, (), "unknown"
    if path.suffix.lower() == ".npy":
        try:
            X = np.load(path, allow_pickle=False)
        except ValueError as err:
            raise InputError(f"{where}: not a plain numeric .npy array ({err})") from err
        index = _npy_index(path, id_col)
        att = path.with_suffix(".attention.npy")
        attention = np.load(att, allow_pickle=False) if att.is_file() else None
        if len(index) != len(X):
            raise InputError(f"{where}: {len(X)} rows but its index lists {len(index)} IDs")
    else:
        frame = read_table(path, [id_col], flag=flag)
        if path.suffix.lower() in (".parquet", ".pq"):
            import pyarrow.parquet as pq

            meta = pq.read_schema(path).metadata or {}
            shape = tuple(int(s) for s in meta.get(b"brainlm.shape", b"").decode().split(",") if s)
            pooling = meta.get(b"brainlm.pooling", b"unknown").decode()
        X, used = _feature_matrix(frame, id_col, path)
        if "attention" in frame.columns:
            attention = np.stack(frame["attention"].to_numpy()).astype(np.float32)
        index = frame[[c for c in frame.columns if c not in used and c != "attention"]]
    if id_col not in index.columns:
        alt = next((c for c in SUBJECT_COLUMNS if c in index.columns), None)
        if alt is None:
            raise InputError(f"{where}: no subject column {id_col!r} (has {list(index.columns)[:8]})")
        index = index.rename(columns={alt: id_col})
    index = index.reset_index(drop=True).copy()
    index[id_col] = index[id_col].map(normalize_subject_id)
    if id_col != "subject_id":
        index = index.rename(columns={id_col: "subject_id"})
    X = np.asarray(X, np.float32)
    if shape and X.ndim == 2 and int(np.prod(shape)) == X.shape[1]:
        X = X.reshape(len(X), *shape)
    bad = ~np.isfinite(X.reshape(len(X), -1)).all(axis=1)
    if bad.any():
        shown = ", ".join(index["subject_id"][bad].head(5))
        raise InputError(f"{where}: {int(bad.sum())} rows contain NaN or inf (subjects {shown})")
    return Embeddings(X, index, attention, pooling)


def subject_matrix(emb: Embeddings, aggregate: str = "auto", *, name: str = "table") -> tuple[np.ndarray, np.ndarray]:
    """One row per subject: ``(ids (S,) str, X (S, D) float32)`` in first-appearance order.

    Args:
        aggregate: ``"auto"`` averages the rows of a subject only when row-key columns
            (``recording_id``, ``session_id``, ``run_id``, ``window`` ...) tell them apart;
            ``"mean"`` always averages; ``"none"`` never does. Averaging two different people
            who share an ID would be worse than stopping, so an ambiguous repeat is an error.
    """
    if aggregate not in ("auto", "mean", "none"):
        raise UserError(f"aggregate must be 'auto', 'mean' or 'none', got {aggregate!r}")
    ids = emb.index["subject_id"].astype(str).to_numpy()
    X = np.asarray(emb.X, np.float32).reshape(len(emb.X), -1)
    dup = pd.Series(ids).duplicated(keep=False).to_numpy()
    if not dup.any():
        return ids, X
    keys = emb.index[[c for c in ROW_KEY_COLUMNS if c in emb.index.columns]]
    distinct = keys.shape[1] > 0 and not pd.concat([pd.Series(ids, name="_id"), keys.reset_index(drop=True)],
                                                   axis=1).duplicated().any()
    if aggregate == "none" or (aggregate == "auto" and not distinct):
        shown = ", ".join(sorted(set(ids[dup]))[:5])
        raise InputError(f"{name}: duplicated subject IDs ({shown}); pass aggregate='mean' to average them")
    order = pd.unique(pd.Series(ids))
    X = pd.DataFrame(X).groupby(ids, sort=False).mean().loc[order].to_numpy(np.float32)
    return np.asarray(order, dtype=str), X

"""``brainlm verify PATH``: check a store, a training run or a checkpoint against its manifest."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from brainlm.errors import MissingInputError
from brainlm.options import Options, option

__all__ = ["VerifyOptions", "run_verify", "verify_path"]


@dataclass(kw_only=True)
class VerifyOptions(Options):
    """Check every file of a store, a training run or a checkpoint against its manifest."""

    path: str = option(help="store folder, training run, or checkpoint folder", positional=True)


def run_verify(options: VerifyOptions) -> str:
    """``brainlm verify``: print what was checked (a corrupt file is a ``CorruptFileError``)."""
    line = verify_path(options.path)
    print(line)
    return line


def verify_path(path: str | Path) -> str:
    """Verify every file under ``path`` (SHA-256, no cache); a line saying what was checked.

    Raises:
        CorruptFileError: the first file that does not match (named in the message).
        MissingInputError: ``path`` is none of a store, a run folder or a checkpoint folder.
    """
    from brainlm.hub import find_checkpoints
    from brainlm.io import verify_manifest

    from brainlm.data import open_store

    path = Path(path)
    if (path / "manifest.json").is_file() and (path / "shards").is_dir():
        result = open_store(path).verify(progress=True)
        return f"{path}: store OK ({result['files']} files, {result['bytes'] / 1e6:.1f} MB checked)"
    folders = [path] if (path / "manifest.json").is_file() else [*find_checkpoints(path)]
    if (path / "best" / "manifest.json").is_file():
        folders.append(path / "best")
    if not folders:
        raise MissingInputError(f"{path}: not a store, a training run or a checkpoint folder (no manifest.json)")
    for folder in folders:
        verify_manifest(folder, "checkpoint")
    return f"{path}: {len(folders)} checkpoint folder(s) OK"

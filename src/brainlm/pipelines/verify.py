"""``brainlm verify PATH``: check a store, a training run or a model folder against its manifest."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from brainlm.errors import MissingInputError
from brainlm.options import Options, option

__all__ = ["VerifyOptions", "run_verify", "verify_path"]


@dataclass(kw_only=True)
class VerifyOptions(Options):
    """Check every file of a store, a training run or a model folder (a checkpoint, a fine-tuned model)
    against its manifest."""

    path: str = option(help="store folder, training run, or model folder", positional=True)


def run_verify(options: VerifyOptions) -> str:
    """``brainlm verify``: print what was checked (a corrupt file is a ``CorruptFileError``)."""
    line = verify_path(options.path)
    print(line)
    return line


def verify_path(path: str | Path) -> str:
    """Verify every file under ``path`` (SHA-256, no cache); a line saying what was checked.

    A model folder (a training checkpoint, ``best/``, a ``save_pretrained`` or ``finetune``
    folder) is checked by the rule that opening it follows
    (:func:`brainlm.hub.verify_model_folder`): a folder with no manifest, an empty one, or one
    that leaves a weight file or a config unlisted is refused, except an original BrainLM or
    ViT-MAE folder, which the line names as not verified.

    Raises:
        CorruptFileError: the first file that does not match (named in the message).
        UnverifiedModelError: a model folder that no complete manifest verifies.
        MissingInputError: ``path`` is none of a store, a run folder or a model folder.
    """
    from brainlm.hub import find_checkpoints, verify_model_folder

    from brainlm.data import open_store

    path = Path(path)
    if (path / "manifest.json").is_file() and (path / "shards").is_dir():
        result = open_store(path).verify(progress=True)
        return f"{path}: store OK ({result['files']} files, {result['bytes'] / 1e6:.1f} MB checked)"
    if (path / "config.json").is_file():
        return verify_model_folder(path, use_cache=False)
    folders = [*find_checkpoints(path), *([path / "best"] if (path / "best" / "config.json").is_file() else [])]
    if not folders:
        raise MissingInputError(f"{path}: not a store, a training run or a model folder (no manifest.json, "
                                "config.json, best/ or checkpoints/)")
    lines = [verify_model_folder(folder, use_cache=False) for folder in folders]
    unverified = [line for line in lines if line.endswith("not verified")]
    return "\n".join(unverified) or f"{path}: {len(folders)} checkpoint folder(s) OK"

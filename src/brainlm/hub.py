"""Model folders, one way in: where a model lives, how it is opened, and the Hub conventions.

- **Where**: :func:`resolve_checkpoint` turns a local path or a Hugging Face Hub id
  (``owner/name[/subfolder]``) into a local folder, and :func:`resolve_model_folder` finds the
  checkpoint inside a training run (``RUN/best/`` when present, else the newest
  ``RUN/checkpoints/step_NNNNNNNN/``: :func:`find_checkpoints` is the one rule for that).
- **How**: :func:`open_model` is the one function that opens any model folder. It reads
  ``config.json`` once and dispatches on its ``model_type`` to the loader the format's adapter
  registered (:func:`register_format`): ``brainlm`` and ``brainlm_mae`` by
  :mod:`brainlm.checkpoint`, ``vit_mae`` by :mod:`brainlm.vitmae`. The folder is verified
  first (:func:`verify_model_folder`, the one rule): every writer of a model folder (training
  checkpoints and ``best/``, ``save_pretrained``, fine-tuning, LoRA adapters) writes a
  ``manifest.json`` of every file, so a flipped byte is refused before any weight is used, and
  a folder with no manifest, an empty one, or one that leaves a weight file or a config
  unlisted is refused unless the caller says ``trust_unverified`` (``--trust-unverified``).
  Original BrainLM and released ViT-MAE folders come without one and are opened unverified,
  said so in a warning. Every other entry point calls it:
  ``Model.from_pretrained``, :func:`brainlm.checkpoint.load_pretrained`,
  :func:`brainlm.vitmae.load_vitmae` and :func:`brainlm.downstream.load_model`.
- **Hub conventions**: :class:`HubMixin` gives both model kinds ``from_pretrained``,
  ``save_pretrained`` and ``push_to_hub``, with the meaning of ``huggingface_hub``'s
  ``ModelHubMixin``; a model class names the ``model_type`` values it reads (``model_types``).

This module sits just above :mod:`brainlm.io`, below the model files that derive from the
mixin; it imports nothing above them. The formats are handed down to it: each adapter calls
:func:`register_format` when it is imported (the ``brainlm`` package imports them all).

Why not derive from ``huggingface_hub.PyTorchModelHubMixin``: its loader and writer assume one
state dict under the class's own constructor arguments, while both kinds read outside formats
through an adapter, so everything but ``push_to_hub`` would be overridden; its ``__new__``
would run on every model construction; and ``huggingface_hub`` would become a dependency of
the model file. Here it stays optional (the ``hf`` extra) and is imported only to fetch a hub
id or to push; local folders need nothing beyond the core install.

A hub id is fetched with ``huggingface_hub.snapshot_download`` (only the subfolder's files),
which answers from the local hub cache when offline (``HF_HUB_OFFLINE=1``) or when the Hub
cannot be reached; an existing local path always wins. A hub id that is neither cached nor
reachable raises :class:`~brainlm.errors.HubUnavailableError`, one line that says to pass a
local folder.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import warnings
from pathlib import Path
from typing import Any

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

from brainlm.errors import HubUnavailableError, MissingInputError, UnverifiedModelError, UserError
from brainlm.io import MARKER, atomic_write_text, claim_folder, read_json, unlisted_files, verify_manifest

# huggingface_hub is imported where it is used: a model needs it only to fetch a hub id or to push.

__all__ = ["HubMixin", "model_card", "resolve_checkpoint", "register_format", "open_model", "read_model_config",
           "resolve_model_folder", "find_checkpoints", "newest_checkpoint", "verify_model_folder", "TRUST_FLAG",
           "find_initial", "INIT_FOLDER", "INIT_RECORD"]

# A training run keeps the model as it started in RUN/init/, with how it was initialised.
INIT_FOLDER, INIT_RECORD = "init", "initialisation.json"

# Training checkpoints are RUN/checkpoints/step_<8 digits>; temporary folders (.tmp-*) never match.
_STEP_DIR = re.compile(r"^step_(\d{8})$")

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(/[\w./-]+)?$")
_PASS_LOCAL = "pass a local checkpoint folder instead (download it where there is a network and pass its local path)"


def _why_not_fetched(err: Exception) -> str:
    from huggingface_hub import constants
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

    if constants.HF_HUB_OFFLINE:
        return "offline mode is on (HF_HUB_OFFLINE) and it is not in the local hub cache"
    if isinstance(err, (RepositoryNotFoundError, RevisionNotFoundError)):
        return "no such repository or revision (or it is private or gated)"
    return f"the Hub could not be reached and it is not in the local hub cache ({type(err).__name__})"


def _check_hub_id(hub_id: str, owner: str, name: str, sub: list[str]) -> None:
    """Refuse what is no Hub id before asking the Hub (it would answer "not reachable" for it)."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    why = "a subfolder cannot be empty, '.' or '..'" if any(part in ("", ".", "..") for part in sub) else None
    if why is None:
        try:
            validate_repo_id(f"{owner}/{name}")
        except HFValidationError as err:
            why = str(err).splitlines()[0]
    if why:
        raise MissingInputError(f"'{hub_id}' is not a local folder, and not a valid Hugging Face Hub id "
                                f"(owner/name[/subfolder]): {why}")


def _download(hub_id: str, revision: str | None) -> Path:
    """Fetch ``owner/name[/subfolder]`` with ``huggingface_hub`` (or take it from its cache)."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise HubUnavailableError(f"'{hub_id}' is not a local folder, and fetching it from the Hugging Face Hub "
                                  f"needs huggingface_hub (pip install 'brainlm[hf]'); or {_PASS_LOCAL}") from None
    owner, name, *sub = hub_id.split("/")
    subfolder = "/".join(sub)
    _check_hub_id(hub_id, owner, name, sub)
    patterns = [f"{subfolder}/*"] if subfolder else None
    try:
        root = snapshot_download(f"{owner}/{name}", revision=revision, allow_patterns=patterns)
    except Exception as err:  # no network, offline mode, unknown repo, ...: all mean "not available here"
        raise HubUnavailableError(f"could not fetch '{hub_id}' from the Hugging Face Hub: "
                                  f"{_why_not_fetched(err)}; {_PASS_LOCAL}") from None
    folder = Path(root) / subfolder
    if not folder.is_dir():
        raise HubUnavailableError(f"'{hub_id}': the repository {owner}/{name} has no folder '{subfolder}'")
    return folder


def resolve_checkpoint(path_or_hub_id: str | os.PathLike, *, revision: str | None = None) -> Path:
    """A local checkpoint folder for a local path or a hub id (``owner/name[/subfolder]``).

    An existing local path is returned as is; anything else that looks like a hub id is
    fetched with ``huggingface_hub.snapshot_download`` (only the subfolder's files), or taken
    from the local hub cache.

    Raises:
        MissingInputError: a local-looking path that does not exist.
        HubUnavailableError: a hub id that is not cached and cannot be fetched (no network,
            offline mode, unknown id); a ``MissingInputError`` too.
    """
    source = str(path_or_hub_id)
    folder = Path(source).expanduser()
    if folder.exists():
        return folder
    looks_local = source.startswith(("/", ".", "~")) or "\\" in source
    if looks_local or not _HUB_ID.match(source):
        raise MissingInputError(f"no checkpoint folder at {source}")
    return _download(source, revision)


# --------------------------------------------------------------------------- runs and formats


def find_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoint folders of a training run, oldest first (temporary folders are not listed)."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _STEP_DIR.match(p.name))]
    return [p for _, p in sorted(found)]


def newest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint folder of a training run, or None."""
    found = find_checkpoints(run_dir)
    return found[-1] if found else None


def resolve_model_folder(path: str | os.PathLike) -> Path:
    """The checkpoint folder inside ``path``: itself, ``RUN/best`` or the newest ``RUN/checkpoints/step_*``.

    Raises:
        MissingInputError: nothing loadable in ``path``.
    """
    folder = Path(path).expanduser()
    if (folder / "config.json").is_file():
        return folder
    if (folder / "best" / "config.json").is_file():
        return folder / "best"
    newest = newest_checkpoint(folder)
    if newest is not None:
        return newest
    raise MissingInputError(
        f"{folder}: not a checkpoint folder (no config.json) nor a training run (no best/ or checkpoints/step_*)"
    )


def find_initial(path: str | os.PathLike) -> tuple[Path | None, dict]:
    """The model a checkpoint's training run started from, and how it was initialised.

    ``path`` is a training run, its ``best/``, ``init/`` or ``checkpoints/step_*`` folder.

    Returns:
        ``(RUN/init, its initialisation.json)``, or ``(None, {})`` for a folder outside a run
        (a saved or released model, a hub id) or a run written before ``RUN/init`` was kept.
    """
    folder = Path(path).expanduser()
    # the run itself, the run of its best/ or init/, the run of a checkpoints/step_* (nothing further up)
    candidates = [folder, *([folder.parent] if folder.name in ("best", INIT_FOLDER) else []),
                  *([folder.parent.parent] if folder.parent.name == "checkpoints" else [])]
    for run in candidates:
        init = run / INIT_FOLDER
        if (init / "config.json").is_file() and (init / INIT_RECORD).is_file():
            record = read_json(init / INIT_RECORD, "initialisation record")
            if not isinstance(record, dict):
                raise UserError(f"{init / INIT_RECORD}: not an initialisation record (a JSON object)")
            return init, record
    return None, {}


def read_model_config(folder: str | os.PathLike) -> dict[str, Any]:
    """The ``config.json`` of a model folder, as a dict (``model_type`` defaults to ``brainlm``)."""
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise MissingInputError(f"{folder} is not a checkpoint folder: no config.json")
    raw = read_json(folder / "config.json", "model config")
    if not isinstance(raw, dict):
        raise UserError(f"{folder / 'config.json'}: not a model config (a JSON object)")
    return raw


@dataclass(frozen=True)
class _Format:
    load: Callable[..., Any]  # load(cls, folder, raw_config, **kwargs) -> model in eval mode
    save: Callable[[Any, Path], None] | None  # save(model, folder): write the format's files


_FORMATS: dict[str, _Format] = {}
_CLASSES: dict[str, type] = {}


def register_format(model_type: str, load: Callable[..., Any], save: Callable[[Any, Path], None] | None = None) -> None:
    """Called by a format's adapter: how folders of ``model_type`` are read (and written).

    Args:
        load: ``load(cls, folder, raw_config, **kwargs)``; ``cls`` is the model class that
            names ``model_type`` (so the adapter never imports a model), ``raw_config`` the
            folder's ``config.json``; returns the model in eval mode.
        save: ``save(model, folder)`` writes ``config.json``, the weights and, last, the
            folder's ``manifest.json`` (:func:`brainlm.io.write_manifest`); formats that are only
            read have none.
    """
    _FORMATS[model_type] = _Format(load, save)


# The outside formats, whose folders come without a manifest: opened unverified, and said so.
_UNVERIFIED_FORMATS = {"brainlm_mae": "original BrainLM folder", "vit_mae": "ViT-MAE folder"}
# What a model is read from: its configs and weights (other files, such as a model card, may be unlisted).
_MODEL_FILE_NAMES = ("config.json", "head.json", "adapter_config.json")
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")
TRUST_FLAG = "--trust-unverified"


def _is_model_file(name: str) -> bool:
    base = name.rsplit("/", 1)[-1]
    return base in _MODEL_FILE_NAMES or base.endswith(_WEIGHT_SUFFIXES)


def verify_model_folder(folder: str | os.PathLike, *, trust_unverified: bool = False, use_cache: bool = True) -> str:
    """The one check of a model folder before it is used; a line saying what was checked.

    The files its ``manifest.json`` lists must match it (size and SHA-256), always. A folder
    with no manifest, an empty one, or one that leaves a weight file or a config unlisted is
    refused, unless ``trust_unverified`` or it is an original BrainLM or ViT-MAE folder (which
    come without one): then it is used, and the line says it was not verified.

    Args:
        use_cache: trust this machine's record of files already verified unchanged (opening
            a model); False (``verify``) hashes every file again.

    Raises:
        CorruptFileError: a listed file that is missing, truncated or altered.
        UnverifiedModelError: nothing verifies the folder and the user did not say to trust it.
    """
    folder = Path(folder)
    manifest = verify_manifest(folder, "checkpoint", use_cache=use_cache) if (folder / "manifest.json").is_file() else None
    unlisted = [name for name in unlisted_files(folder, manifest or {}) if _is_model_file(name)]
    if manifest is None:
        problem = "no manifest.json"
    elif not manifest:
        problem = "an empty manifest.json"
    elif unlisted:
        problem = f"a manifest.json that does not list {unlisted[0]}"
    else:
        return f"{folder}: checkpoint OK ({len(manifest)} files checked)"
    model_type = str(read_model_config(folder).get("model_type", "brainlm"))
    if model_type in _UNVERIFIED_FORMATS:
        return f"{folder}: {_UNVERIFIED_FORMATS[model_type]}, {problem}: not verified"
    if trust_unverified:
        return f"{folder}: {problem}: not verified ({TRUST_FLAG})"
    raise UnverifiedModelError(f"{folder}: {problem}, so nothing verifies its weights (brainlm writes a complete one "
                               f"with every model folder); pass {TRUST_FLAG} (trust_unverified=True) to use it anyway")


def open_model(path_or_hub_id: str | os.PathLike, *, map_location: Any = "cpu", revision: str | None = None,
               model_types: tuple[str, ...] | None = None, trust_unverified: bool = False, **kwargs):
    """Open any model folder: the one way in (see the module docstring).

    Args:
        path_or_hub_id: a checkpoint folder (ours, original BrainLM, released ViT-MAE, a
            fine-tuned encoder), a training run, or a hub id (``owner/name[/subfolder]``).
        map_location: the device the model is put on.
        revision: hub revision (ignored for local folders).
        model_types: only these ``model_type`` values are accepted (a model class's own).
        trust_unverified: use a folder that no complete manifest verifies (``--trust-unverified``).
        **kwargs: passed to the format's loader (``dtype``, ``coords_path`` for ViT-MAE).

    Returns:
        The model in eval mode: ``BrainLMForPretraining`` or ``BrainLMViTMAE``; its ``source``
        is the folder it was read from.

    Raises:
        MissingInputError: nothing loadable at the path (``HubUnavailableError`` for a hub id
            neither cached nor reachable).
        CorruptFileError: a file that does not match the folder's ``manifest.json``.
        UnverifiedModelError: no complete manifest, and ``trust_unverified`` not given.
        UserError: an unknown ``model_type``, or one other than ``model_types``.
    """
    folder = resolve_model_folder(resolve_checkpoint(path_or_hub_id, revision=revision))
    raw = read_model_config(folder)
    model_type = str(raw.get("model_type", "brainlm"))
    known = model_types or tuple(sorted(set(_FORMATS) & set(_CLASSES)))  # what this process can open
    if model_type not in known or model_type not in _FORMATS or model_type not in _CLASSES:
        wanted = " or ".join(repr(t) for t in known)
        raise UserError(f"{folder}: model_type {model_type!r} is not {wanted}")
    checked = verify_model_folder(folder, trust_unverified=trust_unverified)
    if checked.endswith("not verified"):
        warnings.warn(checked, stacklevel=2)
    model = _FORMATS[model_type].load(_CLASSES[model_type], folder, raw, map_location=map_location, **kwargs)
    model.source = str(folder)
    return model


# --------------------------------------------------------------------------- the model card


def _read_benchmark(benchmark: dict | str | os.PathLike | None) -> dict | None:
    if benchmark is None or isinstance(benchmark, dict):
        return benchmark
    path = Path(benchmark)
    results = read_json(path / "results.json" if path.is_dir() else path, "benchmark results (results.json)")
    if not isinstance(results, dict) or not isinstance(results.get("tasks"), list):
        raise UserError(f"{path}: not the results.json of brainlm benchmark (no 'tasks' list)")
    return results


def _benchmark_section(results: dict) -> list[str]:
    import pandas as pd

    from brainlm.markdown import markdown_table

    def value(row: dict) -> str:
        return f"{row['value']:.3f} [{row['ci_low']:.3f}, {row['ci_high']:.3f}]"

    rows = []
    for task in results["tasks"]:
        c = task["comparison"]
        by_method = {row["method"]: row for row in task["table"]}
        model, base = by_method[c["model"]], by_method[c["baseline"]]
        rows.append({"task": task["task"], "metric": task["metric"], "BrainLM [95% CI]": value(model),
                     "strongest baseline [95% CI]": f"{base['label']} {value(base)}",
                     "difference [95% CI]": f"{c['difference']:+.3f} [{c['diff_ci_low']:+.3f}, {c['diff_ci_high']:+.3f}]",
                     # the benchmark words its verdict once (brainlm.evaluate.verdict) and records it
                     "verdict": c.get("outcome", "see report.md")})
    source = f" of `{results['checkpoint']}` on the store `{results['store']}`" if "store" in results else ""
    return ["## Benchmark", "",
            f"From `brainlm benchmark`{source}: per task, the model against the strongest simple baseline, "
            "both scored on the same data with the same formula (baselines fitted on the train split only), "
            "with 95% subject-bootstrap intervals. 'Within noise': the paired interval of the difference "
            "spans zero. Higher is better for every metric.", "",
            markdown_table(pd.DataFrame(rows)), ""]


def model_card(model_class: str, config: dict[str, Any], *, benchmark: dict | str | os.PathLike | None = None,
               hub_id: str | None = None) -> str:
    """The ``README.md`` of a saved model: Hub metadata, how to load it, its config, its benchmark.

    Args:
        model_class: the class that loads it (``BrainLMForPretraining`` or ``BrainLMViTMAE``).
        config: the config as saved in ``config.json``.
        benchmark: the ``results.json`` of ``brainlm benchmark`` (a dict, the file, or its
            folder); without it the card says that no benchmark was given.
        hub_id: the id or folder to name in the loading example.

    Returns:
        The card as Markdown text.
    """
    results = _read_benchmark(benchmark)
    config_rows = [f"| `{key}` | `{json.dumps(config[key])}` |" for key in sorted(config) if not key.startswith("_")]
    lines = ["---", "library_name: brainlm", "tags:", "- brainlm", "- fmri", "- masked-autoencoder", "---", "",
             f"# {hub_id or 'BrainLM model'}", "",
             f"A BrainLM masked autoencoder over parcellated fMRI (`{config.get('model_type')}`), saved by the "
             "`brainlm` package. Load it with:", "",
             "```python", f"from brainlm import {model_class}", "",
             f'model = {model_class}.from_pretrained("{hub_id or "path/or/hub-id"}")', "```", "",
             "## Config", "", "| field | value |", "|---|---|", *config_rows, ""]
    if results is None:
        lines += ["## Benchmark", "", "No benchmark results were given when this card was written (run "
                  "`brainlm benchmark` and pass its `results.json` as `save_pretrained(..., benchmark=...)`).", ""]
    else:
        lines += _benchmark_section(results)
    return "\n".join(lines)


# --------------------------------------------------------------------------- the mixin


class HubMixin:
    """``from_pretrained``, ``save_pretrained`` and ``push_to_hub`` for a model kind.

    A subclass names the ``model_type`` values it reads in ``model_types`` (the first is the
    one it writes) and implements ``_card_config()`` (the config dict for the card).
    """

    model_types: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        for model_type in cls.__dict__.get("model_types", ()):
            _CLASSES[model_type] = cls

    @classmethod
    def from_pretrained(cls, path_or_hub_id: str | os.PathLike, *, revision: str | None = None, **kwargs):
        """Load a checkpoint folder, a training run or a hub id (``owner/name[/subfolder]``), in eval mode.

        :func:`open_model`, restricted to this class's ``model_types``.

        Args:
            path_or_hub_id: an existing local path always wins; a hub id is taken from the local
                hub cache or fetched (see the module docstring).
            revision: hub revision (ignored for local folders).
            **kwargs: passed to the format's loader (``map_location``; ``dtype``, ``coords_path``
                for ViT-MAE).

        Raises:
            HubUnavailableError: a hub id that is neither cached nor reachable.
        """
        return open_model(path_or_hub_id, revision=revision, model_types=cls.model_types, **kwargs)

    def save_pretrained(self, save_directory: str | os.PathLike, *, benchmark: dict | str | os.PathLike | None = None,
                        hub_id: str | None = None) -> Path:
        """Write ``config.json``, ``model.safetensors``, a ``README.md`` model card and the
        ``manifest.json`` of them all into a folder.

        Args:
            save_directory: the folder (created if needed): new, empty or a checkpoint folder
                (:func:`brainlm.io.claim_folder`), whose files of these names are replaced.
            benchmark: ``brainlm benchmark``'s ``results.json`` (dict, file or folder) for the card.
            hub_id: the name the card's loading example uses.

        Returns:
            The folder.

        Raises:
            OutputExistsError: the folder holds files brainlm did not write, or another artefact.
        """
        folder = Path(save_directory)
        card = model_card(type(self).__name__, self._card_config(), benchmark=benchmark, hub_id=hub_id)
        claim_folder(folder, "checkpoint", overwrite=True, flag="save_directory")
        atomic_write_text(folder / "README.md", card)
        _FORMATS[self.model_types[0]].save(self, folder)  # the format's files, then the manifest of them all
        return folder

    def push_to_hub(self, repo_id: str, *, benchmark: dict | str | os.PathLike | None = None,
                    commit_message: str = "Upload BrainLM model", private: bool | None = None,
                    token: str | None = None, branch: str | None = None, create_pr: bool | None = None) -> str:
        """Save into a temporary folder and upload it to the model repository ``repo_id`` in one commit.

        Creates the repository if it does not exist. Needs ``huggingface_hub`` and a token with
        write access (``hf auth login``).

        Returns:
            The URL of the commit.
        """
        try:
            from huggingface_hub import HfApi
        except ImportError:
            raise UserError("push_to_hub needs huggingface_hub (pip install 'brainlm[hf]')") from None
        api = HfApi(token=token)
        with tempfile.TemporaryDirectory(prefix="brainlm-push-") as tmp:
            folder = self.save_pretrained(Path(tmp) / "model", benchmark=benchmark, hub_id=repo_id)
            try:
                repo_id = api.create_repo(repo_id=repo_id, private=private, exist_ok=True).repo_id
                return api.upload_folder(repo_id=repo_id, repo_type="model", folder_path=folder,
                                         commit_message=commit_message, revision=branch, create_pr=create_pr,
                                         ignore_patterns=[MARKER])
            except Exception as err:  # HTTP errors, no network, no or bad token, bad repo id
                line = str(err).splitlines()[0] if str(err) else ""
                raise UserError(f"could not push to '{repo_id}' on the Hugging Face Hub "
                                f"({type(err).__name__}: {line})") from err

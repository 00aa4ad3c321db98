"""Subject, session and run IDs of input files, from their paths, as people lay out their data.

One rule for every adapter that reads files (``bold``, ``bids``, ``surface``, ``timeseries``), decided over
all the inputs of a command at once, so that a ``prepare --part I/N`` job gives every file the
ID a one-machine ``prepare`` gives it:

1. ``--subject-id PATTERN``, when given: a regular expression with one group, searched in each
   file's absolute path (``subjects/(\\d+)/``), or a number N, the N-th folder above each file
   (1: the folder it lies in). A file the pattern does not match is refused.
2. the BIDS ``sub-`` entity of the file name or, failing that, of a ``sub-*`` folder above it
   (``ses``, ``task`` and ``run`` likewise from the file name); or the HCP layout
   ``SUBJECT/MNINonLinear/Results/RUN/FILE`` (the task from ``RUN``);
3. the file name without its extension, when no two inputs share one;
4. otherwise (files named alike, one folder per subject: ``101309/functional/TC.mat``,
   ``211619/functional/TC.mat``) the nearest folder above the files that, with what lies below
   it, tells them apart: the per-subject folder. When the nearest folder that differs does not
   tell them apart and one further up does (``site/subject/x.npy`` with subject folders that
   repeat across sites, or ``subject/session/x.npy``), which one holds the subject is the user's
   to say: refused, naming both and ``--subject-id``.

Two files of one subject are told apart by the nearest part of their paths that differs (the
file name, else a folder), which becomes their run ID; only files that name the same subject,
session, task and run (BIDS entities alike) are duplicates. How the IDs were derived is
recorded in the store's manifest (``subject_ids``).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from brainlm.errors import UserError

from .readers import parse_bids_entities

__all__ = ["FileIDs", "check_pattern", "derive_ids"]


@dataclass(frozen=True)
class FileIDs:
    """The IDs of one input file ("" when unknown)."""

    subject_id: str
    session_id: str = ""
    run_id: str = ""
    task: str = ""

    def as_dict(self) -> dict[str, str]:
        return {"subject_id": self.subject_id, "session_id": self.session_id, "run_id": self.run_id, "task": self.task}


def _stem(path: Path) -> str:
    return path.name.split(".")[0]


def _components(path: Path) -> list[str]:
    """The parts of an absolute path from the file up: ``[stem, its folder, the folder above, ...]``."""
    parts = Path(os.path.abspath(path)).parts
    return [_stem(path), *reversed(parts[:-1])]


def _bids(path: Path) -> FileIDs | None:
    ent = parse_bids_entities(path)
    if "sub" not in ent:
        folder = next((p[4:] for p in reversed(Path(os.path.abspath(path)).parts[:-1])
                       if re.fullmatch(r"sub-[A-Za-z0-9]+", p)), None)
        if folder is None:
            return None
        ent["sub"] = folder
    return FileIDs(ent["sub"], ent.get("ses", ""), ent.get("run", ""), ent.get("task", ""))


def _hcp(path: Path) -> FileIDs | None:
    """The HCP layout ``<subject>/MNINonLinear/Results/<run, e.g. rfMRI_REST1_LR>/<file>``."""
    parts = Path(os.path.abspath(path)).parts
    if len(parts) >= 6 and parts[-3] == "Results" and parts[-4] == "MNINonLinear":
        return FileIDs(parts[-5], task="".join(c for c in parts[-2] if c.isalnum()))
    return None


def _known(path: Path) -> tuple[FileIDs, str] | None:
    """The IDs of a file in a layout that names them (BIDS, HCP), and the layout."""
    for layout, ids in ((_BIDS, _bids(path)), (_HCP, _hcp(path))):
        if ids is not None:
            return ids, layout
    return None


_BIDS = "the BIDS sub- entity (ses, task and run likewise)"
_HCP = "the HCP layout (SUBJECT/MNINonLinear/Results/RUN/; the task from RUN)"


def _pattern(pattern: str, path: Path) -> str:
    text = Path(os.path.abspath(path)).as_posix()
    if pattern.isdigit():
        parts = Path(text).parts[:-1]
        n = int(pattern)
        if not 1 <= n <= len(parts) - 1:
            raise UserError(f"--subject-id {pattern}: {path} has no folder {n} levels above it")
        return parts[-n]
    match = re.search(pattern, text)
    if match is None or not match.group(1):
        raise UserError(f"--subject-id {pattern!r} does not match {path} (searched in {text})")
    return match.group(1)


def check_pattern(pattern: str) -> None:
    if pattern.isdigit():
        if int(pattern) < 1:
            raise UserError(f"--subject-id {pattern}: a folder level counts from 1 (the folder a file lies in)")
        return
    try:
        groups = re.compile(pattern).groups
    except re.error as err:
        raise UserError(f"--subject-id {pattern!r} is not a regular expression ({err})") from None
    if groups != 1:
        raise UserError(f"--subject-id {pattern!r} needs exactly one group (the subject ID), has {groups}")


def _runs(comps: list[list[str]], subjects: list[str], below: int) -> list[str]:
    """Run IDs telling apart the files of one subject: the nearest part of the path below level
    ``below`` (the file name first) that does so for every subject; "" when no subject has two files."""
    if len(set(subjects)) == len(subjects):
        return [""] * len(subjects)
    for d in range(below):
        values = [c[d] if d < len(c) else "" for c in comps]
        if len(set(zip(subjects, values))) == len(values):
            return values
    return ["-".join(reversed(c[:below])) for c in comps]


def derive_ids(files: list[Path], pattern: str | None = None) -> tuple[list[FileIDs], str]:
    """The IDs of every input file, and how they were derived (module docstring).

    Args:
        files: the input files, in the order given.
        pattern: ``--subject-id``: a regular expression with one group, or a folder level.

    Returns:
        one :class:`FileIDs` per file, and the rule in words (recorded in the store).

    Raises:
        UserError: a pattern that is not a regular expression with one group, or that does
            not match a file.
    """
    comps = [_components(f) for f in files]
    if pattern:
        check_pattern(pattern)
        subjects = [_pattern(pattern, f) for f in files]
        return _with_runs(files, comps, subjects, len(max(comps, key=len))), f"--subject-id {pattern}"
    known = [_known(f) for f in files]
    layouts = " or ".join(dict.fromkeys(k[1] for k in known if k is not None))
    named = [k[0] if k is not None else None for k in known]
    if files and all(b is not None for b in named):
        return named, layouts
    stems = [c[0] for c in comps]
    if len(set(stems)) == len(stems):
        ids = [b if b is not None else FileIDs(s) for b, s in zip(named, stems)]
        return ids, "the file name" if not layouts else f"{layouts}, else the file name"
    # Files named alike: the nearest folder that, with what lies below it, tells them apart.
    depth = max(map(len, comps))
    level = next(d for d in range(1, depth + 1) if len({tuple(c[:d + 1]) for c in comps}) == len(comps))
    varying = next(d for d in range(1, depth + 1) if len({_at(c, d) for c in comps}) > 1)
    if varying < level:
        # Two folder levels vary (site/subject or subject/session?): only the user can tell.
        raise UserError(f"--subject-id: files named alike ({files[0].name}) lie in folders that differ at two levels "
                        f"(the folder {varying} above: {_examples(comps, varying)}; {level} above: "
                        f"{_examples(comps, level)}); say which holds the subject with --subject-id {varying} or "
                        f"--subject-id {level}, or a regular expression with one group")
    subjects = [_at(c, level) for c in comps]
    ids = _with_runs(files, comps, subjects, level)
    ids = [b if b is not None else i for b, i in zip(named, ids)]
    return ids, f"the folder {level} level{'s' if level > 1 else ''} above each file (files named alike)"


def _at(components: list[str], level: int) -> str:
    return components[level] if level < len(components) else ""


def _examples(comps: list[list[str]], level: int) -> str:
    return ", ".join(list(dict.fromkeys(_at(c, level) for c in comps))[:3])


def _with_runs(files: list[Path], comps: list[list[str]], subjects: list[str], below: int) -> list[FileIDs]:
    out = []
    for f, s, r in zip(files, subjects, _runs(comps, subjects, below)):
        ent = parse_bids_entities(f)
        out.append(FileIDs(s, ent.get("ses", ""), ent.get("run", r), ent.get("task", "")))
    return out

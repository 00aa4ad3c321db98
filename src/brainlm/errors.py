"""The exceptions that mean "bad input", as opposed to a bug.

The command line prints a :class:`UserError` as one line (``brainlm CMD: error: ...``) and
exits with status 2; every other exception keeps its traceback, so real bugs stay visible.
Each subclass also derives from the built-in exception a Python caller would expect
(``ValueError``, ``FileNotFoundError``, ...), so ``except ValueError`` keeps working.

Messages name the file and the command-line flag involved (``--coords``, ``--overwrite``),
because that is what the user can change.

Errors of the machine rather than of brainlm or its input (a full or read-only disk, a folder
without write permission) are recognised by :func:`environment_error`, so the command line
prints them as one line too; every other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import errno
import os

__all__ = [
    "UserError",
    "InputError",
    "MissingInputError",
    "OutputExistsError",
    "OutputLockedError",
    "CorruptFileError",
    "UnverifiedModelError",
    "HubUnavailableError",
    "environment_error",
]

# errno values that say something about the machine (disk, permissions), not about brainlm.
_ENVIRONMENT_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)
_HINTS = {errno.ENOSPC: "free some space or write elsewhere", errno.EDQUOT: "free some space or write elsewhere",
          errno.EROFS: "write elsewhere", errno.EACCES: "check the permissions or write elsewhere",
          errno.EPERM: "check the permissions or write elsewhere"}


class UserError(ValueError):
    """Bad input: a value, a file or a combination of flags that cannot be used."""

    def one_line(self) -> str:
        """The message on one line (multi-line details joined with ``; ``)."""
        return "; ".join(part.strip() for part in str(self).splitlines() if part.strip())


class InputError(UserError):
    """A bad input file; the message starts with the file name."""


class MissingInputError(UserError, FileNotFoundError):
    """A file or folder given as input does not exist or holds nothing usable."""


class OutputExistsError(UserError, FileExistsError):
    """An output exists and ``--overwrite`` was not given."""


class OutputLockedError(UserError):
    """Another process is writing the same output folder."""


class CorruptFileError(UserError):
    """A stored file does not match its manifest (size or SHA-256), or cannot be parsed."""


class UnverifiedModelError(UserError):
    """A model folder that no complete manifest verifies, used without the user's word (``--trust-unverified``)."""


class HubUnavailableError(MissingInputError):
    """A Hugging Face Hub id that is not a local folder, not in the local hub cache, and cannot be fetched."""


def environment_error(err: BaseException) -> str | None:
    """One line for an error of the machine (no space left, read-only file system, no permission), or None.

    Looks at ``err`` and the exceptions it was raised from: an ``OSError`` with one of those
    errno values, or a library error whose text carries the system's message for one of them
    (safetensors and torch's ``inline_container.cc`` wrap a full disk in their own error types).
    """
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in _ENVIRONMENT_ERRNOS:
            where = f"{err.filename}: " if err.filename else ""
            return f"{where}{os.strerror(err.errno)} ({_HINTS[err.errno]})"
        text = str(err)
        for code in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
            if os.strerror(code) in text:
                return f"{os.strerror(code)} ({_HINTS[code]}; {type(err).__name__})"
        if "inline_container" in text:  # torch.save's writer fails this way when the disk fills up
            return f"writing failed (is the disk full?): {text.splitlines()[0][:200]}"
        err = err.__cause__ or err.__context__
    return None

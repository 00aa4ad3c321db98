"""Command-line options declared once, as dataclass fields.

Every command's settings are one keyword-only dataclass deriving from :class:`Options`, each
field declared with :func:`option`, which holds its default, its flag and its help text:

    @dataclass(kw_only=True)
    class EmbedOptions(Options):
        pooling: str = option("cls", "what one window becomes", choices=POOLINGS)
        batch_size: int = option(32, "windows per forward pass")

        def __post_init__(self):
            if self.batch_size < 1:
                raise UserError(f"{self.flag('batch_size')} must be >= 1, got {self.batch_size}")

The parser is built from the fields (:meth:`Options.add_to`), the dataclass from the parsed
arguments (:meth:`Options.from_args`), and the library function takes the dataclass, so a
Python caller and the command line reach the same code with the same defaults. Checks live in
``__post_init__`` and name the flag the user typed (:meth:`Options.flag`).

Flags are ``--`` plus the field name with ``_`` as ``-`` unless ``flag`` says otherwise. Types
come from the annotations: ``bool`` is a switch (``--no-x`` for a field that defaults to True),
``int`` / ``float`` / ``str`` (optionally ``| None``) take one value, ``tuple[str, ...]`` a
comma-separated list, ``tuple[float, float, float]`` three values, ``list[str]`` one or more.
A flag the user did not give is absent from the parsed namespace, so the dataclass default
applies and :meth:`Options.given` tells the explicitly given fields apart (for settings that
only change what was asked for, such as training overrides on a preset).
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import types
import typing
from typing import Any, Callable

from brainlm.errors import UserError

__all__ = ["command_line", "option", "Options", "ModelOptions", "add_dataclass_arguments", "given_fields", "positive", "at_least", "finite", "between", "one_of"]

_META = "brainlm_option"


def option(default: Any = dataclasses.MISSING, help: str = "", *, flag: str | None = None,
           aliases: tuple[str, ...] = (), choices: typing.Sequence | None = None, metavar: str | None = None,
           positional: bool = False, nargs: str | int | None = None, parse: Callable[[str], Any] | None = None,
           default_factory: Any = dataclasses.MISSING, group: str | None = None, cli: bool = True,
           check: Callable[[Any], str | None] | None = None):
    """A dataclass field that is also a command-line option.

    Args:
        default, default_factory: the default (as for ``dataclasses.field``); none makes it required.
        help: the help text (the default is appended).
        flag: the flag (default ``--field-name``); aliases: other spellings it accepts.
        choices, metavar, nargs: as for ``argparse``.
        positional: a positional argument instead of a flag.
        parse: turns the text of one value into the field's value (default: from the annotation).
        group: the heading it is listed under in ``--help``.
        cli: False keeps the field out of the parser (Python API only).
        check: ``check(value) -> None`` or what is wrong with it (``"must be >= 1"``); run by
            :meth:`Options.__post_init__` for Python callers and the command line alike, and
            reported with the flag (:func:`positive`, :func:`at_least`, :func:`finite`, ...).
    """
    meta = {_META: dict(help=help, flag=flag, aliases=tuple(aliases), choices=choices, metavar=metavar,
                        positional=positional, nargs=nargs, parse=parse, group=group, cli=cli, check=check)}
    return dataclasses.field(default=default, default_factory=default_factory, metadata=meta)


def _base_type(annotation: Any) -> tuple[Any, bool]:
    """(the type without ``None``, whether ``None`` is allowed)."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return (rest[0] if len(rest) == 1 else annotation), True
    return annotation, False


def _comma_list(item: Callable[[str], Any]) -> Callable[[str], tuple]:
    def parse(text: str) -> tuple:
        return tuple(item(part) for part in text.split(",") if part.strip())

    parse.__name__ = "comma-separated list"
    return parse


def _raw_argument(f: dataclasses.Field, kind: Any, dest: str) -> dict[str, Any]:
    """Keywords of a field kept as the text typed (parsed by the caller); a switch may be given alone."""
    kw = {"dest": dest, "default": argparse.SUPPRESS, "metavar": "VALUE",
          "help": f.metadata.get(_META, {}).get("help") or f"({getattr(kind, '__name__', kind)})"}
    if kind is bool:
        kw.update(nargs="?", const="true", metavar="true|false")
    return kw


def _default_of(f: dataclasses.Field) -> tuple[bool, Any]:
    """(whether the field has a default, the default)."""
    if f.default is not dataclasses.MISSING:
        return True, f.default
    if f.default_factory is not dataclasses.MISSING:
        return True, f.default_factory()
    return False, None


def _value_keywords(meta: dict, kind: Any, default: Any, has_default: bool) -> dict[str, Any]:
    """``type``, ``nargs``, ``choices`` and the default in the help, from the field's type."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    parse, kw = meta.get("parse"), {}
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:  # tuple[str, ...]: a comma list
        kw["type"] = parse or _comma_list(args[0])
        shown = ",".join(map(str, default)) or "none" if default is not None else None
    else:
        if origin in (tuple, list) and args:
            kw["nargs"], kw["type"] = meta.get("nargs") or (len(args) if origin is tuple else "+"), parse or args[0]
        else:
            kw["type"] = parse or (kind if kind in (int, float, str) else str)
            if meta.get("nargs"):
                kw["nargs"] = meta["nargs"]
        if meta.get("choices"):
            kw["choices"] = list(meta["choices"])
        shown = " ".join(map(str, default)) if isinstance(default, (tuple, list)) else default
    if has_default and shown not in (None, "") and not meta.get("positional"):
        kw["help"] = f"{meta.get('help', '')} (default: {shown})"
    return kw


def _argument(f: dataclasses.Field, annotation: Any, prefix: str = "", underscore: bool = False,
              suppress: bool = True, raw: bool = False, dest_prefix: str = "") -> tuple[list[str], dict[str, Any]]:
    """The ``add_argument`` names and keywords of one field."""
    meta, kind = f.metadata.get(_META, {}), _base_type(annotation)[0]
    spelled = f.name if underscore else f.name.replace("_", "-")
    names = [meta.get("flag") or f"--{prefix}{spelled}", *meta.get("aliases", ())]
    if underscore and "_" in f.name:
        names.append(f"--{prefix}{f.name.replace('_', '-')}")
    if raw:
        kw = _raw_argument(f, kind, f"{dest_prefix}{prefix}{f.name}")
        return names, {**kw, "help": kw["help"].replace("%", "%%")}
    has_default, default = _default_of(f)
    kw: dict[str, Any] = {"help": meta.get("help", "")}
    if meta.get("positional"):
        if kind is bool:
            raise TypeError(f"{f.name}: a bool cannot be positional")
        names = [f.name]
        kw["metavar"] = meta.get("metavar") or f.name.upper()
        if has_default:
            kw.update(default=default, nargs="?")
    else:
        kw.update(dest=f"{prefix}{f.name}", default=argparse.SUPPRESS if suppress else default)
        kw.update({"required": True} if not has_default else {})
        kw.update({"metavar": meta["metavar"]} if meta.get("metavar") else {})
    if kind is bool:  # a switch: --x sets True; --no-x (its flag) sets False; True by default: --x / --no-x
        negative = names[0].startswith("--no-")
        kw["action"] = "store_false" if negative else (argparse.BooleanOptionalAction if default is True else "store_true")
    else:
        kw.update(_value_keywords(meta, kind, default, has_default))
    return names, {**kw, "help": kw["help"].replace("%", "%%")}  # argparse formats help with %


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls: type, *, prefix: str = "", underscore: bool = False,
                            suppress: bool = True, title: str | None = None, exclude: typing.Iterable[str] = (),
                            raw: bool = False, description: str | None = None, dest_prefix: str = "") -> None:
    """Add one argument per field of the dataclass ``cls`` (see :func:`option`).

    Args:
        prefix: put before every flag and destination (``"model."`` gives ``--model.hidden_size``).
        underscore: keep ``_`` in flags (``--max_steps``; the ``--max-steps`` spelling is accepted too).
        suppress: leave flags that were not given out of the namespace (their default applies later).
        title, description: add them under this heading in ``--help``.
        exclude: fields to leave out.
        raw: keep every value as the text typed (for settings the caller parses itself, such as
            training overrides); a ``bool`` may then be given alone or as ``--flag=false``. A
            spelling that the parser already has is left to the flag that has it.
        dest_prefix: put before every destination only (keeps the fields apart from the command's own).
    """
    hints = typing.get_type_hints(cls)
    groups: dict[str | None, Any] = {None: parser.add_argument_group(title, description) if title else parser}
    taken = set(parser._option_string_actions)
    for f in dataclasses.fields(cls):
        meta = f.metadata.get(_META, {})
        if f.name in exclude or not f.init or not meta.get("cli", True):
            continue

        group = meta.get("group")
        if group not in groups:
            groups[group] = parser.add_argument_group(group)
        names, kw = _argument(f, hints[f.name], prefix, underscore, suppress, raw, dest_prefix)
        names = [n for n in names if n not in taken]  # the command's own flag of that spelling wins
        if names:
            groups[group].add_argument(*names, **kw)


# ------------------------------------------------------------------------------------------- checks


def at_least(low: float, *, optional: bool = False) -> Callable[[Any], str | None]:
    """A check: the value (each value of a list) is a number >= ``low``; None passes with ``optional``."""

    def check(value: Any) -> str | None:
        values = value if isinstance(value, (tuple, list)) else [value]
        if value is None and optional:
            return None
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and v == v and v >= low for v in values):
            return f"must be {'a number' if isinstance(low, float) else 'an integer'} >= {low:g}, got {value!r}"
        return None

    return check


def positive(value: Any) -> str | None:
    """A check: a count of at least 1 (batch sizes, folds, permutations, ...)."""
    return at_least(1)(value)


def finite(value: Any) -> str | None:
    """A check: a finite number (each of a list)."""
    import math

    values = value if isinstance(value, (tuple, list)) else [value]
    if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):
        return f"must be finite numbers, got {value!r}" if isinstance(value, (tuple, list)) else \
            f"must be a finite number, got {value!r}"
    return None


def between(low: float, high: float, *, closed: tuple[bool, bool] = (True, True),
            optional: bool = False) -> Callable[[Any], str | None]:
    """A check: ``low <= value <= high`` (open ends with ``closed``); None passes with ``optional``."""

    def check(value: Any) -> str | None:
        if value is None and optional:
            return None
        ok = isinstance(value, (int, float)) and value == value and \
            (value >= low if closed[0] else value > low) and (value <= high if closed[1] else value < high)
        if not ok:
            return f"must be in {'[' if closed[0] else '('}{low:g}, {high:g}{']' if closed[1] else ')'}, got {value!r}"
        return None

    return check


def one_of(*allowed: Any) -> Callable[[Any], str | None]:
    """A check for the Python API of a field whose command line has ``choices``."""

    def check(value: Any) -> str | None:
        values = value if isinstance(value, (tuple, list)) else [value]
        bad = [v for v in values if v not in allowed]
        return f"must be one of {', '.join(map(str, allowed))}, got {', '.join(map(str, bad))}" if bad else None

    return check


def given_fields(cls: type, args: argparse.Namespace, prefix: str = "") -> dict[str, Any]:
    """The fields of the dataclass ``cls`` given on the command line, ``{name: value}`` (tuples for
    tuple fields)."""
    present, hints = vars(args), typing.get_type_hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        if f.init and f"{prefix}{f.name}" in present:
            value = present[f"{prefix}{f.name}"]
            is_tuple = typing.get_origin(_base_type(hints[f.name])[0]) is tuple
            out[f.name] = tuple(value) if is_tuple and isinstance(value, list) else value
    return out


class Options:
    """Base of the option dataclasses (see the module docstring)."""

    def __post_init__(self) -> None:
        """Run every field's ``check``; the first failure is a :class:`UserError` naming its flag."""
        for f in dataclasses.fields(self):
            meta = f.metadata.get(_META, {})
            value, check = getattr(self, f.name), meta.get("check")
            problem = check(value) if check is not None else None
            if problem is None and meta.get("choices") and value is not None:
                problem = one_of(*meta["choices"])(value)
            if problem:
                raise UserError(f"{self.flag(f.name)} {problem}")

    @classmethod
    def add_to(cls, parser: argparse.ArgumentParser, **kwargs) -> argparse.ArgumentParser:
        """Add this dataclass's options to ``parser`` (keywords as :func:`add_dataclass_arguments`)."""
        add_dataclass_arguments(parser, cls, **kwargs)
        return parser

    @classmethod
    def given(cls, args: argparse.Namespace, prefix: str = "") -> dict[str, Any]:
        """The fields given on the command line, ``{name: value}``."""
        return given_fields(cls, args, prefix)

    @classmethod
    def from_args(cls, args: argparse.Namespace, **extra: Any):
        """The dataclass from parsed arguments; flags that were not given keep their defaults.

        Args:
            extra: values for fields that do not come from the command line.
        """
        return cls(**{**cls.given(args), **extra})

    @classmethod
    def flag(cls, name: str) -> str:
        """The flag the user types for the field ``name`` (for messages)."""
        f = next((f for f in dataclasses.fields(cls) if f.name == name), None)
        meta = f.metadata.get(_META, {}) if f is not None else {}
        if meta.get("positional"):
            return f.name.upper()
        return meta.get("flag") or f"--{name.replace('_', '-')}"

    def resume_hint(self) -> str | None:
        """What to run to continue after an interruption (Ctrl-C), for a command that can continue; else None
        (commands in it written with :func:`command_line`)."""
        return None

    def replace(self, **changes: Any):
        """A copy with some fields changed (checked again)."""
        return dataclasses.replace(self, **changes)

    def as_base(self, cls: type):
        """The options of ``cls``, one of this dataclass's bases, from this instance's values (e.g. the
        library settings of a command whose options add its inputs and outputs)."""
        return cls(**{f.name: getattr(self, f.name) for f in dataclasses.fields(cls) if f.init})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(kw_only=True)
class ModelOptions(Options):
    """What every command that opens a model folder takes besides the folder."""

    trust_unverified: bool = option(False, "use a model folder that no complete manifest.json verifies (written by "
                                    "hand or by other code): its weights are not checked")


def command_line(*words: Any) -> str:
    """A command to print for the user to run: every word shell-quoted, so that a path with a space
    or a quote in it is pasted back as one word."""
    return " ".join(shlex.quote(str(w)) for w in words)

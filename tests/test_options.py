"""Options declared once as dataclass fields: the parser, the defaults and the checks all come from them."""

import argparse
from dataclasses import dataclass

import pytest

from brainlm.errors import UserError
from brainlm.options import Options, at_least, between, finite, option, positive


@dataclass(kw_only=True)
class _Opts(Options):
    """A command."""

    store: str = option(help="a store", positional=True)
    files: list[str] = option(default_factory=list, help="more", nargs="*", positional=True)
    batch_size: int = option(32, "windows per pass", check=positive)
    ratio: float = option(0.5, "a fraction", check=between(0, 1, closed=(False, False)))
    split: tuple[float, float, float] = option((0.8, 0.1, 0.1), "weights", check=finite)
    probes: tuple[str, ...] = option(("dummy", "ridge"), "comma separated", choices=("dummy", "ridge", "knn"))
    pooling: str = option("cls", "pooling", choices=("cls", "mean"))
    stride: int | None = option(None, "step", check=at_least(1, optional=True))
    keep: bool = option(False, "a switch")
    fc: bool = option(True, "skip FC", flag="--no-fc")
    k: int = option(5, "how many", flag="--forecast-k")


def _parse(argv):
    return _Opts.from_args(_Opts.add_to(argparse.ArgumentParser()).parse_args(argv))


def test_defaults_types_and_flags_come_from_the_fields():
    o = _parse(["s"])
    assert o == _Opts(store="s")
    o = _parse(["s", "a", "b", "--batch-size", "8", "--ratio", "0.25", "--split", "3", "1", "1", "--probes", "knn,ridge",
                "--pooling", "mean", "--stride", "4", "--keep", "--no-fc", "--forecast-k", "10"])
    assert (o.files, o.batch_size, o.ratio, o.split, o.probes) == (["a", "b"], 8, 0.25, (3.0, 1.0, 1.0), ("knn", "ridge"))
    assert (o.pooling, o.stride, o.keep, o.fc, o.k) == ("mean", 4, True, False, 10)


def test_given_names_only_what_was_typed():
    args = _Opts.add_to(argparse.ArgumentParser()).parse_args(["s", "--ratio", "0.5"])
    assert _Opts.given(args) == {"store": "s", "files": [], "ratio": 0.5}


@pytest.mark.parametrize("argv, message", [
    (["--batch-size", "-3"], "--batch-size must be an integer >= 1, got -3"),
    (["--ratio", "1"], "--ratio must be in (0, 1), got 1.0"),
    (["--split", "nan", "1", "1"], "--split must be finite numbers"),
    (["--split", "inf", "1", "1"], "--split must be finite numbers"),
    (["--stride", "0"], "--stride must be an integer >= 1, got 0"),
    (["--forecast-k", "0"], None),
    (["--probes", "knn,svm"], "--probes must be one of dummy, ridge, knn, got svm"),
])
def test_bad_values_are_refused_naming_the_flag_typed(argv, message):
    if message is None:  # no check declared: accepted
        assert _parse(["s", *argv]).k == 0
        return
    with pytest.raises(UserError) as err:
        _parse(["s", *argv])
    assert str(err.value).startswith(message)


def test_python_callers_get_the_same_checks():
    with pytest.raises(UserError, match="--batch-size must be an integer >= 1"):
        _Opts(store="s", batch_size=0)
    with pytest.raises(UserError, match="--pooling must be one of cls, mean, got max"):
        _Opts(store="s", pooling="max")
    assert _Opts.flag("k") == "--forecast-k" and _Opts.flag("store") == "STORE"


def test_help_shows_the_defaults():
    text = _Opts.add_to(argparse.ArgumentParser()).format_help()
    assert "windows per pass (default: 32)" in text and "comma separated (default: dummy,ridge)" in text


def _leaves(commands, prefix=()):
    for c in commands:
        if c.children:
            yield from _leaves(c.children, (*prefix, c.name))
        else:
            yield (*prefix, c.name)


def test_every_command_has_a_help_built_from_its_options(capsys):
    """The parser of every command builds, and --help prints every flag with its default."""
    from brainlm.cli import COMMANDS, main

    for words in _leaves(COMMANDS):
        with pytest.raises(SystemExit) as exit_:
            main([*words, "--help"])
        assert exit_.value.code == 0, words
        text = capsys.readouterr().out
        assert text.startswith(f"usage: brainlm {' '.join(words)}"), words
    for words in (["embed", "m", "s", "--out", "x", "--batch-size", "0"], ["benchmark", "m", "s", "--out", "o", "--mask-ratio", "2"]):
        assert main(words) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"{words[-2]} must be" in err

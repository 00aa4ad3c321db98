"""One report writer: ``report.md``, ``report.html`` and ``results.json`` of a command from the same blocks.

Every command that writes a report (the benchmark and its cross-validation, Brainmarks' protocol,
the analyses, the brain-genetics integration, the demo's index) builds a :class:`Report`: a title,
sections, paragraphs, tables (pandas), figures (matplotlib figures or PNG files already written)
and verdict lines, then :meth:`Report.write` saves the figures and tables, ``results.json``, the
Markdown and the HTML, each atomically. Both renderings come from the same blocks, so a number
and a verdict read the same in either.

The HTML page is self-contained: figures inlined as ``data:`` URIs, inline CSS (readable on a
phone and a laptop; wide tables scroll), a small inline script that sorts a table by the column
clicked, no network, no external script or font. Every numeric cell carries its exact value
(``data-value``), so the page can be checked against ``results.json``. A verdict line is any
object with ``markdown(where)`` and ``html(where)`` (:class:`brainlm.evaluate.verdict.Verdict`):
this floor does not import the one that words verdicts; :func:`verdict_html` is the badge they
render with. The footer names the command line and the versions that produced the page.

:func:`rebuild` turns a folder's ``report.md`` (and a demo folder's ``index.md``) back into
blocks and writes the HTML again (``brainlm report DIR``).
"""

from __future__ import annotations

import base64
import html
import os
import platform
import re
import shlex
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd

from brainlm.errors import UserError
from brainlm.figures import save_figure
from brainlm.io import atomic_write_json, atomic_write_text, read_json, write_csv
from brainlm.markdown import format_cell, markdown_table
from brainlm.options import Options, option

__all__ = ["Report", "VerdictLike", "verdict_html", "outcome_badge", "produced_by", "rebuild", "rebuilt_page",
           "read_markdown", "ReportOptions", "run_report", "PAGES"]

PAGES = ("report", "index")  # the pages a folder may hold: a command's report, the demo's index


class VerdictLike(Protocol):
    """What a verdict line needs to be written: the plain line (printed) and its two renderings."""

    def line(self, where: str = "") -> str: ...

    def markdown(self, where: str = "") -> str: ...

    def html(self, where: str = "") -> str: ...


def outcome_badge(outcome: str) -> str:
    """The badge class of a verdict's outcome as worded: ``wins``, ``loses``, ``level``, ``too-few``,
    or ``no-interval`` (ahead / behind / level without an interval: no verdict claimed)."""
    if outcome.endswith("(no interval)"):
        return "no-interval"
    if outcome.startswith("too few"):
        return "too-few"
    for badge in ("wins", "loses", "level"):
        if outcome.startswith(badge):
            return badge
    raise ValueError(f"not a verdict outcome: {outcome!r}")


def verdict_html(before: str, outcome: str, after: str) -> str:
    """A verdict line as HTML: a coloured badge with the outcome, then the line with the outcome in bold."""
    badge = outcome_badge(outcome)
    label = "too few" if badge == "too-few" else badge.replace("-", " ")
    return (f'<p class="verdict v-{badge}" data-outcome="{html.escape(outcome)}"><span class="badge">{label}</span> '
            f"{html.escape(before)}<strong>{html.escape(outcome)}</strong>{html.escape(after)}</p>")


def produced_by() -> dict:
    """The command line (shell-quoted) and the versions behind a report."""
    from importlib.metadata import PackageNotFoundError, version

    def installed(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "not installed"

    first = Path(sys.argv[0]) if sys.argv and sys.argv[0] else Path("python")
    if first.name == "brainlm" or first.parts[-2:] in (("brainlm", "cli.py"), ("brainlm", "__main__.py")):
        prog = ["brainlm"]  # the console script, or python -m brainlm.cli
    elif first.name == "__main__.py":
        prog = ["python", "-m", first.parent.name]
    else:
        prog = ["python", first.name] if first.name in ("-c", "-m") else [first.name]
    return {"command": shlex.join([*prog, *sys.argv[1:]]),
            # the package's own version (brainlm/__init__.py, loaded before this module; not imported: it is a higher floor)
            "versions": {"brainlm": getattr(sys.modules.get("brainlm"), "__version__", None) or installed("brainlm"),
                         "torch": installed("torch"), "numpy": np.__version__,
                         "python": platform.python_version()}}


# ---------------------------------------------------------------------------------------------
# Blocks: each renders itself as Markdown and as HTML
# ---------------------------------------------------------------------------------------------

_CODE = re.compile(r"`([^`]+)`")
_BOLD = re.compile(r"\*\*(.+?)\*\*")
_LINK = re.compile(r"\[([^\]]+)\]\(([^)\s]+)\)")


def _page_link(href: str) -> str:
    """A link to another report's Markdown points at its HTML on the page."""
    for page in PAGES:
        if href.endswith(f"{page}.md"):
            return href[: -len(".md")] + ".html"
    return href


def inline_html(text: str) -> str:
    """The inline Markdown the reports use (code, bold, links, hard line breaks) as escaped HTML."""
    parts = _CODE.split(text)
    out = []
    for i, part in enumerate(parts):
        if i % 2:
            out.append(f"<code>{html.escape(part)}</code>")
            continue
        part = _BOLD.sub(r"<strong>\1</strong>", html.escape(part, quote=False))
        part = _LINK.sub(lambda m: f'<a href="{html.escape(_page_link(m.group(2)))}">{m.group(1)}</a>', part)
        out.append(part.replace("  \n", "<br>\n"))
    return "".join(out)


@dataclass
class _Heading:
    text: str
    level: int = 2

    def markdown(self) -> str:
        return f"{'#' * self.level} {self.text}"

    def html(self, folder: Path) -> str:
        level = min(self.level, 6)
        return f"<h{level}>{inline_html(self.text)}</h{level}>"


@dataclass
class _Paragraph:
    text: str

    def markdown(self) -> str:
        return self.text

    def html(self, folder: Path) -> str:
        return f"<p>{inline_html(self.text)}</p>"


@dataclass
class _Bullets:
    items: list[str]

    def markdown(self) -> str:
        return "\n".join(f"- {i}" for i in self.items)

    def html(self, folder: Path) -> str:
        return "<ul>" + "".join(f"<li>{inline_html(i)}</li>" for i in self.items) + "</ul>"


def _number(v) -> float | None:
    """The exact value of a numeric cell (``None`` for text)."""
    if isinstance(v, (bool, np.bool_)):
        return None
    if isinstance(v, (int, float, np.integer, np.floating)):
        return float(v)
    return None


@dataclass
class _Table:
    frame: pd.DataFrame
    digits: int = 3
    key: str = ""

    def markdown(self) -> str:
        return markdown_table(self.frame, self.digits)

    def html(self, folder: Path) -> str:
        key = f' data-key="{html.escape(self.key)}"' if self.key else ""
        head = "".join(f"<th>{html.escape(str(c))}</th>" for c in self.frame.columns)
        rows = []
        for row in self.frame.itertuples(index=False):
            cells = []
            for v in row:
                number = _number(v)
                value = f' data-value="{number!r}"' if number is not None else ""
                cells.append(f"<td{value}>{inline_html(format_cell(v, self.digits))}</td>")
            rows.append("<tr>" + "".join(cells) + "</tr>")
        return (f'<div class="table"><table class="sortable"{key}><thead><tr>{head}</tr></thead>'
                f"<tbody>{''.join(rows)}</tbody></table></div>")


@dataclass
class _Figure:
    name: str  # the PNG's path relative to the report's folder
    caption: str

    def markdown(self) -> str:
        return f"![{self.caption}]({self.name})"

    def html(self, folder: Path) -> str:
        path = folder / self.name
        if not path.is_file():
            return f'<p class="missing">Figure {html.escape(self.name)} is missing from {html.escape(str(folder))}.</p>'
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        return (f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(self.caption)}">'
                f"<figcaption>{inline_html(self.caption)}</figcaption></figure>")


@dataclass
class _Verdict:
    verdict: VerdictLike
    where: str = ""

    def markdown(self) -> str:
        return self.verdict.markdown(self.where)

    def html(self, folder: Path) -> str:
        return self.verdict.html(self.where)


@dataclass
class _ReadVerdict:
    """A verdict line read back from Markdown (its outcome in bold): for :func:`rebuild`."""

    before: str
    outcome: str
    after: str

    def line(self, where: str = "") -> str:
        return f"{self.before}{self.outcome}{self.after}"

    def markdown(self, where: str = "") -> str:
        return f"{self.before}**{self.outcome}**{self.after}"

    def html(self, where: str = "") -> str:
        return verdict_html(self.before, self.outcome, self.after)


# ---------------------------------------------------------------------------------------------
# The writer
# ---------------------------------------------------------------------------------------------


class Report:
    """A report of one command: blocks in order, the files beside it, ``results.json``'s content.

    Args:
        title: the page's title (``# title`` in Markdown).
        header: paragraphs under the title.
        results: what ``results.json`` holds (``None``: no ``results.json``); the command line and
            versions are added under ``produced_by``.
    """

    def __init__(self, title: str, header: Iterable[str] = (), results: dict | None = None):
        self.title = title
        self.blocks: list = [_Paragraph(h) for h in header]
        self.results = results
        self.tables: dict[str, pd.DataFrame] = {}  # written beside the report: name -> table (.tsv or .csv)
        self.figures: dict[str, tuple[Any, bool, int]] = {}  # name -> (matplotlib figure, tight, dpi)
        self.printed: list[str] = []

    def section(self, heading: str, *parts: str | pd.DataFrame, level: int = 2) -> None:
        """A heading, then its paragraphs and tables in order."""
        self.blocks.append(_Heading(heading, level))
        self.paragraph(*parts)

    def paragraph(self, *parts: str | pd.DataFrame) -> None:
        """Paragraphs (inline Markdown: code, bold, links); a DataFrame among them is a table."""
        for part in parts:
            if isinstance(part, pd.DataFrame):
                self.table(part)
            else:
                self.blocks.append(_Paragraph(part))

    def bullets(self, items: Iterable[str]) -> None:
        items = list(items)
        if items:
            self.blocks.append(_Bullets(items))

    def say(self, line: str) -> None:
        """A headline: in the report and printed by the command at its end (:attr:`printed`)."""
        self.paragraph(line)
        self.printed.append(line)

    def table(self, frame: pd.DataFrame, digits: int = 3, key: str = "") -> None:
        """A table (floats rounded to ``digits`` on the page; the HTML keeps each exact value).

        Args:
            key: names the table on the HTML page (``data-key``), e.g. the task it scores.
        """
        self.blocks.append(_Table(frame.reset_index(drop=True), digits, key))

    def figure(self, name: str, caption: str, source=None, *, tight: bool = True, dpi: int = 100) -> None:
        """A figure: a matplotlib figure saved as ``name`` when the report is written, or (``source``
        None) the PNG ``name`` already in the report's folder (a path relative to it)."""
        if source is not None:
            self.figures[name] = (source, tight, dpi)
        self.blocks.append(_Figure(name, caption))

    def verdict(self, verdict: VerdictLike, where: str = "", *, say: bool = False) -> None:
        """A verdict line (``verdict.markdown(where)`` / ``verdict.html(where)``); with ``say``, also a
        printed headline (its plain line, ``verdict.line(where)``)."""
        self.blocks.append(_Verdict(verdict, where))
        if say:
            self.printed.append(verdict.line(where))

    def markdown(self) -> str:
        return "\n\n".join([f"# {self.title}", *(b.markdown() for b in self.blocks)]).rstrip() + "\n"

    def html(self, folder: str | os.PathLike, footer: dict | None = None) -> str:
        """The self-contained page; figures are read from ``folder``."""
        return page(self.title, [b.html(Path(folder)) for b in self.blocks], footer or produced_by())

    def write(self, out: str | os.PathLike, name: str = "report") -> Path:
        """Figures and tables, ``results.json``, then ``NAME.md`` and ``NAME.html`` (each atomically).

        Returns:
            The path of ``NAME.md``.
        """
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        for file, table in self.tables.items():
            write_csv(table, out / file, sep="\t" if file.endswith(".tsv") else ",")
        for file, (fig, tight, dpi) in self.figures.items():
            save_figure(fig, out / file, dpi=dpi, tight=tight)
        footer = produced_by()
        if self.results is not None:
            self.results["produced_by"] = footer
            atomic_write_json(out / ("results.json" if name == "report" else f"{name}.json"), self.results)
        atomic_write_text(out / f"{name}.md", self.markdown())
        atomic_write_text(out / f"{name}.html", self.html(out, footer))
        return out / f"{name}.md"


# ---------------------------------------------------------------------------------------------
# The page
# ---------------------------------------------------------------------------------------------

_CSS = """
:root{--fg:#1d1f23;--muted:#5c6370;--line:#d8dbe0;--bg:#fff;--head:#f3f4f6}
*{box-sizing:border-box}
body{margin:0 auto;max-width:64rem;padding:1rem;font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,
Helvetica,Arial,sans-serif;color:var(--fg);background:var(--bg)}
h1{font-size:1.5rem;line-height:1.25}h2{font-size:1.2rem;margin-top:2rem;border-bottom:1px solid var(--line)}
code{font-size:.9em;background:var(--head);padding:0 .2em;border-radius:3px;word-break:break-word}
.table{overflow-x:auto;margin:1rem 0;-webkit-overflow-scrolling:touch}
table{border-collapse:collapse;font-size:.9rem;min-width:50%}
th,td{border:1px solid var(--line);padding:.3rem .5rem;text-align:left;white-space:nowrap}
td[data-value]{text-align:right;font-variant-numeric:tabular-nums}
th{background:var(--head);cursor:pointer;user-select:none}th[aria-sort=ascending]::after{content:" \\25B2"}
th[aria-sort=descending]::after{content:" \\25BC"}
figure{margin:1rem 0}img{max-width:100%;height:auto;display:block}figcaption{color:var(--muted);font-size:.85rem}
.verdict{padding:.5rem .7rem;border-left:5px solid var(--c);background:color-mix(in srgb,var(--c) 8%,white)}
.badge{display:inline-block;padding:0 .5rem;margin-right:.3rem;border-radius:1rem;color:#fff;background:var(--c);
font-weight:600;font-size:.85rem;text-transform:uppercase;letter-spacing:.03em}
.v-wins{--c:#1a7f37}.v-loses{--c:#cf222e}.v-level{--c:#9a6700}.v-too-few{--c:#6e7781}.v-no-interval{--c:#8250df}
.missing{color:var(--muted)}
footer{margin-top:3rem;padding-top:.5rem;border-top:1px solid var(--line);color:var(--muted);font-size:.8rem}
@media (max-width:40rem){body{padding:.6rem;font-size:14px}h1{font-size:1.25rem}}
"""

# Click a column head to sort its table by that column (numbers by their exact value).
_SCRIPT = """
document.querySelectorAll("table.sortable th").forEach(function (th) {
  th.addEventListener("click", function () {
    var table = th.closest("table"), body = table.tBodies[0], up = th.getAttribute("aria-sort") !== "ascending";
    var index = Array.prototype.indexOf.call(th.parentNode.children, th);
    var key = function (row) {
      var cell = row.children[index], v = cell.getAttribute("data-value");
      return v === null ? cell.textContent : parseFloat(v);
    };
    var rows = Array.prototype.slice.call(body.rows).sort(function (a, b) {
      var x = key(a), y = key(b), c = (typeof x === "number" && typeof y === "number") ? x - y
        : String(x).localeCompare(String(y));
      return up ? c : -c;
    });
    table.querySelectorAll("th").forEach(function (h) { h.removeAttribute("aria-sort"); });
    th.setAttribute("aria-sort", up ? "ascending" : "descending");
    rows.forEach(function (row) { body.appendChild(row); });
  });
});
"""


def page(title: str, body: list[str], footer: dict) -> str:
    """The HTML page around rendered blocks, with the footer (command line and versions)."""
    versions = ", ".join(f"{k} {v}" for k, v in footer.get("versions", {}).items())
    rebuilt = f"<br>HTML rebuilt by <code>{html.escape(footer['rebuilt_by'])}</code>" if footer.get("rebuilt_by") else ""
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head>\n<body>\n"
        f"<h1>{inline_html(title)}</h1>\n" + "\n".join(body) + "\n"
        f'<footer>Produced by <code class="command">{html.escape(footer.get("command", "an unrecorded command"))}</code>'
        f"<br>Versions: {html.escape(versions)}{rebuilt}</footer>\n"
        f"<script>{_SCRIPT}</script>\n</body></html>\n")


# ---------------------------------------------------------------------------------------------
# Rebuilding a folder's pages from its files
# ---------------------------------------------------------------------------------------------

_FIGURE = re.compile(r"^!\[([^\]]*)\]\(([^)\s]+)\)$")
_OUTCOME = re.compile(r"\*\*((?:wins|loses|level|too few|ahead|behind)[^*]*)\*\*")


def _table_cell(text: str):
    try:
        return float(text)
    except ValueError:
        return text


def _paragraph(text: str):
    """A paragraph read back; a line whose bold part is a verdict's outcome is a verdict line."""
    match = _OUTCOME.search(text)
    if match is not None and "\n" not in text:
        try:
            outcome_badge(match.group(1))
        except ValueError:  # bold words that are no outcome ("ahead of ...")
            return _Paragraph(text)
        return _ReadVerdict(text[: match.start()], match.group(1), text[match.end():])
    return _Paragraph(text)


def read_markdown(text: str) -> tuple[str, list]:
    """The title and the blocks of a report written by :class:`Report` (for :func:`rebuild`)."""
    title, blocks = "", []
    for chunk in re.split(r"\n\s*\n", text.strip()):
        lines = chunk.split("\n")
        if lines[0].startswith("# ") and not title and not blocks:
            title = lines[0][2:].strip()
            lines = lines[1:]
            if not lines:
                continue
        first = lines[0]
        if first.startswith("#"):
            level = len(first) - len(first.lstrip("#"))
            blocks.append(_Heading(first[level:].strip(), level))
            if lines[1:]:
                blocks.append(_paragraph("\n".join(lines[1:])))
        elif all(line.startswith("|") for line in lines) and len(lines) >= 2:
            cells = [[c.strip() for c in line.strip().strip("|").split("|")] for line in lines]
            blocks.append(_Table(pd.DataFrame([[_table_cell(c) for c in row] for row in cells[2:]], columns=cells[0]),
                                 digits=3))
        elif all(line.startswith("- ") for line in lines):
            blocks.append(_Bullets([line[2:] for line in lines]))
        elif len(lines) == 1 and _FIGURE.match(first):
            caption, name = _FIGURE.match(first).groups()
            blocks.append(_Figure(name, caption))
        else:
            blocks.append(_paragraph("\n".join(lines)))
    return title, blocks


def rebuilt_page(folder: str | os.PathLike, name: str = "report") -> str:
    """``NAME.html`` of a folder made again from its ``NAME.md``, the figures it names and
    ``results.json`` (the command line and versions that produced it, when recorded there)."""
    folder = Path(folder)
    source = folder / f"{name}.md"
    try:
        text = source.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise UserError(f"{source}: not a report written by brainlm (not UTF-8 text: {err.reason})") from None
    title, blocks = read_markdown(text)
    results = folder / ("results.json" if name == "report" else f"{name}.json")
    recorded = read_json(results, "report results").get("produced_by") if results.is_file() else None
    footer = dict(recorded or {"command": "not recorded", "versions": produced_by()["versions"]})
    footer["rebuilt_by"] = produced_by()["command"]
    return page(title, [b.html(folder) for b in blocks], footer)


def rebuild(folder: str | os.PathLike, name: str = "report") -> Path:
    """Write ``NAME.html`` again (:func:`rebuilt_page`); returns its path."""
    return atomic_write_text(Path(folder) / f"{name}.html", rebuilt_page(folder, name))


@dataclass(kw_only=True)
class ReportOptions(Options):
    """Rebuild the HTML pages of a folder (and every folder below it) from its report.md, results.json and
    figures: report.html beside each report.md, and a demo folder's index.html."""

    folder: str = option(help="a folder holding report.md (a benchmark, an analysis, a demo's --out, ...)",
                         positional=True)


def run_report(options: ReportOptions) -> list[Path]:
    """``brainlm report DIR``: rebuild every page under ``DIR``; returns their paths."""
    folder = Path(options.folder)
    if not folder.is_dir():
        raise UserError(f"{folder}: {'not a folder' if folder.exists() else 'no such folder'} (FOLDER)")
    found = sorted(p for page_name in PAGES for p in folder.rglob(f"{page_name}.md"))
    if not found:
        raise UserError(f"{folder}: no report.md or index.md in it or below it (FOLDER)")
    pages = [(p.with_suffix(".html"), rebuilt_page(p.parent, p.stem)) for p in found]  # all read before any is written
    for path, text in pages:
        atomic_write_text(path, text)
        print(f"report: {path}")
    return [path for path, _ in pages]

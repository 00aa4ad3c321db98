"""The report writer (brainlm.report): report.md, report.html and results.json from the same blocks,
and every page opened in headless Chromium: images loaded, no console errors, no network, not
blank, readable at a phone's width, and the numbers on the page those of results.json."""

import html
import json
import math
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from analysis_synth import network_table, planted_store
from browser import chromium, open_page
from downstream_synth import synthetic_store, tiny_model

from brainlm import save_pretrained
from brainlm.cli import main
from brainlm.evaluate.protocol import Comparison
from brainlm.evaluate.verdict import Verdict
from brainlm.figures import pyplot
from brainlm.report import Report, outcome_badge, rebuild

BROWSER, WHY = chromium()
needs_browser = pytest.mark.skipif(BROWSER is None, reason=WHY)

# Read back from the page: every keyed table's cells (numbers by their exact value), every verdict, the footer.
TABLES = ("Array.from(document.querySelectorAll('table')).map(t => ({key: t.dataset.key || '', "
          "head: Array.from(t.tHead.rows[0].cells).map(c => c.textContent), "
          "rows: Array.from(t.tBodies[0].rows).map(r => Array.from(r.cells).map("
          "c => c.dataset.value === undefined ? c.textContent : Number(c.dataset.value)))}))")
VERDICTS = ("Array.from(document.querySelectorAll('.verdict')).map(v => ({cls: v.className, "
            "outcome: v.dataset.outcome, badge: getComputedStyle(v.querySelector('.badge')).backgroundColor}))")
FOOTER = "document.querySelector('footer').textContent"
SORT = ("(() => { const t = document.querySelector('table[data-key]'), head = t.tHead.rows[0].cells[1]; "
        "const column = () => Array.from(t.tBodies[0].rows).map(r => Number(r.cells[1].dataset.value)); "
        "head.click(); const up = column(); head.click(); return [up, column()]; })()")


def _verdict(lo, hi, n=8):
    return Verdict("BrainLM", 0.43, "connectivity-conditional fill", 0.40, "R^2", Comparison(lo, hi, 0.2), n)


@pytest.mark.parametrize("lo, hi, n, badge", [(0.01, 0.04, 8, "wins"), (-0.3, -0.2, 8, "loses"),
                                              (-0.02, 0.04, 8, "level"), (0.01, 0.04, 2, "too-few")])
def test_a_verdict_renders_its_outcome_in_bold_and_as_a_badge(lo, hi, n, badge):
    v = _verdict(lo, hi, n)
    assert v.markdown("on x") == v.line("on x").replace(f": {v.outcome};", f": **{v.outcome}**;")
    page = v.html("on x")
    assert f'class="verdict v-{badge}"' in page and f"<strong>{v.outcome}</strong>" in page
    assert outcome_badge(v.outcome) == badge
    with pytest.raises(ValueError, match="not a verdict outcome"):
        outcome_badge("better")


def test_the_writer_gives_markdown_html_and_results_from_the_same_blocks(tmp_path):
    plt = pyplot()
    fig, ax = plt.subplots()
    ax.plot([0, 1], [0, 1])
    report = Report("A title", ["A header with `code` and a [link](sub/report.md)."], {"value": 0.123456789})
    report.section("Numbers", pd.DataFrame({"method": ["a", "b"], "R^2": [0.123456789, -0.5]}))
    report.figure("line.png", "a line", fig)
    report.verdict(_verdict(0.01, 0.04), "on y", say=True)
    report.bullets(["one", "two"])
    report.paragraph("**ahead of** the others, in bold but no verdict")
    path = report.write(tmp_path)
    md = path.read_text()
    assert md.startswith("# A title\n\n") and "| a | 0.123 |" in md and "![a line](line.png)" in md
    assert "**wins**" in md and "- one\n- two" in md
    page = (tmp_path / "report.html").read_text()
    assert 'src="data:image/png;base64,' in page and 'href="sub/report.html"' in page
    assert 'data-value="0.123456789"' in page and "http" not in page.replace("http-equiv", "")
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["value"] == 0.123456789 and set(results["produced_by"]["versions"]) == {
        "brainlm", "torch", "numpy", "python"}
    assert report.printed == [_verdict(0.01, 0.04).line("on y")]
    # Rebuilt from the files, the page keeps its blocks, figure and verdict.
    (tmp_path / "report.html").unlink()
    rebuild(tmp_path)
    again = (tmp_path / "report.html").read_text()
    assert again.count("data:image/png;base64,") == 1 and again.count('class="verdict v-') == 1
    assert 'class="verdict v-wins"' in again and "<strong>ahead of</strong> the others" in again
    assert "<th>R^2</th>" in again and "<li>two</li>" in again
    assert html.escape(results["produced_by"]["command"]) in again


# --------------------------------------------------------------------------- small runs, shared


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A benchmark on the synthetic store and network identification on the planted one."""
    root = tmp_path_factory.mktemp("reports")
    store = synthetic_store(root / "store", n_subjects=12, split=(8, 2, 2), T=120)
    save_pretrained(tiny_model(), root / "model")
    assert main(["benchmark", str(root / "model"), str(store.path), "--out", str(root / "bench"), "--tasks",
                 "reconstruction,forecasting", "--bootstrap", "50", "--device", "cpu"]) == 0
    planted, labels = planted_store(root / "planted", n_subjects=8, T=200, split=(6, 1, 1))
    network_table(root / "networks.tsv", labels)
    save_pretrained(tiny_model(num_regions=planted.num_regions, window=20), root / "tiny")
    assert main(["networks", str(root / "tiny"), str(planted.path), "--out", str(root / "networks"), "--networks",
                 str(root / "networks.tsv"), "--permutations", "5", "--bootstrap", "50", "--device", "cpu"]) == 0
    return root


def _look(page: Path, extra: dict | None = None, **kw):
    check = open_page(page, {"tables": TABLES, "verdicts": VERDICTS, "footer": FOOTER, **(extra or {})}, **kw)
    assert check.images and all(i["complete"] and i["naturalWidth"] > 0 for i in check.images), check.images
    assert check.errors == []
    assert all(url.startswith(("file:", "data:")) for url in check.requests), check.requests  # no network
    assert check.screenshot.std() > 0  # not blank
    footer = check.values["footer"]
    assert all(name in footer for name in ("brainlm", "torch", "numpy", "python"))
    for v in check.values["verdicts"]:  # a coloured badge on every verdict
        assert v["cls"] == f"verdict v-{outcome_badge(v['outcome'])}" and v["badge"] not in ("", "rgba(0, 0, 0, 0)")
    return check


@needs_browser
def test_the_benchmark_page_shows_results_json(runs):
    out = runs / "bench"
    check = _look(out / "report.html", {"sorted": SORT})
    results = json.loads((out / "results.json").read_text())
    tables = {t["key"]: t for t in check.values["tables"]}
    for task in results["tasks"]:
        shown = tables[task["task"]]
        assert shown["head"] == ["method", task["metric"], "95% CI"]
        assert [row[:2] for row in shown["rows"]] == [[r["label"], r["value"]] for r in task["table"]]
    assert [v["outcome"] for v in check.values["verdicts"]] == [t["comparison"]["outcome"] for t in results["tasks"]]
    assert len(check.images) == len(results["tasks"])
    # a click on a column head sorts its table by the exact values, a second click the other way
    values = [r["value"] for r in results["tasks"][0]["table"]]
    assert check.values["sorted"] == [sorted(values), sorted(values, reverse=True)]


@needs_browser
def test_the_analysis_page_shows_its_brain_map_and_results_json(runs):
    out = runs / "networks"
    check = _look(out / "report.html")
    results = json.loads((out / "results.json").read_text())
    scores = results["scores"]
    table = next(t for t in check.values["tables"] if t["head"] == list(scores[0]))
    for row, expected in zip(table["rows"], scores, strict=True):
        for cell, value in zip(row, expected.values()):
            if isinstance(value, float) and not math.isnan(value):
                assert cell == value
    assert [v["outcome"] for v in check.values["verdicts"]] == [results["verdict"]["outcome"]]
    assert len(check.images) == 2  # the scores and the glass brains of the networks


@needs_browser
def test_a_page_reads_on_a_phone(runs):
    """At a phone's width the page does not scroll sideways: wide tables scroll in their own box."""
    check = _look(runs / "bench" / "report.html", width=390, height=844, mobile=True)
    assert check.overflow <= 0


@needs_browser
def test_the_check_sees_a_broken_page(tmp_path):
    page = tmp_path / "broken.html"
    page.write_text('<!DOCTYPE html><html><body><p>x</p><img src="missing.png">'
                    '<script>console.error("boom")</script></body></html>')
    check = open_page(page)
    assert check.images[0]["naturalWidth"] == 0
    assert any("boom" in e for e in check.errors)


@needs_browser
def test_brainlm_report_rebuilds_the_pages(runs, tmp_path, capsys):
    copy = tmp_path / "bench"
    shutil.copytree(runs / "bench", copy)
    before = (copy / "report.html").read_text()
    (copy / "report.html").unlink()
    assert main(["report", str(copy)]) == 0
    assert f"report: {copy / 'report.html'}" in capsys.readouterr().out
    after = (copy / "report.html").read_text()
    assert after.count('class="verdict v-') == before.count('class="verdict v-')
    assert after.count("data:image/png;base64,") == before.count("data:image/png;base64,")
    check = _look(copy / "report.html")
    results = json.loads((copy / "results.json").read_text())
    assert results["produced_by"]["command"] in check.values["footer"]


def test_brainlm_report_refuses_a_folder_without_a_report(tmp_path, capsys):
    assert main(["report", str(tmp_path / "absent")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no such folder" in err[0]
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no report.md" in err[0]
    assert list((tmp_path / "empty").iterdir()) == []
    # one unreadable report among good ones: refused, and no page written
    for name in ("a", "b"):
        Report(name).write(tmp_path / "two" / name)
        (tmp_path / "two" / name / "report.html").unlink()
    (tmp_path / "two" / "b" / "report.md").write_bytes(b"# \xff\xfe binary")
    assert main(["report", str(tmp_path / "two")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not UTF-8" in err[0] and "b/report.md" in err[0]
    assert not list((tmp_path / "two").rglob("*.html"))


# --------------------------------------------------------------------------- the demo's page


def _demo_folder(root: Path):
    """What write_index reads: run/plots, the held-out ladder, and the analyses' reports."""
    from brainlm.evaluate.reconstruction import ReconstructionEval

    methods = ("model", "zero", "mean", "interp", "conn")
    rng = np.random.default_rng(0)
    rows = [{"subject_id": s, **{f"{m}_{p}": (rng.uniform(0.2, 0.3) if m == "model" else rng.uniform(0.4, 0.6))
                                 if p == "sse" else 1.0 for m in methods for p in ("sse", "syy")}}
            for s in np.repeat(["a", "b"], 4)]
    windows = pd.DataFrame(rows)
    metrics = {"num_windows": len(windows)}
    for m in methods:
        metrics.update({f"{m}_r2": 1 - windows[f"{m}_sse"].sum() / 8, f"{m}_mse": 0.1, f"{m}_mae": 0.2,
                        f"{m}_pearson": 0.7})
    ev = ReconstructionEval(metrics=metrics, windows=windows, methods=methods)
    plt = pyplot()
    for name in ("curves", "reconstructions"):
        fig, ax = plt.subplots()
        ax.plot([0, 1, 2], [1, 0, 2])
        (root / "run" / "plots").mkdir(parents=True, exist_ok=True)
        fig.savefig(root / "run" / "plots" / f"{name}.png")
        plt.close(fig)
    analysis = Report("Network identification")
    analysis.verdict(_verdict(0.01, 0.05))
    analysis.write(root / "analysis" / "networks")
    store = SimpleNamespace(path=root / "store", num_regions=4, splits={"train": [1] * 8, "validation": [1, 2],
                                                                         "test": ["a", "b"]})
    return ev, store


def test_the_demo_names_its_page_right_after_the_held_out_verdict(tmp_path, capsys):
    from brainlm.pipelines.demo import _verdict as demo_verdict
    from brainlm.pipelines.demo import write_index

    ev, store = _demo_folder(tmp_path)
    held = SimpleNamespace(reconstruction=ev, chosen=tmp_path / "run" / "best")
    index = lambda verdict: write_index(tmp_path, verdict, store=store, held=held,  # noqa: E731
                                        analyses=["networks: a line", "reports: elsewhere"])
    assert demo_verdict(ev, n_boot=50, index=index) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert "too few subjects to tell (n = 2)" in lines[0]
    assert lines[1] == f"report: {tmp_path / 'index.html'} (everything above on one page)"
    assert lines[2].startswith("Recorded, not rerun here")
    md = (tmp_path / "index.md").read_text()
    assert "![run/plots/curves.png](run/plots/curves.png)" in md and "[networks](analysis/networks/report.md)" in md
    page = (tmp_path / "index.html").read_text()
    assert 'href="analysis/networks/report.html"' in page and page.count("data:image/png;base64,") == 2
    assert page.count('class="verdict v-') == 3  # the held-out line and the two recorded ones
    results = json.loads((tmp_path / "index.json").read_text())
    assert results["reconstruction"]["verdict"]["kind"] == "too few to tell"


@needs_browser
def test_the_demo_page_opens_and_rebuilds(tmp_path):
    from brainlm.pipelines.demo import write_index

    ev, store = _demo_folder(tmp_path)
    verdict = _verdict(0.01, 0.04, n=2)
    write_index(tmp_path, verdict, store=store, held=SimpleNamespace(reconstruction=ev, chosen=tmp_path / "best"))
    check = _look(tmp_path / "index.html")
    shown = next(t for t in check.values["tables"] if t["key"] == "reconstruction")
    assert [row[1] for row in shown["rows"]] == [ev.metrics[f"{m}_r2"] for m in ev.methods]
    (tmp_path / "index.html").unlink()
    assert main(["report", str(tmp_path)]) == 0  # the index and the analysis's report
    assert (tmp_path / "index.html").is_file() and (tmp_path / "analysis" / "networks" / "report.html").is_file()
    _look(tmp_path / "index.html")


@needs_browser
def test_an_integration_page_shows_results_json(tmp_path):
    from brainlm.integrate.cca import CCAAnalysis
    from brainlm.integrate.report import write_cca_report

    rng = np.random.default_rng(0)
    brain = rng.normal(size=(30, 5))
    genetic = brain[:, :3] + rng.normal(size=(30, 3))
    cca = CCAAnalysis(1, 3, 20, "zscore", (3, 3), reg=0.1, random_state=0).fit(brain, genetic)
    write_cca_report(cca, tmp_path, notes=["Thirty planted subjects."])
    check = _look(tmp_path / "report.html")
    rows = json.loads((tmp_path / "results.json").read_text())["tables"]["cca"]
    shown = next(t for t in check.values["tables"] if t["key"] == "cca")
    assert shown["head"] == list(rows[0])
    assert shown["rows"] == [list(r.values()) for r in rows]


def test_an_undefined_value_reads_as_a_dash_in_both_renderings(tmp_path):
    """NaN (the correlation of a constant prediction) is shown as the terminal tables show it; the exact
    value stays in the cell's data-value."""
    import numpy as np
    import pandas as pd

    from brainlm.report import Report

    report = Report("t")
    report.table(pd.DataFrame({"method": ["zero"], "r": [np.nan], "R^2": [0.0]}))
    report.write(tmp_path)
    assert "| zero | - | 0.000 |" in (tmp_path / "report.md").read_text()
    page = (tmp_path / "report.html").read_text()
    assert '<td data-value="nan">-</td>' in page and ">nan<" not in page

"""One floor per layer: the import-linter contract in pyproject.toml holds, and it catches an upward import."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")


def _lint(src: Path, config: Path) -> subprocess.CompletedProcess:
    env = {"PYTHONPATH": str(src), "PATH": str(Path(sys.executable).parent), "LANG": "C.UTF-8"}
    return subprocess.run([LINT, "--no-cache", str(config)], cwd=config.parent, env=env, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.skipif(LINT is None, reason="import-linter is not installed (the dev extra)")
def test_the_layered_contract_is_kept():
    result = _lint(ROOT / "src", ROOT / "pyproject.toml")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "Contracts: 3 kept, 0 broken." in result.stdout


# An import up a floor, inside a function, is caught: between packages, and inside data and pipelines
# (the circles demo <-> prepare and benchmark -> crossval -> heldout -> benchmark).
@pytest.mark.skipif(LINT is None, reason="import-linter is not installed (the dev extra)")
@pytest.mark.parametrize("module, target, name", [
    ("model.py", "brainlm.checkpoint", "load_pretrained"),
    ("data/demo.py", "brainlm.data.prepare", "write_store"),
    ("pipelines/benchmark.py", "brainlm.pipelines.crossval", "run_crossval"),
])
def test_an_upward_import_breaks_it(tmp_path, module, target, name):
    shutil.copytree(ROOT / "src" / "brainlm", tmp_path / "src" / "brainlm",
                    ignore=shutil.ignore_patterns("__pycache__", "atlases"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    path = tmp_path / "src" / "brainlm" / module
    path.write_text(path.read_text() + f"\n\ndef _late():\n    from {target} import {name}  # noqa\n")
    result = _lint(tmp_path / "src", tmp_path / "pyproject.toml")
    assert result.returncode != 0
    importer = "brainlm." + module[: -len(".py")].replace("/", ".")
    assert f"{importer} is not allowed to import {target}" in result.stdout

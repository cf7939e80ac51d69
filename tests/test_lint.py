"""Lint and layout checks are part of the suite: `ruff check`, `ruff format --check` and the import-linter
contracts of pyproject.toml fail `make test` like any other test."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

REPO = Path(__file__).resolve().parents[1]
APP_PACKAGES = ("serve", "tune", "ui")


def _tool(name: str) -> str:
    path = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    assert path, f"{name} is not installed (it comes with the test extras: pip install -e '.[test]')"
    return path


def test_ruff_clean():
    result = subprocess.run([_tool("ruff"), "check", "."], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_format_clean():
    result = subprocess.run(
        [_tool("ruff"), "format", "--check", "."], cwd=REPO, capture_output=True, text=True
    )
    assert result.returncode == 0, "run `ruff format .`:\n" + result.stdout + result.stderr


def _lint_imports(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [_tool("lint-imports"), "--config", str(root / "pyproject.toml"), "--no-cache"],
        cwd=root,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(root), "PATH": ""},
    )


def test_import_contracts_kept():
    result = _lint_imports(REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "broken" in result.stdout and " 0 broken" in result.stdout


def test_library_contract_lists_every_library_module():
    """The 'nothing depends on the CLI' contract names the library's modules: a new one must join it."""
    contracts = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    listed = next(
        c
        for c in contracts
        if c["forbidden_modules"] == ["imtext.cli"] and "imtext.model" in c["source_modules"]
    )["source_modules"]
    present = {
        f"imtext.{p.stem}"
        for p in (REPO / "imtext").iterdir()
        if (p.suffix == ".py" and p.stem != "__init__") or (p / "__init__.py").is_file()
    }
    assert set(listed) == present - {"imtext.cli"}


@pytest.mark.parametrize(
    "offender,target",
    [
        ("imtext/collection/leak.py", "serve.app"),
        ("imtext/model_extras.py", "tune.run"),
        ("serve/cli_leak.py", "imtext.cli.config_flags"),
        ("ui/cross.py", "serve.launch"),
    ],
)
def test_import_contracts_fail_on_a_forbidden_import(tmp_path, offender, target):
    """A copy of the tree with one forbidden import (even a lazy one, inside a function) breaks a contract."""
    for name in ("imtext", *APP_PACKAGES):
        shutil.copytree(REPO / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    (tmp_path / offender).write_text(f"def later():\n    import {target}  # noqa\n")
    result = _lint_imports(tmp_path)
    assert result.returncode != 0, result.stdout
    assert "BROKEN" in result.stdout and target.split(".")[0] in result.stdout

"""pyproject.toml states ranges an engine's pins can satisfy; CI's exact releases live in constraints/ci.txt."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")

REPO = Path(__file__).resolve().parents[2]
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def _name(requirement: str) -> str:
    return re.split(r"[\s\[<>=!~;@]", requirement, maxsplit=1)[0].lower()


def test_core_dependencies_are_ranges_without_nixl_build():
    core = PROJECT["dependencies"]
    exact = [r for r in core if "==" in r]
    assert exact == [], f"exact pins in core dependencies: {exact}"
    names = {_name(r) for r in core}
    assert "torch" in names
    assert not names & {"nixl", "nixl-cu12", "nixl-cu13"}, "NIXL's CUDA build is the user's choice (extras)"


def test_nixl_comes_from_meta_package_or_cuda_extras():
    extras = PROJECT["optional-dependencies"]
    assert [_name(r) for r in extras["nixl"]] == ["nixl"]
    assert [_name(r) for r in extras["cu12"]] == ["nixl-cu12"]
    assert [_name(r) for r in extras["cu13"]] == ["nixl-cu13"]


def test_make_install_uses_the_ci_constraints():
    pins = {
        _name(line): line.split("==", 1)[1].strip()
        for line in (REPO / "constraints" / "ci.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert pins["torch"] == "2.13.0" and pins["nixl-cu12"] == "1.5.1"
    makefile = (REPO / "Makefile").read_text()
    assert "CONSTRAINTS := constraints/ci.txt" in makefile
    assert "pip install -q -c $(CONSTRAINTS) -e '.[dev]'" in makefile
    assert '-c "$REPO/constraints/ci.txt"' in (REPO / "scripts" / "build_vllm_venv.sh").read_text()

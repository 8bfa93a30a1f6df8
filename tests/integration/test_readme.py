"""The README's examples run as written."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
README = (REPO / "README.md").read_text()


def _section(title: str) -> str:
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", README, re.S | re.M)
    assert match, f"README has no '## {title}' section"
    return match.group(1)


def test_python_api_example_runs():
    code = re.search(r"```python\n(.*?)```", _section("Python API"), re.S).group(1)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split()[:2] == ["True", "True"], proc.stdout


def test_quick_start_is_the_two_make_targets():
    block = re.search(r"```bash\n(.*?)```", _section("Quick start"), re.S).group(1)
    commands = [line.split("#")[0].strip() for line in block.strip().splitlines()]
    assert commands == ["make demo", "make test"]
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"^demo:", makefile, re.M) and re.search(r"^test:", makefile, re.M)
    assert "make test" in (REPO / ".ci" / "run").read_text()


def test_cli_commands_in_readme_exist():
    from typer.main import get_command

    from peerload.cli.main import app

    names = set(get_command(app).commands)
    used = set(re.findall(r"^peerload (\w+)", _section("Command line"), re.M))
    assert used and used <= names, f"README mentions commands the CLI lacks: {used - names}"


def test_readme_links_stay_inside_the_repository_and_no_link_is_dead():
    for page in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#\s]+)", page.read_text()):
            if "://" in target:
                assert page.name != "README.md", f"README links outside the repository: {target}"
                continue
            resolved = (page.parent / target).resolve()
            assert resolved.is_relative_to(REPO) and resolved.exists(), f"{page.name}: dead link {target}"

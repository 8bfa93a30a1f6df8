"""The README's examples run as written, and the commands and options it names exist."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

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


def _bash_blocks(text: str) -> list[str]:
    return re.findall(r"```bash\n(.*?)```", text, re.S)


def test_developer_set_up_is_the_two_make_targets():
    block = _bash_blocks(_section("Develop"))[0]
    commands = [line.split("#")[0].strip() for line in block.strip().splitlines()]
    assert commands == ["make demo", "make test"]
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"^demo:", makefile, re.M) and re.search(r"^test:", makefile, re.M)
    assert "make test" in (REPO / ".ci" / "run").read_text()


def _peerload_lines(text: str) -> Iterator[str]:
    """Every `peerload ...` command line of TEXT: in bash blocks (comments cut, continuations
    joined) and in inline code."""
    for block in _bash_blocks(text):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("#")[0].strip().rstrip("&").strip()
            if line.startswith("peerload "):
                yield line
    for span in re.findall(r"`(peerload [^`]+)`", text):
        yield span


def _command(line: str) -> tuple[Any, list[str]]:
    """The click command a `peerload ...` line runs, and the options it passes."""
    from typer.main import get_command

    from peerload.cli.main import app

    words = line.replace("[", " ").replace("]", " ").replace("|", " ").split()[1:]
    command = get_command(app)  # typer's own click: groups are told by their `commands`
    while hasattr(command, "commands") and words and words[0] in command.commands:
        command = command.commands[words.pop(0)]
    assert not hasattr(command, "commands"), f"`{line}` names no command"
    return command, [w.split("=")[0] for w in words if w.startswith("--")]


@pytest.mark.parametrize("page", ["README.md", "docs/cli.md"])
def test_every_peerload_command_and_option_in_the_docs_exists(page: str):
    text = (REPO / page).read_text()
    lines = list(_peerload_lines(text))
    assert len(lines) >= 5, f"{page}: found only {lines}"
    for line in lines:
        command, options = _command(line)
        known = {opt for param in command.params for opt in (*param.opts, *getattr(param, "secondary_opts", []))}
        unknown = [opt for opt in options if opt not in known]
        assert not unknown, f"{page}: `{line}` passes options `{command.name}` lacks: {unknown}"


def _tiny_model(directory: Path) -> None:
    """A tiny random Llama saved the way a real one is (config.json + model.safetensors)."""
    code = (
        "import sys, torch, transformers; torch.manual_seed(0); "
        "transformers.LlamaForCausalLM(transformers.LlamaConfig(vocab_size=1000, hidden_size=64, "
        "intermediate_size=128, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, "
        "head_dim=32, max_position_embeddings=256, torch_dtype='float32')).save_pretrained(sys.argv[1])"
    )
    subprocess.run([sys.executable, "-c", code, str(directory)], check=True, capture_output=True, timeout=300)


def _wait_for_line(proc: subprocess.Popen[str], marker: str) -> str:
    """Read PROC's output until a line contains MARKER; fail with the output if it exits first."""
    seen = []
    assert proc.stdout is not None
    for line in proc.stdout:
        seen.append(line)
        if marker in line:
            return line
    raise AssertionError(f"exited {proc.wait()} before printing {marker!r}:\n{''.join(seen)[-3000:]}")


def test_first_run_commands_load_the_model_from_the_seed(tmp_path: Path, free_port):
    """The three commands of "First run", as written, in a directory holding `./my-model`. Only the
    port differs: the environment gives the coordinator a free one (PEERLOAD_PORT) and tells the
    others (PEERLOAD_COORDINATOR), so parallel test runs do not meet on 8001."""
    block = _bash_blocks(_section("First run: three commands"))[0]
    serve, seed, load = [shlex.split(line) for line in block.strip().splitlines()]
    assert [serve[:2], seed[:2], load[:2]] == [["peerload", "serve"], ["peerload", "seed"], ["peerload", "load"]]
    path = Path(seed[2])
    assert load[2] == seed[2] and not path.is_absolute(), "seed and load should name the same ./model path"
    _tiny_model(tmp_path / path)

    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO / "src"),
        "PEERLOAD_PORT": str(port),
        "PEERLOAD_COORDINATOR": f"127.0.0.1:{port}",
        "HF_HUB_OFFLINE": "1",
    }

    def cli(args: list[str]) -> list[str]:
        return [sys.executable, "-m", "peerload.cli.main", *args[1:]]

    def start(args: list[str]) -> subprocess.Popen[str]:
        return subprocess.Popen(
            cli(args), cwd=tmp_path, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )

    servers: list[subprocess.Popen[str]] = []
    try:
        servers.append(start(serve))
        _wait_for_line(servers[0], "listening on")
        servers.append(start(seed))
        ready = _wait_for_line(servers[1], "seeding ")
        seed_worker = re.search(r"worker (\S+),", ready).group(1)

        done = subprocess.run(cli(load), cwd=tmp_path, env=env, text=True, capture_output=True, timeout=240)
        assert done.returncode == 0, done.stdout + done.stderr[-3000:]
        assert f"from peer {seed_worker}" in done.stdout + done.stderr

        report = json.loads((tmp_path / load[load.index("--report") + 1]).read_text())
        assert report["source"] == seed_worker and report["storage_bytes"] == 0 and report["verified"] is True
        from safetensors.torch import load_file

        on_disk = load_file(str(tmp_path / path / "model.safetensors"))
        assert on_disk
        for name, tensor in on_disk.items():
            assert report["sha256"][name] == hashlib.sha256(tensor.numpy().tobytes()).hexdigest(), name

        # "serves it until Ctrl-C": both stop on SIGINT with the exit status docs/cli.md gives.
        for proc in reversed(servers):
            proc.send_signal(signal.SIGINT)
            proc.communicate(timeout=60)
            assert proc.returncode == 130, f"{proc.args} exited {proc.returncode} on SIGINT"
    finally:
        for proc in servers:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def _anchors(page: Path) -> set[str]:
    """GitHub's anchors of PAGE's headings: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    return {
        re.sub(r"[^\w\- ]", "", title.strip().lower()).replace(" ", "-")
        for title in re.findall(r"^#{1,6} (.+)$", text, re.M)
    }


def test_readme_links_stay_inside_the_repository_and_no_link_is_dead():
    for page in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        for target, anchor in re.findall(r"\]\(([^)#\s]*)(?:#([^)\s]+))?\)", page.read_text()):
            if "://" in target:
                assert page.name != "README.md", f"README links outside the repository: {target}"
                continue
            resolved = (page.parent / target).resolve() if target else page
            assert resolved.is_relative_to(REPO) and resolved.exists(), f"{page.name}: dead link {target}"
            if anchor and resolved.suffix == ".md":
                assert anchor in _anchors(resolved), f"{page.name}: {target}#{anchor}: no such heading"

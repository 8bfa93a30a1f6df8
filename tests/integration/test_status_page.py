"""The coordinator's status page, opened in a real headless browser (Debian's chromium) against a live fleet."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
FLEET = Path(__file__).with_name("status_fleet.py")
CHROMIUM = shutil.which("chromium")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None,
    reason="chromium is not installed (Debian: apt-get install chromium; "
    "`make install` runs scripts/install_system_deps.sh)",
)


def chromium(*args: str) -> str:
    """Headless chromium with `args`; its stdout. The page's script runs for 7 s of virtual time."""
    assert CHROMIUM is not None
    command = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=7000", *args]
    out = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


@pytest.fixture
def fleet():
    env = dict(os.environ, UCX_NET_DEVICES="lo")
    proc = subprocess.Popen(
        [sys.executable, str(FLEET)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=REPO
    )
    try:
        line = proc.stdout.readline()
        assert line, f"the fleet exited with {proc.wait(timeout=30)} before it was ready"
        yield json.loads(line)
    finally:
        proc.stdin.close()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@needs_chromium
@pytest.mark.timeout(240)
def test_status_page_shows_the_fleet_and_refreshes_itself(fleet, tmp_path):
    url = f"http://127.0.0.1:{fleet['http_port']}/"
    data = json.loads(urllib.request.urlopen(url + "status.json", timeout=10).read())
    assert {m["model"] for m in data["models"]} == {"demo-org/status-model", "other-org/loading-model"}

    dom = chromium("--dump-dom", url)
    # Models, and per source identity every worker with status, rank, kind and transport.
    names = ("demo-org/status-model", "other-org/loading-model", fleet["seed"], fleet["target"], "loading-2")
    for text in (*names, "mx-worker-7"):
        assert text in dom, f"{text!r} is not on the page"
    assert dom.count('<td class="READY">READY</td>') == 2
    assert dom.count('<td class="INITIALIZING">INITIALIZING</td>') == 2
    assert f"<td>1/{fleet['parts']}</td>" in dom, "the loading worker's parts held are not shown"
    assert "<td>peerload</td>" in dom and "<td>modelexpress</td>" in dom and "<td>nixl</td>" in dom
    assert "dtype=float32" in dom and "dtype=bfloat16" in dom
    # The recent load: origin peer, from the seed, with its throughput.
    assert "<td>peer</td>" in dom and f"<td>{fleet['seed']}</td>" in dom and " GB/s</td>" in dom
    # It refreshed itself: several fetches of /status.json within the 7 s it ran.
    refreshes = int(dom.split('id="refreshes">', 1)[1].split("<", 1)[0])
    assert refreshes >= 3, refreshes

    shot = tmp_path / "status.png"
    chromium(f"--screenshot={shot}", "--window-size=1280,820", "--hide-scrollbars", url)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if os.environ.get("PEERLOAD_UPDATE_DOCS") == "1":  # refresh the picture in docs/coordinator.md
        shutil.copy(shot, REPO / "docs" / "status-page.png")


def test_status_page_needs_the_api_token_when_the_coordinator_has_one(coordinator_factory, tmp_path):
    tokens = tmp_path / "tokens"
    tokens.write_text("reader-token-1234567890\n")
    server = coordinator_factory(metrics_port=0, accept_tokens_file=str(tokens))
    base = f"http://127.0.0.1:{server.metrics_port}"
    for path in ("/", "/status.json"):
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(base + path, timeout=10)
        assert refused.value.code == 401 and b"token" in refused.value.read()
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(base + path + "?token=wrong-token-123456789", timeout=10)
    page = urllib.request.urlopen(base + "/?token=reader-token-1234567890", timeout=10).read().decode()
    assert "peerload fleet" in page
    request = urllib.request.Request(base + "/status.json", headers={"Authorization": "Bearer reader-token-1234567890"})
    assert json.loads(urllib.request.urlopen(request, timeout=10).read())["store"] == "ok"

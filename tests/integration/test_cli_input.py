"""Bad input at the CLI edge, tried as a new user would: every case is one line naming what is wrong, exit 2."""

from __future__ import annotations

import json
import re
import socket
import struct
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from peerload._process import log_tail, peerload_cmd, spawn, stop_process, wait_until
from peerload.client import CoordinatorClient

Run = Callable[..., subprocess.CompletedProcess[str]]


def usage_error(proc: subprocess.CompletedProcess[str], *fragments: str) -> None:
    """Exit 2, one "Error:" line holding every fragment, no traceback."""
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1, proc.stderr[-3000:]
    for fragment in fragments:
        assert fragment in errors[0], (fragment, errors[0])


# -- peerload serve ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, message",
    [
        (["--port", "80000"], "Invalid value for '--port'"),
        (["--port", "-1"], "Invalid value for '--port'"),
        (["--metrics-port", "70000"], "Invalid value for '--metrics-port'"),
        (["--port", "many"], "Invalid value for '--port'"),
    ],
)
def test_serve_refuses_out_of_range_ports(run_peerload: Run, args: list[str], message: str) -> None:
    proc = run_peerload("serve", *args)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


@pytest.mark.parametrize(
    "args, fragments",
    [
        (["--host", "bad host"], ["host 'bad host' is not an IP address or host name"]),
        (["--heartbeat-timeout", "0"], ["heartbeat_timeout_s must be a number of seconds > 0, got 0"]),
        (["--gc-timeout", "nan"], ["gc_timeout_s must be a number of seconds > 0, got nan"]),
        (["--store", "sqlite"], ["store 'sqlite' is not supported"]),
        (["--redis-url", "localhost:6379"], ["redis_url 'localhost:6379' must start with redis://"]),
        (["--tls-cert", "{cert}"], ["tls_cert and tls_key go together"]),
        (["--tls-cert", "{text}", "--tls-key", "{text}"], ["tls_key:", "is not a PEM file with a PRIVATE KEY"]),
        (["--auth-token-file", "{empty}"], ["holds no token"]),
        (["--auth-token-file", "/no/such/tokens"], ["accept_tokens_file: '/no/such/tokens' is not a readable file"]),
        (["--auth-write-token-file", "{text}"], ["line 1 is not a token"]),
    ],
)
def test_serve_refuses_bad_options(
    run_peerload: Run, tls_files: Any, tmp_path: Path, args: list[str], fragments: list[str]
) -> None:
    (tmp_path / "empty").write_text("")
    (tmp_path / "text").write_text("neither a PEM file nor a token\n")
    files = {"cert": str(tls_files.cert), "empty": str(tmp_path / "empty"), "text": str(tmp_path / "text")}
    usage_error(run_peerload("serve", "--port", "0", *[a.format(**files) for a in args]), *fragments)


def test_serve_refuses_a_bad_port_from_the_environment(run_peerload: Run) -> None:
    usage_error(run_peerload("serve", env={"PEERLOAD_PORT": "80000"}), "port must be in 0..65535", "80000")


def test_serve_refuses_a_port_in_use(run_peerload: Run) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        usage_error(run_peerload("serve", "--port", str(port)), f"cannot listen on 127.0.0.1:{port}", "--port")


def test_serve_port_zero_picks_a_free_port_and_prints_it(tmp_path: Path) -> None:
    log = tmp_path / "serve.log"
    proc = spawn(peerload_cmd("serve", "--port", "0"), log)
    try:
        listening = re.compile(r"listening on 127\.0\.0\.1:(\d+)")
        wait_until(proc, lambda: bool(listening.search(log.read_text())), "peerload serve", timeout_s=30)
        port = int(listening.search(log.read_text()).group(1))  # type: ignore[union-attr]
        assert port > 0
        with CoordinatorClient(f"127.0.0.1:{port}", timeout_s=5) as client:
            assert client.health_check()
    finally:
        assert stop_process(proc) == 0, log_tail(log)


# -- checkpoints and the options of seed / load ---------------------------------------------------


def good_file(path: Path) -> Path:
    save_file({"a": torch.randn(8, 8), "b": torch.arange(5.0)}, str(path))
    return path


def with_header(path: Path, header: dict[str, Any], data: bytes) -> Path:
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


def not_safetensors(tmp: Path) -> Path:
    (tmp / "model.safetensors").write_text("this is a README, not weights\n" * 20)
    return tmp / "model.safetensors"


def truncated(tmp: Path) -> Path:
    data = good_file(tmp / "model.safetensors").read_bytes()
    (tmp / "model.safetensors").write_bytes(data[: len(data) - 100])
    return tmp / "model.safetensors"


def corrupt_header(tmp: Path) -> Path:
    data = bytearray(good_file(tmp / "model.safetensors").read_bytes())
    data[8:12] = b"{{{{"
    (tmp / "model.safetensors").write_bytes(bytes(data))
    return tmp / "model.safetensors"


def unknown_dtype(tmp: Path) -> Path:
    return with_header(
        tmp / "model.safetensors", {"a": {"dtype": "Q9", "shape": [2], "data_offsets": [0, 8]}}, bytes(8)
    )


def unsupported_dtype(tmp: Path) -> Path:
    header = {"a": {"dtype": "F6_E2M3", "shape": [4], "data_offsets": [0, 3]}}
    return with_header(tmp / "model.safetensors", header, bytes(3))


def wrong_suffix(tmp: Path) -> Path:
    torch.save({"a": torch.zeros(2)}, tmp / "pytorch_model.bin")
    return tmp / "pytorch_model.bin"


def empty_directory(tmp: Path) -> Path:
    (tmp / "model").mkdir()
    return tmp / "model"


def directory_with(weights: str, name: str, text: str) -> Callable[[Path], Path]:
    """A builder of a directory holding a good safetensors file `weights` and a file `name` with `text`."""

    def make(tmp: Path) -> Path:
        good_file(tmp / weights)
        (tmp / name).write_text(text)
        return tmp

    return make


INDEX = "model.safetensors.index.json"
SHARD = "model-00001-of-00002.safetensors"
missing_shard = directory_with(
    SHARD, INDEX, json.dumps({"weight_map": {"a": SHARD, "c": "model-00002-of-00002.safetensors"}})
)
index_not_json = directory_with(SHARD, INDEX, '{"weight_map": ')
index_without_weight_map = directory_with(SHARD, INDEX, '{"metadata": {}}')
config_not_json = directory_with("model.safetensors", "config.json", "{'model_type': 'llama'}")
config_without_model_type = directory_with("model.safetensors", "config.json", "{}")


@pytest.mark.parametrize(
    "make, fragments",
    [
        pytest.param(not_safetensors, ["model.safetensors: not a safetensors file (header too large)"], id="text"),
        pytest.param(truncated, ["model.safetensors: truncated"], id="truncated"),
        pytest.param(corrupt_header, ["model.safetensors: corrupt safetensors file"], id="corrupt-header"),
        pytest.param(unknown_dtype, ["model.safetensors: corrupt header: unknown dtype Q9"], id="unknown-dtype"),
        pytest.param(
            unsupported_dtype,
            ["model.safetensors: tensor 'a' has dtype F6_E2M3, which peerload cannot load"],
            id="unsupported-dtype",
        ),
        pytest.param(wrong_suffix, ["pytorch_model.bin: not a .safetensors file"], id="bin-file"),
        pytest.param(empty_directory, ["has no *.safetensors files"], id="empty-dir"),
        pytest.param(missing_shard, [f"{INDEX}: names shard(s) missing", "model-00002-of-00002"], id="missing-shard"),
        pytest.param(index_not_json, [f"{INDEX}: invalid JSON"], id="index-not-json"),
        pytest.param(index_without_weight_map, [f'{INDEX}: has no "weight_map"'], id="index-no-weight-map"),
        pytest.param(config_not_json, ["config.json: invalid JSON"], id="config-not-json"),
        pytest.param(
            config_without_model_type, ["config.json: not a usable model config", "model_type"], id="config-no-type"
        ),
    ],
)
def test_bad_checkpoint_is_one_line_naming_the_file(
    run_peerload: Run, tmp_path: Path, make: Callable[[Path], Path], fragments: list[str]
) -> None:
    path = make(tmp_path)
    usage_error(run_peerload("seed", str(path), "--model-name", "m", "--coordinator", "127.0.0.1:1"), *fragments)


def test_load_checks_the_checkpoint_the_same_way(run_peerload: Run, tmp_path: Path) -> None:
    usage_error(run_peerload("load", str(truncated(tmp_path)), "--model-name", "m"), "model.safetensors: truncated")


@pytest.mark.parametrize(
    "args, fragments",
    [
        (["--tp-size", "2", "--tp-rank", "2"], ["tp_rank 2 is out of range for tp_size 2"]),
        (["--quantize", "int4"], ["--quantize 'int4' is not supported"]),
        (["--worker-id", " "], ["--worker-id must be 1 to 512 characters"]),
        (["--coordinator", "no-port"], ["coordinator 'no-port' is not HOST:PORT"]),
        (["--transport", "carrier-pigeon"], ["transport 'carrier-pigeon' is not supported"]),
        (["--ready-file", "/no/such/dir/ready.json"], ["--ready-file", "directory /no/such/dir does not exist"]),
    ],
)
def test_seed_options_are_checked_before_any_work(
    run_peerload: Run, tmp_path: Path, args: list[str], fragments: list[str]
) -> None:
    path = good_file(tmp_path / "model.safetensors")
    usage_error(run_peerload("seed", str(path), "--model-name", "m", *args), *fragments)


def test_load_report_must_be_writable(run_peerload: Run, tmp_path: Path) -> None:
    path = good_file(tmp_path / "model.safetensors")
    proc = run_peerload("load", str(path), "--model-name", "m", "--report", str(tmp_path))
    usage_error(proc, "--report", "is a directory")
    proc = run_peerload("load", str(path), "--model-name", "m", "--no-fallback", "--max-sources", "0")
    assert proc.returncode == 2 and "Invalid value for '--max-sources'" in proc.stderr, proc.stderr
    usage_error(run_peerload("seed", str(tmp_path / "absent.safetensors"), "--model-name", "m"), "does not exist")


@pytest.mark.parametrize(
    "args, fragments",
    [
        (["bench", "scaling", "--sizes", "1,two"], ["--sizes '1,two' is not a comma list of sizes in GiB > 0"]),
        (["bench", "scaling", "--sizes", "0"], ["--sizes '0'"]),
        (["bench", "data", "--out", "{file}"], ["--out", "is a file; give a directory"]),
        (["bench", "fanout", "--out", "{file}"], ["--out", "is a file; give a directory"]),
        (["bench", "data", "--cases", "fastest"], ["--cases 'fastest' is not valid"]),
        (["bench", "fanout", "--targets", "1,0"], ["--targets '1,0' is not a comma list of target counts"]),
        (["bench", "fanout", "--ceiling-share", "2"], ["--ceiling-share must be in (0, 1]"]),
        (["bench", "fleet", "--transport", "carrier-pigeon"], ["--transport 'carrier-pigeon' is not valid"]),
        # the flag form before subcommands still works, with a notice naming the new form
        (["bench", "--fleet", "--targets", "1,0"], ["--targets '1,0' is not a comma list of target counts"]),
        (["bench", "--scaling", "0"], ["--sizes '0'"]),
        (["simulate", "--targets", "x"], ["--targets 'x' is not a comma list of integers"]),
        (["simulate", "--modes", "gossip"], ["--modes 'gossip': choose from single, striping, swarm"]),
        (["demo", "--transport", "carrier-pigeon"], ["transport 'carrier-pigeon' is not supported"]),
        (["sources", "--coordinator", "host:99999"], ["coordinator 'host:99999' is not HOST:PORT"]),
        (["sources", "--coordinator", "ftp://host:8001"], ["scheme ftp:// is not one peerload dials; give HOST:PORT"]),
    ],
)
def test_other_commands_check_their_options(run_peerload: Run, tmp_path: Path, args: list[str], fragments: list[str]):
    (tmp_path / "file").write_text("")
    usage_error(run_peerload(*[a.format(file=tmp_path / "file") for a in args]), *fragments)


def test_the_bench_flag_form_names_its_subcommand(run_peerload: Run) -> None:
    proc = run_peerload("bench", "--control-plane", "--duration", "inf")
    usage_error(proc, "--duration must be a finite number")
    assert (
        "`peerload bench --control-plane --duration inf` is deprecated; use `peerload bench control-plane "
        "--duration inf`" in proc.stderr
    ), proc.stderr

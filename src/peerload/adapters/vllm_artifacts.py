"""vLLM's torch.compile cache as an artifact source (imports vLLM; used by `vllm_loader.py`).

vLLM (AOT compile, its default with torch >= 2.10) keeps a model's compiled graph and inductor
kernels in `VLLM_CACHE_ROOT/torch_compile_cache/torch_aot_compile/<hash>/`, where `<hash>`
covers the vLLM config including the model's path, so a replica started on another directory
computes another `<hash>` and would compile again. So when vLLM computes its own `<hash>` (at
the first forward, just before it looks in that directory), the replica installs a compatible
peer's directory under it. Compatible means the same identity and stamp,
where `compile_config_digest` is vLLM's own key computed with the model path left out.
Once its own cache has settled after compiling, rank 0 publishes it for the next replica.
"""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

import vllm
from torch import nn
from vllm import envs
from vllm.compilation import caching
from vllm.compilation.decorators import _model_hash_key
from vllm.config import VllmConfig

from peerload.adapters.vllm_support import live_sources, log
from peerload.artifacts import ArtifactSource, artifact_identity, environment_stamp, fetch_artifact
from peerload.errors import PeerloadError
from peerload.identity import SourceIdentity
from peerload.settings import Settings

KIND = "torch_compile_cache"
SETTLE_S = 3.0  # a cache unchanged this long after vLLM wrote its graph is complete
_POLL_S = 0.5
_SETTLE_TIMEOUT_S = 1800.0
_ANY_PATH = "<peerload: any model path>"


class CompileCache:
    """This instance's compile cache: installed from a peer when vLLM computes its key, published once settled.

    vLLM computes the cache key (`aot_compile_hash_factors`) at the first forward of the compiled
    module, after loading and after it fixed the KV-cache layout the key covers, so the key is
    only known then: `_Hooks` wraps that function, and `on_key` runs just before vLLM looks.
    """

    def __init__(self, forward: object, weights: SourceIdentity, settings: Settings, publish: bool) -> None:
        self._forward = forward
        self._weights = weights
        self._settings = settings
        self._publish = publish
        self.directory: Path | None = None
        self.digest = ""

    @classmethod
    def attach(
        cls, vllm_config: VllmConfig, model: nn.Module, weights: SourceIdentity, settings: Settings, publish: bool
    ) -> CompileCache | None:
        """Arrange for `model`'s compile cache to travel, or None when vLLM will not use one (eager,
        no AOT compile, cache disabled, or several compiled modules)."""
        if not envs.VLLM_USE_AOT_COMPILE or envs.VLLM_DISABLE_COMPILE_CACHE:
            return None
        if vllm_config.model_config.enforce_eager:
            return None
        compiled = [m for m in model.modules() if getattr(m, "do_not_compile", True) is False]
        if len(compiled) != 1:
            if compiled:
                log.info("peerload: %d compiled modules; compile cache transfer handles one", len(compiled))
            return None
        cache = cls(compiled[0].forward, weights, settings, publish)
        _hooks.expect(vllm_config, cache)
        return cache

    def on_key(self, vllm_config: VllmConfig, factors: list[str]) -> None:
        """vLLM is about to look in its cache directory: install a peer's there first."""
        key = hashlib.sha256(str([*factors, _model_hash_key(self._forward)]).encode()).hexdigest()
        self.directory = Path(envs.VLLM_CACHE_ROOT) / "torch_compile_cache" / "torch_aot_compile" / key
        self.digest = _digest_without_path(vllm_config, self._forward)
        identity = self.identity()
        outcome = fetch_artifact(identity, self.directory, settings=self._settings)
        log.info(
            "peerload: compile cache %s: %s (%s%s)",
            outcome.status,
            self.directory,
            outcome.reason,
            f", {outcome.bytes / 2**20:.2f} MiB in {outcome.seconds:.2f}s" if outcome.bytes else "",
        )
        live_sources.note_artifact(outcome)
        if self._publish:
            threading.Thread(target=self._publish_when_settled, name="peerload-compile-cache", daemon=True).start()

    def identity(self) -> SourceIdentity:
        stamp = environment_stamp(f"vllm {vllm.__version__}", self.digest)
        return artifact_identity(self._weights, KIND, stamp)

    def _publish_when_settled(self) -> None:
        """Publish the directory once vLLM's graph is in it and nothing changed for SETTLE_S."""
        assert self.directory is not None
        stop = live_sources.stopping
        waited, last, stable = 0.0, None, 0.0
        while not stop.wait(_POLL_S):
            waited += _POLL_S
            snapshot = _snapshot(self.directory)
            ready = any(p.endswith("/model") and p.count("/") == 1 for p, _ in snapshot)
            stable = stable + _POLL_S if ready and snapshot == last else 0.0
            last = snapshot
            if stable >= SETTLE_S:
                break
            if waited >= _SETTLE_TIMEOUT_S:
                log.warning("peerload: compile cache %s did not settle; not publishing it", self.directory)
                return
        else:
            return
        try:
            source = ArtifactSource(self.directory, self.identity(), settings=self._settings)
        except PeerloadError as exc:
            log.warning("peerload: could not publish compile cache %s: %s", self.directory, exc)
            return
        live_sources.keep(source)
        log.info(
            "peerload: compile cache published: %s (%.2f MiB, artifact %s, worker %s)",
            self.directory,
            source.total_bytes / 2**20,
            source.artifact_id[:12],
            source.worker_id,
        )


class _Hooks:
    """Wraps vLLM's `aot_compile_hash_factors` (looked up by vLLM at each call) to run `on_key`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiting: list[tuple[VllmConfig, CompileCache]] = []
        self._original = None

    def expect(self, vllm_config: VllmConfig, cache: CompileCache) -> None:
        with self._lock:
            self._waiting.append((vllm_config, cache))
            if self._original is None:
                self._original = caching.aot_compile_hash_factors
                caching.aot_compile_hash_factors = self._factors

    def _factors(self, vllm_config: VllmConfig) -> list[str]:
        assert self._original is not None
        factors = self._original(vllm_config)
        with self._lock:
            mine = [entry for entry in self._waiting if entry[0] is vllm_config]
            if not mine and len(self._waiting) == 1:  # vLLM handed the module a copy of the config
                mine = list(self._waiting)
            for entry in mine:
                self._waiting.remove(entry)
        for _, cache in mine:
            try:
                cache.on_key(vllm_config, factors)
            except Exception as exc:  # never let the cache transfer stop the engine: it compiles instead
                log.warning("peerload: compile cache transfer failed, vLLM compiles as usual: %s", exc)
        return list(factors)


_hooks = _Hooks()


def _digest_without_path(vllm_config: VllmConfig, forward: object) -> str:
    """vLLM's cache key with the model's path replaced by one constant: equal for two replicas of a
    model whose only difference is the directory they were started on."""
    model_config = vllm_config.model_config
    saved = model_config.model
    try:
        object.__setattr__(model_config, "model", _ANY_PATH)
        factors = (_hooks._original or caching.aot_compile_hash_factors)(vllm_config)
    finally:
        object.__setattr__(model_config, "model", saved)
    factors.append(_model_hash_key(forward))
    return hashlib.sha256(str(factors).encode()).hexdigest()[:32]


def _snapshot(directory: Path) -> tuple[tuple[str, int], ...]:
    """(relative path, size + mtime) of every file under `directory`."""
    out = []
    for folder, _dirs, files in os.walk(directory):
        for name in files:
            path = Path(folder) / name
            try:
                info = path.stat()
            except OSError:
                continue
            out.append((path.relative_to(directory).as_posix(), info.st_size + info.st_mtime_ns))
    return tuple(sorted(out))

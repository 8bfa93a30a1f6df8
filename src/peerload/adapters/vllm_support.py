"""What the vLLM plugin and loader share, free of vLLM imports: settings and live sources."""

from __future__ import annotations

import atexit
import logging
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from peerload.errors import ConfigError
from peerload.settings import Settings

if TYPE_CHECKING:
    from peerload.artifacts import ArtifactOutcome, ArtifactSource
    from peerload.seed.publisher import Publisher

LOAD_FORMAT = "peerload"
# vLLM only configures handlers for the "vllm" logger tree, so log under it to be seen in its output.
log = logging.getLogger("vllm.peerload")


# `--model-loader-extra-config` key of the loader itself (not a setting): false turns off fetching
# and publishing vLLM's compile cache (on by default).
COMPILE_CACHE_KEY = "compile_cache"


def compile_cache_enabled(extra_config: Any) -> bool:
    """Whether the compile cache travels peer-to-peer (`{"compile_cache": false}` turns it off)."""
    value = (extra_config or {}).get(COMPILE_CACHE_KEY, True) if isinstance(extra_config, Mapping) else True
    if not isinstance(value, bool):
        raise ConfigError(f"--model-loader-extra-config key {COMPILE_CACHE_KEY!r} must be true or false, got {value!r}")
    return value


def loader_settings(extra_config: Any) -> Settings:
    """Settings from `--model-loader-extra-config` (peerload or ModelExpress keys) over env vars."""
    if extra_config is not None and not isinstance(extra_config, Mapping):
        raise ConfigError(
            f"--model-loader-extra-config for load format `{LOAD_FORMAT}` must be a JSON object such "
            f'as {{"coordinator": "127.0.0.1:8001"}}, got {type(extra_config).__name__}'
        )
    compile_cache_enabled(extra_config)
    if extra_config:
        extra_config = {k: v for k, v in extra_config.items() if k != COMPILE_CACHE_KEY}
    try:
        # An empty dict would hide PEERLOAD_CONFIG from Settings.load, so pass None instead.
        return Settings.load(config=dict(extra_config) if extra_config else None)
    except ConfigError as exc:
        raise ConfigError(f"--model-loader-extra-config for load format `{LOAD_FORMAT}`: {exc}") from None


class LiveSources:
    """Keeps each worker's sources (Publisher, ArtifactSource) alive while the process serves;
    closes them at exit. Also holds what happened to this process's artifacts, for reports."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._publishers: list[Publisher | ArtifactSource] = []
        self._hooked = False
        self.stopping = threading.Event()  # set at exit: threads waiting to publish give up
        self.artifacts: list[ArtifactOutcome] = []

    def note_artifact(self, outcome: ArtifactOutcome) -> None:
        with self._lock:
            self.artifacts.append(outcome)

    def keep(self, publisher: Publisher | ArtifactSource) -> None:
        with self._lock:
            self._publishers.append(publisher)
            if not self._hooked:
                atexit.register(self.close)
                self._hooked = True

    def publishers(self) -> list[Publisher | ArtifactSource]:
        with self._lock:
            return list(self._publishers)

    def close(self) -> None:
        """Mark every source of this process STALE and release its transport."""
        self.stopping.set()
        with self._lock:
            publishers, self._publishers = self._publishers, []
        for publisher in publishers:
            publisher.close()


# One per process: vLLM builds the loader anew per load, but the sources outlive it.
live_sources = LiveSources()

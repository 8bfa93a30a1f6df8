"""vLLM glue: the `vllm.general_plugins` entry point that adds `--load-format peerload`.

Importing this module never imports vLLM; `register()` does, inside vLLM's own processes. The
loader class lives in `peerload.adapters.vllm_loader` (it subclasses vLLM's `BaseModelLoader`);
what both share is in `peerload.adapters.vllm_support`. `register()` also makes a warm compile
cache loadable where vLLM 0.32 compiled again on every start (`peerload.adapters.vllm_compat`).
"""

from __future__ import annotations

import threading

from peerload.adapters.vllm_support import LOAD_FORMAT

_registered = threading.Event()


def register() -> None:
    """Register `PeerloadModelLoader` as vLLM load format `peerload` (idempotent, once per process)."""
    # vLLM calls every general plugin in every process; a forked worker inherits both vLLM's
    # registry and this flag, so the two stay in step.
    if _registered.is_set():
        return
    from vllm.model_executor.model_loader import register_model_loader

    from peerload.adapters import vllm_compat
    from peerload.adapters.vllm_loader import PeerloadModelLoader

    register_model_loader(LOAD_FORMAT)(PeerloadModelLoader)
    vllm_compat.install()  # a warm compile cache loads instead of compiling again (see vllm_compat)
    _registered.set()

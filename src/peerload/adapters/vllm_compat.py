"""Two changes to vLLM's start-up that `register()` makes: a warm compile cache that loads, and
no extra Python process to inspect the model class when a peerload replica runs on CPU.

**The AOT load.**
vLLM (0.32, AOT compile on, its default with torch >= 2.10) ends loading a cached graph with
`loaded._artifacts.compiled_fn.finalize_loading(config)`. With vLLM's own backend that object
is a `VllmSerializableFunction`, which has the method; with the plain inductor backend, what vLLM
uses on CPU, torch deserializes a plain function without it. The AttributeError is taken for a
bad cache ("Compiling model again due to a load failure ... 'function' object has no attribute
'finalize_loading'"), so every start compiled again, from vLLM's own warm cache as much as from
a peer's. Such a function needs no finalizing (it is the compiled graph, complete), so
`register()` (every vLLM process with peerload installed) wraps `torch.compiler.load_compiled_function`
to give it a no-op `finalize_loading`. Nothing else is touched: a function that has the method
keeps it, and anything that fails to load still fails as before.

**The model inspection.** Before anything else, vLLM inspects the model's class in a new Python
process (which imports torch and vLLM again: seconds on CPU) unless `$VLLM_CACHE_ROOT/modelinfos`
already holds the answer, so a replica on a new host with an empty cache root paid it where a
warm host does not. The subprocess keeps CUDA uninitialised in the parent; on a CPU platform
there is none, so for `--load-format peerload` on CPU the inspection runs in this process (the
same function, its result cached by vLLM as usual). Other load formats and GPU platforms keep
vLLM's subprocess.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from typing import Any

from peerload.adapters.vllm_support import LOAD_FORMAT, log

_lock = threading.Lock()
_said = threading.Event()
_here = threading.local()  # .active: this thread builds the model config of a peerload load on CPU


def _nothing_to_finalize(vllm_config: Any) -> None:
    """A plain compiled function is complete when deserialized."""


def give_finalize_loading(loaded: Any) -> bool:
    """Attach the no-op `finalize_loading` to `loaded`'s compiled function when it has none;
    whether it did (a plain Python function takes attributes; other objects are left alone)."""
    compiled = getattr(getattr(loaded, "_artifacts", None), "compiled_fn", None)
    if compiled is None or hasattr(compiled, "finalize_loading"):
        return False
    try:
        compiled.finalize_loading = _nothing_to_finalize
    except (AttributeError, TypeError):
        return False
    return True


def wrap_load(original: Callable[..., Any]) -> Callable[..., Any]:
    """`original` (torch.compiler.load_compiled_function), whose result gets `give_finalize_loading`."""

    @functools.wraps(original)
    def load_compiled_function(*args: Any, **kwargs: Any) -> Any:
        loaded = original(*args, **kwargs)
        if give_finalize_loading(loaded) and not _said.is_set():
            _said.set()
            log.info(
                "peerload: the cached AOT graph is a plain compiled function (inductor backend); "
                "gave it the finalize_loading vLLM calls, so vLLM loads it instead of compiling again"
            )
        return loaded

    load_compiled_function.__peerload_wrapped__ = True  # type: ignore[attr-defined]
    return load_compiled_function


def install() -> None:
    """Both changes, once per process (idempotent)."""
    install_aot_load()
    install_inspection()


def install_aot_load() -> None:
    """Wrap torch.compiler.load_compiled_function once per process (idempotent)."""
    import torch.compiler

    with _lock:
        current = getattr(torch.compiler, "load_compiled_function", None)
        if current is None or getattr(current, "__peerload_wrapped__", False):
            return
        torch.compiler.load_compiled_function = wrap_load(current)


def install_inspection() -> None:
    """For `--load-format peerload` on a CPU platform, vLLM's model inspection runs in this process
    (idempotent; nothing happens where vLLM lacks the two functions this relies on)."""
    from vllm.engine.arg_utils import EngineArgs
    from vllm.model_executor.models import registry
    from vllm.platforms import current_platform

    with _lock:
        create = getattr(EngineArgs, "create_model_config", None)
        run = getattr(registry, "_run_in_subprocess", None)
        if create is None or run is None or getattr(run, "__peerload_wrapped__", False):
            return

        @functools.wraps(create)
        def create_model_config(self: Any, *args: Any, **kwargs: Any) -> Any:
            if str(self.load_format) != LOAD_FORMAT or not current_platform.is_cpu():
                return create(self, *args, **kwargs)
            _here.active = True
            try:
                return create(self, *args, **kwargs)
            finally:
                _here.active = False

        registry._run_in_subprocess = in_process_when_asked(run)
        EngineArgs.create_model_config = create_model_config


def in_process_when_asked(run: Callable[[Callable[[], Any]], Any]) -> Callable[[Callable[[], Any]], Any]:
    """`run` (vLLM's `_run_in_subprocess`), except that `fn` runs right here while this thread
    builds the model config of a peerload load on CPU."""

    @functools.wraps(run)
    def run_in_subprocess(fn: Callable[[], Any]) -> Any:
        if not getattr(_here, "active", False):
            return run(fn)
        log.info("peerload: inspecting the model class in this process (CPU; vLLM's modelinfos cache is empty)")
        return fn()

    run_in_subprocess.__peerload_wrapped__ = True  # type: ignore[attr-defined]
    return run_in_subprocess

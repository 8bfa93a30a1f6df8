"""The one vLLM fix `register()` applies: a cached AOT graph that is a plain function gets the
`finalize_loading` vLLM calls. The objects here stand in for what torch's deserializer returns
(a plain function for the inductor backend, an object with the method for vLLM's own backend);
real vLLM loading its warm cache is in tests/integration/test_vllm.py and `peerload bench replica`."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from peerload.adapters.vllm_compat import give_finalize_loading, wrap_load


def compiled(x: int) -> int:
    return x + 1


def loaded_with(fn: Any) -> SimpleNamespace:
    return SimpleNamespace(_artifacts=SimpleNamespace(compiled_fn=fn))


def test_a_plain_function_gets_a_no_op_finalize_loading() -> None:
    def fn(x: int) -> int:
        return x * 2

    loaded = loaded_with(fn)
    assert give_finalize_loading(loaded)
    assert loaded._artifacts.compiled_fn.finalize_loading(object()) is None
    assert loaded._artifacts.compiled_fn(3) == 6, "the function itself is unchanged"
    assert not give_finalize_loading(loaded), "once is enough"


def test_an_object_with_the_method_keeps_it_and_others_are_left_alone() -> None:
    calls: list[object] = []
    own = SimpleNamespace(finalize_loading=calls.append)
    assert not give_finalize_loading(loaded_with(own))
    own.finalize_loading("config")
    assert calls == ["config"]
    assert not give_finalize_loading(SimpleNamespace())  # no _artifacts: not an AOT result
    assert not give_finalize_loading(loaded_with(len))  # a builtin takes no attributes


def test_the_wrapped_loader_returns_what_the_original_returns() -> None:
    results: list[Any] = []

    def original(*args: Any, **kwargs: Any) -> SimpleNamespace:
        results.append((args, kwargs))
        return loaded_with(compiled)

    wrapped = wrap_load(original)
    loaded = wrapped("file", f_globals={"a": 1})
    assert results == [(("file",), {"f_globals": {"a": 1}})]
    assert hasattr(loaded._artifacts.compiled_fn, "finalize_loading")
    assert wrapped.__peerload_wrapped__ and wrapped.__name__ == "original"


def test_the_inspection_runs_here_only_while_a_peerload_config_is_built() -> None:
    """vLLM's `_run_in_subprocess` stand-in records that it was asked; inside the flag set by the
    EngineArgs wrapper (a peerload load on CPU) the function runs in this process instead."""
    from peerload.adapters import vllm_compat

    spawned: list[object] = []

    def run(fn: Any) -> Any:
        spawned.append(fn)
        return "from a subprocess"

    wrapped = vllm_compat.in_process_when_asked(run)
    assert wrapped(lambda: "here") == "from a subprocess" and len(spawned) == 1
    vllm_compat._here.active = True
    try:
        assert wrapped(lambda: "here") == "here" and len(spawned) == 1
    finally:
        vllm_compat._here.active = False
    assert wrapped.__peerload_wrapped__

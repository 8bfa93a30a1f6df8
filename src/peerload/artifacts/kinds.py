"""Artifact kinds: the caches ModelExpress moves as artifact sources, by name and wire value."""

from __future__ import annotations

from peerload.errors import ConfigError

# name -> MxSourceType value (model_express.p2p); weights (0), LoRA (1) and CUDA graphs (2) are not caches.
KINDS: dict[str, int] = {
    "torch_compile_cache": 3,
    "triton_cache": 4,
    "deep_gemm_cache": 5,
    "tilelang_cache": 6,
    "cute_dsl_cache": 7,
    "flashinfer_cache": 8,
    "tvm_ffi_cache": 9,
}
_NAMES = {value: name for name, value in KINDS.items()}


def kind_value(name: str) -> int:
    """The MxSourceType of a cache kind named like `torch_compile_cache`.

    Raises:
        ConfigError: not a known kind (the message lists them).
    """
    try:
        return KINDS[name]
    except KeyError:
        raise ConfigError(f"unknown artifact kind {name!r}; use one of {', '.join(KINDS)}") from None


def kind_name(value: int) -> str:
    """`torch_compile_cache` for 3, ...; `source_type_<n>` for a value that is not a cache."""
    return _NAMES.get(int(value), f"source_type_{int(value)}")

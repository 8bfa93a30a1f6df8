"""The environment an artifact was built in, and how two environments are compared.

A compile cache holds machine code: it is only usable where it was built for the same engine,
torch, accelerator (CUDA version and GPU architecture, or on CPU the instruction set torch's
inductor generated code for, and the C++ compiler it used) and compile configuration. These are
the identity fields ModelExpress hashes for artifacts; on CPU the ISA goes in `gpu_arch`
("cpu-<machine>-<capability>") and the compiler in `extra_parameters["cpu_compiler"]`.
"""

from __future__ import annotations

import functools
import platform
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from peerload.identity import SourceIdentity

STAMP_FIELDS = (
    "backend_framework_version",
    "torch_version",
    "cuda_version",
    "triton_version",
    "gpu_arch",
    "compile_config_digest",
)
STAMP_EXTRA_PREFIX = "cpu_"  # extra_parameters keys that are part of the stamp


def environment_stamp(backend_framework_version: str = "", compile_config_digest: str = "") -> dict[str, str]:
    """This process's stamp: the STAMP_FIELDS, plus `cpu_compiler` on a machine without CUDA."""
    import torch

    stamp = {
        "backend_framework_version": backend_framework_version,
        "torch_version": torch.__version__,
        "cuda_version": torch.version.cuda or "",
        "triton_version": _package_version("triton"),
        "gpu_arch": "",
        "compile_config_digest": compile_config_digest,
    }
    if torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability()
        stamp["gpu_arch"] = f"sm_{major}{minor}"
    else:
        stamp["gpu_arch"] = f"cpu-{platform.machine().lower()}-{torch.backends.cpu.get_cpu_capability().lower()}"
        stamp["cpu_compiler"] = cpu_compiler()
    return stamp


def stamped(identity: SourceIdentity, stamp: Mapping[str, str]) -> SourceIdentity:
    """`identity` carrying `stamp` (its fields, and `cpu_*` keys in extra_parameters)."""
    extra = {k: v for k, v in identity.extra_parameters.items() if not k.startswith(STAMP_EXTRA_PREFIX)}
    extra.update({k: v for k, v in stamp.items() if k.startswith(STAMP_EXTRA_PREFIX) and v})
    fields: dict[str, Any] = {k: stamp.get(k, "") for k in STAMP_FIELDS}
    return replace(identity, extra_parameters=extra, **fields)


def stamp_of(identity: SourceIdentity) -> dict[str, str]:
    """The stamp an identity carries."""
    stamp = {k: getattr(identity, k) for k in STAMP_FIELDS}
    stamp.update({k: v for k, v in identity.extra_parameters.items() if k.startswith(STAMP_EXTRA_PREFIX)})
    return stamp


def mismatches(source: Mapping[str, str], here: Mapping[str, str]) -> list[tuple[str, str, str]]:
    """(field, source's value, our value) for every stamp field that differs (case-insensitive)."""
    out = []
    for key in sorted(set(source) | set(here)):
        theirs, ours = source.get(key, ""), here.get(key, "")
        if theirs.lower() != ours.lower():
            out.append((key, theirs, ours))
    return out


def describe(differences: list[tuple[str, str, str]]) -> str:
    """ "torch_version: source '2.12.0', here '2.13.0'; ..." """
    return "; ".join(f"{key}: source {theirs!r}, here {ours!r}" for key, theirs, ours in differences)


@functools.cache
def cpu_compiler() -> str:
    """The first line of `c++ --version` (what inductor compiles CPU kernels with), "" if none."""
    for name in ("c++", "g++", "clang++"):
        path = shutil.which(name)
        if path is None:
            continue
        try:
            done = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10, check=False)
        except (OSError, subprocess.TimeoutExpired):
            continue
        first = done.stdout.strip().splitlines()[:1]
        if first:
            return first[0].strip()
    return ""


def _package_version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return ""

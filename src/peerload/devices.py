"""Which memory a tensor is in, as transports and ModelExpress descriptors name it (pure, no CUDA needed).

These read only `torch.device` objects, which exist for "cuda:N" without a GPU, so the choices
every GPU path makes are tested on CPU machines too.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from peerload.errors import ConfigError


def memory_of(device: torch.device) -> str:
    """Where a tensor's bytes live for a transport: "cpu" (host DRAM) or "cuda" (GPU memory).

    Raises:
        ConfigError: any other device (peerload moves host and CUDA memory only).
    """
    if device.type in ("cpu", "cuda"):
        return device.type
    raise ConfigError(f"tensors on {device} cannot be moved: peerload moves CPU and CUDA memory only")


def device_id_of(device: torch.device) -> int:
    """The device ordinal a descriptor carries (ModelExpress' `device_id`): the CUDA index, 0 on CPU."""
    return (device.index or 0) if device.type == "cuda" else 0


def accelerator_of(devices: Iterable[torch.device]) -> str:
    """A worker's `accelerator` as ModelExpress publishes it: "cuda" when any memory is on a GPU."""
    return "cuda" if any(memory_of(d) == "cuda" for d in devices) else "cpu"


def parse_device(text: str, what: str = "--device") -> torch.device:
    """The torch device `text` names ("cpu", "cuda", "cuda:N"), checked against this machine.

    Raises:
        ConfigError: not a device, not CPU or CUDA, or a GPU this machine does not have.
    """
    try:
        device = torch.device(text.strip())
    except (RuntimeError, ValueError):
        raise ConfigError(f"{what} {text!r} is not a device: use cpu, cuda or cuda:N") from None
    memory_of(device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            build = "a CPU build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
            raise ConfigError(
                f"{what} {text}: CUDA is not available here (torch {torch.__version__}, {build}); use cpu"
            )
        count = torch.cuda.device_count()
        if (device.index or 0) >= count:
            raise ConfigError(f"{what} {text}: this machine has {count} GPU(s) (cuda:0..cuda:{count - 1})")
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
    return device

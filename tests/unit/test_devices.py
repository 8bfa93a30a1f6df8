"""The choices every GPU path makes, tested without a GPU.

CUDA is not available on this machine (a CPU build of torch): these tests use `torch.device`
objects for "cuda:N" (which need no GPU) and the real NIXL and Mooncake packages where they can
run on CPU. What needs a GPU itself runs in `scripts/gpu_check.py` on a device machine.
"""

from __future__ import annotations

import pytest
import torch

from peerload.devices import accelerator_of, device_id_of, memory_of
from peerload.errors import ConfigError
from peerload.manifest import Manifest, RegionEntry, manifest_problem
from peerload.parts import plan_parts
from peerload.wire import manifest_from_proto, manifest_to_proto

CUDA1 = torch.device("cuda", 1)


def test_no_cuda_here():
    assert not torch.cuda.is_available()  # if this fails, run the CUDA paths for real instead


def test_memory_kind_device_id_and_accelerator_as_modelexpress_sets_them():
    assert memory_of(torch.device("cpu")) == "cpu" and memory_of(CUDA1) == "cuda"
    assert device_id_of(CUDA1) == 1 and device_id_of(torch.device("cuda")) == 0
    assert device_id_of(torch.device("cpu")) == 0
    # modelexpress' CudaAcceleratorBackend.name, which its publishers send as `accelerator`
    assert accelerator_of([torch.device("cpu"), CUDA1]) == "cuda"
    assert accelerator_of([torch.device("cpu")]) == "cpu"
    with pytest.raises(ConfigError, match="CPU and CUDA memory only"):
        memory_of(torch.device("meta"))


def test_region_memory_travels_in_the_manifest_and_defaults_to_cpu_for_older_seeds():
    m = Manifest(tensors=[], regions=[RegionEntry("w", 4096, addr=1 << 40, device_id=1, memory="cuda")])
    back = manifest_from_proto(manifest_to_proto(m))
    assert back.regions[0].memory == "cuda" and back.regions[0].device_id == 1
    old = manifest_to_proto(m)
    old.regions[0].ClearField("memory")  # what a seed from before the field sends
    assert manifest_from_proto(old).regions[0].memory == "cpu"
    bad = Manifest(tensors=[], regions=[RegionEntry("w", 4096, addr=1, memory="xpu")])
    assert manifest_problem(bad) == ("regions[0].memory", "is 'xpu'; known: cpu, cuda")


def test_read_ops_name_both_sides_memory():
    from peerload.loader.striping import part_ops

    local = {"w": torch.empty(8192, dtype=torch.uint8)}
    remote = Manifest(tensors=[], regions=[RegionEntry("w", 8192, addr=1 << 40, device_id=3, memory="cuda")])
    ops = part_ops(local, remote, plan_parts([("w", 8192)], 4096)[1])
    assert [(o.remote_addr, o.size, o.remote_device, o.remote_memory, o.local_device) for o in ops] == [
        ((1 << 40) + 4096, 4096, 3, "cuda", 0)
    ]


def test_nixl_registers_gpu_memory_as_vram():
    pytest.importorskip("nixl_cu12")
    from peerload.transport.nixl import NixlTransport

    t = NixlTransport("devices-test", loopback=True)
    try:
        assert t._mem(True) == t._nb.VRAM_SEG and t._mem(False) == t._nb.DRAM_SEG
    finally:
        t.close()


def test_mooncake_non_cuda_build_refuses_gpu_memory_with_a_clear_error():
    mooncake = pytest.importorskip("peerload.transport.mooncake")
    assert mooncake._cuda_build() is False  # this machine has mooncake-transfer-engine-non-cuda
    problem = mooncake.gpu_memory_problem([torch.device("cpu"), CUDA1], cuda_build=False)
    assert problem is not None and "cuda:1" in problem and "mooncake-transfer-engine" in problem
    assert mooncake.gpu_memory_problem([CUDA1], cuda_build=True) is None
    assert mooncake.gpu_memory_problem([torch.device("cpu")], cuda_build=False) is None


def test_prefault_skips_device_memory():
    """GPU memory has no page faults to take ahead: prefault leaves it alone (no touch, no madvise)."""
    from peerload.transport._memory import _pieces

    class FakeCuda:  # what _pieces reads of a CUDA tensor
        is_cuda = True
        nbytes = 1 << 20

        def data_ptr(self) -> int:
            raise AssertionError("a CUDA tensor's address must not be touched")

    host = torch.empty(1 << 16, dtype=torch.uint8)
    assert _pieces([FakeCuda(), host]) == _pieces([host])  # type: ignore[list-item]


def test_device_option_is_checked_against_this_machine():
    from peerload.devices import parse_device

    assert parse_device("cpu") == torch.device("cpu")
    with pytest.raises(ConfigError, match="CUDA is not available here"):
        parse_device("cuda:0")
    with pytest.raises(ConfigError, match="not a device"):
        parse_device("gpu0")
    with pytest.raises(ConfigError, match="CPU and CUDA memory only"):
        parse_device("meta")

"""Our source id equals the official modelexpress `compute_mx_source_id`; proto conversion round-trips."""

from __future__ import annotations

import importlib.util
import json
import random
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest

from peerload.coordinator.registry import source_id_of
from peerload.errors import ConfigError
from peerload.identity import OPTIONAL_HASHED_FIELDS, BackendFramework, SourceIdentity, compute_source_id, worker_rank
from peerload.wire import identity_from_proto as from_proto
from peerload.wire import identity_to_proto as to_proto

ORACLE = Path(__file__).resolve().parents[1] / "mx" / "source_ids.py"

IDENTITIES = [
    SourceIdentity(model_name="Qwen/Qwen3-0.6B"),
    SourceIdentity(model_name="qwen/qwen3-0.6b"),
    SourceIdentity(model_name="QWEN/QWEN3-0.6B", dtype="BFloat16"),
    SourceIdentity(model_name="meta-llama/Llama-3.1-8B", mx_version="0.7.0"),
    SourceIdentity(model_name="m", mx_source_type=1),
    SourceIdentity(model_name="m", mx_source_type=9),
    SourceIdentity(model_name="m", backend_framework=BackendFramework.VLLM),
    SourceIdentity(model_name="m", backend_framework=BackendFramework.SGLANG),
    SourceIdentity(model_name="m", backend_framework=BackendFramework.TRT_LLM),
    SourceIdentity(model_name="m", tensor_parallel_size=8),
    SourceIdentity(model_name="m", pipeline_parallel_size=4),
    SourceIdentity(model_name="m", expert_parallel_size=16),
    SourceIdentity(model_name="m", dtype="float16", quantization="FP8"),
    SourceIdentity(model_name="m", quantization="awq"),
    SourceIdentity(model_name="m", revision="MAIN"),
    SourceIdentity(model_name="m", revision="0123abcdEF"),
    SourceIdentity(model_name="m", extra_parameters={"max_model_len": "4096"}),
    SourceIdentity(model_name="m", extra_parameters={"B": "One", "a": "two", "C": "THREE"}),
    # Keys equal up to case: the first by original sort order wins on both sides.
    SourceIdentity(model_name="m", extra_parameters={"Key": "Upper", "key": "lower"}),
    SourceIdentity(model_name="m", extra_parameters={"kv_cache_dtype": "fp8_e4m3", "ENFORCE_EAGER": "True"}),
    SourceIdentity(model_name="m", backend_framework_version="0.11.0"),
    SourceIdentity(model_name="m", torch_version="2.13.0+CPU"),
    SourceIdentity(model_name="m", cuda_version="12.8"),
    SourceIdentity(model_name="m", triton_version="3.4.0"),
    SourceIdentity(model_name="m", gpu_arch="SM90"),
    SourceIdentity(model_name="m", compile_config_digest="ABCDEF0123"),
    SourceIdentity(  # every field at once
        model_name="DeepSeek-AI/DeepSeek-V3",
        mx_version="1",
        mx_source_type=3,
        backend_framework=BackendFramework.SGLANG,
        tensor_parallel_size=8,
        pipeline_parallel_size=2,
        expert_parallel_size=16,
        dtype="bfloat16",
        quantization="fp8",
        revision="v1.0",
        extra_parameters={"Speculative": "EAGLE", "max_num_seqs": "256"},
        backend_framework_version="0.5.0",
        torch_version="2.8.0",
        cuda_version="12.9",
        triton_version="3.4.0",
        gpu_arch="sm100",
        compile_config_digest="deadBEEF",
    ),
    SourceIdentity(model_name="m", mx_version="", dtype="", extra_parameters={"": ""}),
    SourceIdentity(model_name="模型/ünïcode", dtype="Bf16", extra_parameters={"ÄÖ": "Ü"}),
]


def _wire_fields(identity: SourceIdentity) -> dict:
    data = asdict(identity)
    data["extra_parameters"] = dict(identity.extra_parameters)
    data["mx_source_type"] = int(identity.mx_source_type)
    data["backend_framework"] = int(identity.backend_framework)
    return data


def official_ids(identities: list[SourceIdentity]) -> list[str]:
    """compute_mx_source_id from the modelexpress package, run in a separate process."""
    # find_spec, not import: importing modelexpress here would clash with peerload's stubs.
    if importlib.util.find_spec("modelexpress") is None:
        pytest.skip("modelexpress==0.7.0 (the oracle) is not installed; `make install` adds it")
    out = subprocess.run(
        [sys.executable, str(ORACLE)],
        input=json.dumps([_wire_fields(i) for i in identities]),
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return out.stdout.split()


def test_table_matches_official_client() -> None:
    assert len(IDENTITIES) >= 20
    ours = [compute_source_id(i) for i in IDENTITIES]
    assert ours == official_ids(IDENTITIES)
    assert ours[0] == ours[1], "model name case must not change the id"
    assert len(set(ours[3:])) == len(ours[3:]), "every other field must change the id"


def test_optional_fields_do_not_change_ids_when_empty() -> None:
    plain = SourceIdentity(model_name="m")
    assert compute_source_id(plain) == compute_source_id(SourceIdentity(model_name="m", gpu_arch=""))
    assert compute_source_id(plain) != compute_source_id(SourceIdentity(model_name="m", gpu_arch="sm90"))


_ALPHABET = "abcXYZ019-_./:éÅß模 "


def _random_identities(count: int, seed: int = 2024) -> list[SourceIdentity]:
    """Deterministic random identities: mixed case, unicode, every field, colliding extra keys."""
    rng = random.Random(seed)

    def text(max_len: int = 10) -> str:
        return "".join(rng.choice(_ALPHABET) for _ in range(rng.randint(0, max_len)))

    out = []
    for _ in range(count):
        keys = [text(6) for _ in range(rng.randint(0, 4))]
        keys += [k.upper() for k in keys[: rng.randint(0, len(keys))]]
        out.append(
            SourceIdentity(
                model_name=text(20) + "m",
                mx_version=text(),
                mx_source_type=rng.randint(0, 9),
                backend_framework=rng.randint(0, 3),
                tensor_parallel_size=rng.randint(1, 64),
                pipeline_parallel_size=rng.randint(1, 16),
                expert_parallel_size=rng.randint(1, 64),
                dtype=text(),
                quantization=text(),
                extra_parameters={k: text() for k in keys},
                revision=text(),
                **{f: rng.choice(["", text()]) for f in OPTIONAL_HASHED_FIELDS},
            )
        )
    return out


def test_random_identities_match_official_client() -> None:
    identities = _random_identities(300)
    assert [compute_source_id(i) for i in identities] == official_ids(identities)


@pytest.mark.parametrize("identity", IDENTITIES[:8] + IDENTITIES[-3:])
def test_proto_round_trip_and_wire_hash(identity: SourceIdentity) -> None:
    message = to_proto(identity)
    assert from_proto(message) == identity
    assert source_id_of(message) == compute_source_id(identity)


def test_worker_rank():
    assert worker_rank(tp_rank=1, pp_rank=2, tp_size=4, pp_size=3) == 9
    with pytest.raises(ConfigError, match="tp_rank 4"):
        worker_rank(tp_rank=4, tp_size=4)

"""Drive a coordinator with the official modelexpress MxClient; print one JSON report.

Usage: python client_scenario.py HOST:PORT. Runs in its own process (see source_ids.py).
"""

import json
import sys

from modelexpress import p2p_pb2
from modelexpress.client import MxClient
from modelexpress.metadata.source_id import compute_mx_source_id

address = sys.argv[1]
client = MxClient(server_url=address)
identity = p2p_pb2.SourceIdentity(
    mx_version="0.7.0",
    model_name="Qwen/Qwen3-0.6B",
    backend_framework=p2p_pb2.BACKEND_FRAMEWORK_VLLM,
    tensor_parallel_size=2,
    pipeline_parallel_size=1,
    expert_parallel_size=1,
    dtype="bfloat16",
    extra_parameters={"Enforce_Eager": "True"},
)
report = {"expected_id": compute_mx_source_id(identity)}
workers = {}
for rank in (0, 1):
    worker = p2p_pb2.WorkerMetadata(
        worker_rank=rank,
        nixl_metadata=b"nixl-agent-%d" % rank,
        agent_name=f"agent-{rank}",
        worker_grpc_endpoint=f"127.0.0.1:{9000 + rank}",
        accelerator="cuda",
        tensor_source=p2p_pb2.TensorSourceMetadata(
            tensors=[
                p2p_pb2.TensorDescriptor(
                    name="w", addr=4096 * (rank + 1), size=1024, device_id=rank, dtype="torch.bfloat16"
                )
            ]
        ),
    )
    workers[rank] = client.publish_metadata(identity, worker, f"mx-worker-{rank}")
report["published_ids"] = sorted(set(workers.values()))
sid = workers[0]
report["listed_all"] = sorted(i.worker_id for i in client.list_sources(identity=identity).instances)
report["listed_ready_before"] = [
    i.worker_id for i in client.list_sources(identity=identity, status_filter=p2p_pb2.SOURCE_STATUS_READY).instances
]
report["update_ok"] = client.update_status(sid, "mx-worker-0", 0, p2p_pb2.SOURCE_STATUS_READY, source_load=0.25)
ready = client.list_sources(identity=identity, status_filter=p2p_pb2.SOURCE_STATUS_READY).instances
report["listed_ready_after"] = [i.worker_id for i in ready]
report["ready_load"] = [round(i.source_load, 3) for i in ready if i.HasField("source_load")]
report["listed_unfiltered_no_identity"] = len(client.list_sources().instances)
meta = client.get_metadata(sid, "mx-worker-0")
report["get"] = {
    "found": meta.found,
    "status": p2p_pb2.SourceStatus.Name(meta.worker.status),
    "nixl": meta.worker.nixl_metadata.decode(),
    "agent": meta.worker.agent_name,
    "tensors": [t.name for t in meta.worker.tensor_source.tensors],
    "identity_model": meta.identity.model_name,
    "updated_at": meta.worker.updated_at,
}
report["get_unknown_found"] = client.get_metadata(sid, "nobody").found
report["update_unknown_ok"] = client.update_status(sid, "nobody", 0, p2p_pb2.SOURCE_STATUS_READY)
client.close()
print(json.dumps(report))

"""Oracle: print a p2p.proto's shape as JSON, {"messages": {name: {field: [number, type, type_name,
label]}}, "services": {name: [[method, input, output]]}}.

Usage: python proto_fields.py official|peerload. Each runs in its own process: modelexpress'
p2p_pb2 and peerload's stubs define the same proto symbols and cannot share one descriptor pool.
"""

import json
import sys

from google.protobuf import descriptor_pb2

if sys.argv[1] == "official":
    from modelexpress import p2p_pb2
else:
    from peerload._gen.model_express import p2p_pb2


def shape(file: descriptor_pb2.FileDescriptorProto) -> dict:
    messages: dict[str, dict] = {}

    def walk(prefix: str, message: descriptor_pb2.DescriptorProto) -> None:
        name = f"{prefix}{message.name}"
        messages[name] = {f.name: [f.number, f.type, f.type_name, f.label] for f in message.field}
        for nested in message.nested_type:
            walk(f"{name}.", nested)

    for message in file.message_type:
        walk("", message)
    services = {s.name: [[m.name, m.input_type, m.output_type] for m in s.method] for s in file.service}
    return {"package": file.package, "messages": messages, "services": services}


proto = descriptor_pb2.FileDescriptorProto()
p2p_pb2.DESCRIPTOR.CopyToProto(proto)
print(json.dumps(shape(proto)))

"""Oracle: read identities (JSON list of SourceIdentity field dicts) on stdin, print the
official client's compute_mx_source_id for each, one per line.

Runs in its own process: modelexpress' p2p_pb2 and peerload's stubs define the same proto
symbols and cannot share one descriptor pool.
"""

import json
import sys

from modelexpress import p2p_pb2
from modelexpress.metadata.source_id import compute_mx_source_id

for fields in json.load(sys.stdin):
    print(compute_mx_source_id(p2p_pb2.SourceIdentity(**fields)))

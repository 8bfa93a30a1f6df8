"""The `peerload` command line: one module per command, registered in main.py."""

import os

# gRPC's C core prints TLS handshake failures to stderr on its own; the CLI reports them in one
# line. Set before any command imports grpc; GRPC_VERBOSITY in the environment still wins.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

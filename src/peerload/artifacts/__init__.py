"""Compile caches as ModelExpress artifact sources: publish a cache directory, install a peer's.

`ArtifactSource` publishes a directory (e.g. vLLM's `torch_compile_cache/...`) under an identity
of its kind stamped with the environment it was built in; `fetch_artifact` installs a matching
peer's into a cache directory, atomically and only after every checksum and archive member passed.
"""

from peerload.artifacts.install import FAILED, INSTALLED, SKIPPED, ArtifactOutcome, fetch_artifact
from peerload.artifacts.kinds import KINDS, kind_name, kind_value
from peerload.artifacts.source import ArtifactSource, artifact_identity
from peerload.artifacts.stamp import environment_stamp

__all__ = [
    "FAILED",
    "INSTALLED",
    "KINDS",
    "SKIPPED",
    "ArtifactOutcome",
    "ArtifactSource",
    "artifact_identity",
    "environment_stamp",
    "fetch_artifact",
    "kind_name",
    "kind_value",
]

"""Target side: fill an empty model from peers (or storage), verify it, then publish it."""

from peerload.loader.load import LoadOptions, LoadResult, Progress, TargetLoad, load_into
from peerload.loader.phases import PHASES
from peerload.loader.storage import copy_into
from peerload.loader.striping import SourceStats

__all__ = ["PHASES", "LoadOptions", "LoadResult", "Progress", "SourceStats", "TargetLoad", "copy_into", "load_into"]

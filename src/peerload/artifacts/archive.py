"""Cache directories as tar archives: packing what may travel, and unpacking only what is safe.

An artifact is executable code (compiled `.so` files) that a peer chose, so unpacking trusts
nothing in the archive: every member is checked before the first byte is written, and only
plain files and directories with relative names inside the destination are accepted. Links of
any kind, devices, FIFOs, absolute names and `..` are refused, as are archives past the limits.
"""

from __future__ import annotations

import io
import logging
import os
import stat
import tarfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from peerload.errors import ArtifactRejected

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ArchiveLimits:
    """What one artifact may hold once unpacked (a hostile peer cannot fill a disk past these)."""

    max_total_bytes: int = 32 << 30
    max_file_bytes: int = 16 << 30
    max_members: int = 200_000


DEFAULT_LIMITS = ArchiveLimits()


def pack(root: Path) -> bytes:
    """An uncompressed tar of the plain files and directories under `root` (names relative to it).

    Symlinks and special files are left out (logged): engines rebuild such derived state, and a
    reader would refuse them anyway.
    """
    buffer = io.BytesIO()
    skipped: list[str] = []
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for directory, dirnames, filenames in os.walk(root, followlinks=False):
            here = Path(directory)
            dirnames.sort()
            for name in list(dirnames):
                if (here / name).is_symlink():
                    dirnames.remove(name)
                    skipped.append(str(here / name))
            for name in [*dirnames, *sorted(filenames)]:
                path = here / name
                info = path.lstat()
                if not (stat.S_ISREG(info.st_mode) or stat.S_ISDIR(info.st_mode)):
                    skipped.append(str(path))
                    continue
                member = tarfile.TarInfo(path.relative_to(root).as_posix())
                member.mtime = int(info.st_mtime)
                member.mode = info.st_mode & 0o755
                if stat.S_ISDIR(info.st_mode):
                    member.type = tarfile.DIRTYPE
                    archive.addfile(member)
                    continue
                member.size = info.st_size
                with path.open("rb") as f:
                    archive.addfile(member, f)
    if skipped:
        log.warning(
            "left %d symlink(s) or special file(s) out of the artifact of %s, e.g. %s", len(skipped), root, skipped[0]
        )
    return buffer.getvalue()


def check_members(archive: tarfile.TarFile, name: str, limits: ArchiveLimits = DEFAULT_LIMITS) -> list[tarfile.TarInfo]:
    """Every member of `archive` once each is known safe to unpack, in archive order.

    Raises:
        ArtifactRejected: naming the first member that is not a plain file or directory with a
            relative name free of `..`, a duplicate, or a limit that is exceeded.
    """
    members: list[tarfile.TarInfo] = []
    seen: dict[str, bool] = {}  # normalised name -> is a directory
    total = 0
    for member in archive:
        if len(members) >= limits.max_members:
            raise ArtifactRejected(name, f"holds more than {limits.max_members} members (limit max_members)")
        relative = safe_name(member.name, name)
        if member.issym() or member.islnk():
            raise ArtifactRejected(
                name, f"member {member.name!r} is a link (to {member.linkname!r}); links are refused"
            )
        if not (member.isreg() or member.isdir()):
            raise ArtifactRejected(name, f"member {member.name!r} is a device, FIFO or other special file")
        if relative in seen:
            raise ArtifactRejected(name, f"member {member.name!r} appears twice")
        for parent in PurePosixPath(relative).parents:
            if seen.get(str(parent)) is False:
                raise ArtifactRejected(name, f"member {member.name!r} lies under the file {str(parent)!r}")
        if member.size > limits.max_file_bytes:
            raise ArtifactRejected(
                name, f"member {member.name!r} is {member.size} bytes (limit max_file_bytes={limits.max_file_bytes})"
            )
        total += member.size
        if total > limits.max_total_bytes:
            raise ArtifactRejected(name, f"unpacks to more than {limits.max_total_bytes} bytes (limit max_total_bytes)")
        seen[relative] = member.isdir()
        members.append(member)
    return members


def safe_name(member: str, name: str) -> str:
    """`member` as a normalised relative path ("" for the root itself), or ArtifactRejected."""
    if member.startswith("/") or member.startswith("\\") or "\x00" in member:
        raise ArtifactRejected(name, f"member {member!r} has an absolute name")
    parts = [p for p in member.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ArtifactRejected(name, f"member {member!r} climbs out with '..'")
    return "/".join(parts)


class _MemoryReader(io.RawIOBase):
    """A seekable read-only file over bytes in memory, without copying them (tarfile reads it)."""

    def __init__(self, data: bytes | memoryview) -> None:
        self._data = memoryview(data).cast("B")
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, target) -> int:  # type: ignore[no-untyped-def]
        n = min(len(target), len(self._data) - self._pos)
        target[:n] = self._data[self._pos : self._pos + n]
        self._pos += n
        return n

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: len(self._data)}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def tell(self) -> int:
        return self._pos


def unpack(
    archive_bytes: bytes | memoryview, destination: Path, name: str, limits: ArchiveLimits = DEFAULT_LIMITS
) -> int:
    """Unpack a checked archive into the new, empty directory `destination`; returns the files written.

    Every member is checked first, so a refused archive writes nothing. Files are created
    exclusively (never through an existing path or link) with at most rwxr-xr-x.

    Raises:
        ArtifactRejected: the archive is unreadable or a member is unsafe (see `check_members`).
    """
    data = memoryview(archive_bytes).cast("B")
    try:
        archive = tarfile.open(fileobj=io.BufferedReader(_MemoryReader(data)), mode="r:")
    except tarfile.TarError as exc:
        raise ArtifactRejected(name, f"is not a readable tar archive: {exc}") from None
    with archive:
        try:
            members = check_members(archive, name, limits)
        except tarfile.TarError as exc:
            raise ArtifactRejected(name, f"is not a readable tar archive: {exc}") from None
        root = destination.resolve(strict=True)
        written = 0
        for member in members:
            relative = safe_name(member.name, name)
            if not relative:
                continue
            path = root.joinpath(*relative.split("/"))
            if member.isdir():
                path.mkdir(mode=0o755, parents=True, exist_ok=True)
                continue
            path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
            fd = os.open(path, flags, 0o644 | (member.mode & 0o111))
            with os.fdopen(fd, "wb", buffering=0) as out:
                _write_member(out, archive, member, data, name)
            os.utime(path, (member.mtime, member.mtime))
            written += 1
    return written


def _write_member(
    out: BinaryIO, archive: tarfile.TarFile, member: tarfile.TarInfo, data: memoryview, name: str
) -> None:
    """A plain member's bytes straight from the archive in memory (no copy); a sparse one through tarfile."""
    if member.sparse is None:
        end = member.offset_data + member.size
        if end > len(data):
            raise ArtifactRejected(name, f"member {member.name!r} runs past the end of the archive")
        contents = data[member.offset_data : end]
        while contents:
            contents = contents[out.write(contents) :]
        return
    source = archive.extractfile(member)
    assert source is not None  # a regular file always has contents
    while chunk := source.read(1 << 20):
        out.write(chunk)

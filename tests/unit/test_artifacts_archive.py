"""Unpacking a peer's archive: each kind of bad archive is refused before anything is written."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from peerload.artifacts import archive
from peerload.artifacts.archive import ArchiveLimits
from peerload.errors import ArtifactRejected


def tar_of(*members: tuple[tarfile.TarInfo, bytes | None]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as t:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            t.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


def member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    return info


GOOD = (member("a/ok.txt"), b"fine")

BAD = {
    "absolute": ((member("/etc/evil"), b"x"), "absolute"),
    "dotdot": ((member("a/../../evil"), b"x"), "'..'"),
    "symlink outside": ((member("a/link", tarfile.SYMTYPE, "/etc/passwd"), None), "link"),
    "symlink inside": ((member("a/link", tarfile.SYMTYPE, "ok.txt"), None), "link"),
    "hardlink outside": ((member("a/hard", tarfile.LNKTYPE, "../../etc/passwd"), None), "link"),
    "character device": ((member("a/dev", tarfile.CHRTYPE), None), "device, FIFO"),
    "block device": ((member("a/blk", tarfile.BLKTYPE), None), "device, FIFO"),
    "fifo": ((member("a/fifo", tarfile.FIFOTYPE), None), "device, FIFO"),
    "duplicate": ((member("a/ok.txt"), b"again"), "appears twice"),
    "under a file": ((member("a/ok.txt/inner"), b"x"), "lies under the file"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_archive_is_refused_and_nothing_is_written(case: str, tmp_path: Path) -> None:
    bad, message = BAD[case]
    data = tar_of(GOOD, bad)
    with pytest.raises(ArtifactRejected, match=message):
        archive.unpack(data, tmp_path, "test")
    assert list(tmp_path.iterdir()) == [], "a refused archive wrote something"


def test_size_limits(tmp_path: Path) -> None:
    data = tar_of(GOOD, (member("b"), b"y" * 100))
    with pytest.raises(ArtifactRejected, match="max_file_bytes"):
        archive.unpack(data, tmp_path, "t", ArchiveLimits(max_file_bytes=50))
    with pytest.raises(ArtifactRejected, match="max_total_bytes"):
        archive.unpack(data, tmp_path, "t", ArchiveLimits(max_total_bytes=101))
    with pytest.raises(ArtifactRejected, match="max_members"):
        archive.unpack(data, tmp_path, "t", ArchiveLimits(max_members=1))
    assert list(tmp_path.iterdir()) == []
    assert archive.unpack(data, tmp_path, "t", ArchiveLimits(max_total_bytes=104)) == 2


def test_not_a_tar_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ArtifactRejected, match="not a readable tar"):
        archive.unpack(os.urandom(4096), tmp_path, "t")


def test_pack_leaves_links_and_special_files_out_and_modes_are_capped(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    (root / "d").mkdir(parents=True)
    (root / "d/f.so").write_bytes(b"\x7fELF")
    (root / "d/f.so").chmod(0o4777)  # setuid and world-writable: neither survives
    (root / "d/link").symlink_to("/etc/passwd")
    (root / "dirlink").symlink_to(root / "d")
    os.mkfifo(root / "d/fifo")
    out = tmp_path / "out"
    out.mkdir()
    assert archive.unpack(archive.pack(root), out, "t") == 1
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == ["d", "d/f.so"]
    assert (out / "d/f.so").stat().st_mode & 0o7777 == 0o755 & ~_umask()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask

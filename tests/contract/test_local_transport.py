"""What only the local transport has to enforce: the partner's root is a jail."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from sftp_pipeline import errors
from sftp_pipeline.transport.local import LocalTransport


@pytest.mark.parametrize("directory", ["../other", "/etc", "inbox/../../x", ".", "", "in\x00box"])
def test_directories_must_stay_inside_the_root(tmp_path: Path, directory: str) -> None:
    root = tmp_path / "root"
    src = tmp_path / "doc"
    src.write_bytes(b"x")
    transport = LocalTransport(root, partner_id="aggregator")
    with pytest.raises(errors.PermanentTransportError, match="aggregator"):
        asyncio.run(transport.put_atomic(src, directory, "doc.pgp"))
    assert not list(tmp_path.rglob("doc.pgp"))


def test_a_symlinked_directory_leaving_the_root_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (tmp_path / "outside").mkdir()
    (root / "inbox").symlink_to(tmp_path / "outside")
    with pytest.raises(errors.PermanentTransportError, match="leaves"):
        asyncio.run(LocalTransport(root, partner_id="aggregator").list("inbox"))


def test_standard_directories_appear_on_first_use(tmp_path: Path) -> None:
    root = tmp_path / "root"
    transport = LocalTransport(root, partner_id="aggregator")
    assert asyncio.run(transport.list("receipts-out")) == []
    assert (root / "receipts-out").is_dir()
    with pytest.raises(errors.PermanentTransportError, match="no-such"):
        asyncio.run(transport.list("no-such"))

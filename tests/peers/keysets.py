"""An in-memory key set for tests that open messages without a configuration on disk."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pysequoia

from sftp_pipeline.keys import OurKeys
from sftp_pipeline.openpgp import SigningKey, describe_cert


def keys_from_tsk(tsk: pysequoia.Tsk, where: Path) -> OurKeys:
    """``OurKeys`` for a generated key; the SSH paths point into ``where`` and are never read."""
    cert = tsk.extract_certificate()
    return OurKeys(
        tsk=tsk,
        cert=cert,
        fingerprint=cert.fingerprint.lower(),
        signer=SigningKey(cert, tsk.signer()),
        ssh_key_path=where / "ssh",
        ssh_passphrase=None,
        host_key_path=where / "host",
        openpgp_path=where / "openpgp.key",
        info=describe_cert(cert, datetime.now(UTC)),
    )

"""Fixtures the integration tests share."""

from __future__ import annotations

import pytest

from sftp_pipeline.keys import generate_keys


@pytest.fixture(scope="module")
def partner_cert(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """The aggregator's OpenPGP certificate, for a utility party to seal to (RFC 4880 keys, no passphrase)."""
    keys = generate_keys(
        tmp_path_factory.mktemp("aggregator-keys"),
        party_id="aggregator",
        party_name="Aggregator",
        pq=False,
        passphrase=None,
    )
    return keys.openpgp_cert.read_bytes()

"""Our key files against real GnuPG 2.2: what it can import, and keys it protected with a passphrase."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

import pytest

from sftp_pipeline import errors
from sftp_pipeline.config import Config, Partner, Party, Secret
from sftp_pipeline.config import OurKeys as KeyPaths
from sftp_pipeline.keys import GeneratedKeys, generate_keys, load_our_keys, load_partner_cert
from sftp_pipeline.openpgp import seal
from tests.peers.gpg import GnuPG

pytestmark = pytest.mark.gpg

NOW = datetime.now(UTC)


@pytest.fixture(autouse=True)
def _fresh_now() -> None:
    """NOW is taken when each test starts, after its keys are made: taken once at import, a long run made
    every key created later look "created in the future"."""
    global NOW
    NOW = datetime.now(UTC)


GPG_PASSPHRASE = "gpg-made passphrase"


def _config(tmp_path: Path, gen: GeneratedKeys, **keys: object) -> Config:
    return Config(
        path=tmp_path / "sftp-pipeline.toml",
        party=Party(id="aggregator", name="Sunrise DER"),
        keys=KeyPaths(openpgp=gen.openpgp_key, ssh=gen.ssh_private, host_key=gen.host_key, **keys),  # type: ignore[arg-type]
    )


def _write_secret(path: Path, data: bytes) -> None:
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def test_gnupg_22_imports_our_rfc4880_keys(gpg: GnuPG, tmp_path: Path) -> None:
    gen = generate_keys(tmp_path, party_id="aggregator", party_name="Sunrise DER", pq=False, passphrase=None)
    public = gpg.import_key(gen.openpgp_cert)
    assert any(line.startswith("IMPORT_OK") for line in public.status)
    gpg.import_key(gen.openpgp_key)
    listing = gpg.run("--with-colons", "--list-secret-keys", gen.openpgp_fingerprint).stdout.decode()
    assert listing.startswith("sec:") or "\nsec:" in listing
    assert gpg.fingerprint(gen.openpgp_fingerprint).lower() == gen.openpgp_fingerprint


def test_gnupg_22_cannot_import_our_pq_keys(gpg: GnuPG, tmp_path: Path) -> None:
    """The compatibility note for --pq says so; this keeps it honest."""
    gen = generate_keys(tmp_path, party_id="utility", party_name="Metro", pq=True, passphrase=None)
    result = gpg.run("--import", str(gen.openpgp_cert), check=False)
    assert not any(line.startswith("IMPORT_OK") for line in result.status)
    assert "GnuPG 2.2 cannot import this key" in gen.compatibility


def test_key_protected_by_gnupg_loads_with_passphrase(
    gpg: GnuPG, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gen = generate_keys(tmp_path, party_id="aggregator", party_name="Sunrise DER", pq=False, passphrase=None)
    fpr = gpg.generate("Sunrise DER (gpg-made)", passphrase=GPG_PASSPHRASE)
    _write_secret(gen.openpgp_key, gpg.export_secret(fpr, passphrase=GPG_PASSPHRASE))

    with pytest.raises(errors.KeyFileError, match=r"passphrase-protected; set keys\.openpgp_passphrase"):
        load_our_keys(_config(tmp_path, gen), NOW)

    config = _config(tmp_path, gen, openpgp_passphrase=Secret(env="SFTP_TEST_PGP_PW"))
    monkeypatch.setenv("SFTP_TEST_PGP_PW", "not it")
    with pytest.raises(errors.KeyFileError, match="cannot unlock the OpenPGP secret key"):
        load_our_keys(config, NOW)

    monkeypatch.setenv("SFTP_TEST_PGP_PW", GPG_PASSPHRASE)
    keys = load_our_keys(config, NOW)
    assert keys.fingerprint == fpr.lower()
    assert GPG_PASSPHRASE not in repr(keys)

    # The unlocked key seals to a GnuPG partner, and that partner reads and verifies it.
    partner_fpr = gpg.generate("Metro Distribution <edi@metro.example>")
    partner_file = tmp_path / "metro.asc"
    partner_file.write_bytes(gpg.export(partner_fpr))
    partner = load_partner_cert(Partner(id="utility", name="Metro", openpgp_cert=partner_file))
    src = tmp_path / "invoice.xml"
    src.write_bytes(b"<invoice/>\n" * 1000)
    seal(src, tmp_path / "invoice.pgp", signer=keys.signer, recipients=[partner, keys.cert], now=NOW)
    plaintext, status = gpg.decrypt(tmp_path / "invoice.pgp")
    assert plaintext == src.read_bytes()
    validsig = [line.split() for line in status if line.startswith("VALIDSIG ")]
    assert len(validsig) == 1 and validsig[0][-1] == fpr.upper()
    assert "DECRYPTION_OKAY" in status and "GOODMDC" in status
    keys.decryptor()  # the passphrase also unlocks decryption

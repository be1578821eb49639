"""Key handling: generation, permissions, passphrases, partner certificates, listing, hidden secrets."""

from __future__ import annotations

import os
import pickle
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncssh
import pysequoia
import pytest

from sftp_pipeline import errors
from sftp_pipeline.config import Config, Partner, Party, Secret, SftpEndpoint
from sftp_pipeline.config import OurKeys as KeyPaths
from sftp_pipeline.keys import (
    COMPAT_RFC4880,
    COMPAT_RFC9580,
    GeneratedKeys,
    Passphrase,
    _secret_packets,
    check_secret_file,
    generate_keys,
    list_keys,
    load_our_keys,
    load_partner_cert,
    read_passphrase,
    ssh_fingerprint,
)
from sftp_pipeline.openpgp import describe_cert

NOW = datetime.now(UTC)


@pytest.fixture(autouse=True)
def _fresh_now() -> None:
    """NOW is taken when each test starts, after its keys are made: taken once at import, a long run made
    every key created later look "created in the future"."""
    global NOW
    NOW = datetime.now(UTC)


SECRET = "correct horse battery staple"


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _config(tmp_path: Path, gen: GeneratedKeys, **keys: object) -> Config:
    return Config(
        path=tmp_path / "sftp-pipeline.toml",
        party=Party(id="aggregator", name="Sunrise DER"),
        keys=KeyPaths(openpgp=gen.openpgp_key, ssh=gen.ssh_private, host_key=gen.host_key, **keys),  # type: ignore[arg-type]
    )


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> GeneratedKeys:
    return generate_keys(
        tmp_path_factory.mktemp("keys"), party_id="aggregator", party_name="Sunrise DER", pq=False, passphrase=None
    )


def test_generate_writes_private_0600_and_public_readable(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        gen = generate_keys(tmp_path / "k", party_id="agg", party_name="Agg", pq=False, passphrase=None)
    finally:
        os.umask(old)
    for secret in (gen.openpgp_key, gen.ssh_private, gen.host_key):
        assert _mode(secret) == 0o600, secret
    for public in (gen.openpgp_cert, gen.ssh_public, gen.host_key_public):
        assert _mode(public) == 0o644, public
    cert = pysequoia.Cert.from_file(str(gen.openpgp_cert))
    assert not _secret_packets(gen.openpgp_cert.read_bytes())
    assert _secret_packets(gen.openpgp_key.read_bytes())
    assert cert.fingerprint.lower() == gen.openpgp_fingerprint
    assert (
        pysequoia.Tsk.from_file(str(gen.openpgp_key)).extract_certificate().fingerprint.lower()
        == gen.openpgp_fingerprint
    )
    assert ssh_fingerprint(gen.ssh_public.read_text()) == gen.ssh_fingerprint
    assert ssh_fingerprint(gen.host_key_public.read_text()) == gen.host_key_fingerprint
    assert gen.compatibility == COMPAT_RFC4880
    info = describe_cert(cert, NOW)
    assert (info.version, info.algorithm, info.subkey_algorithms) == (4, "Ed25519", ("Ed25519", "X25519"))
    assert info.expires is not None and info.expires > NOW + timedelta(days=700)
    assert [row[1] for row in gen.rows()] == [
        str(p)
        for p in (gen.openpgp_key, gen.openpgp_cert, gen.ssh_private, gen.ssh_public, gen.host_key, gen.host_key_public)
    ]


def test_generate_pq(tmp_path: Path) -> None:
    gen = generate_keys(tmp_path, party_id="utility", party_name="Metro", pq=True, passphrase=None)
    info = describe_cert(pysequoia.Cert.from_file(str(gen.openpgp_cert)), NOW)
    assert (info.version, info.profile, info.post_quantum) == (6, "rfc9580", True)
    assert gen.post_quantum and gen.compatibility == COMPAT_RFC9580
    assert "GnuPG 2.2 cannot import" in gen.compatibility


def test_generate_refuses_to_overwrite(tmp_path: Path, generated: GeneratedKeys) -> None:
    before = generated.openpgp_key.read_bytes()
    with pytest.raises(errors.KeyFileError, match="refusing to overwrite"):
        generate_keys(generated.directory, party_id="x", party_name="X", pq=False, passphrase=None)
    assert generated.openpgp_key.read_bytes() == before
    again = generate_keys(tmp_path, party_id="x", party_name="X", pq=False, passphrase=None)
    (again.openpgp_key).chmod(0o644)
    replaced = generate_keys(tmp_path, party_id="x", party_name="X", pq=False, passphrase=None, overwrite=True)
    assert replaced.openpgp_fingerprint != again.openpgp_fingerprint
    assert _mode(replaced.openpgp_key) == 0o600  # recreated, not truncated in place with the old mode


def test_ssh_identity_is_encrypted_with_the_passphrase(tmp_path: Path) -> None:
    gen = generate_keys(tmp_path, party_id="a", party_name="A", pq=False, passphrase=Passphrase(SECRET))
    assert gen.openpgp_key_encrypted is False  # pysequoia 0.1.35 cannot write a protected TSK
    with pytest.raises(asyncssh.KeyImportError):
        asyncssh.read_private_key(gen.ssh_private)
    assert asyncssh.read_private_key(gen.ssh_private, SECRET).get_fingerprint("sha256") == gen.ssh_fingerprint
    asyncssh.read_private_key(gen.host_key)  # the host key stays unencrypted: the server starts unattended


def test_load_our_keys(tmp_path: Path, generated: GeneratedKeys) -> None:
    keys = load_our_keys(_config(tmp_path, generated), NOW)
    assert keys.fingerprint == generated.openpgp_fingerprint
    assert keys.signer.cert.fingerprint.lower() == generated.openpgp_fingerprint
    data = pysequoia.encrypt(b"ping", [keys.cert], armor=False)
    assert pysequoia.decrypt(data, keys.decryptor()).bytes == b"ping"
    assert keys.decryptor() is keys.decryptor()  # unlocked once


def test_world_readable_secret_is_refused_at_load(tmp_path: Path) -> None:
    gen = generate_keys(tmp_path, party_id="a", party_name="A", pq=False, passphrase=None)
    gen.openpgp_key.chmod(0o644)
    with pytest.raises(errors.KeyFileError) as caught:
        load_our_keys(_config(tmp_path, gen), NOW)
    message = str(caught.value)
    assert str(gen.openpgp_key) in message and "0644" in message and f"chmod 600 {gen.openpgp_key}" in message
    gen.openpgp_key.chmod(0o600)
    gen.ssh_private.chmod(0o640)
    with pytest.raises(errors.KeyFileError, match="SSH private key is accessible by group"):
        load_our_keys(_config(tmp_path, gen), NOW)


def test_missing_key_file_says_generate(tmp_path: Path) -> None:
    with pytest.raises(errors.KeyFileError, match="sftp-pipeline keys generate"):
        check_secret_file(tmp_path / "openpgp.key")


def test_expired_own_key_is_refused(tmp_path: Path, generated: GeneratedKeys) -> None:
    with pytest.raises(errors.KeyPolicyError, match=r"our OpenPGP key.*expired"):
        load_our_keys(_config(tmp_path, generated), NOW + timedelta(days=800))


def test_passphrase_from_env_and_file(tmp_path: Path) -> None:
    assert read_passphrase(Secret(env="PW"), what="SSH key", environ={"PW": SECRET}).reveal() == SECRET
    with pytest.raises(errors.KeyFileError, match="environment variable PW_MISSING"):
        read_passphrase(Secret(env="PW_MISSING"), what="SSH key", environ={})
    pw_file = tmp_path / "pw"
    fd = os.open(pw_file, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, f"{SECRET}\n".encode())
    os.close(fd)
    assert read_passphrase(Secret(file=pw_file), what="SSH key").reveal() == SECRET
    pw_file.chmod(0o644)
    with pytest.raises(errors.KeyFileError, match="chmod 600"):
        read_passphrase(Secret(file=pw_file), what="SSH key")


def test_encrypted_ssh_key_loads_with_passphrase_from_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gen = generate_keys(tmp_path, party_id="a", party_name="A", pq=False, passphrase=Passphrase(SECRET))
    config = _config(tmp_path, gen, ssh_passphrase=Secret(env="SFTP_TEST_SSH_PW"))
    monkeypatch.delenv("SFTP_TEST_SSH_PW", raising=False)
    with pytest.raises(errors.KeyFileError, match="SFTP_TEST_SSH_PW"):
        load_our_keys(config, NOW)
    monkeypatch.setenv("SFTP_TEST_SSH_PW", "wrong")
    with pytest.raises(errors.KeyFileError, match=r"check keys\.ssh_passphrase"):
        load_our_keys(config, NOW)
    monkeypatch.setenv("SFTP_TEST_SSH_PW", SECRET)
    keys = load_our_keys(config, NOW)
    assert keys.ssh_passphrase is not None and keys.ssh_passphrase.reveal() == SECRET
    assert SECRET not in repr(keys) and SECRET not in str(keys)
    with pytest.raises(errors.KeyFileError, match=r"set keys\.ssh_passphrase"):
        load_our_keys(_config(tmp_path, gen), NOW)


def test_secrets_never_show(tmp_path: Path, generated: GeneratedKeys) -> None:
    secret = Passphrase(SECRET)
    assert SECRET not in repr(secret) and SECRET not in str(secret) and SECRET not in f"{secret}"
    with pytest.raises(TypeError):
        pickle.dumps(secret)
    keys = load_our_keys(_config(tmp_path, generated), NOW)
    text = repr(keys)
    assert "hidden" in text and generated.openpgp_fingerprint in text
    assert "PRIVATE KEY" not in text and "Tsk" not in text and "PySigner" not in text


def _partner(cert_path: Path, **extra: object) -> Partner:
    return Partner(id="utility", name="Metro Distribution", openpgp_cert=cert_path, **extra)  # type: ignore[arg-type]


def test_partner_cert(tmp_path: Path, generated: GeneratedKeys) -> None:
    cert = load_partner_cert(_partner(generated.openpgp_cert))
    assert cert.fingerprint.lower() == generated.openpgp_fingerprint
    with pytest.raises(errors.KeyFileError, match=r"partner 'utility'.*missing\.asc not found"):
        load_partner_cert(_partner(tmp_path / "missing.asc"))
    junk = tmp_path / "junk.asc"
    junk.write_text("not a key")
    with pytest.raises(errors.KeyFileError, match="is not an OpenPGP certificate"):
        load_partner_cert(_partner(junk))
    with pytest.raises(errors.KeyFileError, match="SECRET key material"):
        load_partner_cert(_partner(generated.openpgp_key))
    two = tmp_path / "two.asc"
    two.write_bytes(
        generated.openpgp_cert.read_bytes()
        + b"\n"
        + pysequoia.Tsk.generate("B").extract_certificate().__str__().encode()
    )
    with pytest.raises(errors.KeyFileError, match="holds 2 certificates"):
        load_partner_cert(_partner(two))


def test_list_keys(tmp_path: Path, generated: GeneratedKeys) -> None:
    other = generate_keys(tmp_path / "them", party_id="utility", party_name="Metro", pq=True, passphrase=None)
    host_line = other.host_key_public.read_text().strip()
    login_line = other.ssh_public.read_text().strip()
    partner = _partner(
        other.openpgp_cert,
        ssh_login_keys=[login_line],
        sftp=SftpEndpoint(host="127.0.0.1", user="agg", host_keys=[f"[127.0.0.1]:2222 {host_line}", "SHA256:abc"]),
    )
    config = _config(tmp_path, generated).model_copy(update={"partners": {"utility": partner}})
    rows = list_keys(config, NOW)
    kinds = [(r.owner, r.kind) for r in rows]
    assert kinds == [
        ("us (aggregator)", "OpenPGP key"),
        ("us (aggregator)", "SSH identity"),
        ("us (aggregator)", "SSH host key"),
        ("partner utility", "OpenPGP certificate"),
        ("partner utility", "pinned host key"),
        ("partner utility", "pinned host key"),
        ("partner utility", "SSH login key"),
    ]
    by = {(r.kind, r.fingerprint): r for r in rows}
    assert rows[0].fingerprint == generated.openpgp_fingerprint and rows[0].problems == ()
    assert rows[0].algorithm == "Ed25519 + X25519" and rows[0].expires is not None
    assert rows[3].post_quantum and rows[3].algorithm == "ML-DSA-65+Ed25519 + ML-KEM-768+X25519"
    assert ("pinned host key", other.host_key_fingerprint) in by
    assert ("SSH login key", other.ssh_fingerprint) in by
    assert rows[1].fingerprint == generated.ssh_fingerprint and rows[1].algorithm == "ssh-ed25519"
    assert all(not r.problems for r in rows)


def test_list_keys_reports_problems_instead_of_raising(tmp_path: Path) -> None:
    gen = generate_keys(tmp_path, party_id="a", party_name="A", pq=False, passphrase=None)
    gen.openpgp_key.chmod(0o640)
    config = _config(tmp_path, gen).model_copy(update={"partners": {"utility": _partner(tmp_path / "absent.asc")}})
    rows = list_keys(config, NOW + timedelta(days=900))
    assert "chmod 600" in rows[0].problems[0]
    partner_row = next(r for r in rows if r.owner == "partner utility")
    assert "not found" in partner_row.problems[0]
    gen.openpgp_key.chmod(0o600)
    expired = list_keys(config, NOW + timedelta(days=900))[0]
    assert any("expired" in p for p in expired.problems)

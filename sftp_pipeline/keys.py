"""Keys: ours (OpenPGP signing + decryption, SSH identity, SSH host key) and our partners'.

Secret files must not be accessible by group or others; passphrases come from
an environment variable or a file (itself 0600), never from the config. A
partner's OpenPGP file must be a public certificate: secret material there is
refused, because it means someone sent (or copied) the wrong file.

``generate_keys`` makes a party's whole key set. pysequoia 0.1.35 cannot write
a passphrase-protected OpenPGP secret key (there is no API to encrypt secret
key material), so the generated ``openpgp.key`` is unencrypted and protected by
its 0600 mode; a key protected elsewhere (``gpg --export-secret-keys``) loads
with ``keys.openpgp_passphrase``. The SSH identity *is* encrypted when a
passphrase is given. The SSH host key is never encrypted: the embedded server
must start unattended.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import asyncssh
import pysequoia
from pysequoia.packet import PacketPile, Tag

from sftp_pipeline.clock import rfc3339
from sftp_pipeline.config import Config, Partner, Secret
from sftp_pipeline.errors import ConfigError, KeyFileError
from sftp_pipeline.openpgp import CertInfo, SigningKey, check_cert, describe_cert

# The environment variable `sftp-pipeline keys generate` reads a new key's passphrase from.
PASSPHRASE_ENV = "SFTP_PIPELINE_KEY_PASSPHRASE"  # noqa: S105 - a variable name, not a secret
# Why 2 years: GnuPG's default; long enough for a contract term, short enough that a lost key dies.
DEFAULT_VALIDITY_DAYS = 730
# Why 0o077: like OpenSSH, refuse a secret any other account could read or replace.
_GROUP_OTHER = 0o077
_SECRET_MODE = 0o600
_PUBLIC_MODE = 0o644
OPENPGP_KEY_NAME = "openpgp.key"
OPENPGP_CERT_NAME = "openpgp.asc"
SSH_KEY_NAME = "ssh_ed25519"
HOST_KEY_NAME = "ssh_host_ed25519"

COMPAT_RFC4880 = (
    "RFC 4880 (v4) Ed25519/Cv25519: partners using GnuPG 2.2 or any RFC 4880 tool can import this certificate, "
    "verify our signatures and encrypt to us. Like every Sequoia-made key it advertises SEIPDv2, so a message "
    "sealed *to* it by Sequoia cannot be decrypted by GnuPG 2.2 — which matters only if you would open our own "
    "archive copies with GnuPG 2.2; messages we send to a GnuPG-made partner key use SEIPDv1 and open there."
)
COMPAT_RFC9580 = (
    "RFC 9580 / post-quantum: partners need Sequoia (sq) or GnuPG ≥ 2.5; GnuPG 2.2 cannot import this key "
    "or read messages sealed to it"
)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# ------------------------------------------------------------------------------------------- secrets


class Passphrase:
    """A passphrase that never shows itself in a repr, str, log line or traceback."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Passphrase(<hidden>)"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Passphrase) and other._value == self._value

    def __hash__(self) -> int:
        return hash((Passphrase, self._value))

    def __reduce__(self) -> str | tuple[object, ...]:
        raise TypeError("a Passphrase cannot be pickled")


def check_secret_file(path: Path, *, what: str = "secret key") -> None:
    """Refuse a secret file that is missing, not a regular file, or accessible by group/other."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise KeyFileError(
            f"{path}: {what} not found; run `sftp-pipeline keys generate` (or fix the path in the config)"
        ) from None
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot read the {what}: {exc.strerror}") from exc
    if not stat.S_ISREG(st.st_mode):
        raise KeyFileError(f"{path}: the {what} is not a regular file")
    if st.st_mode & _GROUP_OTHER:
        raise KeyFileError(
            f"{path}: the {what} is accessible by group or others (mode {stat.S_IMODE(st.st_mode):04o}); "
            f"run `chmod 600 {path}`"
        )


def read_passphrase(secret: Secret, *, what: str, environ: Mapping[str, str] | None = None) -> Passphrase:
    """Read a passphrase from the env var or 0600 file ``secret`` names; one trailing newline is dropped."""
    env = os.environ if environ is None else environ
    if secret.env:
        value = env.get(secret.env)
        if value is None:
            raise KeyFileError(
                f"the {what} passphrase comes from environment variable {secret.env}, which is not set; "
                f"export {secret.env}=… before running"
            )
        if not value:
            raise KeyFileError(f"environment variable {secret.env} (the {what} passphrase) is empty")
        return Passphrase(value)
    if secret.file:
        check_secret_file(secret.file, what=f"{what} passphrase file")
        try:
            text = secret.file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise KeyFileError(f"{secret.file}: cannot read the {what} passphrase: {exc}") from exc
        value = text.removesuffix("\n").removesuffix("\r")
        if not value:
            raise KeyFileError(f"{secret.file}: the {what} passphrase file is empty")
        return Passphrase(value)
    raise ConfigError(f"the {what} passphrase setting names neither 'env' nor 'file'; give one of them")


def passphrase_from_env(name: str = PASSPHRASE_ENV) -> Passphrase | None:
    """The passphrase for newly generated keys, if ``name`` is set (``keys generate`` uses it)."""
    value = os.environ.get(name)
    return Passphrase(value) if value else None


# ---------------------------------------------------------------------------------------- our keys


@dataclass(repr=False)
class OurKeys:
    """Our loaded key set. Secret handles stay out of ``repr``."""

    tsk: pysequoia.Tsk
    cert: pysequoia.Cert
    fingerprint: str
    signer: SigningKey
    ssh_key_path: Path
    ssh_passphrase: Passphrase | None
    host_key_path: Path
    openpgp_path: Path
    info: CertInfo
    _openpgp_passphrase: Passphrase | None = None
    _decryptor: pysequoia.PyDecryptor | None = field(default=None)

    def decryptor(self) -> pysequoia.PyDecryptor:
        """Our decryption handle, unlocked on first use."""
        if self._decryptor is None:
            self._decryptor = _unlock_decryptor(self.tsk, self._openpgp_passphrase, self.openpgp_path)
        return self._decryptor

    def reveal_openpgp_passphrase(self) -> str | None:
        """The OpenPGP key's passphrase, for GnuPG's throw-away home (:mod:`sftp_pipeline.openpgp.gnupg`)."""
        return self._openpgp_passphrase.reveal() if self._openpgp_passphrase else None

    def __repr__(self) -> str:
        return (
            f"OurKeys(fingerprint={self.fingerprint}, openpgp={self.openpgp_path}, ssh={self.ssh_key_path}, "
            f"host_key={self.host_key_path}, secrets=<hidden>)"
        )


@contextmanager
def _unlocking(passphrase: Passphrase | None, path: Path, kind: str) -> Iterator[None]:
    """Translate pysequoia's unlock failures into a KeyFileError that says which setting to fix."""
    try:
        yield
    except RuntimeError as exc:
        message = _first_line(exc)
        if "encrypted" in message and passphrase is None:
            raise KeyFileError(
                f"{path}: the OpenPGP secret key is passphrase-protected; set keys.openpgp_passphrase "
                '(env = "VAR" or file = "PATH") in the config'
            ) from None
        if passphrase is not None:
            raise KeyFileError(
                f"{path}: cannot unlock the OpenPGP secret key with the configured passphrase ({message}); "
                "check keys.openpgp_passphrase"
            ) from None
        raise KeyFileError(f"{path}: the OpenPGP secret key has no usable {kind} key: {message}") from None


def _unlock_signer(tsk: pysequoia.Tsk, passphrase: Passphrase | None, path: Path) -> pysequoia.PySigner:
    with _unlocking(passphrase, path, "signing"):
        return tsk.signer(passphrase.reveal() if passphrase else None)


def _unlock_decryptor(tsk: pysequoia.Tsk, passphrase: Passphrase | None, path: Path) -> pysequoia.PyDecryptor:
    with _unlocking(passphrase, path, "decryption"):
        return tsk.decryptor(passphrase.reveal() if passphrase else None)


def _secret_packets(data: bytes) -> bool:
    """True when ``data`` holds secret key packets (checked on packets: pysequoia's Cert warns on them)."""
    secret_tags = (Tag.SecretKey, Tag.SecretSubkey)
    return any(packet.tag in secret_tags for packet in PacketPile.from_bytes(data))


def _read_tsk(path: Path) -> pysequoia.Tsk:
    check_secret_file(path, what="OpenPGP secret key")
    try:
        data = path.read_bytes()
        has_secrets = _secret_packets(data)
        tsk = pysequoia.Tsk.from_bytes(data)
    except (RuntimeError, ValueError, OSError) as exc:
        raise KeyFileError(f"{path}: not an OpenPGP secret key ({_first_line(exc)}); check the file") from None
    if not has_secrets:
        raise KeyFileError(
            f"{path}: holds only a public certificate, no secret key; point keys.openpgp at our secret key "
            "(openpgp.key), or run `sftp-pipeline keys generate`"
        )
    return tsk


def load_our_keys(config: Config, now: datetime) -> OurKeys:
    """Load and check our OpenPGP key and SSH identity (permissions, passphrases, expiry, revocation)."""
    keys = config.keys
    tsk = _read_tsk(keys.openpgp)
    cert = tsk.extract_certificate()
    pgp_pass = read_passphrase(keys.openpgp_passphrase, what="OpenPGP key") if keys.openpgp_passphrase else None
    label = f"our OpenPGP key ({keys.openpgp})"
    check_cert(cert, purpose="verify", now=now, label=label)
    info = check_cert(cert, purpose="encrypt", now=now, label=label)
    signer = SigningKey(cert, _unlock_signer(tsk, pgp_pass, keys.openpgp))

    check_secret_file(keys.ssh, what="SSH private key")
    ssh_pass = read_passphrase(keys.ssh_passphrase, what="SSH key") if keys.ssh_passphrase else None
    try:
        asyncssh.read_private_key(keys.ssh, ssh_pass.reveal() if ssh_pass else None)
    except (asyncssh.KeyImportError, asyncssh.KeyEncryptionError, ValueError, OSError) as exc:
        hint = "set keys.ssh_passphrase" if ssh_pass is None else "check keys.ssh_passphrase"
        raise KeyFileError(f"{keys.ssh}: cannot load the SSH private key ({exc}); {hint}") from None
    if config.server is not None or keys.host_key.exists():
        check_secret_file(keys.host_key, what="SSH host key")
    return OurKeys(
        tsk=tsk,
        cert=cert,
        fingerprint=cert.fingerprint.lower(),
        signer=signer,
        ssh_key_path=keys.ssh,
        ssh_passphrase=ssh_pass,
        host_key_path=keys.host_key,
        openpgp_path=keys.openpgp,
        info=info,
        _openpgp_passphrase=pgp_pass,
    )


def load_partner_cert(partner: Partner) -> pysequoia.Cert:
    """The partner's public OpenPGP certificate; exactly one, public only."""
    path = partner.openpgp_cert
    where = f"partner {partner.id!r}: OpenPGP certificate {path}"
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise KeyFileError(
            f"{where} not found; ask {partner.name} for their public key (`gpg --export --armor FPR`) and save it there"
        ) from None
    except OSError as exc:
        raise KeyFileError(f"{where}: cannot read: {exc.strerror}") from exc
    try:
        has_secrets = _secret_packets(data)
        certs = [] if has_secrets else pysequoia.Cert.split_bytes(data)
    except (RuntimeError, ValueError) as exc:
        raise KeyFileError(f"{where} is not an OpenPGP certificate ({_first_line(exc)}); check the file") from None
    if has_secrets:
        raise KeyFileError(
            f"{where} contains SECRET key material; a partner file must be public. Ask {partner.name} for "
            "the public certificate only (`gpg --export --armor FPR`), replace the file and delete this copy "
            "securely (the partner should consider that key exposed)"
        )
    if len(certs) != 1:
        raise KeyFileError(f"{where} holds {len(certs)} certificates; keep exactly one (the partner's) in the file")
    return certs[0]


# ------------------------------------------------------------------------------------------ generate


@dataclass(frozen=True)
class GeneratedKeys:
    directory: Path
    openpgp_key: Path
    openpgp_cert: Path
    ssh_private: Path
    ssh_public: Path
    host_key: Path
    host_key_public: Path
    openpgp_fingerprint: str
    ssh_fingerprint: str
    host_key_fingerprint: str
    post_quantum: bool
    openpgp_key_encrypted: bool
    compatibility: str

    def rows(self) -> list[tuple[str, str, str]]:
        """(what, file, fingerprint) for display."""
        return [
            ("OpenPGP secret key (keep)", str(self.openpgp_key), self.openpgp_fingerprint),
            ("OpenPGP certificate (give to partners)", str(self.openpgp_cert), self.openpgp_fingerprint),
            ("SSH identity (keep)", str(self.ssh_private), self.ssh_fingerprint),
            ("SSH public key (give to partners)", str(self.ssh_public), self.ssh_fingerprint),
            ("SSH host key (our server; keep)", str(self.host_key), self.host_key_fingerprint),
            ("SSH host public key (partners pin it)", str(self.host_key_public), self.host_key_fingerprint),
        ]


def _write_new(path: Path, data: bytes, mode: int, overwrite: bool) -> None:
    """Create ``path`` with ``mode`` from the first byte (never chmod after): no window where it is open."""
    if overwrite and (path.exists() or path.is_symlink()):
        path.unlink()  # a reused file would keep its old mode; start fresh instead
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), mode)
    try:
        os.fchmod(fd, mode)  # the umask may have narrowed a public file's mode; never widens a secret one
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def generate_keys(
    directory: Path,
    *,
    party_id: str,
    party_name: str,
    pq: bool,
    passphrase: Passphrase | None,
    overwrite: bool = False,
    validity_days: int = DEFAULT_VALIDITY_DAYS,
) -> GeneratedKeys:
    """Create our OpenPGP key, SSH identity and SSH host key in ``directory``."""
    directory = Path(directory)
    paths = {
        "openpgp_key": directory / OPENPGP_KEY_NAME,
        "openpgp_cert": directory / OPENPGP_CERT_NAME,
        "ssh_private": directory / SSH_KEY_NAME,
        "ssh_public": directory / f"{SSH_KEY_NAME}.pub",
        "host_key": directory / HOST_KEY_NAME,
        "host_key_public": directory / f"{HOST_KEY_NAME}.pub",
    }
    existing = [str(p) for p in paths.values() if p.exists() or p.is_symlink()]
    if existing and not overwrite:
        raise KeyFileError(
            f"{directory}: keys already exist ({', '.join(existing)}); refusing to overwrite them. "
            "Move them away first, or pass --force if you really mean to replace them (partners must then "
            "receive the new public keys)"
        )
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    user_id = f"{party_name} (sftp-pipeline {party_id})"
    try:
        if pq:
            tsk = pysequoia.Tsk.generate(
                user_id,
                profile=pysequoia.Profile.RFC9580,
                cipher_suite=pysequoia.CipherSuite.MLDSA65_Ed25519,
                validity_seconds=validity_days * 86400,
            )
        else:
            tsk = pysequoia.Tsk.generate(
                user_id,
                profile=pysequoia.Profile.RFC4880,
                cipher_suite=pysequoia.CipherSuite.Cv25519,
                validity_seconds=validity_days * 86400,
            )
    except (RuntimeError, ValueError) as exc:
        raise KeyFileError(f"generating the OpenPGP key for {party_id!r} failed: {_first_line(exc)}") from exc
    cert = tsk.extract_certificate()
    comment = f"sftp-pipeline {party_id}"
    ssh_key = asyncssh.generate_private_key("ssh-ed25519", comment=comment)
    host_key = asyncssh.generate_private_key("ssh-ed25519", comment=f"{comment} host")
    ssh_private = ssh_key.export_private_key("openssh", passphrase.reveal() if passphrase else None)

    _write_new(paths["openpgp_key"], str(tsk).encode("ascii"), _SECRET_MODE, overwrite)
    _write_new(paths["openpgp_cert"], str(cert).encode("ascii"), _PUBLIC_MODE, overwrite)
    _write_new(paths["ssh_private"], ssh_private, _SECRET_MODE, overwrite)
    _write_new(paths["ssh_public"], ssh_key.export_public_key("openssh"), _PUBLIC_MODE, overwrite)
    _write_new(paths["host_key"], host_key.export_private_key("openssh"), _SECRET_MODE, overwrite)
    _write_new(paths["host_key_public"], host_key.export_public_key("openssh"), _PUBLIC_MODE, overwrite)
    return GeneratedKeys(
        directory=directory,
        **paths,
        openpgp_fingerprint=cert.fingerprint.lower(),
        ssh_fingerprint=ssh_key.get_fingerprint("sha256"),
        host_key_fingerprint=host_key.get_fingerprint("sha256"),
        post_quantum=pq,
        openpgp_key_encrypted=False,
        compatibility=COMPAT_RFC9580 if pq else COMPAT_RFC4880,
    )


# -------------------------------------------------------------------------------------------- list


def ssh_fingerprint(public_key_line: str) -> str:
    """``SHA256:…`` of an OpenSSH public key line (``ssh-ed25519 AAAA… comment``)."""
    try:
        return str(asyncssh.import_public_key(public_key_line.strip()).get_fingerprint("sha256"))
    except (asyncssh.KeyImportError, ValueError) as exc:
        raise KeyFileError(f"{public_key_line[:40]!r}…: not an OpenSSH public key ({exc})") from None


@dataclass(frozen=True)
class KeyRow:
    owner: str
    kind: str
    algorithm: str
    fingerprint: str
    expires: str | None  # RFC 3339, or None when the key does not expire
    post_quantum: bool
    problems: tuple[str, ...] = ()


def _ssh_row(owner: str, kind: str, line: str) -> KeyRow:
    try:
        key = asyncssh.import_public_key(line.strip())
    except (asyncssh.KeyImportError, ValueError) as exc:
        return KeyRow(owner, kind, "?", "?", None, False, (f"not an OpenSSH public key: {exc}",))
    return KeyRow(owner, kind, key.algorithm.decode("ascii"), key.get_fingerprint("sha256"), None, False)


def _ssh_file_row(owner: str, kind: str, private: Path) -> KeyRow:
    problems: list[str] = []
    try:
        check_secret_file(private, what=kind)
    except KeyFileError as exc:
        problems.append(str(exc))
    public = private.with_name(private.name + ".pub")
    try:
        row = _ssh_row(owner, kind, public.read_text(encoding="utf-8"))
    except OSError as exc:
        return KeyRow(owner, kind, "?", "?", None, False, (*problems, f"{public}: {exc.strerror}"))
    return KeyRow(row.owner, row.kind, row.algorithm, row.fingerprint, None, False, (*problems, *row.problems))


def _pgp_row(owner: str, kind: str, cert: pysequoia.Cert, now: datetime) -> KeyRow:
    info = describe_cert(cert, now)
    problems = list(info.problems)
    if not info.can_encrypt:
        problems.append("no valid encryption-capable key")
    if not info.can_sign:
        problems.append("no valid signing-capable key")
    algorithm = " + ".join(dict.fromkeys([info.algorithm, *info.subkey_algorithms]))
    expires = rfc3339(info.expires) if info.expires else None
    return KeyRow(owner, kind, algorithm, info.fingerprint, expires, info.post_quantum, tuple(problems))


def list_keys(config: Config, now: datetime) -> list[KeyRow]:
    """Every key the configuration refers to, ours and the partners', with its problems (never raises)."""
    rows: list[KeyRow] = []
    us = f"us ({config.party.id})"
    try:
        tsk = _read_tsk(config.keys.openpgp)
        rows.append(_pgp_row(us, "OpenPGP key", tsk.extract_certificate(), now))
    except KeyFileError as exc:
        rows.append(KeyRow(us, "OpenPGP key", "?", "?", None, False, (str(exc),)))
    rows.append(_ssh_file_row(us, "SSH identity", config.keys.ssh))
    if config.server is not None or config.keys.host_key.exists():
        rows.append(_ssh_file_row(us, "SSH host key", config.keys.host_key))
    for partner in config.partners.values():
        owner = f"partner {partner.id}"
        try:
            rows.append(_pgp_row(owner, "OpenPGP certificate", load_partner_cert(partner), now))
        except KeyFileError as exc:
            rows.append(KeyRow(owner, "OpenPGP certificate", "?", "?", None, False, (str(exc),)))
        for pin in partner.sftp.host_keys if partner.sftp else []:
            if pin.startswith("SHA256:"):
                rows.append(KeyRow(owner, "pinned host key", "(fingerprint pin)", pin, None, False))
                continue
            fields = pin.split()
            start = next((i for i, f in enumerate(fields) if f.startswith(("ssh-", "ecdsa-", "sk-"))), 0)
            rows.append(_ssh_row(owner, "pinned host key", " ".join(fields[start:])))
        for line in partner.ssh_login_keys:
            rows.append(_ssh_row(owner, "SSH login key", line))
    return rows

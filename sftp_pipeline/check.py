"""``sftp-pipeline check``: is every key usable and every partner reachable — before the nightly run finds out.

:func:`run_checks` (async) returns one :class:`CheckResult` per thing checked, ours first, then each
partner in configuration order. It never raises for a problem it was asked to find: a problem is a row
with ``ok=False`` whose detail names the thing, what is wrong and what to do. A row that is fine but
needs attention soon (a key expiring within ``report.key_expiry_warning_days``) is ``ok=True`` with a
detail starting with :data:`WARNING`.

What is checked
---------------
* Ours: the OpenPGP key (usable to sign and decrypt now, its expiry, its algorithms), the SSH identity
  (parses, not readable by group/other), the SSH host key when ``[server]`` is configured, and that the
  secret keys unlock with the configured passphrases.
* Each partner: their OpenPGP certificate (usable to encrypt to and to verify now, its expiry and
  algorithms).
* A partner with an SFTP server: one connection (host key checked against the pins before we log in),
  the negotiated key exchange, cipher and MAC, whether the key exchange is post-quantum (and that
  ``require_pq_kex`` is honoured), and that each of the four remote directories can be listed. Nothing
  is written to the partner's server: a probe file could be collected as a document.
* A partner we host: their root and its four directories exist and are writable by us, and their SSH
  login keys parse.

The connection is made once, without the retry wrapper: a check should say at once what is wrong,
not back off for a minute first.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from sftp_pipeline.config import Config, Partner
from sftp_pipeline.errors import PipelineError
from sftp_pipeline.folders import HOSTED_DIRS
from sftp_pipeline.keys import KeyRow, list_keys, load_our_keys, load_partner_cert
from sftp_pipeline.openpgp import CertInfo, check_cert, describe_cert
from sftp_pipeline.transport import Transport, sshalgs
from sftp_pipeline.wiring import connect_once

# The prefix of a detail that is fine today but needs action soon (the row is still ok).
WARNING = "WARNING"
# What to do when our own key nears its end: partners need the new certificate before the old one dies.
OUR_RENEWAL = (
    "make a new key set (`sftp-pipeline keys generate` into a new folder), send partners the new certificate and "
    "SSH public key, and switch keys.* over once they confirm"
)
# The four remote directories, by their RemoteDirs field name (the name an operator fixes in the config).
DIR_FIELDS: tuple[str, ...] = ("inbox", "outbox", "receipts_in", "receipts_out")
# SSH key types we refuse to rely on: DSA keys can only sign with SHA-1 and OpenSSH dropped them.
WEAK_SSH_KEY_TYPES = frozenset({"ssh-dss"})


@dataclass(frozen=True, slots=True)
class CheckResult:
    """One line of the check table. ``partner`` is None for our own keys."""

    partner: str | None
    what: str
    ok: bool
    detail: str


async def run_checks(config: Config, *, now: datetime) -> list[CheckResult]:
    """Check our keys, then every partner (concurrently; results keep configuration order)."""
    rows = list_keys(config, now)
    results = _our_checks(config, rows, now)
    per_partner = await asyncio.gather(
        *(_partner_checks(config, partner, rows, now) for partner in config.partners.values())
    )
    for partner_results in per_partner:
        results.extend(partner_results)
    return results


# ------------------------------------------------------------------------------------------------ ours


def _our_checks(config: Config, rows: list[KeyRow], now: datetime) -> list[CheckResult]:
    ours = [row for row in rows if row.owner.startswith("us ")]
    if config.server is None:
        ours = [row for row in ours if row.kind != "SSH host key"]  # unused without our server
    try:
        keys = load_our_keys(config, now)
    except PipelineError as exc:
        results = [_key_row_result(None, row) for row in ours]
        if all(result.ok for result in results):  # the files are fine: the failure is in unlocking them
            results.append(CheckResult(None, "our secret keys unlock", False, str(exc)))
        return results
    info = describe_cert(keys.cert, now)
    results = [
        CheckResult(
            None,
            "our OpenPGP key",
            True,
            _with_expiry(_cert_summary(info, keys.openpgp_path), info, config, now, "our OpenPGP key", OUR_RENEWAL),
        )
    ]
    results.extend(_key_row_result(None, row) for row in ours if row.kind != "OpenPGP key")
    results.append(
        CheckResult(None, "our secret keys unlock", True, "OpenPGP signing and decryption key, SSH identity")
    )
    return results


def _key_row_result(partner: str | None, row: KeyRow) -> CheckResult:
    label = f"our {row.kind}" if partner is None else row.kind
    if row.problems:
        return CheckResult(partner, label, False, "; ".join(row.problems))
    if row.algorithm in WEAK_SSH_KEY_TYPES:
        return CheckResult(
            partner,
            label,
            False,
            f"{row.fingerprint} is a {row.algorithm} key, which signs only with SHA-1; replace it with an "
            "ed25519 key (`ssh-keygen -t ed25519`)",
        )
    return CheckResult(partner, label, True, f"{row.algorithm} {row.fingerprint}")


# ------------------------------------------------------------------------------------------- partners


async def _partner_checks(config: Config, partner: Partner, rows: list[KeyRow], now: datetime) -> list[CheckResult]:
    results = [_partner_cert(config, partner, now)]
    if partner.sftp is None:
        results.extend(_hosted_checks(config, partner, rows))
    else:
        results.extend(await _sftp_checks(config, partner))
    return results


def _partner_cert(config: Config, partner: Partner, now: datetime) -> CheckResult:
    what = "OpenPGP certificate"
    label = f"partner {partner.id!r}"
    try:
        cert = load_partner_cert(partner)
        info = check_cert(cert, purpose="encrypt", now=now, label=label)
        check_cert(cert, purpose="verify", now=now, label=label)
    except PipelineError as exc:
        return CheckResult(partner.id, what, False, str(exc))
    detail = _cert_summary(info, partner.openpgp_cert)
    renewal = (
        f"ask {partner.name} to extend it (`gpg --quick-set-expire {info.fingerprint} 2y '*'`) or agree a new "
        "key, and to send the updated certificate"
    )
    return CheckResult(
        partner.id, what, True, _with_expiry(detail, info, config, now, f"{label}'s certificate", renewal)
    )


def _hosted_checks(config: Config, partner: Partner, rows: list[KeyRow]) -> list[CheckResult]:
    root = config.hosted_root(partner.id)
    results: list[CheckResult] = []
    if config.server is not None:
        served_by = (
            f"our embedded server ({', '.join(config.server.listen)} port {config.server.port}), which offers "
            f"post-quantum key exchange ({', '.join(sshalgs.PQ_KEX_ALGS) or 'none in this asyncssh'}); "
            "what the partner negotiates is recorded per transfer"
        )
    else:
        served_by = "this host's OpenSSH (no [server] section; see deploy/sshd_config.partners)"
    results.append(CheckResult(partner.id, "transport", True, f"hosted: they log in to {served_by}; root {root}"))
    fix = (
        "start `sftp-pipeline serve` once (it creates every partner's directories)"
        if config.server is not None
        else f"create it (`install -d -m 0750 {root}/{{{','.join(HOSTED_DIRS)}}}`), owned as deploy/README.md says"
    )
    if not root.is_dir():
        results.append(CheckResult(partner.id, "hosted root", False, f"{root} does not exist; {fix}"))
    else:
        results.extend(_hosted_dir(partner.id, root / name, fix) for name in HOSTED_DIRS)
    login_rows = [row for row in rows if row.owner == f"partner {partner.id}" and row.kind == "SSH login key"]
    if login_rows:
        results.extend(_key_row_result(partner.id, row) for row in login_rows)
    elif config.server is not None:
        results.append(
            CheckResult(
                partner.id,
                "SSH login key",
                False,
                f"partner {partner.id!r} has no ssh_login_keys, so it cannot log in to our server; add their "
                f"public key (their id_ed25519.pub) to partners.{partner.id}.ssh_login_keys",
            )
        )
    return results


def _hosted_dir(partner_id: str, path: Path, fix: str) -> CheckResult:
    what = f"hosted dir {path.name}"
    if not path.is_dir():
        return CheckResult(partner_id, what, False, f"{path} does not exist; {fix}")
    if not os.access(path, os.W_OK | os.X_OK):
        return CheckResult(
            partner_id,
            what,
            False,
            f"{path} is not writable by this account (uid {os.geteuid()}); give the service account write "
            "access (owner or group, mode 0770/0750 as deploy/README.md says)",
        )
    return CheckResult(partner_id, what, True, f"{path} exists and is writable")


async def _sftp_checks(config: Config, partner: Partner) -> list[CheckResult]:
    endpoint = partner.sftp
    assert endpoint is not None
    where = f"{endpoint.user}@{endpoint.host}:{endpoint.port}"
    try:
        transport = await connect_once(config, partner)
    except PipelineError as exc:
        return [CheckResult(partner.id, "SSH connection", False, f"{where}: {exc}")]
    results: list[CheckResult] = []
    async with transport:
        session = transport.session
        server = session.extra.get("server_version", "")
        results.append(
            CheckResult(
                partner.id,
                "SSH connection",
                True,
                f"{where}{f' ({server})' if server else ''}: host key {session.host_key} matches the pin; "
                f"kex {session.kex}, cipher {session.cipher}, MAC {session.mac}",
            )
        )
        results.append(_pq_result(partner, session.kex, session.post_quantum, endpoint.require_pq_kex))
        for field in DIR_FIELDS:
            results.append(await _remote_dir(partner, transport, field))
    return results


def _pq_result(partner: Partner, kex: str, post_quantum: bool, required: bool) -> CheckResult:
    what = "post-quantum key exchange"
    if post_quantum:
        return CheckResult(partner.id, what, True, f"yes: {kex}")
    offered = ", ".join(sshalgs.PQ_KEX_ALGS) or "none (this asyncssh has no post-quantum kex)"
    if required:
        return CheckResult(
            partner.id,
            what,
            False,
            f"no: {kex} was negotiated although partners.{partner.id}.sftp.require_pq_kex = true; "
            "this is a bug — report it",
        )
    return CheckResult(
        partner.id,
        what,
        True,
        f"no: {kex} negotiated; the server offers none of ours ({offered}). Ask {partner.name} to enable "
        f"one (OpenSSH ≥ 9.9 has mlkem768x25519-sha256), then set partners.{partner.id}.sftp.require_pq_kex = true",
    )


async def _remote_dir(partner: Partner, transport: Transport, field: str) -> CheckResult:
    assert partner.sftp is not None
    name = str(getattr(partner.sftp.dirs, field))
    what = f"remote dir {name}"
    try:
        entries = await transport.list(name)
    except PipelineError as exc:
        return CheckResult(
            partner.id,
            what,
            False,
            f"{name!r} (sftp.dirs.{field}) cannot be listed: {exc}. Fix: ask {partner.name} to create it for "
            f"user {partner.sftp.user!r}, or set partners.{partner.id}.sftp.dirs.{field} to the directory "
            "they use",
        )
    count = len(entries)
    return CheckResult(partner.id, what, True, f"listable; {count} file{'' if count == 1 else 's'} in it now")


# ---------------------------------------------------------------------------------------------- helpers


def _cert_summary(info: CertInfo, path: Path) -> str:
    algorithms = " + ".join(dict.fromkeys([*info.signing_algorithms, *info.encryption_algorithms]))
    pq = "post-quantum" if info.post_quantum else "not post-quantum"
    return f"{info.fingerprint} ({path.name}): {algorithms}, {info.profile}, {pq}"


def usable_until(info: CertInfo) -> datetime | None:
    """When the certificate stops being usable for both signing and encryption (None: never).

    The earliest of the primary key's expiry and, per capability, the expiry of the last usable key
    with it: an encryption subkey that expires before the primary ends the certificate's use first.
    """
    ends = [info.expires] if info.expires is not None else []
    for capable in (
        [k for k in info.keys if k.can_encrypt and k.usable],
        [k for k in info.keys if k.can_sign and k.usable],
    ):
        expiries = [k.expires for k in capable]
        if capable and all(e is not None for e in expiries):
            ends.append(max(e for e in expiries if e is not None))
    return min(ends, default=None)


def _with_expiry(detail: str, info: CertInfo, config: Config, now: datetime, label: str, renewal: str) -> str:
    until = usable_until(info)
    if until is None:
        return f"{detail}; does not expire"
    left = until - now
    warn = timedelta(days=config.report.key_expiry_warning_days)
    if left <= warn:
        days = max(left.days, 0)
        return (
            f"{WARNING}: {label} expires in {days} day{'' if days == 1 else 's'} ({until:%Y-%m-%d %H:%M} UTC); "
            f"{renewal} — {detail}"
        )
    return f"{detail}; expires {until:%Y-%m-%d}"

"""Staging set-up for deploy/docker-compose.yml: keys and configuration for every party, made once.

Writes into ``STAGING`` (a shared volume):

* ``utility/`` — hosts the aggregator on its embedded SFTP server (port 2222, post-quantum kex);
* ``aggregator/`` — pushes to the utility's server, and to ``legacy``: a partner that runs plain
  OpenSSH instead of sftp-pipeline (the ``openssh`` service, configured with deploy/sshd_config.partners);
* ``openssh/`` — that server's host key and the aggregator's authorised login key.

Run again, it changes nothing: delete the volume (``docker compose down -v``) to start afresh.
Every host key is pinned in the configurations; nothing is trusted on first use.
"""

from __future__ import annotations

import sys
from pathlib import Path

import asyncssh

from sftp_pipeline.keys import GeneratedKeys, generate_keys

STAGING = Path(sys.argv[1] if len(sys.argv) > 1 else "/staging")
DONE = STAGING / ".ready"
UTILITY_PORT = 2222
TYPES_TO_UTILITY = ("invoice", "transaction_confirmation", "aggregation_data")
TYPES_TO_AGGREGATOR = ("billing_payment", "outage_info")
# Why every minute: staging should show a receipt within a minute or two, not the next night.
EVERY_MINUTE = "* * * * *"


def _list(values: tuple[str, ...] | list[str]) -> str:
    return "[" + ", ".join(f'"{v}"' for v in values) + "]"


def _public(path: Path) -> str:
    return " ".join(path.read_text().split()[:2])


def _toml(value: str | bool) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else '"' + value.replace('"', '\\"') + '"'


def _job(directory: Path, name: str, **fields: str | bool) -> None:
    lines = [f"{key} = {_toml(value)}" for key, value in fields.items()]
    (directory / "jobs").mkdir(parents=True, exist_ok=True)
    (directory / "jobs" / f"{name}.toml").write_text("\n".join(lines) + "\n")


def _keys(party: Path, party_id: str, name: str, *, pq: bool) -> GeneratedKeys:
    # overwrite: a set-up interrupted before DONE is redone whole, never half-reused.
    return generate_keys(party / "keys", party_id=party_id, party_name=name, pq=pq, passphrase=None, overwrite=True)


def _send(party: Path, partner: str, document_type: str, *, name: str | None = None, drop: str | None = None) -> None:
    source = f"../drop/{drop or document_type}"
    fields: dict[str, str | bool] = {"kind": "send", "partner": partner, "document_type": document_type}
    _job(party, name or f"{document_type}-out", **fields, source=source, watch=True)


def main() -> None:
    if DONE.exists():
        print(f"{STAGING}: already set up")
        return
    aggregator, utility, legacy, openssh = (STAGING / n for n in ("aggregator", "utility", "legacy", "openssh"))
    agg_keys = _keys(aggregator, "aggregator", "Staging Aggregator", pq=True)
    utl_keys = _keys(utility, "utility", "Staging Utility", pq=True)
    legacy_keys = _keys(legacy, "legacy", "Legacy Partner (plain OpenSSH + GnuPG)", pq=False)
    for party, partner, cert in (
        (aggregator, "utility", utl_keys.openpgp_cert),
        (aggregator, "legacy", legacy_keys.openpgp_cert),
        (utility, "aggregator", agg_keys.openpgp_cert),
    ):
        (party / "keys" / "partners").mkdir(exist_ok=True)
        (party / "keys" / "partners" / f"{partner}.asc").write_bytes(cert.read_bytes())

    openssh.mkdir(parents=True, exist_ok=True)
    host_key = asyncssh.generate_private_key("ssh-ed25519", comment="staging openssh")
    host_key.write_private_key(str(openssh / "ssh_host_ed25519_key"))
    (openssh / "ssh_host_ed25519_key").chmod(0o600)
    (openssh / "ssh_host_ed25519_key.pub").write_bytes(host_key.export_public_key())
    (openssh / "aggregator.authorized_keys").write_text(agg_keys.ssh_public.read_text())

    (utility / "sftp-pipeline.toml").write_text(
        '[party]\nid = "utility"\nname = "Staging Utility"\n\n'
        f'[server]\nlisten = ["0.0.0.0"]\nport = {UTILITY_PORT}\n\n'
        '[partners.aggregator]\nname = "Staging Aggregator"\nopenpgp_cert = "keys/partners/aggregator.asc"\n'
        f"send = {_list(TYPES_TO_AGGREGATOR)}\nreceive = {_list(TYPES_TO_UTILITY)}\n"
        f'ssh_login_keys = ["{_public(agg_keys.ssh_public)}"]\n'
    )
    for t in TYPES_TO_AGGREGATOR:
        _send(utility, "aggregator", t)
    _job(utility, "collect", kind="collect", partner="aggregator", deliver_to="../delivered", schedule=EVERY_MINUTE)
    _job(utility, "receipts", kind="receipts", partner="aggregator", schedule=EVERY_MINUTE)

    (aggregator / "sftp-pipeline.toml").write_text(
        '[party]\nid = "aggregator"\nname = "Staging Aggregator"\n\n'
        '[partners.utility]\nname = "Staging Utility"\nopenpgp_cert = "keys/partners/utility.asc"\n'
        f"send = {_list(TYPES_TO_UTILITY)}\nreceive = {_list(TYPES_TO_AGGREGATOR)}\n\n"
        f'[partners.utility.sftp]\nhost = "utility"\nport = {UTILITY_PORT}\nuser = "aggregator"\n'
        f'require_pq_kex = true\nhost_keys = ["[utility]:{UTILITY_PORT} {_public(utl_keys.host_key_public)}"]\n\n'
        '[partners.legacy]\nname = "Legacy Partner"\nopenpgp_cert = "keys/partners/legacy.asc"\n'
        'send = ["invoice"]\nreceive = []\n\n'
        '[partners.legacy.sftp]\nhost = "openssh"\nport = 22\nuser = "aggregator"\n'
        f'host_keys = ["openssh {_public(openssh / "ssh_host_ed25519_key.pub")}"]\n'
    )
    for t in TYPES_TO_UTILITY:
        _send(aggregator, "utility", t)
    _send(aggregator, "legacy", "invoice", name="invoice-legacy", drop="legacy")
    _job(aggregator, "collect", kind="collect", partner="utility", deliver_to="../delivered", schedule=EVERY_MINUTE)
    _job(aggregator, "receipts", kind="receipts", partner="utility", schedule=EVERY_MINUTE)
    for party, types in ((aggregator, (*TYPES_TO_UTILITY, "legacy")), (utility, TYPES_TO_AGGREGATOR)):
        for t in types:
            (party / "drop" / t).mkdir(parents=True, exist_ok=True)
        (party / "delivered").mkdir(exist_ok=True)
    DONE.write_text("ok\n")
    print(f"{STAGING}: keys and configuration written for aggregator, utility and the openssh partner")


if __name__ == "__main__":
    main()

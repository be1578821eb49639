"""``sftp-pipeline demo``: two parties on loopback, set up on the fly, nothing needed beyond the package.

A DER aggregator and a distribution utility, each with its own keys,
configuration and ledger, in one folder:

1. the aggregator seals an invoice, a transaction confirmation and a large
   aggregation CSV and pushes them into the utility's embedded SFTP server;
   the utility collects each one the moment its upload completes (decrypts,
   verifies, delivers, answers with a signed receipt);
2. the utility places billing/payment and outage documents for the
   aggregator on its server; the aggregator collects them and answers with
   its own receipts;
3. both pull and verify the receipts, reconcile, write their signed reports
   and email them to a local SMTP relay the demo starts (or leave the .eml);
4. GnuPG, holding only the utility's key, independently opens what arrived.

Everything stays in the demo folder to inspect.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.table import Table

from sftp_pipeline.clock import utc_now
from sftp_pipeline.config import Config, load_config
from sftp_pipeline.demo.samples import GnupgOpened, gnupg_key, open_with_gnupg, write_samples, write_utility_samples
from sftp_pipeline.errors import ConfigError
from sftp_pipeline.flows.collect import CollectOutcome
from sftp_pipeline.fsutil import sha256_file
from sftp_pipeline.keys import generate_keys
from sftp_pipeline.proof.reconcile import Reconciliation
from sftp_pipeline.reporting.render import ReportFiles
from sftp_pipeline.wiring import Runtime, embedded_server, open_runtime

MARKER = ".sftp-pipeline-demo"
AGGREGATOR, UTILITY = "aggregator", "utility"
AGGREGATOR_NAME, UTILITY_NAME = "Sunrise DER Aggregation LLC", "Metro Distribution Utility"
# What each side sends under the NAESB base contract.
AGGREGATOR_SENDS = ("invoice", "transaction_confirmation", "aggregation_data")
UTILITY_SENDS = ("billing_payment", "outage_info", "invoice", "transaction_confirmation")
# Why 60 s: collecting 100 MB takes about a second here; a minute means something is stuck, so report it.
COLLECT_WAIT = 60.0


def _prepare_dir(directory: Path) -> None:
    if directory.exists() and any(directory.iterdir()):
        if not (directory / MARKER).exists():
            raise ConfigError(
                f"{directory} exists and is not a demo folder; choose another folder or remove it yourself"
            )
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    (directory / MARKER).write_text("created by `sftp-pipeline demo`; safe to delete\n")


def _toml_list(values: tuple[str, ...] | list[str]) -> str:
    return "[" + ", ".join(f'"{v}"' for v in values) + "]"


def _smtp_block(port: int | None, to: str) -> str:
    if port is None:
        return ""
    return (
        f'[smtp]\nhost = "127.0.0.1"\nport = {port}\nsecurity = "none"\ntrusted_local_relay = true\n'
        f'sender = "sftp-pipeline@{to}.example"\nrecipients = ["settlement@{to}.example"]\ntimeout = 10\n'
    )


def _jobs(folder: Path, jobs: dict[str, str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, body in jobs.items():
        (folder / f"{name}.toml").write_text(body)


def _setup(directory: Path, size_mb: int, smtp_port: int | None) -> tuple[Path, Path]:
    agg, utl = directory / AGGREGATOR, directory / UTILITY
    agg_keys = generate_keys(agg / "keys", party_id=AGGREGATOR, party_name=AGGREGATOR_NAME, pq=False, passphrase=None)
    utl_keys = generate_keys(utl / "keys", party_id=UTILITY, party_name=UTILITY_NAME, pq=False, passphrase=None)
    if shutil.which("gpg"):
        # The utility's OpenPGP key comes from GnuPG, as many utilities' existing keys do: our messages to it
        # then use SEIPDv1, which GnuPG 2.2 reads (keys made by Sequoia advertise SEIPDv2, which it cannot).
        secret, public = gnupg_key(f"{UTILITY_NAME} <settlement@utility.example>")
        utl_keys.openpgp_key.unlink()
        fd = os.open(utl_keys.openpgp_key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(secret)
        utl_keys.openpgp_cert.write_bytes(public)
    (agg / "keys" / "partners").mkdir(parents=True)
    (utl / "keys" / "partners").mkdir(parents=True)
    shutil.copy(utl_keys.openpgp_cert, agg / "keys" / "partners" / f"{UTILITY}.asc")
    shutil.copy(agg_keys.openpgp_cert, utl / "keys" / "partners" / f"{AGGREGATOR}.asc")
    login_key = Path(agg_keys.ssh_public).read_text().strip()
    (utl / "sftp-pipeline.toml").write_text(f"""# Written by `sftp-pipeline demo`.
[party]
id = "{UTILITY}"
name = "{UTILITY_NAME}"

[server]
listen = ["127.0.0.1"]
port = 0
root = "sftp-root"

[report]
timezone = "America/Chicago"

{_smtp_block(smtp_port, UTILITY)}
[partners.{AGGREGATOR}]
name = "{AGGREGATOR_NAME}"
openpgp_cert = "keys/partners/{AGGREGATOR}.asc"
receive = {_toml_list(AGGREGATOR_SENDS)}
send = {_toml_list(UTILITY_SENDS)}
ssh_login_keys = ["{login_key}"]
""")
    _jobs(
        utl / "jobs",
        {
            f"collect-from-{AGGREGATOR}": f'kind = "collect"\npartner = "{AGGREGATOR}"\ndeliver_to = "../received"\n',
            f"receipts-from-{AGGREGATOR}": f'kind = "receipts"\npartner = "{AGGREGATOR}"\n',
            **{
                f"{t.replace('_', '-')}-to-{AGGREGATOR}": f'kind = "send"\npartner = "{AGGREGATOR}"\n'
                f'document_type = "{t}"\nsource = "../drop/{t}"\n'
                for t in UTILITY_SENDS
            },
        },
    )
    _jobs(
        agg / "jobs",
        {
            f"collect-from-{UTILITY}": f'kind = "collect"\npartner = "{UTILITY}"\ndeliver_to = "../received"\n',
            f"receipts-from-{UTILITY}": f'kind = "receipts"\npartner = "{UTILITY}"\n',
            **{
                f"{t.replace('_', '-')}-to-{UTILITY}": f'kind = "send"\npartner = "{UTILITY}"\n'
                f'document_type = "{t}"\nsource = "../drop/{t}"\n'
                for t in AGGREGATOR_SENDS
            },
        },
    )
    write_samples(agg / "drop", size_mb)
    write_utility_samples(utl / "drop")
    return agg, utl


def _write_aggregator_config(agg: Path, host_key_pub: str, port: int, smtp_port: int | None) -> None:
    (agg / "sftp-pipeline.toml").write_text(f"""# Written by `sftp-pipeline demo`.
[party]
id = "{AGGREGATOR}"
name = "{AGGREGATOR_NAME}"

[report]
timezone = "America/Chicago"

{_smtp_block(smtp_port, AGGREGATOR)}
[partners.{UTILITY}]
name = "{UTILITY_NAME}"
openpgp_cert = "keys/partners/{UTILITY}.asc"
send = {_toml_list(AGGREGATOR_SENDS)}
receive = {_toml_list(UTILITY_SENDS)}

[partners.{UTILITY}.sftp]
host = "127.0.0.1"
port = {port}
user = "{AGGREGATOR}"
host_keys = ["[127.0.0.1]:{port} {host_key_pub}"]
""")


@dataclass
class Side:
    config: Config
    reconciliation: Reconciliation | None = None
    report: ReportFiles | None = None
    emailed: list[str] = field(default_factory=list)
    mail_problem: str = ""


@dataclass
class Exchange:
    aggregator: Side
    utility: Side
    collected_by_utility: list[CollectOutcome]
    problems: list[str]


def _report(side: Side, rt: Runtime) -> None:
    """Reconcile, write the signed report, and email it to the party's [smtp] relay."""
    produced = rt.produce_report(now=utc_now(), since=None, email=True)
    side.reconciliation, side.report = produced.reconciliation, produced.files
    if produced.mail is not None:
        side.emailed = produced.mail.sent
        side.mail_problem = "" if produced.mail.ok else str(produced.mail.error or produced.mail.failed)


async def _exchange(utility: Config, agg_dir: Path, smtp_port: int | None) -> Exchange:
    collected: list[CollectOutcome] = []
    problems: list[str] = []
    all_collected = asyncio.Event()
    with open_runtime(utility) as urt:
        collector = urt.collector()

        def note(outcome: CollectOutcome) -> None:
            collected.append(outcome)
            if len(collected) >= len(AGGREGATOR_SENDS):
                all_collected.set()

        async with embedded_server(utility, on_upload=urt.upload_hook(collector, report=note)) as server:
            host_key_pub = " ".join(utility.keys.host_key.with_suffix(".pub").read_text().split()[:2])
            _write_aggregator_config(agg_dir, host_key_pub, server.port, smtp_port)
            aggregator = load_config(agg_dir / "sftp-pipeline.toml")
            with open_runtime(aggregator) as art:
                # 1. aggregator → utility: each upload is collected and receipted as it completes
                sent = await art.outbound().run(aggregator.jobs_of("send"))
                if not sent.ok:
                    problems.append(f"aggregator send: {[o.detail for o in sent.outcomes if o.state != 'uploaded']}")
                # 2. utility → aggregator: placed on the utility's server, collected by the aggregator
                back = await urt.outbound().run(utility.jobs_of("send"))
                if not back.ok:
                    problems.append("utility send failed")
                fetched = await art.collector().run(aggregator.jobs_of("collect"))
                if not fetched.ok:
                    problems.append("aggregator collect failed")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(all_collected.wait(), COLLECT_WAIT)
                # 3. both settle their ledgers from the other's signed receipts
                for config, rt in ((aggregator, art), (utility, urt)):
                    pulled = await rt.receipt_puller().run(config.jobs_of("receipts"))
                    if not pulled.ok:
                        problems.append(f"{config.party.id} receipts failed")
                agg_side, utl_side = Side(aggregator), Side(utility)
                await asyncio.to_thread(_report, agg_side, art)
                await asyncio.to_thread(_report, utl_side, urt)
    return Exchange(agg_side, utl_side, collected, problems)


@contextlib.contextmanager
def _local_relay(directory: Path) -> Iterator[tuple[int | None, list[bytes]]]:
    """A local SMTP relay on 127.0.0.1 that keeps what it receives as .eml files (aiosmtpd), if installed."""
    received: list[bytes] = []
    try:
        from aiosmtpd.controller import Controller
    except ImportError:
        yield None, received
        return
    mailbox = directory / "mailbox"
    mailbox.mkdir()

    class Keep:
        async def handle_DATA(self, server: object, session: object, envelope: object) -> str:
            data = envelope.content  # type: ignore[attr-defined]
            received.append(data)
            (mailbox / f"report-{len(received)}.eml").write_bytes(data)
            return "250 OK"

    with socket.socket() as probe:  # a free port (aiosmtpd's readiness check cannot use port 0)
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    controller = Controller(Keep(), hostname="127.0.0.1", port=port, server_hostname="localhost", ready_timeout=10)
    controller.start()
    try:
        yield port, received
    finally:
        controller.stop()


def run_demo(directory: Path, *, size_mb: int, console: Console) -> bool:
    started = time.monotonic()
    directory = directory.absolute()
    _prepare_dir(directory)
    console.print(f"[bold]sftp-pipeline demo[/] in {directory}")
    with _local_relay(directory) as (smtp_port, mails):
        agg, utl = _setup(directory, size_mb, smtp_port)
        console.print("  two parties with fresh keys: aggregator (SFTP client) and utility (embedded SFTP server)")
        utility = load_config(utl / "sftp-pipeline.toml")
        exchange = asyncio.run(_exchange(utility, agg, smtp_port))
    aggregator = exchange.aggregator.config
    received = utility.state_dir / "archive" / AGGREGATOR / "received"
    arrived = sorted(received.rglob("*.pgp"))
    opened: dict[str, GnupgOpened] = {
        o.name: o
        for o in open_with_gnupg(utility.keys.openpgp, agg / "keys" / "openpgp.asc", arrived, utl / "opened-with-gnupg")
    }
    all_ok = not exchange.problems and len(arrived) == len(AGGREGATOR_SENDS)
    verdicts = {o.transfer_id: o.result for o in exchange.collected_by_utility}
    table = Table(
        "from → to", "document", "bytes", "transport", "receiver", "receipt", "GnuPG check", title="validated delivery"
    )
    with open_runtime(aggregator) as art, open_runtime(utility) as urt:
        agg_in = {r.transfer_id: r for r in art.ledger.inbound_recent(100)}
        for t in sorted(art.ledger.recent(100), key=lambda t: t.id):
            check = opened.get(t.remote_name or "")
            plain = utl / "opened-with-gnupg" / (t.remote_name or "").removesuffix(".pgp")
            gpg_ok = bool(check and check.ok and plain.exists() and sha256_file(plain)[0] == t.plaintext_sha256)
            ok = t.state == "receipted" and verdicts.get(t.id) == "accepted" and gpg_ok
            all_ok = all_ok and ok
            table.add_row(
                f"{AGGREGATOR} → {UTILITY}",
                t.source_name,
                str(t.plaintext_size),
                t.ssh_kex or "",
                verdicts.get(t.id, "not collected"),
                t.state,
                "[green]signature good, bytes equal[/]" if gpg_ok else f"[red]no[/] {check.detail if check else ''}",
            )
        for t in sorted(urt.ledger.recent(100), key=lambda t: t.id):
            r = agg_in.get(t.id)
            ok = t.state == "receipted" and r is not None and r.state == "accepted"
            all_ok = all_ok and ok
            table.add_row(
                f"{UTILITY} → {AGGREGATOR}",
                t.source_name,
                str(t.plaintext_size),
                "SFTP (pulled)",
                r.state if r else "not collected",
                t.state,
                "–",
            )
    console.print(table)
    for side in (exchange.aggregator, exchange.utility):
        rec, files = side.reconciliation, side.report
        if rec is None or files is None:
            continue
        all_ok = all_ok and not rec.exceptions()
        mailed = (
            f"emailed to {', '.join(side.config.smtp.recipients)}"
            if side.emailed and side.config.smtp
            else f"[red]not emailed[/] {side.mail_problem}"
            if side.config.smtp
            else "email: no relay"
        )
        console.print(f"  {side.config.party.id} report: {files.html} ({mailed})")
    if mails:
        console.print(f"  the local relay kept {len(mails)} email(s) in {directory / 'mailbox'}")
    for problem in exchange.problems:
        console.print(f"  [red]problem:[/] {problem}")
    console.print(f"  delivered plaintext: {utl / 'received'} and {agg / 'received'}")
    console.print(f"  GnuPG's independent opening: {utl / 'opened-with-gnupg'}")
    console.print(f"  try: sftp-pipeline -c {agg / 'sftp-pipeline.toml'} status")
    console.print(
        f"  finished in {time.monotonic() - started:.1f} s: "
        + ("[green]all delivered, validated and receipted[/]" if all_ok else "[red]problems above[/]")
    )
    return all_ok

"""``sftp-pipeline demo``: two parties on loopback, set up on the fly, nothing needed beyond the package.

A DER aggregator seals sample documents (an invoice, a transaction
confirmation and a large aggregation CSV) and pushes them into the
distribution utility's embedded SFTP server; the utility collects each one the
moment its upload completes (decrypts, verifies, delivers, answers with a
signed receipt); the aggregator pulls the receipts and settles its ledger.
GnuPG, in a throw-away home holding only the utility's key, also opens what
arrived — an independent OpenPGP implementation.
Everything stays in the demo folder to inspect.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from .config import Config, load_config
from .errors import ConfigError
from .inbound import Collector, collect_on_upload
from .inbound import Outcome as CollectOutcome
from .keys import generate_keys
from .outbound import Outbound, SendReport
from .receipt_pull import PullReport, ReceiptPuller
from .runtime import open_runtime
from .server import EmbeddedServer

MARKER = ".sftp-pipeline-demo"
AGGREGATOR, UTILITY = "aggregator", "utility"
# Why these three: the documents a DER aggregator sends a distribution utility under the NAESB base contract.
OUTBOUND_TYPES = ("invoice", "transaction_confirmation", "aggregation_data")
# Why 60 s: collecting 100 MB takes about a second here; a minute means something is stuck, so report it.
COLLECT_WAIT = 60.0


@dataclass
class Opened:
    name: str
    ok: bool
    detail: str


def _prepare_dir(directory: Path) -> None:
    if directory.exists() and any(directory.iterdir()):
        if not (directory / MARKER).exists():
            raise ConfigError(
                f"{directory} exists and is not a demo folder; choose another folder or remove it yourself"
            )
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    (directory / MARKER).write_text("created by `sftp-pipeline demo`; safe to delete\n")


def _party_config(party: str, name: str, partner_block: str, server: str = "") -> str:
    return f"""# Written by `sftp-pipeline demo`.
[party]
id = "{party}"
name = "{name}"
{server}
{partner_block}"""


def write_samples(drop: Path, size_mb: int) -> None:
    (drop / "invoice").mkdir(parents=True, exist_ok=True)
    (drop / "transaction_confirmation").mkdir(parents=True, exist_ok=True)
    (drop / "aggregation_data").mkdir(parents=True, exist_ok=True)
    (drop / "invoice" / "INV-2026-11-0042.xml").write_text(
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<Invoice contract="NAESB-DGS-2026-017" period="2026-10">\n'
        "  <Seller>Sunrise DER Aggregation LLC</Seller><Buyer>Metro Distribution Utility</Buyer>\n"
        '  <Line service="capacity" mw="12.5" rate="4150.00" amount="51875.00"/>\n'
        '  <Line service="energy" mwh="318.2" rate="61.40" amount="19537.48"/>\n'
        '  <Total currency="USD">71412.48</Total>\n</Invoice>\n'
    )
    (drop / "transaction_confirmation" / "TC-2026-11-27-001.xml").write_text(
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<TransactionConfirmation contract="NAESB-DGS-2026-017" id="TC-2026-11-27-001">\n'
        "  <Service>distribution capacity</Service><Start>2026-12-01T00:00Z</Start><End>2026-12-31T23:59Z</End>\n"
        '  <Quantity unit="MW">12.5</Quantity><Price unit="USD/MW-month">4150.00</Price>\n'
        "</TransactionConfirmation>\n"
    )
    target = drop / "aggregation_data" / "AGG-2026-11-26.csv"
    partial = target.with_name("." + target.name + ".tmp")
    with partial.open("w", encoding="ascii") as fh:
        fh.write("interval_start,der_id,feeder,kw,kvar\n")
        written, row = 0, 0
        while written < size_mb * 1_000_000:
            lines = [
                f"2026-11-26T{(r // 4 % 24):02d}:{(r % 4) * 15:02d}:00Z,DER-{r % 5000:05d},F{r % 37:02d},"
                f"{(r * 7919) % 5000 / 10:.1f},{(r * 104729) % 900 / 10:.1f}\n"
                for r in range(row, row + 20_000)
            ]
            block = "".join(lines)
            fh.write(block)
            written += len(block)
            row += 20_000
    os.replace(partial, target)  # moved in whole: the drop folder never sees a half-written file
    old = time.time() - 60
    for path in drop.rglob("*.*"):
        os.utime(path, (old, old))  # dropped "a minute ago": past the stability window


def _setup(directory: Path, size_mb: int) -> tuple[Path, Path]:
    agg, utl = directory / AGGREGATOR, directory / UTILITY
    agg_keys = generate_keys(
        agg / "keys", party_id=AGGREGATOR, party_name="Sunrise DER Aggregation LLC", pq=False, passphrase=None
    )
    utl_keys = generate_keys(
        utl / "keys", party_id=UTILITY, party_name="Metro Distribution Utility", pq=False, passphrase=None
    )
    if shutil.which("gpg"):
        # The utility's OpenPGP key comes from GnuPG, as many utilities' existing keys do: our messages to it
        # then use SEIPDv1, which GnuPG 2.2 reads (keys made by Sequoia advertise SEIPDv2, which it cannot).
        secret, public = gnupg_key("Metro Distribution Utility <settlement@utility.example>")
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
    (utl / "sftp-pipeline.toml").write_text(
        _party_config(
            UTILITY,
            "Metro Distribution Utility",
            f"""[partners.{AGGREGATOR}]
name = "Sunrise DER Aggregation LLC"
openpgp_cert = "keys/partners/{AGGREGATOR}.asc"
receive = ["transaction_confirmation", "invoice", "aggregation_data"]
send = ["transaction_confirmation", "invoice", "billing_payment", "outage_info"]
ssh_login_keys = ["{login_key}"]
""",
            server='[server]\nlisten = ["127.0.0.1"]\nport = 0\nroot = "sftp-root"\n',
        )
    )
    (utl / "jobs").mkdir()
    (utl / "jobs" / f"collect-from-{AGGREGATOR}.toml").write_text(
        f'kind = "collect"\npartner = "{AGGREGATOR}"\ndeliver_to = "../received"\n'
    )
    jobs = agg / "jobs"
    jobs.mkdir()
    (jobs / f"receipts-from-{UTILITY}.toml").write_text(f'kind = "receipts"\npartner = "{UTILITY}"\n')
    for doc_type in OUTBOUND_TYPES:
        (jobs / f"{doc_type.replace('_', '-')}-to-{UTILITY}.toml").write_text(
            f'kind = "send"\npartner = "{UTILITY}"\ndocument_type = "{doc_type}"\n'
            f'source = "../drop/{doc_type}"\npattern = "*"\n'
        )
    write_samples(agg / "drop", size_mb)
    return agg, utl


def gnupg_key(user_id: str) -> tuple[bytes, bytes]:
    """An Ed25519/Cv25519 key made by GnuPG in a throw-away home: (armored secret key, armored certificate)."""
    with tempfile.TemporaryDirectory(prefix="demo-gnupg-") as home:
        base = ["gpg", "--homedir", home, "--batch", "--pinentry-mode", "loopback", "--passphrase", ""]
        subprocess.run(
            [*base, "--quick-generate-key", user_id, "ed25519", "sign,cert", "3y"],
            check=True,
            capture_output=True,
        )
        fpr = (
            subprocess.run(
                [*base, "--with-colons", "--list-keys", user_id], check=True, capture_output=True, text=True
            )
            .stdout.split("fpr:::::::::")[1]
            .split(":")[0]
        )
        subprocess.run(
            [*base, "--quick-add-key", fpr, "cv25519", "encr", "3y"], check=True, capture_output=True
        )
        secret = subprocess.run(
            [*base, "--armor", "--export-secret-keys", fpr], check=True, capture_output=True
        )
        public = subprocess.run([*base, "--armor", "--export", fpr], check=True, capture_output=True)
    return secret.stdout, public.stdout


def _write_aggregator_config(agg: Path, host_key_pub: str, port: int) -> None:
    (agg / "sftp-pipeline.toml").write_text(
        _party_config(
            AGGREGATOR,
            "Sunrise DER Aggregation LLC",
            f"""[partners.{UTILITY}]
name = "Metro Distribution Utility"
openpgp_cert = "keys/partners/{UTILITY}.asc"
send = ["transaction_confirmation", "invoice", "aggregation_data"]
receive = ["transaction_confirmation", "invoice", "billing_payment", "outage_info"]

[partners.{UTILITY}.sftp]
host = "127.0.0.1"
port = {port}
user = "{AGGREGATOR}"
host_keys = ["[127.0.0.1]:{port} {host_key_pub}"]
""",
        )
    )


@dataclass
class Exchange:
    sent: SendReport
    collected: list[CollectOutcome]
    pulled: PullReport
    aggregator: Config


async def _exchange(utility: Config, agg_dir: Path) -> Exchange:
    """Send → the utility collects each upload as it completes → the aggregator pulls and checks the receipts."""
    collected: list[CollectOutcome] = []
    all_collected = asyncio.Event()
    with open_runtime(utility) as urt:
        collector = Collector(utility, urt.keys, urt.ledger, urt.connect, clock=urt.clock)

        def note(outcome: CollectOutcome) -> None:
            collected.append(outcome)
            if len(collected) >= len(OUTBOUND_TYPES):
                all_collected.set()

        async with EmbeddedServer(
            utility, on_upload=collect_on_upload(utility, collector, report=note)
        ) as server:
            host_key_pub = " ".join(utility.keys.host_key.with_suffix(".pub").read_text().split()[:2])
            _write_aggregator_config(agg_dir, host_key_pub, server.port)
            aggregator = load_config(agg_dir / "sftp-pipeline.toml")
            with open_runtime(aggregator) as rt:
                outbound = Outbound(aggregator, rt.keys, rt.ledger, rt.connect, clock=rt.clock)
                sent = await outbound.run(aggregator.jobs_of("send"))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(all_collected.wait(), COLLECT_WAIT)
                puller = ReceiptPuller(aggregator, rt.keys, rt.ledger, rt.connect, clock=rt.clock)
                pulled = await puller.run(aggregator.jobs_of("receipts"))
    return Exchange(sent, collected, pulled, aggregator)


def open_with_gnupg(secret_key: Path, sender_cert: Path, sealed: list[Path], out_dir: Path) -> list[Opened]:
    """Open each sealed file with GnuPG as the receiving partner would; read its status lines, not its exit code."""
    gpg = shutil.which("gpg")
    if gpg is None:
        return [Opened(p.name, False, "GnuPG is not installed (apt-get install gnupg)") for p in sealed]
    out_dir.mkdir(parents=True, exist_ok=True)
    sender_fpr = _fingerprint(sender_cert)
    results = []
    with tempfile.TemporaryDirectory(prefix="demo-gnupg-") as home:
        base = [gpg, "--homedir", home, "--batch", "--pinentry-mode", "loopback", "--passphrase", ""]
        for key in (secret_key, sender_cert):
            subprocess.run([*base, "--import", str(key)], check=True, capture_output=True)
        for path in sealed:
            target = out_dir / path.name.removesuffix(".pgp")
            proc = subprocess.run(
                [*base, "--status-fd", "1", "--yes", "--output", str(target), "--decrypt", str(path)],
                capture_output=True,
                encoding="utf-8",
                errors="replace",
                check=False,
            )
            status = [line.split()[1:] for line in proc.stdout.splitlines() if line.startswith("[GNUPG:] ")]
            kinds = {s[0] for s in status if s}
            valid = [s for s in status if s and s[0] == "VALIDSIG"]
            good = (
                {"DECRYPTION_OKAY", "GOODMDC"} <= kinds
                and len(valid) == 1
                and valid[0][-1].lower() == sender_fpr
                and not kinds & {"BADSIG", "ERRSIG", "EXPKEYSIG", "REVKEYSIG", "DECRYPTION_FAILED"}
            )
            results.append(
                Opened(path.name, good, "good signature from the aggregator" if good else proc.stderr[-300:])
            )
            if not good and target.exists():
                target.unlink()
    return results


def _fingerprint(cert: Path) -> str:
    import pysequoia

    return str(pysequoia.Cert.from_file(str(cert)).fingerprint).lower()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def run_demo(directory: Path, *, size_mb: int, console: Console) -> bool:
    started = time.monotonic()
    directory = directory.absolute()
    _prepare_dir(directory)
    console.print(f"[bold]sftp-pipeline demo[/] in {directory}")
    agg, utl = _setup(directory, size_mb)
    console.print(
        "  created two parties with fresh keys: aggregator (sender) and utility (embedded SFTP server)"
    )
    utility = load_config(utl / "sftp-pipeline.toml")
    exchange = asyncio.run(_exchange(utility, agg))
    aggregator = exchange.aggregator
    # What arrived, as the utility archived it on receipt: GnuPG opens it independently of our engine.
    received = utility.state_dir / "archive" / AGGREGATOR / "received"
    arrived = sorted(p for p in received.rglob("*.pgp"))
    opened = open_with_gnupg(
        utility.keys.openpgp, agg / "keys" / "openpgp.asc", arrived, utl / "opened-with-gnupg"
    )
    with open_runtime(aggregator) as rt:
        transfers = {t.remote_name: t for t in rt.ledger.recent(100)}
    table = Table(
        "document",
        "type",
        "bytes",
        "transfer",
        "kex",
        "opened by GnuPG",
        "utility",
        "receipt",
        title="aggregator → utility",
    )
    verdicts = {o.transfer_id: o.result for o in exchange.collected}
    all_ok = exchange.sent.ok and exchange.pulled.ok and len(arrived) == len(OUTBOUND_TYPES)
    for result in opened:
        t = transfers.get(result.name)
        plain = utl / "opened-with-gnupg" / result.name.removesuffix(".pgp")
        same = bool(t and plain.exists() and _sha256(plain) == t.plaintext_sha256)
        ok = result.ok and same
        settled = bool(t and t.state == "receipted" and verdicts.get(t.id) == "accepted")
        all_ok = all_ok and ok and settled
        table.add_row(
            t.source_name if t else result.name,
            t.document_type if t else "?",
            str(t.plaintext_size if t else ""),
            t.id if t else "",
            t.ssh_kex if t else "",
            "[green]yes, signature good, bytes equal[/]" if ok else f"[red]no[/] {result.detail}",
            verdicts.get(t.id if t else "", "not collected"),
            f"{t.state} (received {t.partner_received_at})" if t else "",
        )
    console.print(table)
    console.print(f"  the utility delivered the verified plaintext to {utl / 'received'}")
    console.print(f"  sealed copies as received: {received}")
    console.print(f"  GnuPG's plaintext in {utl / 'opened-with-gnupg'}")
    console.print(f"  signed receipts kept by the aggregator: {aggregator.state_dir / 'receipts' / UTILITY}")
    console.print(
        f"  ledger: {aggregator.state_dir / 'ledger.sqlite3'}\n"
        f"  try: sftp-pipeline -c {agg / 'sftp-pipeline.toml'} status"
    )
    console.print(
        f"  finished in {time.monotonic() - started:.1f} s: "
        + ("[green]all delivered, validated and receipted[/]" if all_ok else "[red]problems above[/]")
    )
    return all_ok

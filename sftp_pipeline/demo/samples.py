"""Demo material: sample NAESB documents, and GnuPG standing in for a partner's independent OpenPGP tools."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass
class GnupgOpened:
    name: str
    ok: bool
    detail: str


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


def write_utility_samples(drop: Path) -> None:
    """What a distribution utility sends an aggregator: billing and payment, outage information, its own
    invoice and its confirmation of the aggregator's transaction."""
    (drop / "billing_payment").mkdir(parents=True, exist_ok=True)
    (drop / "outage_info").mkdir(parents=True, exist_ok=True)
    (drop / "billing_payment" / "BP-2026-11-0007.xml").write_text(
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<BillingPayment contract="NAESB-DGS-2026-017" invoice="INV-2026-11-0042">\n'
        '  <Payment currency="USD" amount="71412.48" value-date="2026-12-05" account="****1234"/>\n'
        "</BillingPayment>\n"
    )
    (drop / "outage_info" / "OUT-2026-11-27-F07.xml").write_text(
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<OutageNotice feeder="F07" kind="planned" start="2026-12-02T13:00Z" end="2026-12-02T17:00Z">\n'
        '  <Affected der-count="212" capacity-mw="3.4"/>\n</OutageNotice>\n'
    )
    (drop / "invoice").mkdir(parents=True, exist_ok=True)
    (drop / "invoice" / "UINV-2026-11-0019.xml").write_text(
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<Invoice contract="NAESB-DGS-2026-017" period="2026-10" kind="interconnection-services">\n'
        "  <Seller>Metro Distribution Utility</Seller><Buyer>Sunrise DER Aggregation LLC</Buyer>\n"
        '  <Line service="telemetry" amount="1250.00"/><Total currency="USD">1250.00</Total>\n</Invoice>\n'
    )
    (drop / "transaction_confirmation").mkdir(parents=True, exist_ok=True)
    (drop / "transaction_confirmation" / "UTC-2026-11-27-001.xml").write_text(
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<TransactionConfirmation contract="NAESB-DGS-2026-017" id="UTC-2026-11-27-001" confirms="TC-2026-11-27-001">\n'
        "  <Accepted>true</Accepted>\n</TransactionConfirmation>\n"
    )
    old = time.time() - 60
    for path in drop.rglob("*.*"):
        os.utime(path, (old, old))


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
            subprocess.run([*base, "--with-colons", "--list-keys", user_id], check=True, capture_output=True, text=True)
            .stdout.split("fpr:::::::::")[1]
            .split(":")[0]
        )
        subprocess.run([*base, "--quick-add-key", fpr, "cv25519", "encr", "3y"], check=True, capture_output=True)
        secret = subprocess.run([*base, "--armor", "--export-secret-keys", fpr], check=True, capture_output=True)
        public = subprocess.run([*base, "--armor", "--export", fpr], check=True, capture_output=True)
    return secret.stdout, public.stdout


def open_with_gnupg(secret_key: Path, sender_cert: Path, sealed: list[Path], out_dir: Path) -> list[GnupgOpened]:
    """Open each sealed file with GnuPG as the receiving partner would; read its status lines, not its exit code."""
    gpg = shutil.which("gpg")
    if gpg is None:
        return [GnupgOpened(p.name, False, "GnuPG is not installed (apt-get install gnupg)") for p in sealed]
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
                GnupgOpened(path.name, good, "good signature from the aggregator" if good else proc.stderr[-300:])
            )
            if not good and target.exists():
                target.unlink()
    return results


def _fingerprint(cert: Path) -> str:
    import pysequoia

    return str(pysequoia.Cert.from_file(str(cert)).fingerprint).lower()

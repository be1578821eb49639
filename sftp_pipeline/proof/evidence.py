"""Evidence bundles: one zip that proves (offline) what happened to one transfer, and its verifier.

A bundle (``sftp-pipeline evidence TRANSFER_ID -o FILE``) holds, in this fixed order::

    README.txt                        what it proves and how to check it by hand (gpg, sha256sum)
    manifest.json                     format, kind, parties, issuer, and the SHA-256 of every other member
    transfer.json                     the ledger row (ours for an outbound transfer, the inbound row otherwise)
    receipt/<T>.receipt.json(.sig)    the signed receipt: the partner's for what we sent, ours for what we got
    certs/<party>.asc                 both parties' OpenPGP certificates (armored)
    sealed/<remote name>              the sealed file as sent/received, when still archived and not too large
    audit/audit.jsonl                 the audit log from its first line to the last line about T
    audit/head.json                   the log's head when the bundle was made

:func:`verify_evidence` checks it offline and says plainly what it proves and what it does not.
Members are written with a fixed timestamp and in a fixed order, so the same inputs give the same zip.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import zipfile
import zlib
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pysequoia
from pysequoia.packet import PacketPile, Tag

from sftp_pipeline.clock import parse_rfc3339
from sftp_pipeline.config import Config
from sftp_pipeline.errors import EvidenceError, KeyFileError, PipelineError, ReceiptInvalid
from sftp_pipeline.keys import OPENPGP_CERT_NAME, load_partner_cert
from sftp_pipeline.ledger import Inbound, Ledger, Transfer
from sftp_pipeline.proof.audit import (
    Head,
    audit_path,
    canonical,
    head_path,
    iter_lines,
    parse_line,
    read_head,
    sync_audit,
)
from sftp_pipeline.proof.audit import verify_lines as verify_audit_lines
from sftp_pipeline.proof.receipts import MAX_RECEIPT_BYTES, Receipt, receipt_file_names, verify_receipt

FORMAT = "sftp-pipeline-evidence/1"
# Why 512 MiB: aggregation files run to hundreds of MB; beyond this the bundle carries the hash only.
MAX_SEALED_BYTES = 512 * 1024 * 1024
# Why 64 MiB: the audit prefix compresses ~10x; past this, only the transfer's own lines go in.
MAX_AUDIT_PREFIX_BYTES = 64 * 1024 * 1024
# Why 128 MiB: every member but the sealed file is read into memory when verifying; nothing ours is larger.
MAX_MEMBER_BYTES = 128 * 1024 * 1024
# The earliest time a zip can hold; a fixed member time makes bundles byte-for-byte reproducible.
ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)
# Why 1 MiB: hashing the sealed member in chunks keeps memory flat.
CHUNK = 1024 * 1024
# Verdicts of a partner's receipt that settle the transfer; the bundle prefers those.
SETTLING = ("receipted", "rejected", "mismatch", "duplicate")


@dataclass(frozen=True)
class Finding:
    check: str
    ok: bool
    detail: str


@dataclass
class EvidenceReport:
    ok: bool
    findings: list[Finding] = field(default_factory=list)
    summary: str = ""


# ----------------------------------------------------------------------------------------------- build


def _armored_public(data: bytes, where: str) -> bytes:
    """One public certificate, armored; refuses anything with secret key material."""
    try:
        if any(p.tag in (Tag.SecretKey, Tag.SecretSubkey) for p in PacketPile.from_bytes(data)):
            data = str(pysequoia.Tsk.from_bytes(data).extract_certificate()).encode()
            if any(p.tag in (Tag.SecretKey, Tag.SecretSubkey) for p in PacketPile.from_bytes(data)):
                raise EvidenceError(f"{where}: cannot export a public certificate without secret parts")
        return str(pysequoia.Cert.from_bytes(data)).encode()
    except (RuntimeError, ValueError) as exc:
        raise EvidenceError(f"{where}: not an OpenPGP certificate ({exc})") from exc


def _our_cert(config: Config) -> bytes:
    public = config.keys.openpgp.with_name(OPENPGP_CERT_NAME)
    source = public if public.exists() else config.keys.openpgp
    try:
        return _armored_public(source.read_bytes(), str(source))
    except OSError as exc:
        raise KeyFileError(f"{source}: cannot read our OpenPGP certificate: {exc.strerror}") from exc


def _receipt_files(config: Config, ledger: Ledger, row: Transfer) -> dict[str, bytes]:
    records = [r for r in ledger.receipts_for(row.partner, row.id) if r.receipt_json is not None]
    settling = [r for r in records if r.verdict in SETTLING]
    json_name, sig_name = receipt_file_names(row.id)
    for record in reversed(settling or records):
        files = {json_name: bytes(record.receipt_json or b"")}
        if record.receipt_sig is not None:
            files[sig_name] = bytes(record.receipt_sig)
        return files
    folder = config.state_dir / "receipts" / row.partner
    return {n: (folder / n).read_bytes() for n in (json_name, sig_name) if (folder / n).exists()}


def _audit_members(config: Config, transfer_id: str) -> tuple[dict[str, bytes], str]:
    log = audit_path(config)
    if not log.exists():
        return {}, "none"
    raws: list[bytes] = []
    last, size, mine = 0, 0, []
    for number, raw, complete in iter_lines(log):
        if not complete:
            break
        line = json.loads(raw)
        raws.append(raw + b"\n")
        size += len(raw) + 1
        if line["id"] == transfer_id or (line.get("data") or {}).get("transfer_id") == transfer_id:
            last = number
            mine.append(raw + b"\n")
        if last and size > MAX_AUDIT_PREFIX_BYTES:
            raws = []  # too large to carry whole: keep collecting this transfer's lines only
    head = read_head(head_path(log))
    members = {"audit/head.json": ((head.to_json() if head else canonical({})) + "\n").encode()}
    if size <= MAX_AUDIT_PREFIX_BYTES:
        members["audit/audit.jsonl"] = b"".join(raws[:last])
        return members, "prefix"
    members["audit/audit.jsonl"] = b"".join(mine)
    return members, "lines"


def _readme(kind: str, transfer_id: str, issuer: str, json_name: str, audit_mode: str) -> bytes:
    who = "the partner" if kind == "outbound" else "we"
    material = (
        "the log from its first line to the last line about this transfer"
        if audit_mode == "prefix"
        else "only this transfer's lines (the log was too large): each line's own hash checks, the chain between "
        "them does not"
    )
    return f"""Evidence for transfer {transfer_id} ({kind}), made by sftp-pipeline ({FORMAT}).

WHAT THIS PROVES
The receipt in receipt/ is signed by {issuer} ({who} issued it). A valid signature by a key you know to
belong to {issuer} proves that {issuer} stated, at the times written in it, that it received the file with
the SHA-256 and size written in it, and accepted or rejected it as written. Check the fingerprint of
certs/{issuer}.asc against the one exchanged out of band: anyone can make a key that claims a name.
transfer.json and audit/ are the keeping party's own records. The audit lines are hash-chained: they show
the history was not edited after the chain's head was fixed; they do not prove it was true, and someone who
controls the whole log can rewrite it. Compare audit/head.json with a head published or signed earlier.
Audit material: {material}.

CHECK IT BY HAND (GnuPG, coreutils)
  unzip evidence.zip -d ev && cd ev
  gpg --homedir "$(mktemp -d)" --import certs/{issuer}.asc
  gpg --homedir <that dir> --verify receipt/{json_name}.sig receipt/{json_name}
      -> "Good signature" from the fingerprint you expect
  grep -o '"ciphertext_sha256":"[0-9a-f]*"' receipt/{json_name} transfer.json
      -> the same hash in both
  sha256sum sealed/*          (when the sealed file is included) -> that hash again
  sha256sum every member and compare with manifest.json
Or simply: sftp-pipeline evidence verify evidence.zip
""".encode()


def _zip_info(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=ZIP_EPOCH)
    info.compress_type = zipfile.ZIP_DEFLATED
    info.external_attr = 0o644 << 16
    return info


def build_evidence(config: Config, ledger: Ledger, transfer_id: str, out: Path, *, partner: str | None = None) -> Path:
    """Write the evidence bundle for ``transfer_id`` (ours, or a partner's inbound one) to ``out`` (a .zip).

    Syncs the audit log first. ``partner`` picks an inbound document when several partners used the same id.
    """
    sync_audit(config, ledger)
    outbound: Transfer | None
    try:
        outbound = ledger.get(transfer_id)
    except PipelineError:
        outbound = None
    inbound = [r for r in ledger.inbound_by_id(transfer_id) if partner in (None, r.partner)]
    members: dict[str, bytes] = {}
    sealed: Path | None = None
    row: Transfer | Inbound
    if outbound is not None and outbound.direction == "out" and partner in (None, outbound.partner):
        row, kind, other = outbound, "outbound", outbound.partner
        issuer, sender, receiver = other, config.party.id, other
        members.update({f"receipt/{n}": data for n, data in _receipt_files(config, ledger, outbound).items()})
        candidate = outbound.archive_sealed_path or outbound.sealed_path
        if candidate and Path(candidate).is_file() and Path(candidate).stat().st_size <= MAX_SEALED_BYTES:
            sealed = Path(candidate)
    elif len(inbound) == 1:
        row, kind, other = inbound[0], "inbound", inbound[0].partner
        issuer, sender, receiver = config.party.id, other, config.party.id
        json_name, sig_name = receipt_file_names(transfer_id)
        for name, blob in ((json_name, row.receipt_json), (sig_name, row.receipt_sig)):
            if blob is not None:
                members[f"receipt/{name}"] = bytes(blob)
        if row.archive_path and Path(row.archive_path).is_file():
            sealed = Path(row.archive_path) if Path(row.archive_path).stat().st_size <= MAX_SEALED_BYTES else None
    elif len(inbound) > 1:
        raise EvidenceError(
            f"transfer {transfer_id} was received from {', '.join(r.partner for r in inbound)}; name the partner"
        )
    else:
        raise EvidenceError(f"no transfer {transfer_id} in {ledger.where}; `sftp-pipeline status` lists them")
    record = {k: v for k, v in asdict(row).items() if not isinstance(v, bytes)}
    members["transfer.json"] = (json.dumps(record, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()
    members[f"certs/{other}.asc"] = _armored_public(
        str(load_partner_cert(config.partner(other))).encode(), f"partner {other!r} certificate"
    )
    members[f"certs/{config.party.id}.asc"] = _our_cert(config)
    audit, audit_mode = _audit_members(config, transfer_id)
    members.update(audit)
    files = {name: {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)} for name, data in members.items()}
    sealed_name = f"sealed/{row.remote_name}" if sealed else None
    if sealed is not None and sealed_name:
        with sealed.open("rb") as fh:
            digest = hashlib.file_digest(fh, "sha256").hexdigest()
        files[sealed_name] = {"sha256": digest, "size": sealed.stat().st_size}
    manifest = {
        "format": FORMAT,
        "kind": kind,
        "transfer_id": transfer_id,
        "party": config.party.id,
        "partner": other,
        "issuer": issuer,
        "sender": sender,
        "receiver": receiver,
        "audit": audit_mode,
        "files": files,
    }
    json_name, _ = receipt_file_names(transfer_id)
    first = {
        "README.txt": _readme(kind, transfer_id, issuer, json_name, audit_mode),
        "manifest.json": (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode(),
    }
    order = [*first, "transfer.json", *sorted(n for n in members if n != "transfer.json" and not n.startswith("audit"))]
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(tmp, "w") as zf:
            for name in order:
                zf.writestr(_zip_info(name), first.get(name, members.get(name, b"")))
            if sealed is not None and sealed_name:
                with sealed.open("rb") as src, zf.open(_zip_info(sealed_name), "w", force_zip64=True) as dst:
                    shutil.copyfileobj(src, dst, CHUNK)
            for name in sorted(n for n in members if n.startswith("audit/")):
                zf.writestr(_zip_info(name), members[name])
        os.replace(tmp, out)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise EvidenceError(f"{out}: cannot write the evidence bundle: {exc.strerror or exc}") from exc
    return out


# ---------------------------------------------------------------------------------------------- verify


class _Bundle:
    """The members of a bundle, read with CRC checks; every problem becomes a finding."""

    def __init__(self, zf: zipfile.ZipFile, report: EvidenceReport) -> None:
        self.zf, self.report = zf, report
        self.data: dict[str, bytes] = {}
        self.digests: dict[str, tuple[str, int]] = {}
        for info in zf.infolist():
            try:
                if info.file_size > MAX_MEMBER_BYTES and not info.filename.startswith("sealed/"):
                    raise ValueError(f"{info.file_size} bytes is over the {MAX_MEMBER_BYTES}-byte limit")
                digest, size, keep = hashlib.sha256(), 0, io.BytesIO()
                with zf.open(info) as fh:
                    while block := fh.read(CHUNK):
                        digest.update(block)
                        size += len(block)
                        if not info.filename.startswith("sealed/"):
                            keep.write(block)
            except (zipfile.BadZipFile, zlib.error, ValueError, OSError, EOFError) as exc:
                self.add("archive", False, f"member {info.filename} cannot be read: {exc}")
                continue
            self.digests[info.filename] = (digest.hexdigest(), size)
            if not info.filename.startswith("sealed/"):
                self.data[info.filename] = keep.getvalue()

    def add(self, check: str, ok: bool, detail: str) -> None:
        self.report.findings.append(Finding(check, ok, detail))

    def json(self, name: str) -> Any:
        try:
            return json.loads(self.data[name])
        except KeyError:
            self.add("contents", False, f"{name} is missing from the bundle")
        except ValueError as exc:
            self.add("contents", False, f"{name} is not JSON: {exc}")
        return None


def _check_manifest(bundle: _Bundle, manifest: dict[str, Any]) -> None:
    files = manifest.get("files") or {}
    listed = set(files) | {"README.txt", "manifest.json"}
    for name in sorted(set(bundle.digests) - listed):
        bundle.add("manifest", False, f"{name} is in the bundle but not in manifest.json (added)")
    for name, want in sorted(files.items()):
        got = bundle.digests.get(name)
        if got is None:
            bundle.add("manifest", False, f"{name} is listed in manifest.json but missing (removed or unreadable)")
        elif got != (want.get("sha256"), want.get("size")):
            bundle.add("manifest", False, f"{name}: SHA-256 {got[0]} differs from manifest.json's (altered)")
    if not any(f.check == "manifest" for f in bundle.report.findings):
        bundle.add("manifest", True, f"all {len(files)} members match the SHA-256 in manifest.json")


def _check_receipt(
    bundle: _Bundle, manifest: dict[str, Any], tid: str, now: datetime
) -> tuple[Receipt | None, str | None]:
    issuer = manifest.get("issuer", "")
    json_name, sig_name = receipt_file_names(tid)
    files = {n: bundle.data[f"receipt/{n}"] for n in (json_name, sig_name) if f"receipt/{n}" in bundle.data}
    if json_name not in files:
        bundle.add("receipt", False, f"no receipt from {issuer} in the bundle: nothing proves delivery")
        return None, None
    try:
        cert = pysequoia.Cert.from_bytes(bundle.data[f"certs/{issuer}.asc"])
    except (KeyError, RuntimeError, ValueError) as exc:
        bundle.add("receipt", False, f"certs/{issuer}.asc is missing or not a certificate ({exc})")
        return None, None
    fingerprint = cert.fingerprint.lower()
    expected = {"expected_sender": manifest.get("sender", ""), "expected_receiver": manifest.get("receiver", "")}
    try:
        receipt = verify_receipt(files, issuer_cert=cert, now=now, **expected)
        bundle.add("receipt", True, f"signed by {issuer}'s key {fingerprint}, valid now")
        return receipt, fingerprint
    except ReceiptInvalid as first:
        try:  # a key that expired since is judged at the time the receipt says it was made
            claimed = parse_rfc3339(json.loads(files[json_name][:MAX_RECEIPT_BYTES])["validated_at"])
        except (ValueError, KeyError, TypeError):
            bundle.add("receipt", False, str(first))
            return None, fingerprint
        try:
            receipt = verify_receipt(files, issuer_cert=cert, now=claimed, **expected)
        except ReceiptInvalid as exc:
            bundle.add("receipt", False, str(exc))
            return None, fingerprint
        bundle.add(
            "receipt",
            True,
            f"signed by {issuer}'s key {fingerprint}, valid at the receipt's validated_at {claimed.isoformat()} "
            f"(not now: {first})",
        )
        return receipt, fingerprint


def _check_match(bundle: _Bundle, record: dict[str, Any], receipt: Receipt | None, manifest: dict[str, Any]) -> None:
    want = (record.get("ciphertext_sha256"), record.get("ciphertext_size"))
    if receipt is not None:
        fields: dict[str, tuple[Any, Any]] = {
            "transfer_id": (receipt.transfer_id, record.get("id", record.get("transfer_id"))),
            "remote_name": (receipt.remote_name, record.get("remote_name")),
            "ciphertext": ((receipt.ciphertext_sha256, receipt.ciphertext_size), want),
        }
        if receipt.accepted:
            fields["plaintext_sha256"] = (receipt.plaintext_sha256, record.get("plaintext_sha256"))
        wrong = [k for k, (a, b) in fields.items() if a != b]
        bundle.add(
            "match",
            not wrong,
            f"the receipt and transfer.json differ in {', '.join(wrong)}"
            if wrong
            else f"the receipt names the same file as transfer.json (SHA-256 {want[0]}, {want[1]} bytes)",
        )
    sealed = [n for n in bundle.digests if n.startswith("sealed/")]
    for name in sealed:
        got = bundle.digests[name]
        bundle.add(
            "sealed",
            got == want,
            f"{name} has SHA-256 {got[0]} ({got[1]} bytes)"
            + (" as recorded" if got == want else f", the record says {want[0]} ({want[1]} bytes)"),
        )


def _check_audit(bundle: _Bundle, manifest: dict[str, Any], record: dict[str, Any], tid: str) -> None:
    raw = bundle.data.get("audit/audit.jsonl")
    if raw is None:
        bundle.add("audit", False, "no audit lines in the bundle")
        return
    rows = raw.split(b"\n")
    if rows and rows[-1] == b"":
        rows.pop()
    numbered = [(n, r, True) for n, r in enumerate(rows, 1)]
    if manifest.get("audit") == "prefix":
        result = verify_audit_lines(iter(numbered))
        if not result.ok:
            bundle.add("audit", False, f"audit/audit.jsonl {result.problem}")
            return
        head = bundle.json("audit/head.json") or {}
        try:
            anchor = Head(int(head["seq"]), str(head["hash"]), int(head["lines"])) if head else None
        except (KeyError, ValueError, TypeError):
            anchor = None
        if anchor and anchor.lines == result.lines and anchor.hash != result.last_hash:
            bundle.add("audit", False, f"the last audit line's hash differs from audit/head.json ({anchor.hash})")
            return
        bundle.add("audit", True, f"{result.lines} lines chain from the genesis to hash {result.last_hash}")
    else:
        try:
            for _, r, _ in numbered:
                parse_line(r)
        except ValueError as exc:
            bundle.add("audit", False, f"an audit line is damaged: {exc}")
            return
        bundle.add("audit", True, f"{len(rows)} lines each match their own hash (chain between them not included)")
    lines = [json.loads(r) for r in rows]
    mine = [ln for ln in lines if ln["id"] == tid and ln["kind"] in ("transfer", "inbound")]
    states = [ln["state"] for ln in mine]
    if not mine or states[-1] != record.get("state"):
        bundle.add(
            "audit",
            False,
            f"the audit lines for {tid} end in {states[-1:]} but transfer.json says {record.get('state')!r}",
        )
        return
    data = mine[-1]["data"]
    if data.get("ciphertext_sha256") != record.get("ciphertext_sha256"):
        bundle.add("audit", False, "the audit log's ciphertext SHA-256 differs from transfer.json")
        return
    bundle.add("audit", True, f"the audit lines record {tid}: {' → '.join(states)}")


def _summary(manifest: dict[str, Any], record: dict[str, Any], receipt: Receipt | None, fpr: str | None) -> str:
    issuer, tid = manifest.get("issuer"), manifest.get("transfer_id")
    if receipt is None:
        return (
            f"This bundle proves nothing about delivery of transfer {tid}: it has no receipt with a valid "
            f"signature by {issuer}."
        )
    outcome = "accepted it" if receipt.accepted else f"rejected it with status {receipt.status!r}"
    doc = f"{receipt.document_type} {record.get('source_name') or receipt.remote_name}"
    said = (
        f"{'Partner' if manifest.get('kind') == 'outbound' else 'We,'} {issuer} (key {fpr}) signed that at "
        f"{receipt.received_at.isoformat(timespec='milliseconds')} it received transfer {tid} from "
        f"{receipt.sender} ({doc}, {receipt.ciphertext_size} bytes, SHA-256 {receipt.ciphertext_sha256}) and at "
        f"{receipt.validated_at.isoformat(timespec='milliseconds')} {outcome}."
    )
    return (
        f"{said} It does not prove that key {fpr} belongs to {issuer} (compare it with the fingerprint exchanged "
        "out of band), what the document means, or that the ledger and audit records (the keeping party's own) "
        "are true: their hash chain only shows they were not edited after the head in the bundle was fixed."
    )


def verify_evidence(path: Path, *, now: datetime) -> EvidenceReport:
    """Check a bundle offline: container, manifest, receipt signature, hashes, audit chain; never raises for
    a bad bundle (the report says what is wrong)."""
    report = EvidenceReport(ok=False)
    try:
        with zipfile.ZipFile(path) as zf:
            bundle = _Bundle(zf, report)
    except (zipfile.BadZipFile, OSError) as exc:
        report.findings.append(Finding("archive", False, f"{path} is not a readable zip: {exc}"))
        report.summary = "FAILED (archive): this file is not an intact evidence bundle; it proves nothing."
        return report
    manifest = bundle.json("manifest.json") or {}
    record = bundle.json("transfer.json") or {}
    if manifest.get("format") != FORMAT:
        bundle.add("contents", False, f"manifest.json format {manifest.get('format')!r} is not {FORMAT!r}")
    tid = str(manifest.get("transfer_id", ""))
    _check_manifest(bundle, manifest)
    receipt, fpr = (None, None)
    if tid:
        try:
            receipt, fpr = _check_receipt(bundle, manifest, tid, now)
        except ValueError as exc:
            bundle.add("receipt", False, f"transfer id {tid!r}: {exc}")
        _check_match(bundle, record, receipt, manifest)
        _check_audit(bundle, manifest, record, tid)
    report.ok = bool(report.findings) and all(f.ok for f in report.findings)
    report.summary = _summary(manifest, record, receipt, fpr)
    if not report.ok:
        failed = sorted({f.check for f in report.findings if not f.ok})
        report.summary = f"FAILED ({', '.join(failed)}): do not rely on this bundle. " + report.summary
    return report

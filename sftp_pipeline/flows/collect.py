"""Inbound: collect a partner's sealed documents, open and verify them, deliver plaintext, answer with receipts.

For each document, in this order (each step recorded before the next, so a
crash is finished by the next run):

1. download to staging and hash; the ciphertext is archived — the evidence
   of what arrived — and the ledger row ``received`` is written;
2. open: decrypt with our key, verify against *that partner's* certificate
   only; plaintext is released into the delivery folder only after every
   check passed (``accepted``), otherwise nothing of it remains (``rejected``
   with a status code);
3. issue a signed receipt either way, kept in the ledger, and put it where
   the partner collects receipts (the ``.sig`` last: it marks completion);
4. remove the document from where the partner left it.

Steps 1 and 2 overlap for a SEIPDv1 message: the download's tee hashes each
block and feeds GnuPG, which decrypts into a partial file as the bytes arrive
(:mod:`sftp_pipeline.openpgp.stream`); the judging and the release still wait for step 1.

A document seen again with the same transfer id and the same bytes is
answered with the same receipt and not delivered twice; the same id with
other bytes is quarantined (``duplicate-conflict``) and the first receipt
stands.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import shutil
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from sftp_pipeline.clock import parse_rfc3339, rfc3339
from sftp_pipeline.config import CollectJob, Config, Partner
from sftp_pipeline.errors import OpenRejected, PipelineError, TransportError
from sftp_pipeline.faults import crash_point
from sftp_pipeline.flows.intake import quarantine_file
from sftp_pipeline.flows.service import Context, Service
from sftp_pipeline.folders import inbound_folders
from sftp_pipeline.fsutil import fsync_dir, move_into, sha256_file
from sftp_pipeline.keys import load_partner_cert
from sftp_pipeline.ledger import Inbound
from sftp_pipeline.names import is_safe_name, parse_sealed_name
from sftp_pipeline.openpgp.gnupg import GnupgRun
from sftp_pipeline.openpgp.open import open_message
from sftp_pipeline.openpgp.stream import GnupgStream
from sftp_pipeline.proof.receipts import build_receipt, receipt_file_names, sign_receipt
from sftp_pipeline.transport import Transport

log = logging.getLogger(__name__)

# Why 8: the output of one document may be at most this many times the largest accepted input; beyond it a
# "document" is a decompression bomb, not settlement data.
MAX_EXPANSION = 8


@dataclass(frozen=True, slots=True)
class CollectOutcome:
    partner: str
    name: str
    transfer_id: str | None
    result: str  # accepted, rejected, duplicate, quarantined, pending
    detail: str = ""


@dataclass(slots=True)
class CollectReport:
    outcomes: list[CollectOutcome] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not any(o.result == "pending" for o in self.outcomes)

    def count(self, result: str) -> int:
        return sum(1 for o in self.outcomes if o.result == result)


class Collector(Service):
    def __init__(self, context: Context) -> None:
        super().__init__(context)
        self.staging = self.config.state_dir / "inbound" / "staging"
        self._locks: dict[tuple[str, str], tuple[asyncio.Lock, int]] = {}  # (partner, name) → (lock, users)

    # -- runs ----------------------------------------------------------------------------------------

    async def run(self, jobs: list[CollectJob]) -> CollectReport:
        report = CollectReport()
        for job in jobs:
            partner = self.config.partner(job.partner)
            try:
                transport = await self.transport_factory(partner)
            except PipelineError as exc:
                report.outcomes.append(CollectOutcome(partner.id, "", None, "pending", f"cannot connect: {exc}"))
                continue
            try:
                # One collect run per partner at a time (the ledger's run locks): both would finish the same
                # unfinished rows.
                async with self.ledger.turn("collect", partner.id):
                    await self._collect_all(job, partner, transport, report)
            finally:
                await transport.close()
        return report

    async def _collect_all(
        self, job: CollectJob, partner: Partner, transport: Transport, report: CollectReport
    ) -> None:
        await self._finish_unfinished(job, partner, transport, report)
        place = inbound_folders(partner)
        try:
            entries = await transport.list(place.documents)
        except TransportError as exc:
            report.outcomes.append(CollectOutcome(partner.id, place.documents, None, "pending", str(exc)))
            return
        for entry in entries:
            mtime = datetime.fromtimestamp(entry.mtime, UTC)
            report.outcomes.append(
                await self.collect_one(job, partner, transport, entry.name, received_at=mtime if place.hosted else None)
            )

    async def collect_one(
        self, job: CollectJob, partner: Partner, transport: Transport, name: str, *, received_at: datetime | None
    ) -> CollectOutcome:
        """Collect one file by name. ``received_at`` is when it was complete (None: when we finish downloading)."""
        key = (partner.id, name)
        lock, users = self._locks.get(key, (asyncio.Lock(), 0))
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                try:
                    return await self._collect(job, partner, transport, name, received_at)
                except (TransportError, OSError) as exc:
                    log.warning("collecting %s from %s: %s; will retry", name, partner.id, exc)
                    return CollectOutcome(partner.id, name, None, "pending", str(exc))
        finally:
            # Forget the lock with its last user: a daemon sees every name once, and must not keep them all.
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)

    async def _collect(
        self, job: CollectJob, partner: Partner, transport: Transport, name: str, received_at: datetime | None
    ) -> CollectOutcome:
        self.staging.mkdir(parents=True, exist_ok=True)
        try:
            sealed = parse_sealed_name(name)
        except ValueError:
            return await self._quarantine_remote(
                job,
                partner,
                transport,
                name,
                "malformed",
                "not a sealed-document name (<transfer-id>.<type>.<name>.pgp)",
            )
        staged = self.staging / f"{partner.id}.{sealed.transfer_id}.pgp"
        previous = self.ledger.inbound(partner.id, sealed.transfer_id)
        stream = None
        if previous is None and sealed.document_type in partner.receive:
            # Decrypt while it downloads (SEIPDv1 via GnuPG); released only after the ledger row and every check.
            try:
                sender = load_partner_cert(partner)
            except PipelineError:
                pass  # reported where it always was: when the document is opened
            else:
                stream = GnupgStream(
                    self._target(job, sealed.transfer_id, sealed.document_type, sealed.original),
                    keys=self.keys,
                    sender=sender,
                    max_output=self._max_output(job),
                    gpg=shutil.which("gpg"),
                )
        try:
            return await self._take(job, partner, transport, name, received_at, staged, previous, stream)
        finally:
            if stream is not None:
                await asyncio.to_thread(stream.discard)  # a no-op once open_message has the partial file

    async def _take(
        self,
        job: CollectJob,
        partner: Partner,
        transport: Transport,
        name: str,
        received_at: datetime | None,
        staged: Path,
        previous: Inbound | None,
        stream: GnupgStream | None,
    ) -> CollectOutcome:
        """Download (hashing, and decrypting into a partial file, as it arrives), archive, record, open."""
        place = inbound_folders(partner)
        sealed = parse_sealed_name(name)
        intake = _Intake(stream)
        await transport.get(place.documents, name, staged, tee=intake)
        moment = received_at or self.clock()
        if intake.complete(staged):
            digest, size = intake.digest.hexdigest(), intake.size
        else:  # the download restarted under the tee: hash the file as it landed
            digest, size = await asyncio.to_thread(sha256_file, staged)
        previous = previous or self.ledger.inbound(partner.id, sealed.transfer_id)
        if previous is not None:
            staged_path = staged
            if previous.ciphertext_sha256 != digest:
                target = quarantine_file(
                    staged_path,
                    self._quarantine_dir(partner),
                    "duplicate-conflict",
                    job=job.name,
                    detail=f"{name}: transfer {sealed.transfer_id} was received "
                    f"before with SHA-256 {previous.ciphertext_sha256}; this copy is {digest}",
                    clock=self.clock,
                )
                await transport.remove(place.documents, name)
                return CollectOutcome(
                    partner.id,
                    name,
                    sealed.transfer_id,
                    "quarantined",
                    f"duplicate-conflict: same transfer id, different bytes ({target})",
                )
            staged_path.unlink()
            await self._finish(previous, partner, transport)
            if previous.source_removed_at is not None:  # sent again after we took it (a sender killed before
                await transport.remove(place.documents, name)  # recording its upload): answered, now cleared too
            return CollectOutcome(partner.id, name, sealed.transfer_id, "duplicate", "answered with the same receipt")
        archive = self._archive_path(partner, moment, name)
        await asyncio.to_thread(move_into, staged, archive)
        row = self.ledger.receive(
            partner=partner.id,
            transfer_id=sealed.transfer_id,
            job=job.name,
            remote_name=name,
            document_type=sealed.document_type,
            ciphertext_sha256=digest,
            ciphertext_size=size,
            received_at=rfc3339(moment),
            archive_path=str(archive),
        )
        log.info("received %s from %s (%d bytes)", name, partner.id, size, extra={"transfer_id": sealed.transfer_id})
        streamed = await asyncio.to_thread(stream.finish) if stream is not None else None
        row = await asyncio.to_thread(self._open, job, partner, row, streamed)
        crash_point("after-receipt-recorded")
        await self._finish(row, partner, transport)
        return CollectOutcome(partner.id, name, row.transfer_id, row.state, row.status or "")

    # -- steps -------------------------------------------------------------------------------------

    def _open(self, job: CollectJob, partner: Partner, row: Inbound, streamed: GnupgRun | None = None) -> Inbound:
        """received → accepted | rejected, with the signed receipt stored in the ledger.

        ``streamed``: GnuPG already decrypted the message while it downloaded; judged by open_message.
        """
        sealed = parse_sealed_name(row.remote_name)
        now = self.clock()
        status, detail, plaintext, fingerprint, delivered, engine = "ok", "", None, None, None, None
        if row.document_type not in partner.receive:
            status = "unauthorised-document"
            detail = f"{partner.id} may not send us {row.document_type} (partners.{partner.id}.receive)"
        else:
            target = self._target(job, row.transfer_id, row.document_type, sealed.original)
            folder = target.parent
            try:
                opened = open_message(
                    Path(row.archive_path or ""),
                    target,
                    keys=self.keys,
                    sender=load_partner_cert(partner),
                    now=now,
                    max_output=self._max_output(job),
                    streamed=streamed,
                )
            except OpenRejected as exc:
                status, detail = exc.status, str(exc)
            else:
                plaintext, fingerprint, engine = opened.plaintext_sha256, opened.signer_fingerprint, opened.engine
                delivered = str(target)
                fsync_dir(folder)
                crash_point("after-deliver")
        validated = self.clock()
        receipt = build_receipt(
            remote_name=row.remote_name,
            sender=partner.id,
            receiver=self.config.party.id,
            ciphertext_sha256=row.ciphertext_sha256,
            ciphertext_size=row.ciphertext_size,
            received_at=parse_rfc3339(row.received_at),
            validated_at=validated,
            status=status,
            plaintext_sha256=plaintext,
            sender_key_fingerprint=fingerprint,
            detail=detail[:1000],
        )
        files = sign_receipt(receipt, self.keys.signer)
        json_name, sig_name = receipt_file_names(row.transfer_id)
        state = "accepted" if status == "ok" else "rejected"
        if state == "rejected":
            log.warning(
                "rejected %s from %s: %s", row.remote_name, partner.id, detail, extra={"transfer_id": row.transfer_id}
            )
        return self.ledger.update_inbound(
            partner.id,
            row.transfer_id,
            state=state,
            status=status,
            detail=detail,
            plaintext_sha256=plaintext,
            sender_key_fingerprint=fingerprint,
            validated_at=rfc3339(validated),
            delivered_path=delivered,
            engine=engine,
            receipt_json=files[json_name],
            receipt_sig=files[sig_name],
        )

    async def _finish(self, row: Inbound, partner: Partner, transport: Transport) -> None:
        """Send the stored receipt (idempotent) and remove the document from where the partner left it."""
        place = inbound_folders(partner)
        if row.receipt_json is None or row.receipt_sig is None:
            return
        json_name, sig_name = receipt_file_names(row.transfer_id)
        outgoing = self.config.state_dir / "receipts" / "issued" / partner.id
        outgoing.mkdir(parents=True, exist_ok=True)
        for file_name, data in ((json_name, row.receipt_json), (sig_name, row.receipt_sig)):
            path = outgoing / file_name
            if not path.exists():
                tmp = path.with_name(f".{file_name}.tmp")
                tmp.write_bytes(data)
                os.replace(tmp, path)
            await transport.put_atomic(path, place.receipts, file_name)  # the .sig goes last
        if row.receipt_sent_at is None:
            row = self.ledger.update_inbound(partner.id, row.transfer_id, receipt_sent_at=self.ledger.now())
        if row.source_removed_at is None:
            crash_point("after-receipt-sent")
            await transport.remove(place.documents, row.remote_name)
            self.ledger.update_inbound(partner.id, row.transfer_id, source_removed_at=self.ledger.now())

    async def _finish_unfinished(
        self, job: CollectJob, partner: Partner, transport: Transport, report: CollectReport
    ) -> None:
        for row in self.ledger.inbound_unfinished(partner.id):
            if row.state == "received":
                row = await asyncio.to_thread(self._open, job, partner, row)
                report.outcomes.append(
                    CollectOutcome(
                        partner.id,
                        row.remote_name,
                        row.transfer_id,
                        row.state,
                        f"{row.status} (finished after an interruption)",
                    )
                )
            try:
                await self._finish(row, partner, transport)
            except (TransportError, OSError) as exc:
                # Its receipt goes out next run (the row stays unfinished); a cut here must not end the run.
                log.warning("sending the receipt for %s to %s: %s; will retry", row.remote_name, partner.id, exc)
                report.outcomes.append(
                    CollectOutcome(partner.id, row.remote_name, row.transfer_id, "pending", str(exc))
                )

    async def _quarantine_remote(
        self, job: CollectJob, partner: Partner, transport: Transport, name: str, reason: str, detail: str
    ) -> CollectOutcome:
        """Keep a copy of a file we cannot take (under a safe local name), then clear it from the partner's folder."""
        place = inbound_folders(partner)
        safe = name if is_safe_name(name) else f"unsafe-name-{hashlib.sha256(name.encode()).hexdigest()[:16]}"
        staged = self.staging / f"{partner.id}.{safe}"
        await transport.get(place.documents, name, staged)
        target = quarantine_file(
            staged,
            self._quarantine_dir(partner),
            reason,
            job=job.name,
            detail=f"{name!r} from {partner.id}: {detail}",
            clock=self.clock,
        )
        await transport.remove(place.documents, name)
        log.warning("quarantined %r from %s: %s", name, partner.id, detail)
        return CollectOutcome(partner.id, name, None, "quarantined", f"{reason}: {target}")

    def _target(self, job: CollectJob, transfer_id: str, document_type: str, original: str) -> Path:
        """Where an accepted document is delivered (its folder is made here)."""
        folder = job.deliver_to / document_type if job.per_type_folders else job.deliver_to
        folder.mkdir(parents=True, exist_ok=True)
        return folder / f"{transfer_id}.{original}"

    def _max_output(self, job: CollectJob) -> int:
        return (job.max_document_bytes or self.config.limits.max_document_bytes) * MAX_EXPANSION

    def _quarantine_dir(self, partner: Partner) -> Path:
        return self.config.state_dir / "quarantine" / "inbound" / partner.id

    def _archive_path(self, partner: Partner, moment: datetime, name: str) -> Path:
        folder = self.config.state_dir / "archive" / partner.id / "received" / rfc3339(moment)[:10]
        folder.mkdir(parents=True, exist_ok=True)
        return folder / name


class _Intake:
    """The download's tee: hashes the ciphertext as it lands and passes it on to GnuPG (if opening early)."""

    def __init__(self, stream: GnupgStream | None) -> None:
        self.digest = hashlib.sha256()
        self.size = 0
        self.restarted = False
        self._stream = stream

    async def __call__(self, offset: int, data: bytes) -> None:
        if offset != self.size:
            self.restarted = True
        if not self.restarted:
            self.digest.update(data)
            self.size += len(data)
        if self._stream is not None:
            await self._stream(offset, data)

    def complete(self, staged: Path) -> bool:
        """Whether the digest covers exactly the file that landed."""
        return not self.restarted and staged.stat().st_size == self.size


def collect_on_upload(
    config: Config, collector: Collector, *, report: Callable[[CollectOutcome], None] | None = None
) -> Callable[[str, Path, datetime], Awaitable[None]]:
    """An upload hook for the embedded server: collect a partner's document the moment its upload completes.

    Only partners with a collect job, and only their ``inbox``; ``received_at`` is the completion time the
    server took at the close, as NAESB EDM asks of its receipt timestamp.
    """
    jobs = {job.partner: job for job in config.jobs_of("collect")}

    async def hook(partner_id: str, path: Path, completed_at: datetime) -> None:
        job = jobs.get(partner_id)
        partner = config.partner(partner_id)
        if job is None or partner.sftp is not None or path.parent.name != inbound_folders(partner).documents:
            return  # only partners we host upload to us
        # Never beside a collect run for this partner (the daemon's, or an operator's `collect`: both would
        # open this upload); beside other uploads' collection, yes. When a run took it meanwhile, nothing is left.
        async with collector.ledger.turn("collect", partner_id, shared=True):
            if not path.exists():
                return
            async with await collector.transport_factory(partner) as hosted:  # the root our server serves them
                outcome = await collector.collect_one(job, partner, hosted, path.name, received_at=completed_at)
        log.info(
            "%s from %s: %s %s",
            path.name,
            partner_id,
            outcome.result,
            outcome.detail,
            extra={"transfer_id": outcome.transfer_id},
        )
        if report is not None:
            report(outcome)

    return hook

"""Outbound: drop folder → claim → seal → upload → archive, for the ``send`` jobs of one run.

Every step writes the ledger before it moves on, so a crash between any two
steps is finished by the next run (:meth:`Outbound.run` always starts with the
partner's unfinished transfers) and nothing is uploaded twice to a final name:
the remote name is fixed at claim time, and an upload that finds its final
name already complete records it instead of sending again.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from pysequoia import Cert

from .clock import Clock, utc_now
from .config import Config, Partner, SendJob
from .dropfolder import quarantine_file, scan
from .errors import (
    CryptoError,
    DiskFullError,
    KeyPolicyError,
    PermanentTransportError,
    PipelineError,
    TransportError,
    disk_full,
    is_no_space,
)
from .faults import crash_point
from .fsutil import fsync_dir, move_into, sha256_file
from .keys import OurKeys, load_partner_cert
from .ledger import Claim, DuplicateContent, Ledger, Transfer
from .names import new_transfer_id, sealed_name
from .openpgp import seal
from .service import Service, TransportFactory
from .transport import Progress, Transport

log = logging.getLogger(__name__)

# Why 256: a dropped burst costs one ledger commit per 256 files instead of one each, while a crash between that
# commit and the moves leaves at most 256 claims for the recovery pass.
CLAIM_BATCH = 256



class ProgressSink(Protocol):
    """Where per-document upload progress goes (a rich progress bar in the CLI; nothing in a daemon)."""

    def start(self, label: str, total: int) -> Progress: ...

    def finish(self, label: str) -> None: ...


@dataclass(frozen=True, slots=True)
class Outcome:
    job: str
    name: str
    transfer_id: str | None
    state: str  # uploaded, duplicate, quarantined, failed, pending, waiting, would-send
    detail: str = ""


@dataclass(slots=True)
class SendReport:
    outcomes: list[Outcome] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not any(o.state in {"failed", "pending"} for o in self.outcomes)

    def count(self, state: str) -> int:
        return sum(1 for o in self.outcomes if o.state == state)


def remote_directory(partner: Partner) -> str:
    """Where our documents go: the partner's inbox on their server, or their outbox on ours."""
    return partner.sftp.dirs.inbox if partner.sftp else "outbox"


class Outbound(Service):
    def __init__(
        self,
        config: Config,
        keys: OurKeys,
        ledger: Ledger,
        transport_factory: TransportFactory,
        *,
        clock: Clock = utc_now,
        progress: ProgressSink | None = None,
    ) -> None:
        super().__init__(config, keys, ledger, transport_factory, clock=clock)
        self.progress = progress
        self.work_dir = config.state_dir / "work"
        self.archive_dir = config.state_dir / "archive"

    # -- the run --------------------------------------------------------------------------------------

    async def run(self, jobs: list[SendJob], *, dry_run: bool = False, retry_failed: bool = False) -> SendReport:
        report = SendReport()
        by_partner: dict[str, list[SendJob]] = {}
        for job in jobs:
            by_partner.setdefault(job.partner, []).append(job)
        for partner_id, partner_jobs in by_partner.items():
            await self._run_partner(self.config.partner(partner_id), partner_jobs, report, dry_run, retry_failed)
        return report

    async def _run_partner(
        self, partner: Partner, jobs: list[SendJob], report: SendReport, dry_run: bool, retry_failed: bool
    ) -> None:
        if dry_run:
            for job in jobs:
                self._preview(job, partner, report)
            return
        if retry_failed:
            for transfer in self.ledger.by_state("failed", partner.id):
                back = "sealed" if transfer.sealed_at and transfer.sealed_path else "claimed"
                self.ledger.transition(transfer.id, back, "retry requested", last_error=None)
        work: list[Transfer] = self.ledger.unfinished(partner.id)
        for job in jobs:
            # In a worker thread: the stability check sleeps, and the daemon's loop must keep serving meanwhile.
            work.extend(await asyncio.to_thread(self._intake, job, partner, report))
        if not work:
            return
        recipients = [load_partner_cert(partner)]
        if partner.encrypt_to_self:
            recipients.append(self.keys.cert)
        runner = _PartnerRun(self, partner, recipients, report)
        try:
            await asyncio.gather(*(runner.process(t) for t in work))
        finally:
            await runner.close()

    def _preview(self, job: SendJob, partner: Partner, report: SendReport) -> None:
        intake = scan(
            job.source,
            pattern=job.pattern,
            max_bytes=self._max_bytes(job),
            authorised=job.document_type in partner.send,
            stable_seconds=0,
        )
        for seen in intake.take:
            report.outcomes.append(Outcome(job.name, seen.name, None, "would-send", f"{seen.size} bytes"))
        for seen, reason in intake.quarantine:
            report.outcomes.append(Outcome(job.name, seen.name, None, "would-quarantine", reason))

    def _max_bytes(self, job: SendJob) -> int:
        return job.max_document_bytes or self.config.limits.max_document_bytes

    # -- intake ---------------------------------------------------------------------------------------

    def _intake(self, job: SendJob, partner: Partner, report: SendReport) -> list[Transfer]:
        intake = scan(
            job.source,
            pattern=job.pattern,
            max_bytes=self._max_bytes(job),
            authorised=job.document_type in partner.send,
            stable_seconds=job.stable_seconds,
        )
        quarantine_dir = self.config.state_dir / "quarantine" / job.name
        for seen, reason in intake.quarantine:
            detail = f"document type {job.document_type}, partner {partner.id}, limit {self._max_bytes(job)} bytes"
            target = quarantine_file(
                job.source / seen.name, quarantine_dir, reason, job=job.name, detail=detail, clock=self.clock
            )
            log.warning("quarantined %s (%s) as %s", seen.name, reason, target)
            report.outcomes.append(Outcome(job.name, seen.name, None, "quarantined", f"{reason}: {target}"))
        for seen in intake.waiting:
            report.outcomes.append(Outcome(job.name, seen.name, None, "waiting", "still being written"))
        claimed: list[Transfer] = []
        sources = [job.source / seen.name for seen in intake.take]
        for start in range(0, len(sources), CLAIM_BATCH):
            batch, full = self._claim_batch(job, sources[start : start + CLAIM_BATCH])
            claimed.extend(batch)
            if full is not None:
                # The work area is full: this and the rest stay in the drop folder for the next run.
                log.error("%s", full[1])
                report.outcomes.append(Outcome(job.name, full[0], None, "pending", str(full[1])))
                break
        return claimed

    def _claim_batch(
        self, job: SendJob, sources: list[Path]
    ) -> tuple[list[Transfer], tuple[str, DiskFullError] | None]:
        """Claim ``sources``: the ledger rows first (one commit), then each file moved into its work dir.

        The moves are atomic renames without a directory fsync each: after a crash the file is at one name or
        the other and :meth:`_PartnerRun.prepare` finishes the move either way; the drop folder is fsynced once
        at the end, so a taken file does not come back. Returns the claims and, when the work area filled up,
        the document it could not take (that one and the rest are closed and stay in the drop folder).
        """
        planned = []
        for source in sources:
            transfer_id = new_transfer_id(self.clock())
            remote = sealed_name(transfer_id, job.document_type, source.name)
            work = self.work_dir / transfer_id / "document"
            planned.append(
                Claim(transfer_id, job.partner, job.name, job.document_type, source.name, str(source), str(work),
                      str(remote))
            )
        self.ledger.claim_many(planned)
        taken: list[str] = []
        full: tuple[str, DiskFullError] | None = None
        for i, claim in enumerate(planned):
            source, work = Path(claim.source_path), Path(claim.work_path)
            try:
                work.parent.mkdir(parents=True, exist_ok=True)
                move_into(source, work, durable=False)
            except FileNotFoundError:
                # Another worker took it between our scan and our claim: not ours, nothing to do.
                self.ledger.transition(
                    claim.transfer_id, "failed", "source vanished before claim", last_error="taken by another worker"
                )
                shutil.rmtree(work.parent, ignore_errors=True)
                continue
            except OSError as exc:
                if not is_no_space(exc):
                    raise
                # Not taken after all: the documents are still in the drop folder (move_into leaves no half
                # copy) and a later run claims them afresh; these claims are closed so nothing resumes them.
                error = disk_full(f"claiming {source.name} of send job {job.name}", work.parent)
                for rest in planned[i:]:
                    self.ledger.transition(rest.transfer_id, "failed", "not taken: work area full",
                                           last_error=str(error))
                    shutil.rmtree(Path(rest.work_path).parent, ignore_errors=True)
                full = (source.name, error)
                break
            taken.append(claim.transfer_id)
            log.info("claimed %s as %s", source, claim.transfer_id, extra={"transfer_id": claim.transfer_id})
            crash_point("after-claim")
        if planned:
            fsync_dir(job.source)
        return [self.ledger.get(transfer_id) for transfer_id in taken], full


class _PartnerRun:
    """One partner's share of a run: one connection, many documents in flight over it."""

    def __init__(self, outbound: Outbound, partner: Partner, recipients: Sequence[Cert], report: SendReport) -> None:
        self.o = outbound
        self.partner = partner
        self.recipients = recipients
        self.report = report
        self.in_flight = asyncio.Semaphore(partner.sftp.files_in_flight if partner.sftp else os.cpu_count() or 2)
        self._transport: Transport | None = None
        self._connect_lock = asyncio.Lock()
        self._connect_error: PipelineError | None = None

    async def transport(self) -> Transport:
        async with self._connect_lock:
            if self._connect_error is not None:
                raise self._connect_error
            if self._transport is None:
                try:
                    self._transport = await self.o.transport_factory(self.partner)
                except PipelineError as exc:
                    self._connect_error = exc
                    raise
            return self._transport

    async def close(self) -> None:
        if self._transport is not None:
            await self._transport.close()

    def _outcome(self, transfer: Transfer, state: str, detail: str = "") -> None:
        self.report.outcomes.append(Outcome(transfer.job or "", transfer.source_name, transfer.id, state, detail))

    async def process(self, transfer: Transfer) -> None:
        async with self.in_flight:
            try:
                if transfer.state == "claimed":
                    transfer = await asyncio.to_thread(self.prepare, transfer)
                    if transfer.state == "duplicate":
                        self._outcome(transfer, "duplicate", f"already sent as {transfer.duplicate_of}")
                        return
                if transfer.state == "sealed":
                    transfer = await self.upload(transfer)
                if transfer.state == "uploaded" and transfer.archived_at is None:
                    transfer = await asyncio.to_thread(self.archive, transfer)
                self._outcome(transfer, "uploaded", transfer.remote_name or "")
            except KeyPolicyError as exc:
                # Fixable configuration (an expired partner certificate…): keep the document queued.
                self.o.ledger.update(transfer.id, f"waiting for a usable key: {exc}", last_error=str(exc))
                log.error("%s pending: %s", transfer.id, exc, extra={"transfer_id": transfer.id})
                self._outcome(transfer, "pending", str(exc))
            except CryptoError as exc:
                self.o.ledger.transition(transfer.id, "failed", str(exc), last_error=str(exc))
                log.error("%s failed: %s", transfer.id, exc, extra={"transfer_id": transfer.id})
                self._outcome(transfer, "failed", str(exc))
            except (TransportError, OSError, PipelineError) as exc:
                # The state stays where it is; the next run tries again (after the operator fixed a host key
                # pin or a permission, or the partner's server is back).
                self.o.ledger.update(transfer.id, f"will retry: {exc}", last_error=str(exc))
                log.warning("%s pending: %s", transfer.id, exc, extra={"transfer_id": transfer.id})
                self._outcome(transfer, "pending", str(exc))

    # -- steps (prepare and archive run in a worker thread; the ledger is only touched by one at a time) ----

    def prepare(self, transfer: Transfer) -> Transfer:
        """claimed → sealed (or duplicate): finish the claim if a crash interrupted it, hash, check, seal."""
        work = Path(transfer.work_path or "")
        source = Path(transfer.source_path or "")
        if not work.exists():
            if source.exists() or source.is_symlink():
                work.parent.mkdir(parents=True, exist_ok=True)
                move_into(source, work)
            else:
                raise CryptoError(f"{transfer.id}: neither {source} nor its claimed copy {work} exists")
        elif source.exists() and not source.is_symlink():
            source.unlink()  # a cross-filesystem move was cut after the copy completed
        digest, size = sha256_file(work)
        try:
            self.o.ledger.set_plaintext(transfer.id, digest, size)
        except DuplicateContent as dup:
            return self._archive_duplicate(transfer, work, dup.original)
        sealed = work.with_name(transfer.remote_name or "sealed.pgp")
        partial = sealed.with_name(sealed.name + ".tmp")
        try:
            info = seal(work, partial, signer=self.o.keys.signer, recipients=self.recipients, now=self.o.clock())
        except DiskFullError as exc:  # name the document, not its claimed copy
            raise disk_full(f"sealing {transfer.source_name} ({transfer.id})", partial.parent) from exc
        with partial.open("rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(partial, sealed)
        fsync_dir(sealed.parent)
        transfer = self.o.ledger.transition(
            transfer.id,
            "sealed",
            info.algorithms,
            sealed_path=str(sealed),
            ciphertext_sha256=info.ciphertext_sha256,
            ciphertext_size=info.ciphertext_size,
            pgp_algorithms=info.algorithms,
            content_pq=int(info.post_quantum),
        )
        crash_point("after-seal")
        return transfer

    def _archive_duplicate(self, transfer: Transfer, work: Path, original: str) -> Transfer:
        target_dir = self.o.archive_dir / transfer.partner / "duplicates"
        target_dir.mkdir(parents=True, exist_ok=True)
        target = target_dir / f"{transfer.id}.{transfer.source_name}"
        move_into(work, target)
        shutil.rmtree(work.parent, ignore_errors=True)
        log.info("%s is a duplicate of %s; archived as %s", transfer.source_name, original, target)
        return self.o.ledger.transition(
            transfer.id,
            "duplicate",
            f"same name and content as {original}",
            duplicate_of=original,
            archive_path=str(target),
            archived_at=None,
        )

    async def upload(self, transfer: Transfer) -> Transfer:
        sealed = Path(transfer.sealed_path or "")
        transport = await self.transport()
        self.o.ledger.update(transfer.id, attempts=transfer.attempts + 1)
        progress = (
            self.o.progress.start(transfer.source_name, transfer.ciphertext_size or 0) if self.o.progress else None
        )
        try:
            result = await transport.put_atomic(
                sealed, remote_directory(self.partner), transfer.remote_name or "", progress=progress
            )
        finally:
            if self.o.progress:
                self.o.progress.finish(transfer.source_name)
        if result.size != transfer.ciphertext_size:
            raise PermanentTransportError(
                f"{transfer.id}: remote size {result.size} differs from sealed size {transfer.ciphertext_size}"
            )
        crash_point("after-upload")
        session = transport.session
        detail = f"{result.remote_path} ({'already present' if result.already_present else 'uploaded'})"
        transfer = self.o.ledger.transition(
            transfer.id,
            "uploaded",
            detail,
            ssh_kex=session.kex,
            ssh_cipher=session.cipher,
            transport_pq=int(session.post_quantum),
            last_error=None,
        )
        log.info("uploaded %s as %s", transfer.source_name, result.remote_path, extra={"transfer_id": transfer.id})
        crash_point("after-ledger-upload")
        return transfer

    def archive(self, transfer: Transfer) -> Transfer:
        """Keep the original and the sealed copy under archive/<partner>/sent/<date>/; clear the work dir."""
        day = (transfer.uploaded_at or transfer.created_at)[:10]
        target_dir = self.o.archive_dir / transfer.partner / "sent" / day
        target_dir.mkdir(parents=True, exist_ok=True)
        original = target_dir / f"{transfer.id}.{transfer.source_name}"
        sealed = target_dir / (transfer.remote_name or f"{transfer.id}.pgp")
        for src, dst in ((Path(transfer.work_path or ""), original), (Path(transfer.sealed_path or ""), sealed)):
            if src.exists():
                move_into(src, dst)
        shutil.rmtree(Path(transfer.work_path or "").parent, ignore_errors=True)
        return self.o.ledger.update(
            transfer.id,
            archive_path=str(original),
            archive_sealed_path=str(sealed),
            archived_at=self.o.ledger.now(),
        )

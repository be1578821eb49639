"""Outbound: drop folder → claim → seal → upload → archive, for the ``send`` jobs of one run.

Every step writes the ledger before it moves on, so a crash between any two
steps is finished by the next run (:meth:`Outbound.run` always starts with its
jobs' unfinished transfers; a job runs once at a time, by the ledger's run locks) and
nothing is uploaded twice to a final name: the remote name is fixed at claim
time, and an upload that finds its final name already complete records it
instead of sending again.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import shutil
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from pysequoia import Cert

from sftp_pipeline.config import Partner, SendJob
from sftp_pipeline.errors import (
    CryptoError,
    DiskFullError,
    DuplicateContent,
    KeyPolicyError,
    LedgerError,
    PermanentTransportError,
    PipelineError,
    TransportError,
    disk_full,
    is_no_space,
)
from sftp_pipeline.faults import crash_point
from sftp_pipeline.flows.groupcommit import GroupCommitter, GroupSync
from sftp_pipeline.flows.intake import quarantine_file, scan
from sftp_pipeline.flows.service import Context, Service
from sftp_pipeline.folders import outbound_folder
from sftp_pipeline.fsutil import fsync_dir, move_into, sha256_file
from sftp_pipeline.keys import load_partner_cert
from sftp_pipeline.ledger import Change, OutboundState, Transfer
from sftp_pipeline.names import new_transfer_id, sealed_name
from sftp_pipeline.openpgp import SealKeys, check_seal_keys, seal
from sftp_pipeline.transport import SMALL_FILE_BYTES, Progress, Transport

log = logging.getLogger(__name__)

# Why 64: enough documents between the steps that each group commit carries dozens of changes and the
# uploads never wait for a seal; bounded so that a drop of 100,000 files does not start them all at once.
DOCUMENTS_IN_FLIGHT = 64
# Why 256: one claim commit per 256 dropped files; a crash loses no claim (each is in the ledger or the file
# is still in the drop folder), and the first documents reach the seal step without waiting for a huge scan.
CLAIMS_PER_COMMIT = 256
# Why 60 s: the partner's certificate and our key are checked once per batch, not per document (~2 ms each);
# a key that expires mid-run is refused within a minute, as a daemon's next run would.
KEY_CHECK_SECONDS = 60.0
# Why 256 KiB: sealing that much takes a few ms on the event loop, less than the GIL hand-over delays a seal
# in a worker thread inflicts on the loop; larger documents go to a thread so the uploads keep moving.
INLINE_SEAL_BYTES = 256 * 1024
# Why these two: a sealed file of at most one SFTP write request (transport.SMALL_FILE_BYTES) is a few
# round trips of latency, not bandwidth; 4 per files_in_flight slot (32 by default) keep at most ~8 MiB in
# flight, one large upload's window, and hide the latency that made 1,000 small documents slow.
SMALL_UPLOAD_BYTES = SMALL_FILE_BYTES
SMALL_UPLOADS_PER_SLOT = 4


class ProgressSink(Protocol):
    """Where per-document upload progress goes (a rich progress bar in the CLI; nothing in a daemon)."""

    def start(self, label: str, total: int) -> Progress: ...

    def finish(self, label: str) -> None: ...


@dataclass(frozen=True, slots=True)
class SendOutcome:
    job: str
    name: str
    transfer_id: str | None
    state: str  # uploaded, duplicate, quarantined, failed, pending, waiting, would-send
    detail: str = ""


@dataclass(slots=True)
class SendReport:
    outcomes: list[SendOutcome] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not any(o.state in {"failed", "pending"} for o in self.outcomes)

    def count(self, state: str) -> int:
        return sum(1 for o in self.outcomes if o.state == state)


class Outbound(Service):
    def __init__(self, context: Context, *, progress: ProgressSink | None = None) -> None:
        super().__init__(context)
        self.progress = progress
        self.work_dir = self.config.state_dir / "work"
        self.archive_dir = self.config.state_dir / "archive"

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
        # A job runs once at a time (the daemon's, an operator's `send` beside it, any process): each run starts
        # by finishing its jobs' unfinished transfers, and two runs would both take a document in flight.
        # Transfers of a job no longer configured for this partner go to whichever run holds its "orphans" lock.
        async with self.ledger.turns("send", [job.name for job in jobs]):
            with self.ledger.try_turn("orphans", partner.id) as orphans:
                await self._send_to(partner, jobs, report, retry_failed, orphans=orphans)

    async def _send_to(
        self, partner: Partner, jobs: list[SendJob], report: SendReport, retry_failed: bool, *, orphans: bool
    ) -> None:
        mine = {job.name for job in jobs}
        configured = {j.name for j in self.config.jobs_of("send") if j.partner == partner.id}

        def ours(transfer: Transfer) -> bool:
            return transfer.job in mine or (orphans and transfer.job not in configured)

        if retry_failed:
            for transfer in filter(ours, self.ledger.by_state("failed", partner.id)):
                back: OutboundState = "sealed" if transfer.sealed_at and transfer.sealed_path else "claimed"
                self.ledger.transition(transfer.id, back, "retry requested", last_error=None)
        work: list[Transfer] = [t for t in self.ledger.unfinished(partner.id) if ours(t)]
        # Before the drop folders are scanned: a file whose claim committed but whose move a crash cut off is
        # still there, and the scan would take it again under a new transfer id.
        await asyncio.to_thread(_finish_moves, [t for t in work if t.state == "claimed"])
        runner: _PartnerRun | None = None
        tasks: list[asyncio.Task[None]] = []

        def start(transfers: list[Transfer]) -> None:
            nonlocal runner
            if not transfers:
                return
            if runner is None:  # the partner's certificate is needed only once there is something to send
                recipients = [load_partner_cert(partner)]
                if partner.encrypt_to_self:
                    recipients.append(self.keys.cert)
                runner = _PartnerRun(self, partner, recipients, report)
            tasks.extend(asyncio.create_task(runner.process(t)) for t in transfers)

        try:
            start(work)
            for job in jobs:
                # Each claim commit's documents start at once: sealing and uploading the first 256 of a large
                # drop overlaps claiming the rest (claiming 1,000 took ~0.9 s before the first seal otherwise).
                async for claimed in self._intake(job, partner, report):
                    start(claimed)
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()  # only those still running: an intake error must not leave documents in flight
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)
            if runner is not None:
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
            report.outcomes.append(SendOutcome(job.name, seen.name, None, "would-send", f"{seen.size} bytes"))
        for seen, reason in intake.quarantine:
            report.outcomes.append(SendOutcome(job.name, seen.name, None, "would-quarantine", reason))

    def _max_bytes(self, job: SendJob) -> int:
        return job.max_document_bytes or self.config.limits.max_document_bytes

    # -- intake ---------------------------------------------------------------------------------------

    async def _intake(self, job: SendJob, partner: Partner, report: SendReport) -> AsyncIterator[list[Transfer]]:
        """Scan the job's drop folder, quarantine what must not go, and claim the rest, yielding each claim
        commit's documents as soon as they are claimed (file work in worker threads)."""
        # In a worker thread: the stability check sleeps, and the daemon's loop must keep serving meanwhile.
        intake = await asyncio.to_thread(
            scan,
            job.source,
            pattern=job.pattern,
            max_bytes=self._max_bytes(job),
            authorised=job.document_type in partner.send,
            stable_seconds=job.stable_seconds,
        )
        quarantine_dir = self.config.state_dir / "quarantine" / job.name
        for seen, reason in intake.quarantine:
            detail = f"document type {job.document_type}, partner {partner.id}, limit {self._max_bytes(job)} bytes"
            target = await asyncio.to_thread(
                quarantine_file,
                job.source / seen.name,
                quarantine_dir,
                reason,
                job=job.name,
                detail=detail,
                clock=self.clock,
            )
            log.warning("quarantined %s (%s) as %s", seen.name, reason, target)
            report.outcomes.append(SendOutcome(job.name, seen.name, None, "quarantined", f"{reason}: {target}"))
        for seen in intake.waiting:
            report.outcomes.append(SendOutcome(job.name, seen.name, None, "waiting", "still being written"))
        for i in range(0, len(intake.take), CLAIMS_PER_COMMIT):
            sources = [job.source / seen.name for seen in intake.take[i : i + CLAIMS_PER_COMMIT]]
            batch, full = await asyncio.to_thread(self._claim, job, sources)
            yield batch
            if full is not None:
                # The work area is full: this and the rest stay in the drop folder for the next run.
                log.error("%s", full[1])
                report.outcomes.append(SendOutcome(job.name, full[0], None, "pending", str(full[1])))
                break

    def _claim(self, job: SendJob, sources: list[Path]) -> tuple[list[Transfer], tuple[str, DiskFullError] | None]:
        """Claim ``sources`` in one commit, then move each into its work folder (the claim comes first).

        Returns the claims and, when the work area filled up, the document it could not take (that one and the
        rest are closed and stay in the drop folder for a later run).
        """
        changes: list[Change] = []
        for source in sources:
            transfer_id = new_transfer_id(self.clock())
            work = self.work_dir / transfer_id
            try:
                work.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                if not is_no_space(exc):
                    raise
                for change in changes:  # nothing recorded yet: the files all stay in the drop folder
                    shutil.rmtree(self.work_dir / change.transfer_id, ignore_errors=True)
                return [], (source.name, disk_full(f"claiming {source.name} of send job {job.name}", self.work_dir))
            values = {"partner": job.partner, "job": job.name, "document_type": job.document_type,
                      "source_name": source.name, "source_path": str(source), "work_path": str(work / "document"),
                      "remote_name": str(sealed_name(transfer_id, job.document_type, source.name))}  # fmt: skip
            changes.append(Change(transfer_id, "claim", values=values))
        claimed: list[Transfer] = []
        results = self.ledger.apply(changes)
        for i, (result, source) in enumerate(zip(results, sources, strict=True)):
            if isinstance(result, LedgerError):
                raise result
            work_file = Path(result.work_path or "")
            try:
                # No fsync of the work folder here: if a power cut loses this rename, the file is still in the
                # drop folder and the durable claim makes ``prepare`` move it again; ``prepare`` fsyncs this
                # same folder before it commits "sealed", so nothing after the claim relies on the rename alone.
                move_into(source, work_file, durable=False)
            except FileNotFoundError:
                # Another worker took it between our scan and our claim: not ours, nothing to do.
                self.ledger.transition(
                    result.id, "failed", "source vanished before claim", last_error="taken by another worker"
                )
                shutil.rmtree(work_file.parent, ignore_errors=True)
                continue
            except OSError as exc:
                if not is_no_space(exc):
                    raise
                # Not taken after all: the documents are still in the drop folder (move_into leaves no half
                # copy) and a later run claims them afresh; these claims are closed so nothing resumes them.
                error = disk_full(f"claiming {source.name} of send job {job.name}", work_file.parent)
                self._close_claims([change.transfer_id for change in changes[i:]], error)
                return claimed, (source.name, error)
            log.info("claimed %s as %s", source, result.id, extra={"transfer_id": result.id})
            claimed.append(result)
            # After the first move a crash leaves the rest of this batch claimed but still in the drop folder:
            # the hardest case for recovery (``_recover`` moves them), so that is where the point sits.
            crash_point("after-claim")
        return claimed, None

    def _close_claims(self, transfer_ids: list[str], error: DiskFullError) -> None:
        """Close claims whose files stayed in the drop folder because the work area is full (none resumes)."""
        for transfer_id in transfer_ids:
            self.ledger.transition(transfer_id, "failed", "not taken: work area full", last_error=str(error))
            shutil.rmtree(self.work_dir / transfer_id, ignore_errors=True)


def _finish_moves(claimed: list[Transfer]) -> None:
    """Move into its work folder each claimed file still at its drop-folder name (a crash cut the claim)."""
    for transfer in claimed:
        work, source = Path(transfer.work_path or ""), Path(transfer.source_path or "")
        if not work.exists() and (source.exists() or source.is_symlink()):
            work.parent.mkdir(parents=True, exist_ok=True)
            move_into(source, work)


def _fsync_replace(partial: Path, sealed: Path) -> None:
    """fsync the sealed file and rename it into place (its folder is fsynced by the caller)."""
    with partial.open("rb+") as fh:
        os.fsync(fh.fileno())
    os.replace(partial, sealed)


def _durable_replace(partial: Path, sealed: Path) -> None:
    """fsync the sealed file, rename it into place and fsync its folder (which also makes the claim's move
    durable) — all before "sealed" is committed."""
    _fsync_replace(partial, sealed)
    fsync_dir(sealed.parent)


class _PartnerRun:
    """One partner's share of a run: one connection, many documents in flight over it.

    Up to :data:`DOCUMENTS_IN_FLIGHT` documents move through the steps at once, each in order (hash, seal,
    upload, archive; every state committed before the next step). Their ledger changes are grouped into
    shared commits (:class:`GroupCommitter`), hashing, sealing and moving run in worker threads, and at most
    ``files_in_flight`` uploads share the one SFTP session.
    """

    def __init__(self, outbound: Outbound, partner: Partner, recipients: Sequence[Cert], report: SendReport) -> None:
        self.o = outbound
        self.partner = partner
        self.recipients = recipients
        self.report = report
        self.commit = GroupCommitter(outbound.ledger)
        self.sync = GroupSync()
        self.documents = asyncio.Semaphore(DOCUMENTS_IN_FLIGHT)
        slots = partner.sftp.files_in_flight if partner.sftp else os.cpu_count() or 2
        self.in_flight = asyncio.Semaphore(slots)
        self.small_in_flight = asyncio.Semaphore(slots * SMALL_UPLOADS_PER_SLOT)
        self._transport: Transport | None = None
        self._connect_lock = asyncio.Lock()
        self._connect_error: PipelineError | None = None
        self._keys: tuple[float, SealKeys] | None = None  # (loop time checked, verdict)

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
        self.report.outcomes.append(SendOutcome(transfer.job or "", transfer.source_name, transfer.id, state, detail))

    async def process(self, transfer: Transfer) -> None:
        async with self.documents:
            try:
                if transfer.state == "claimed":
                    transfer = await self.prepare(transfer)
                    if transfer.state == "duplicate":
                        self._outcome(transfer, "duplicate", f"already sent as {transfer.duplicate_of}")
                        return
                if transfer.state == "sealed":
                    transfer = await self.upload(transfer)
                if transfer.state == "uploaded" and transfer.archived_at is None:
                    transfer = await self.archive(transfer)
                self._outcome(transfer, "uploaded", transfer.remote_name or "")
            except KeyPolicyError as exc:
                # Fixable configuration (an expired partner certificate…): keep the document queued.
                await self.commit.update(transfer.id, f"waiting for a usable key: {exc}", last_error=str(exc))
                log.error("%s pending: %s", transfer.id, exc, extra={"transfer_id": transfer.id})
                self._outcome(transfer, "pending", str(exc))
            except CryptoError as exc:
                await self.commit.transition(transfer.id, "failed", str(exc), last_error=str(exc))
                log.error("%s failed: %s", transfer.id, exc, extra={"transfer_id": transfer.id})
                self._outcome(transfer, "failed", str(exc))
            except (TransportError, OSError, PipelineError) as exc:
                # The state stays where it is; the next run tries again (after the operator fixed a host key
                # pin or a permission, or the partner's server is back).
                await self.commit.update(transfer.id, f"will retry: {exc}", last_error=str(exc))
                log.warning("%s pending: %s", transfer.id, exc, extra={"transfer_id": transfer.id})
                self._outcome(transfer, "pending", str(exc))

    # -- steps (file work in worker threads; ledger changes through the group committer) -------------------

    def _seal_keys(self) -> SealKeys:
        """The policy verdict on the partner's certificate(s) and our key, re-taken every KEY_CHECK_SECONDS."""
        now = asyncio.get_running_loop().time()
        if self._keys is None or now - self._keys[0] > KEY_CHECK_SECONDS:
            self._keys = (now, check_seal_keys(self.o.keys.signer, self.recipients, now=self.o.clock()))
        return self._keys[1]

    async def prepare(self, transfer: Transfer) -> Transfer:
        """claimed → sealed (or duplicate): finish the claim if a crash interrupted it, hash, check, seal."""
        claimed = self._claimed_copy(transfer)
        work = claimed if claimed is not None else await asyncio.to_thread(self._recover, transfer)
        # pysequoia holds the GIL while it works: a seal in a worker thread stalls the event loop's every socket
        # call for up to the interpreter's switch interval, so small documents are hashed and sealed right here.
        inline = work.stat().st_size <= INLINE_SEAL_BYTES
        document = work.read_bytes() if inline else None  # read once: hashed here, sealed below
        if document is not None:
            digest, size = hashlib.sha256(document).hexdigest(), len(document)
        else:
            digest, size = await asyncio.to_thread(sha256_file, work)
        try:
            await self.commit.apply(Change(transfer.id, "plaintext", values={"sha256": digest, "size": size}))
        except DuplicateContent as dup:
            return await self._archive_duplicate(transfer, work, dup.original)
        checked = self._seal_keys()
        sealed = work.with_name(transfer.remote_name or "sealed.pgp")
        partial = sealed.with_name(sealed.name + ".tmp")
        args = (work, partial)
        kwargs = {"signer": self.o.keys.signer, "recipients": self.recipients, "now": self.o.clock(),
                  "checked": checked, "fsync": False, "plaintext": document}  # fmt: skip
        try:
            info = seal(*args, **kwargs) if inline else await asyncio.to_thread(seal, *args, **kwargs)  # type: ignore[arg-type]
        except DiskFullError as exc:  # name the document, not its claimed copy
            raise disk_full(f"sealing {transfer.source_name} ({transfer.id})", partial.parent) from exc
        if inline:  # with the other small documents' in one thread hand-over, their folder fsyncs at once
            await self.sync.run(lambda: _fsync_replace(partial, sealed), sync=[sealed.parent])
        else:
            await asyncio.to_thread(_durable_replace, partial, sealed)
        transfer = await self.commit.transition(
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

    @staticmethod
    def _claimed_copy(transfer: Transfer) -> Path | None:
        """The claimed copy when the claim finished (the usual case, two stat calls: no thread hand-over)."""
        work, source = Path(transfer.work_path or ""), Path(transfer.source_path or "")
        return work if work.exists() and not (source.exists() or source.is_symlink()) else None

    def _recover(self, transfer: Transfer) -> Path:
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
        return work

    async def _archive_duplicate(self, transfer: Transfer, work: Path, original: str) -> Transfer:
        target_dir = self.o.archive_dir / transfer.partner / "duplicates"
        target = target_dir / f"{transfer.id}.{transfer.source_name}"

        def move() -> None:
            target_dir.mkdir(parents=True, exist_ok=True)
            move_into(work, target)
            shutil.rmtree(work.parent, ignore_errors=True)

        await asyncio.to_thread(move)
        log.info("%s is a duplicate of %s; archived as %s", transfer.source_name, original, target)
        return await self.commit.transition(
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
        await self.commit.update(transfer.id, attempts=transfer.attempts + 1)
        progress = (
            self.o.progress.start(transfer.source_name, transfer.ciphertext_size or 0) if self.o.progress else None
        )
        try:
            small = (transfer.ciphertext_size or 0) <= SMALL_UPLOAD_BYTES
            # Only the SFTP work holds a slot; the commits around it are shared with the other documents.
            async with self.small_in_flight if small else self.in_flight:
                result = await transport.put_atomic(
                    sealed, outbound_folder(self.partner), transfer.remote_name or "", progress=progress
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
        transfer = await self.commit.transition(
            transfer.id,
            "uploaded",
            detail,
            ssh_kex=session.kex,
            ssh_cipher=session.cipher,
            transport_pq=int(session.post_quantum),
            transport=session.transport,
            peer_key=session.host_key or None,
            last_error=None,
        )
        log.info("uploaded %s as %s", transfer.source_name, result.remote_path, extra={"transfer_id": transfer.id})
        crash_point("after-ledger-upload")
        return transfer

    async def archive(self, transfer: Transfer) -> Transfer:
        """Keep the original and the sealed copy under archive/<partner>/sent/<date>/; clear the work dir."""
        day = (transfer.uploaded_at or transfer.created_at)[:10]
        target_dir = self.o.archive_dir / transfer.partner / "sent" / day
        original = target_dir / f"{transfer.id}.{transfer.source_name}"
        sealed = target_dir / (transfer.remote_name or f"{transfer.id}.pgp")

        def move() -> None:
            target_dir.mkdir(parents=True, exist_ok=True)
            for src, dst in ((Path(transfer.work_path or ""), original), (Path(transfer.sealed_path or ""), sealed)):
                if src.exists():
                    move_into(src, dst, durable=False)

        def clear() -> None:
            shutil.rmtree(Path(transfer.work_path or "").parent, ignore_errors=True)

        # Both renames made durable at once (and with every other document's in the batch: one fsync of the
        # day's folder), before archived_at is committed; the work folder goes only after that.
        if (transfer.ciphertext_size or 0) <= SMALL_UPLOAD_BYTES:
            await self.sync.run(move, sync=[target_dir], then=clear)
        else:

            def move_durably() -> None:
                move()
                fsync_dir(target_dir)
                clear()

            await asyncio.to_thread(move_durably)
        return await self.commit.update(
            transfer.id,
            archive_path=str(original),
            archive_sealed_path=str(sealed),
            archived_at=self.o.ledger.now(),
        )

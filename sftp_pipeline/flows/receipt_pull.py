"""Pull the partner's signed receipts for what we sent, verify them, and settle the ledger.

For each partner named by a ``receipts`` job: list the directory the partner
leaves receipts in (``sftp.dirs.receipts_out`` on their server, or
``receipts-in`` in the root our server hosts for them), take every complete
pair ``<T>.receipt.json`` + ``<T>.receipt.json.sig`` (the ``.sig`` is the
commit marker), download it to staging, verify it strictly
(:func:`sftp_pipeline.proof.receipts.verify_receipt`) and decide what it means for
transfer ``T`` (:func:`judge`, pure). Then, in this order: transition the
transfer, record the receipt (bytes included, whatever the verdict), keep the
files (``state_dir/receipts/<partner>/`` when valid and settling,
``state_dir/quarantine/receipts/<partner>/`` otherwise) and only then remove
them from the partner's directory. A crash anywhere before the removal means
the next run sees the pair again and calls it a ``duplicate``: harmless.

Verdicts (one :class:`PullOutcome` each):

==================  ===================================================================  ==============
verdict             meaning                                                              files
==================  ===================================================================  ==============
receipted           valid, matches the ledger, accepted: the transfer is delivered       stored, removed
rejected            valid, matches, the partner rejected it (``receipt_status``)         stored, removed
mismatch            valid, but name, hash or size differs from what we sent              stored, removed
invalid             forged, wrong signer, malformed, wrong parties, unsigned, oversize   quarantined, removed
unknown-transfer    valid, but we never sent ``T`` to this partner                      quarantined, removed
duplicate           valid, the transfer was already settled the same way (a replay)      stored once, removed
conflict            valid, but says something else about an already settled transfer    quarantined, removed
premature           valid, but the transfer is not uploaded yet in our ledger            left in place
waiting             a ``.json`` without its ``.sig`` (still uploading)                   left in place
leftover            a lone ``.json`` identical to a receipt already recorded (a run      removed
                    stopped between removing a pair's ``.sig`` and its ``.json``)
stray               a name that is not part of a receipt pair                            left in place
error               the partner could not be reached, a file could not be moved          left in place
==================  ===================================================================  ==============

Why *premature* leaves the receipt in place: it proves the partner has the
file, which happens when ``send`` crashed after the upload and before its
ledger commit (the transfer is still ``sealed``). The next ``send`` run
recovers the transfer to ``uploaded`` (its upload finds the file already
there), and the next ``receipts`` run then settles it normally. Settling it
now would need a ``sealed → receipted`` transition the state machine rightly
does not have; quarantining it would lose the proof of delivery.

Invalid receipts never settle a transfer: an ``uploaded`` transfer named by
one moves to ``invalid-receipt`` (a later valid receipt still settles it).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sftp_pipeline.clock import rfc3339
from sftp_pipeline.config import Partner, ReceiptsJob
from sftp_pipeline.errors import KeyFileError, LedgerError, PipelineError, ReceiptInvalid, TransportError
from sftp_pipeline.faults import crash_point
from sftp_pipeline.flows.service import Context, Service
from sftp_pipeline.folders import receipts_folder
from sftp_pipeline.fsutil import fsync_dir, move_into
from sftp_pipeline.keys import load_partner_cert
from sftp_pipeline.ledger import OutboundState, ReceiptRecord, Transfer
from sftp_pipeline.openpgp import Cert, check_cert
from sftp_pipeline.proof.receipts import MAX_RECEIPT_BYTES, RECEIPT_SUFFIX, SIGNATURE_SUFFIX, Receipt, verify_receipt
from sftp_pipeline.transport import RemoteEntry, Transport

log = logging.getLogger(__name__)


# A receipt pair, by name: ``<ULID>.receipt.json`` and ``<ULID>.receipt.json.sig``.
RECEIPT_NAME_RE = re.compile(r"^(?P<tid>[0-9A-HJKMNP-TV-Z]{26})\.receipt\.json(?P<sig>\.sig)?$")
SETTLED_STATES = ("receipted", "rejected", "mismatch")
# States in which a transfer waits for its receipt; a valid receipt settles it.
AWAITING_STATES = ("uploaded", "invalid-receipt")
# States before the upload is committed in our ledger: the receipt waits for ``send`` to catch up.
PREMATURE_STATES = ("claimed", "sealed", "failed")
# Verdicts whose files are kept under state_dir/receipts/<partner>/ (the evidence of delivery).
STORED_VERDICTS = frozenset({"receipted", "rejected", "mismatch", "duplicate"})
QUARANTINED_VERDICTS = frozenset({"invalid", "unknown-transfer", "conflict"})
# The fields that must equal what our ledger says we sent.
COMPARED_FIELDS = ("remote_name", "ciphertext_sha256", "ciphertext_size")


@dataclass(frozen=True, slots=True)
class PullOutcome:
    partner: str
    name: str  # the receipt's .json name, or the stray/partner name
    transfer_id: str | None
    verdict: str
    detail: str = ""


@dataclass(slots=True)
class PullReport:
    outcomes: list[PullOutcome] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """False when some work could not be done (partner unreachable, file not movable, ledger failure).

        Invalid, mismatching or rejected receipts are results, not failures: reconciliation reports them.
        """
        return not any(o.verdict == "error" for o in self.outcomes)

    def count(self, verdict: str) -> int:
        return sum(1 for o in self.outcomes if o.verdict == verdict)


# --------------------------------------------------------------------------------------- pure core


@dataclass(frozen=True, slots=True)
class Pair:
    transfer_id: str
    json: RemoteEntry
    sig: RemoteEntry

    @property
    def names(self) -> tuple[str, str]:
        return self.json.name, self.sig.name

    @property
    def oversize(self) -> bool:
        return self.json.size > MAX_RECEIPT_BYTES or self.sig.size > MAX_RECEIPT_BYTES


@dataclass(frozen=True, slots=True)
class Listing:
    pairs: list[Pair]
    waiting: list[RemoteEntry]  # .json without its .sig
    strays: list[RemoteEntry]  # anything else, orphan .sig included


def classify_listing(entries: Sequence[RemoteEntry]) -> Listing:
    """Split a directory listing into complete receipt pairs, receipts still uploading, and strays."""
    jsons: dict[str, RemoteEntry] = {}
    sigs: dict[str, RemoteEntry] = {}
    strays: list[RemoteEntry] = []
    for entry in entries:
        match = RECEIPT_NAME_RE.match(entry.name)
        if match is None:
            strays.append(entry)
        elif match["sig"]:
            sigs[match["tid"]] = entry
        else:
            jsons[match["tid"]] = entry
    pairs = [Pair(tid, jsons[tid], sigs[tid]) for tid in sorted(jsons) if tid in sigs]
    waiting = [jsons[tid] for tid in sorted(jsons) if tid not in sigs]
    strays.extend(sigs[tid] for tid in sorted(sigs) if tid not in jsons)
    return Listing(pairs, waiting, sorted(strays, key=lambda e: e.name))


@dataclass(frozen=True, slots=True)
class Judgement:
    verdict: str
    detail: str
    new_state: OutboundState | None = None  # the transition to make, if any
    values: dict[str, Any] = field(default_factory=dict)  # ledger columns set with it


def _settlement(receipt: Receipt, transfer: Transfer) -> Judgement:
    """What ``receipt`` says about ``transfer`` if the transfer were waiting for it."""
    values = {
        "receipt_status": receipt.status,
        "partner_received_at": rfc3339(receipt.received_at),
        "partner_validated_at": rfc3339(receipt.validated_at),
    }
    ours = {f: getattr(transfer, f) for f in COMPARED_FIELDS}
    theirs = {f: getattr(receipt, f) for f in COMPARED_FIELDS}
    differences = [
        f"{f}: receipt says {theirs[f]!r}, we sent {ours[f]!r}" for f in COMPARED_FIELDS if ours[f] != theirs[f]
    ]
    if differences:
        detail = f"receipt ({receipt.disposition}, {receipt.status}) does not match: " + "; ".join(differences)
        return Judgement("mismatch", detail, "mismatch", values)
    if receipt.accepted:
        detail = f"accepted by the partner; received {values['partner_received_at']}"
        return Judgement("receipted", detail, "receipted", values)
    detail = f"rejected by the partner: {receipt.status}" + (f" ({receipt.detail})" if receipt.detail else "")
    return Judgement("rejected", detail, "rejected", values)


def judge(receipt: Receipt, transfer: Transfer | None) -> Judgement:
    """Decide what a *verified* receipt means for the transfer it names (None: no such outbound transfer)."""
    tid = receipt.transfer_id
    if transfer is None:
        return Judgement("unknown-transfer", f"we never sent transfer {tid} to {receipt.receiver}")
    if transfer.state == "duplicate":
        return Judgement(
            "unknown-transfer", f"transfer {tid} was never uploaded (a duplicate of {transfer.duplicate_of})"
        )
    if transfer.state in PREMATURE_STATES:
        return Judgement(
            "premature",
            f"transfer {tid} is {transfer.state} in our ledger; left in place until `send` records the upload",
        )
    would = _settlement(receipt, transfer)
    if transfer.state in AWAITING_STATES:
        return would
    current = {k: getattr(transfer, k) for k in would.values}
    if would.new_state == transfer.state and would.values == current:
        return Judgement("duplicate", f"transfer {tid} is already {transfer.state}; same outcome, nothing changed")
    changed = [f"{k}: {current[k]!r} → {v!r}" for k, v in would.values.items() if current[k] != v]
    return Judgement(
        "conflict",
        f"transfer {tid} is already {transfer.state}, but this receipt says {would.verdict}"
        + (f" ({'; '.join(changed)})" if changed else "")
        + "; nothing changed — ask the partner which receipt is right",
    )


# ---------------------------------------------------------------------------------------- service


class ReceiptPuller(Service):
    def __init__(self, context: Context) -> None:
        super().__init__(context)
        self.store_dir = self.config.state_dir / "receipts"
        self.staging_dir = self.store_dir / "staging"
        self.quarantine_dir = self.config.state_dir / "quarantine" / "receipts"

    async def run(self, jobs: list[ReceiptsJob]) -> PullReport:
        """Pull and settle the receipts of every partner named by ``jobs`` (each partner once)."""
        report = PullReport()
        for partner_id in dict.fromkeys(job.partner for job in jobs):
            # One pull per partner at a time (the ledger's run locks): both would clear and fill the same
            # staging folder.
            async with self.ledger.turn("receipts", partner_id):
                await _PartnerPull(self, self.config.partner(partner_id), report).run()
        return report


class _PartnerPull:
    """One partner's receipts in one run, over one connection."""

    def __init__(self, puller: ReceiptPuller, partner: Partner, report: PullReport) -> None:
        self.p = puller
        self.partner = partner
        self.report = report
        self.directory = receipts_folder(partner)
        self.staging = puller.staging_dir / partner.id

    def _outcome(self, name: str, transfer_id: str | None, verdict: str, detail: str = "") -> None:
        self.report.outcomes.append(PullOutcome(self.partner.id, name, transfer_id, verdict, detail))
        level = logging.WARNING if verdict in QUARANTINED_VERDICTS | {"error", "mismatch", "conflict"} else logging.INFO
        log.log(level, "partner %s: receipt %s: %s %s", self.partner.id, name, verdict, detail)

    async def run(self) -> None:
        try:
            cert = self._issuer_cert()
        except KeyFileError as exc:
            # Fixable configuration: judging receipts with a broken certificate would quarantine good ones.
            self._outcome(self.partner.id, None, "error", f"receipts left in place: {exc}")
            return
        try:
            transport = await self.p.transport_factory(self.partner)
        except PipelineError as exc:
            self._outcome(self.partner.id, None, "error", f"cannot connect; receipts left in place: {exc}")
            return
        try:
            listing = classify_listing(await transport.list(self.directory))
            shutil.rmtree(self.staging, ignore_errors=True)  # leftovers of a crashed run: the remote still has them
            await self._report_unpaired(transport, listing)
            for pair in listing.pairs:
                await self._one(transport, pair, cert)
        except (TransportError, LedgerError, OSError) as exc:
            self._outcome(self.partner.id, None, "error", f"stopped; the rest is left in place: {exc}")
        finally:
            shutil.rmtree(self.staging, ignore_errors=True)
            await transport.close()

    def _issuer_cert(self) -> Cert:
        cert = load_partner_cert(self.partner)
        check_cert(cert, purpose="verify", now=self.p.clock(), label=f"partner {self.partner.id!r} receipts")
        return cert

    async def _report_unpaired(self, transport: Transport, listing: Listing) -> None:
        for entry in listing.waiting:
            tid = entry.name[: -len(RECEIPT_SUFFIX)]
            seen = [r for r in self.p.ledger.receipts_for(self.partner.id, tid) if r.name == entry.name]
            if seen and await self._is_our_leftover(transport, entry.name, seen):
                await transport.remove(self.directory, entry.name)
                self._outcome(
                    entry.name,
                    tid,
                    "leftover",
                    f"the .json of a receipt recorded before, whose .sig was removed by a run stopped before "
                    f"the .json: the same bytes, removed from {self.directory}",
                )
                continue
            detail = (
                f"a receipt for {tid} was already processed; this .json without a .sig differs from it"
                if seen
                else f"no {entry.name}{SIGNATURE_SUFFIX} yet (still uploading); left in place"
            )
            self._outcome(entry.name, tid, "waiting", detail)
        for entry in listing.strays:
            self._outcome(
                entry.name,
                None,
                "stray",
                f"not part of a <transfer id>{RECEIPT_SUFFIX}(.sig) pair in {self.directory}; left alone",
            )

    async def _one(self, transport: Transport, pair: Pair, cert: Cert) -> None:
        tid = pair.transfer_id
        json_name, sig_name = pair.names
        transfer = self.p.ledger.find_outbound(self.partner.id, tid)
        if pair.oversize:
            detail = (
                f"{json_name} ({pair.json.size} bytes) / {sig_name} ({pair.sig.size} bytes): over the "
                f"{MAX_RECEIPT_BYTES}-byte receipt limit; not downloaded, removed from {self.directory}"
            )
            self._settle_invalid(pair, transfer, "malformed", detail, files={})
            await self._remove(transport, pair)
            return
        files = await self._download(transport, pair)
        crash_point("after-receipt-download")
        try:
            receipt = verify_receipt(
                files,
                issuer_cert=cert,
                now=self.p.clock(),
                expected_sender=self.p.config.party.id,
                expected_receiver=self.partner.id,
            )
        except ReceiptInvalid as exc:
            self._settle_invalid(pair, transfer, exc.reason, str(exc), files)
            await self._remove(transport, pair)
            return
        judgement = judge(receipt, transfer)
        if judgement.verdict == "duplicate" and transfer is not None and not self._recorded(tid, json_name):
            # This very receipt settled the transfer in a run killed before it was recorded: record it now.
            judgement = Judgement(transfer.state, judgement.detail)
        if judgement.verdict == "premature":
            self._outcome(json_name, tid, "premature", judgement.detail)
            return
        if judgement.new_state is not None:
            self.p.ledger.transition(tid, judgement.new_state, judgement.detail, **judgement.values)
            crash_point("mid-settle")
        if judgement.verdict in STORED_VERDICTS:
            stored = self._store(files)
        else:
            stored = self._quarantine(files, judgement.verdict, judgement.verdict, judgement.detail)
        self.p.ledger.record_receipt(
            partner=self.partner.id,
            name=json_name,
            transfer_id=tid,
            verdict=judgement.verdict,
            reason=judgement.verdict if judgement.verdict in QUARANTINED_VERDICTS else None,
            status=receipt.status,
            received_at=rfc3339(receipt.received_at),
            validated_at=rfc3339(receipt.validated_at),
            stored_path=str(stored),
            receipt_json=files[json_name],
            receipt_sig=files[sig_name],
        )
        crash_point("after-settle")
        await self._remove(transport, pair)
        self._outcome(json_name, tid, judgement.verdict, judgement.detail)

    def _recorded(self, tid: str, json_name: str) -> bool:
        """Whether a receipt of this name already settled ``tid`` in the ledger."""
        return any(
            r.name == json_name and r.verdict in SETTLED_STATES
            for r in self.p.ledger.receipts_for(self.partner.id, tid)
        )

    def _settle_invalid(
        self, pair: Pair, transfer: Transfer | None, reason: str, message: str, files: dict[str, bytes]
    ) -> None:
        tid = pair.transfer_id
        json_name, sig_name = pair.names
        if transfer is not None and transfer.state == "uploaded":
            self.p.ledger.transition(tid, "invalid-receipt", f"{reason}: {message}")
        stored = self._quarantine(files, "invalid", reason, message, names=pair.names)
        self.p.ledger.record_receipt(
            partner=self.partner.id,
            name=json_name,
            transfer_id=tid,
            verdict="invalid",
            reason=reason,
            stored_path=str(stored),
            receipt_json=files.get(json_name),
            receipt_sig=files.get(sig_name),
        )
        self._outcome(json_name, tid, "invalid", f"{reason}: {message}")

    # -- files ----------------------------------------------------------------------------------------

    async def _download(self, transport: Transport, pair: Pair) -> dict[str, bytes]:
        folder = self.staging / pair.transfer_id
        folder.mkdir(parents=True, exist_ok=True)
        files: dict[str, bytes] = {}
        for name in pair.names:
            local = folder / name
            await transport.get(self.directory, name, local)
            with local.open("rb") as fh:  # bounded: a file that grew since the listing is cut, then refused
                files[name] = fh.read(MAX_RECEIPT_BYTES + 1)
        return files

    async def _is_our_leftover(self, transport: Transport, name: str, recorded: list[ReceiptRecord]) -> bool:
        """Whether the lone ``name`` holds exactly the bytes of a receipt of that name we already recorded."""
        local = self.staging / "leftover" / name
        local.parent.mkdir(parents=True, exist_ok=True)
        try:
            await transport.get(self.directory, name, local)
            with local.open("rb") as fh:
                data = fh.read(MAX_RECEIPT_BYTES + 1)
        finally:
            local.unlink(missing_ok=True)
        return any(r.receipt_json == data for r in recorded)

    async def _remove(self, transport: Transport, pair: Pair) -> None:
        # The .sig first: a pair cut in half by a crash is then "still uploading", never a receipt seen twice.
        for name in reversed(pair.names):
            await transport.remove(self.directory, name)
            crash_point("mid-receipt-remove")

    def _store(self, files: dict[str, bytes]) -> Path:
        """Keep a valid receipt under receipts/<partner>/; the first copy of a name wins. Returns the .json path."""
        folder = self.p.store_dir / self.partner.id
        folder.mkdir(parents=True, exist_ok=True)
        json_path = folder
        for name, data in files.items():
            target = _free_name(folder, name, data)
            if not target.exists():
                _write_durably(target, data)
            if name.endswith(RECEIPT_SUFFIX):
                json_path = target
        return json_path

    def _quarantine(
        self,
        files: dict[str, bytes],
        verdict: str,
        reason: str,
        message: str,
        names: tuple[str, ...] = (),
    ) -> Path:
        """Keep the files (if downloaded) with a ``.reason.json`` beside them; return the reason file's path."""
        folder = self.p.quarantine_dir / self.partner.id
        folder.mkdir(parents=True, exist_ok=True)
        moment = self.p.clock()
        stamp = moment.strftime("%Y%m%dT%H%M%S%fZ")
        json_name = next((n for n in (*files, *names) if n.endswith(RECEIPT_SUFFIX)), "receipt")
        kept = []
        for name, data in files.items():
            target = _free_name(folder, f"{stamp}_{name}", None)
            _write_durably(target, data)
            kept.append(target.name)
        note = {
            "file": json_name,
            "partner": self.partner.id,
            "remote_directory": self.directory,
            "verdict": verdict,
            "reason": reason,
            "message": message,
            "kept_as": kept,
            "what_to_do": _ADVICE.get(verdict, _ADVICE["invalid"]),
            "at": rfc3339(moment),
        }
        reason_file = _free_name(folder, f"{stamp}_{json_name}.reason.json", None)
        _write_durably(reason_file, (json.dumps(note, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))
        return reason_file


_ADVICE = {
    "invalid": (
        "the receipt proves nothing; ask the partner to re-issue it signed with the key we hold for them "
        "(docs/receipts.md). A valid receipt uploaded later still settles the transfer."
    ),
    "unknown-transfer": "we have no record of sending this transfer to this partner; ask them what they received",
    "conflict": "the transfer was already settled by an earlier receipt; compare both with the partner",
}


def _free_name(folder: Path, name: str, same_as: bytes | None) -> Path:
    """``folder/name``, or ``name.1``, ``name.2``… if taken; an existing file equal to ``same_as`` is reused."""
    target, suffix = folder / name, 1
    while target.exists() or target.is_symlink():
        if same_as is not None and target.is_file() and target.read_bytes() == same_as:
            return target
        target = folder / f"{name}.{suffix}"
        suffix += 1
    return target


def _write_durably(path: Path, data: bytes) -> None:
    partial = path.with_name(f".{path.name}.part")
    with partial.open("wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    move_into(partial, path)
    fsync_dir(path.parent)

"""The audit log: an append-only, hash-chained JSON-lines export of every change the ledger records.

``state_dir/audit.jsonl`` holds one canonical JSON object per line (sorted keys, no spaces, UTF-8)::

    {"at": "...", "data": {...}, "detail": ..., "hash": "<hex>", "id": "<transfer id>", "kind": "transfer",
     "partner": "utility", "prev": "<hash of the line before>", "seq": 17, "state": "uploaded"}

``hash`` is the SHA-256 of the line's canonical JSON without ``hash``; ``prev`` is the previous line's
``hash`` (64 zeros on the first line). ``seq`` is the ledger's ``audit_events`` sequence number; the ledger
writes that row in the same transaction as the change itself, and :meth:`Audit.sync` appends every row
with a ``seq`` above the log's last one, so a crash between a ledger commit and the append is repaired at
the next sync. Lines are a pure function of the ledger rows: re-exporting gives the same bytes.

``state_dir/audit.head`` (``{"seq", "hash", "lines"}``, replaced atomically after each append) and the
ledger's ``meta`` key ``audit_head:audit.jsonl`` remember how far the log reached, which a chain alone cannot: with
them :func:`verify` also detects lines cut off the end. What each check proves: docs/audit.md.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from sftp_pipeline.config import Config
from sftp_pipeline.errors import AuditError, LedgerError
from sftp_pipeline.ledger import AuditEvent, Ledger

LOG_NAME = "audit.jsonl"
HEAD_NAME = "audit.head"
# The ledger meta key holding the head of the log named ``{name}`` (normally audit.jsonl).
HEAD_META_KEY = "audit_head:{name}"
GENESIS = "0" * 64
FIELDS = frozenset({"seq", "at", "kind", "id", "partner", "state", "detail", "data", "prev", "hash"})
# Why 1000: one ledger page per query keeps memory flat however far behind the log is.
SYNC_BATCH = 1000
# Why 1 MiB: a line is ~1 KB (a long error message at most a few KB); a longer one is not ours.
MAX_LINE_BYTES = 1024 * 1024
# Why 64 KiB: reading the tail backwards in blocks finds the last line in one read almost always.
TAIL_BLOCK = 64 * 1024


@dataclass(frozen=True)
class VerifyResult:
    """The outcome of :func:`verify`. ``first_bad_line`` is 1-based; ``pending`` counts ledger events not yet
    exported (a crash before the append: ``sync`` adds them; not tampering)."""

    ok: bool
    lines: int
    first_bad_line: int | None
    problem: str
    last_seq: int = 0
    last_hash: str = GENESIS
    pending: int = 0


@dataclass(frozen=True)
class Head:
    seq: int
    hash: str
    lines: int

    def to_json(self) -> str:
        return canonical({"seq": self.seq, "hash": self.hash, "lines": self.lines})

    @classmethod
    def parse(cls, text: str, where: str) -> Head:
        try:
            obj = json.loads(text)
            return cls(int(obj["seq"]), str(obj["hash"]), int(obj["lines"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise AuditError(f"{where}: not an audit head ({exc}); restore it from a backup or delete it") from exc


def canonical(obj: Any) -> str:
    """Sorted keys, no insignificant whitespace, UTF-8 text (not \\u-escaped)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def line_hash(body: dict[str, Any]) -> str:
    """SHA-256 of the canonical JSON of a line without its ``hash`` field."""
    return hashlib.sha256(canonical({k: v for k, v in body.items() if k != "hash"}).encode("utf-8")).hexdigest()


def make_line(event: AuditEvent, prev: str) -> dict[str, Any]:
    """The audit line for one ledger audit event, chained to ``prev``."""
    body = {
        "seq": event.seq,
        "at": event.at,
        "kind": event.kind,
        "id": event.ref,
        "partner": event.partner,
        "state": event.state,
        "detail": event.detail,
        "data": event.data,
        "prev": prev,
    }
    return {**body, "hash": line_hash(body)}


def _content(line: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in line.items() if k not in ("prev", "hash")}


def audit_path(config: Config) -> Path:
    return config.state_dir / LOG_NAME


def head_path(log: Path) -> Path:
    return log.with_name(HEAD_NAME) if log.name == LOG_NAME else log.with_name(log.name + ".head")


class Audit:
    """The audit log at ``path`` (normally ``state_dir/audit.jsonl``), with its head file beside it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.head_path = head_path(path)

    def sync(self, ledger: Ledger) -> int:
        """Append a line for every ledger audit event not yet in the log; return how many were appended.

        Holds an exclusive ``flock`` on the log, so concurrent syncs never interleave or duplicate lines.
        Refuses (AuditError) to append to a log that ends before its head says it reached.
        """
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a+b") as fh:
                fcntl.flock(fh, fcntl.LOCK_EX)
                return self._sync_locked(fh, ledger)
        except OSError as exc:
            raise AuditError(f"{self.path}: cannot append to the audit log: {exc.strerror or exc}") from exc

    def _sync_locked(self, fh: IO[bytes], ledger: Ledger) -> int:
        last, torn = self._last_line(fh)
        head = read_head(self.head_path)
        stored = ledger.meta(HEAD_META_KEY.format(name=self.path.name))
        for anchor, where in ((head, str(self.head_path)), (stored and Head.parse(stored, "ledger meta"), "ledger")):
            if anchor and (last["seq"] if last else 0) < anchor.seq:
                raise AuditError(
                    f"{self.path}: the log ends at seq {last['seq'] if last else 0} but {where} records seq "
                    f"{anchor.seq}: lines were removed. Run `sftp-pipeline audit verify`, restore the log from a "
                    "backup; nothing is appended until then"
                )
        if torn is not None:
            # A crash mid-append left a fragment that no head records; its ledger event is exported again below.
            fh.truncate(torn)
            os.fsync(fh.fileno())
        seq, prev = (last["seq"], last["hash"]) if last else (0, GENESIS)
        if seq > ledger.audit_last_seq():
            raise AuditError(
                f"{self.path}: the log reaches seq {seq} but the ledger {ledger.where} only has "
                f"{ledger.audit_last_seq()} audit events: this log belongs to another ledger, or the ledger "
                "lost history (restored from an older backup?)"
            )
        appended = 0
        lines = (head.lines if head and head.seq == seq else None) or self._count_lines(fh)
        while events := ledger.audit_events_after(seq, SYNC_BATCH):
            chunk = []
            for event in events:
                line = make_line(event, prev)
                chunk.append(canonical(line) + "\n")
                seq, prev = line["seq"], line["hash"]
            fh.seek(0, os.SEEK_END)
            fh.write("".join(chunk).encode("utf-8"))
            fh.flush()
            os.fsync(fh.fileno())
            appended += len(chunk)
        if appended or head is None or head.seq != seq:
            new = Head(seq, prev, lines + appended)
            _write_atomic(self.head_path, new.to_json() + "\n")
            ledger.set_meta(HEAD_META_KEY.format(name=self.path.name), new.to_json())
        return appended

    def _last_line(self, fh: IO[bytes]) -> tuple[dict[str, Any] | None, int | None]:
        """The last complete line, parsed, and the offset of a torn final write (no newline) if there is one."""
        end = fh.seek(0, os.SEEK_END)
        data, pos = b"", end
        while pos > 0 and data.count(b"\n") < 2:
            step = min(TAIL_BLOCK, pos)
            pos -= step
            fh.seek(pos)
            data = fh.read(step) + data
        cut = data.rfind(b"\n") + 1
        torn = pos + cut if cut < len(data) else None
        data = data[:cut]
        if not data:
            return None, torn
        text = data[:-1].rsplit(b"\n", 1)[-1]
        try:
            line = json.loads(text)
            if not isinstance(line, dict) or line_hash(line) != line.get("hash"):
                raise ValueError("its hash does not match its content")
        except ValueError as exc:
            raise AuditError(
                f"{self.path}: the last line is damaged ({exc}); run `sftp-pipeline audit verify` and restore "
                "the log from a backup; nothing is appended until then"
            ) from exc
        return line, torn

    @staticmethod
    def _count_lines(fh: IO[bytes]) -> int:
        fh.seek(0)
        return sum(block.count(b"\n") for block in iter(lambda: fh.read(TAIL_BLOCK), b""))


def read_head(path: Path) -> Head | None:
    try:
        return Head.parse(path.read_text(encoding="utf-8"), str(path))
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise AuditError(f"{path}: cannot read the audit head: {exc.strerror}") from exc


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sync_audit(config: Config, ledger: Ledger) -> int:
    """Bring ``state_dir/audit.jsonl`` up to date with ``ledger``; the CLI calls this after every command."""
    return Audit(audit_path(config)).sync(ledger)


# ---------------------------------------------------------------------------------------------- verify


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    if len(keys) != len(set(keys)):
        raise ValueError("duplicate keys")
    return dict(pairs)


def parse_line(raw: bytes) -> dict[str, Any]:
    """One log line (without its newline), strictly: canonical bytes, known fields, matching hash."""
    if len(raw) > MAX_LINE_BYTES:
        raise ValueError(f"{len(raw)} bytes is over the {MAX_LINE_BYTES}-byte line limit")
    line = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates)
    if not isinstance(line, dict) or set(line) != FIELDS:
        raise ValueError(f"not an audit line (fields {sorted(line) if isinstance(line, dict) else type(line)})")
    if canonical(line).encode("utf-8") != raw:
        raise ValueError("not in canonical form (edited by hand?)")
    if not isinstance(line["seq"], int) or isinstance(line["seq"], bool):
        raise ValueError("seq is not an integer")
    if line_hash(line) != line["hash"]:
        raise ValueError("its hash does not match its content (edited)")
    return line


def iter_lines(path: Path) -> Iterator[tuple[int, bytes, bool]]:
    """(1-based line number, bytes without the newline, whether the newline was there)."""
    with path.open("rb") as fh:
        for number, raw in enumerate(fh, 1):
            yield (number, raw[:-1], True) if raw.endswith(b"\n") else (number, raw, False)


class _LedgerCursor:
    """Walks the ledger's audit events in seq order, one page at a time."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger, self.after = ledger, 0
        self.page: list[AuditEvent] = []

    def next(self) -> AuditEvent | None:
        if not self.page:
            self.page = self.ledger.audit_events_after(self.after, SYNC_BATCH)
            if not self.page:
                return None
        event = self.page.pop(0)
        self.after = event.seq
        return event


def verify_lines(lines: Iterator[tuple[int, bytes, bool]], *, ledger: Ledger | None = None) -> VerifyResult:
    """Check a sequence of lines from the genesis on: form, hashes, chain, order, and (with ``ledger``)
    that each line says exactly what the ledger's event with that seq says."""
    prev, last_seq, count = GENESIS, 0, 0
    cursor = _LedgerCursor(ledger) if ledger is not None else None

    def bad(number: int, problem: str) -> VerifyResult:
        return VerifyResult(False, count, number, f"line {number}: {problem}", last_seq, prev)

    for number, raw, complete in lines:
        if not complete:
            return bad(number, "no newline at the end: a torn write (a crash mid-append; `sync` cuts and redoes it)")
        try:
            line = parse_line(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            return bad(number, f"damaged: {exc}")
        if line["prev"] != prev:
            what = "the first line must start the chain" if number == 1 else "a line before it was changed"
            return bad(number, f"does not chain to the line before ({what}, removed, inserted or reordered)")
        if line["seq"] <= last_seq:
            return bad(number, f"seq {line['seq']} is not after {last_seq} (reordered or duplicated)")
        if cursor is not None:
            event = cursor.next()
            if event is None or event.seq != line["seq"] or _content(make_line(event, prev)) != _content(line):
                found = f"seq {event.seq}" if event else "no event"
                return bad(number, f"differs from the ledger's audit event ({found}): one of them was altered")
        prev, last_seq, count = line["hash"], line["seq"], count + 1
    pending = 0
    if cursor is not None:
        pending = ledger.audit_last_seq() - last_seq if ledger else 0
    return VerifyResult(True, count, None, "", last_seq, prev, max(pending, 0))


def verify(path: Path, *, head: Path | None = None, ledger: Ledger | None = None) -> VerifyResult:
    """Verify the whole log at ``path``: every line (see :func:`verify_lines`), then the end of the log against
    the head file ``head`` and the ledger's recorded head (truncation), and count ledger events not yet
    exported. Never raises for a bad log: the result says what is wrong and where."""
    if not path.exists():
        if ledger is not None and ledger.meta(HEAD_META_KEY.format(name=path.name)):
            return VerifyResult(False, 0, 1, f"{path}: the audit log is missing but the ledger says it was written")
        pending = ledger.audit_last_seq() if ledger else 0
        return VerifyResult(True, 0, None, "", pending=pending)
    try:
        result = verify_lines(iter_lines(path), ledger=ledger)
    except OSError as exc:
        return VerifyResult(False, 0, None, f"{path}: cannot read: {exc.strerror}")
    if not result.ok:
        return result
    anchors: list[tuple[str, Head]] = []
    try:
        found = read_head(head) if head else None
        if found and head:
            anchors.append((str(head), found))
        stored = ledger.meta(HEAD_META_KEY.format(name=path.name)) if ledger else None
        if stored:
            anchors.append(("the ledger's audit_head", Head.parse(stored, "ledger meta audit_head")))
    except (AuditError, LedgerError) as exc:
        return VerifyResult(False, result.lines, None, str(exc), result.last_seq, result.last_hash)
    for where, anchor in anchors:
        if result.lines < anchor.lines:
            return VerifyResult(
                False,
                result.lines,
                result.lines + 1,
                f"truncated: {where} records {anchor.lines} lines up to seq {anchor.seq}, the log has only "
                f"{result.lines} (line {result.lines + 1} onward removed)",
                result.last_seq,
                result.last_hash,
            )
        if result.lines == anchor.lines and (result.last_seq, result.last_hash) != (anchor.seq, anchor.hash):
            return VerifyResult(
                False,
                result.lines,
                result.lines,
                f"line {result.lines}: {where} records seq {anchor.seq} with hash {anchor.hash[:16]}…, the log's "
                f"last line is seq {result.last_seq} with {result.last_hash[:16]}… (rewritten)",
                result.last_seq,
                result.last_hash,
            )
    return result


def verify_log(config: Config, ledger: Ledger | None) -> VerifyResult:
    """What ``sftp-pipeline audit verify`` runs: the party's log against its head file and its ledger."""
    path = audit_path(config)
    return verify(path, head=head_path(path), ledger=ledger)


def lines_for(path: Path, transfer_id: str) -> list[dict[str, Any]]:
    """Every line about ``transfer_id`` (its own changes, inbound changes, and receipts naming it)."""
    found = []
    for _, raw, complete in iter_lines(path):
        if not complete:
            break
        line = json.loads(raw.decode("utf-8"))
        if line.get("id") == transfer_id or (line.get("data") or {}).get("transfer_id") == transfer_id:
            found.append(line)
    return found

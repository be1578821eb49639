"""The SQLite ledger store: one WAL-mode file per party, for one machine (the default).

Every transition is one transaction that also appends to ``events`` and ``audit_events``; many documents'
changes share one commit (:meth:`SqliteLedger.apply`). Run locks are ``flock`` files in a ``locks`` folder
beside the file (:mod:`sftp_pipeline.locks`): they exclude other processes on this machine, and the kernel
releases them when a process dies.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

from sftp_pipeline import locks
from sftp_pipeline.clock import Clock, rfc3339, utc_now
from sftp_pipeline.errors import DuplicateContent, LedgerError
from sftp_pipeline.ledger import migrations
from sftp_pipeline.ledger.interface import Ledger
from sftp_pipeline.ledger.rows import (
    INBOUND_COLUMNS,
    TRANSFER_COLUMNS,
    AuditEvent,
    Change,
    Event,
    Inbound,
    ReceiptRecord,
    Transfer,
)
from sftp_pipeline.ledger.states import (
    IN_PROGRESS,
    INBOUND_OUTCOMES,
    OPEN_STATES,
    OutboundState,
    check_transition,
    timestamp_column,
)

# Why 30 s: a second process (daemon + operator CLI) may hold the write lock through a long batch commit.
BUSY_TIMEOUT_MS = 30_000
# Why 500: SQLite allows 999 bound parameters per statement in old builds; 500 ids stay well inside it.
_IDS_PER_QUERY = 500


_COLUMNS = TRANSFER_COLUMNS
_INBOUND_COLUMNS = INBOUND_COLUMNS
# The state groups of ledger/states.py as SQL lists (constants: never partner data).
_IN_PROGRESS = ", ".join(f"'{s}'" for s in IN_PROGRESS)
_OPEN_STATES = ", ".join(f"'{s}'" for s in OPEN_STATES)


class _Refused(Exception):
    """A change of a group was refused: the group is applied again, each change under its own savepoint."""


class SqliteLedger(Ledger):
    """A handle on the SQLite ledger. Shared by one process's event loop and its worker threads (serialised
    by a lock); every process opens its own."""

    def __init__(self, path: Path, *, clock: Clock = utc_now) -> None:
        self.path = path
        self.where = str(path)
        self._clock = clock
        self._lock = threading.RLock()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # Shared by the event loop and its worker threads (sealing), serialised by ``_lock``.
            self._db = sqlite3.connect(
                path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False
            )
            self._db.row_factory = sqlite3.Row
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")  # a committed state survives power loss
            self._db.execute("PRAGMA foreign_keys=ON")
            try:
                migrations.upgrade(self._db, path, clock)
            except LedgerError as exc:
                self._db.close()
                raise LedgerError(f"{path}: cannot open the ledger: {exc}") from exc
            for table, expected in (("transfers", _COLUMNS), ("inbound", _INBOUND_COLUMNS)):
                found = tuple(r[1] for r in self._db.execute(f"PRAGMA table_info({table})"))
                if found != expected:
                    raise LedgerError(
                        f"{path}: the {table} table's columns differ from this version's ({len(found)} vs "
                        f"{len(expected)}); the ledger was made by another version — restore a matching backup"
                    )
            self._audit_backfill()
        except (sqlite3.Error, OSError) as exc:
            raise LedgerError(f"{path}: cannot open the ledger: {exc}") from exc

    def close(self) -> None:
        self._db.close()

    def now(self) -> str:
        return rfc3339(self._clock())

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            yield from self._tx_unlocked()

    def _tx_unlocked(self) -> Iterator[sqlite3.Connection]:
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            raise LedgerError(f"{self.where}: ledger write failed: {exc}") from exc

    def _event(self, db: sqlite3.Connection, transfer_id: str, at: str, state: str, detail: str | None) -> None:
        db.execute(
            "INSERT INTO events (transfer_id, at, state, detail) VALUES (?, ?, ?, ?)",
            (transfer_id, at, state, detail),
        )
        self._audit(db, "transfer", transfer_id, at, state, detail)

    # -- outbound -----------------------------------------------------------------------------------

    def apply(self, changes: Sequence[Change]) -> list[Transfer | LedgerError]:
        """Apply ``changes`` in order in ONE transaction (one commit for many documents: group commit).

        Each change is what :meth:`transition`, :meth:`update` or :meth:`set_plaintext` does alone, with its
        events and audit rows written in the same transaction, in order. A change that is refused (illegal
        state change, duplicate content) is rolled back alone, under a savepoint, and returned as its error;
        the others still commit. A failing commit raises for all of them.
        """
        now = self.now()
        outcome: list[Transfer | LedgerError | None] = [None] * len(changes)
        try:
            # Usually nothing is refused: all the changes at once, without a savepoint each (three statements
            # per change, a third of the ledger's work on small documents).
            with self._tx() as db:
                for change in changes:
                    try:
                        self._apply_one(db, now, change)
                    except (LedgerError, sqlite3.Error) as exc:
                        raise _Refused from exc
        except _Refused:
            # Something was: the whole transaction was rolled back; again, each change under a savepoint.
            outcome = []
            with self._tx() as db:
                for change in changes:
                    db.execute("SAVEPOINT change")
                    try:
                        self._apply_one(db, now, change)
                    except (LedgerError, sqlite3.Error) as exc:
                        db.execute("ROLLBACK TO change")
                        outcome.append(self._refusal(db, change, exc))
                    else:
                        outcome.append(None)
                    db.execute("RELEASE change")
        applied = dict.fromkeys(c.transfer_id for c, o in zip(changes, outcome, strict=True) if o is None)
        rows = {t.id: t for t in self.get_many(list(applied))}
        return [o if o is not None else rows[c.transfer_id] for c, o in zip(changes, outcome, strict=True)]

    def _apply_one(self, db: sqlite3.Connection, now: str, change: Change) -> None:
        values = dict(change.values)
        if change.kind == "claim":  # a new row: the caller moves the file to ``work_path`` after the commit
            values.update(id=change.transfer_id, direction="out", state="claimed", created_at=now, claimed_at=now,
                          updated_at=now)  # fmt: skip
            db.execute(
                f"INSERT INTO transfers ({', '.join(values)}) VALUES ({', '.join('?' * len(values))})",  # noqa: S608
                tuple(values.values()),
            )
            self._event(db, change.transfer_id, now, "claimed", values["source_path"])
            return
        if change.kind == "plaintext":
            db.execute(
                "UPDATE transfers SET plaintext_sha256 = ?, plaintext_size = ?, updated_at = ? WHERE id = ?",
                (values["sha256"], values["size"], now, change.transfer_id),
            )
            return
        unknown = set(values) - set(_COLUMNS)
        if change.kind == "update" and (unknown or "state" in values):
            raise LedgerError(f"update cannot set: {', '.join(sorted(unknown | ({'state'} & set(values))))}")
        if unknown:
            raise LedgerError(f"unknown ledger columns: {', '.join(sorted(unknown))}")
        row = db.execute("SELECT state FROM transfers WHERE id = ?", (change.transfer_id,)).fetchone()
        if row is None:
            raise LedgerError(f"no transfer {change.transfer_id} in {self.where}")
        state = row["state"]
        if change.kind == "transition":
            state = change.new_state or ""
            check_transition(row["state"], state)
            stamp = timestamp_column(state)  # type: ignore[arg-type]  # checked by check_transition
            if stamp in _COLUMNS:
                values.setdefault(stamp, now)
            values["state"] = state
        values["updated_at"] = now
        assignments = ", ".join(f"{column} = ?" for column in values)
        db.execute(f"UPDATE transfers SET {assignments} WHERE id = ?", (*values.values(), change.transfer_id))  # noqa: S608
        if change.kind == "transition" or change.detail:
            self._event(db, change.transfer_id, now, state, change.detail)

    def _refusal(self, db: sqlite3.Connection, change: Change, exc: Exception) -> LedgerError:
        if isinstance(exc, LedgerError):
            return exc
        if change.kind == "plaintext" and isinstance(exc, sqlite3.IntegrityError):
            found = db.execute(
                """SELECT o.id FROM transfers t JOIN transfers o ON o.direction = 'out' AND o.partner = t.partner
                   AND o.document_type = t.document_type AND o.source_name = t.source_name
                   AND o.plaintext_sha256 = ? AND o.state NOT IN ('failed', 'duplicate') WHERE t.id = ?""",
                (change.values["sha256"], change.transfer_id),
            ).fetchone()
            dup = DuplicateContent(found["id"] if found else "?")
            dup.__cause__ = exc
            return dup
        error = LedgerError(f"{self.where}: ledger write failed: {exc}")
        error.__cause__ = exc
        return error

    # -- inbound ------------------------------------------------------------------------------------

    def receive(
        self,
        *,
        partner: str,
        transfer_id: str,
        job: str,
        remote_name: str,
        document_type: str,
        ciphertext_sha256: str,
        ciphertext_size: int,
        received_at: str,
        archive_path: str,
    ) -> Inbound:
        """Record a partner's document as received (before it is opened); the caller checks for a prior one."""
        now = self.now()
        with self._tx() as db:
            db.execute(
                """INSERT INTO inbound (partner, transfer_id, job, remote_name, document_type, state,
                       ciphertext_sha256, ciphertext_size, received_at, archive_path, created_at, updated_at)
                   VALUES (?, ?, ?, ?, ?, 'received', ?, ?, ?, ?, ?, ?)""",
                (
                    partner,
                    transfer_id,
                    job,
                    remote_name,
                    document_type,
                    ciphertext_sha256,
                    ciphertext_size,
                    received_at,
                    archive_path,
                    now,
                    now,
                ),
            )
            self._audit(db, "inbound", transfer_id, now, "received", None, partner=partner)
        return self.inbound(partner, transfer_id)  # type: ignore[return-value]

    def update_inbound(self, partner: str, transfer_id: str, **values: Any) -> Inbound:
        unknown = set(values) - set(_INBOUND_COLUMNS)
        if unknown:
            raise LedgerError(f"unknown inbound columns: {', '.join(sorted(unknown))}")
        if values.get("state") not in (None, *INBOUND_OUTCOMES):
            raise LedgerError(f"illegal inbound state {values['state']}")
        changed = ", ".join(sorted(values))
        now = values["updated_at"] = self.now()
        with self._tx() as db:
            assignments = ", ".join(f"{column} = ?" for column in values)
            db.execute(
                f"UPDATE inbound SET {assignments} WHERE partner = ? AND transfer_id = ?",  # noqa: S608
                (*values.values(), partner, transfer_id),
            )
            self._audit(db, "inbound", transfer_id, now, None, f"set {changed}", partner=partner)
        found = self.inbound(partner, transfer_id)
        if found is None:
            raise LedgerError(f"no inbound document {transfer_id} from {partner} in {self.where}")
        return found

    def inbound(self, partner: str, transfer_id: str) -> Inbound | None:
        rows = self._rows("SELECT * FROM inbound WHERE partner = ? AND transfer_id = ?", (partner, transfer_id))
        return Inbound(*rows[0]) if rows else None

    def inbound_unfinished(self, partner: str) -> list[Inbound]:
        """Inbound documents a run must finish: not yet opened, receipt not sent, or source not removed."""
        rows = self._rows(
            """SELECT * FROM inbound WHERE partner = ? AND (state = 'received' OR receipt_sent_at IS NULL
               OR source_removed_at IS NULL) ORDER BY transfer_id""",
            (partner,),
        )
        return [Inbound(*r) for r in rows]

    def inbound_recent(self, limit: int = 50, partner: str | None = None) -> list[Inbound]:
        query, params = "SELECT * FROM inbound", []
        if partner:
            query += " WHERE partner = ?"
            params.append(partner)
        rows = self._rows(query + " ORDER BY received_at DESC LIMIT ?", [*params, limit])
        return [Inbound(*r) for r in rows]

    # -- receipts for what we sent -----------------------------------------------------------------

    def record_receipt(
        self,
        *,
        partner: str,
        name: str,
        transfer_id: str | None,
        verdict: str,
        reason: str | None = None,
        status: str | None = None,
        received_at: str | None = None,
        validated_at: str | None = None,
        stored_path: str | None = None,
        receipt_json: bytes | None = None,
        receipt_sig: bytes | None = None,
    ) -> None:
        with self._tx() as db:
            cursor = db.execute(
                """INSERT INTO receipts (partner, name, transfer_id, verdict, reason, status, received_at,
                       validated_at, stored_path, receipt_json, receipt_sig, fetched_at)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
                (
                    partner,
                    name,
                    transfer_id,
                    verdict,
                    reason,
                    status,
                    received_at,
                    validated_at,
                    stored_path,
                    receipt_json,
                    receipt_sig,
                    self.now(),
                ),
            )
            row = db.execute("SELECT fetched_at FROM receipts WHERE seq = ?", (cursor.lastrowid,)).fetchone()
            self._audit(db, "receipt", str(cursor.lastrowid), row["fetched_at"], verdict, reason, partner=partner)

    def receipts_for(self, partner: str, transfer_id: str) -> list[ReceiptRecord]:
        rows = self._rows(
            "SELECT * FROM receipts WHERE partner = ? AND transfer_id = ? ORDER BY seq", (partner, transfer_id)
        )
        return [ReceiptRecord(**dict(r)) for r in rows]

    def find_outbound(self, partner: str, transfer_id: str) -> Transfer | None:
        rows = self._rows(
            "SELECT * FROM transfers WHERE id = ? AND partner = ? AND direction = 'out'", (transfer_id, partner)
        )
        return _to_transfer(rows[0]) if rows else None

    # -- queries ----------------------------------------------------------------------------------

    def meta(self, key: str) -> str | None:
        rows = self._rows("SELECT value FROM meta WHERE key = ?", (key,))
        return str(rows[0]["value"]) if rows else None

    def set_meta(self, key: str, value: str) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = ?",
                (key, value, value),
            )

    def _rows(self, query: str, params: Any = ()) -> list[sqlite3.Row]:
        with self._lock:
            try:
                return self._db.execute(query, params).fetchall()
            except sqlite3.Error as exc:
                raise LedgerError(f"{self.where}: ledger read failed: {exc}") from exc

    def get(self, transfer_id: str) -> Transfer:
        rows = self._rows("SELECT * FROM transfers WHERE id = ?", (transfer_id,))
        row = rows[0] if rows else None
        if row is None:
            raise LedgerError(f"no transfer {transfer_id} in {self.where}")
        return _to_transfer(row)

    def get_many(self, transfer_ids: Sequence[str]) -> list[Transfer]:
        """Several transfers by id, in the order asked (one query per 500 ids)."""
        found: dict[str, Transfer] = {}
        for i in range(0, len(transfer_ids), _IDS_PER_QUERY):
            chunk = transfer_ids[i : i + _IDS_PER_QUERY]
            marks = ", ".join("?" * len(chunk))
            for r in self._rows(f"SELECT * FROM transfers WHERE id IN ({marks})", chunk):  # noqa: S608
                found[r["id"]] = _to_transfer(r)
        missing = [t for t in transfer_ids if t not in found]
        if missing:
            raise LedgerError(f"no transfer {missing[0]} in {self.where}")
        return [found[t] for t in transfer_ids]

    def unfinished(self, partner: str, job: str | None = None) -> list[Transfer]:
        """Outbound transfers a run must finish: in progress, or uploaded but not yet archived."""
        query = f"""SELECT * FROM transfers WHERE direction = 'out' AND partner = ?
                   AND (state IN ({_IN_PROGRESS}) OR (state = 'uploaded' AND archived_at IS NULL))"""  # noqa: S608
        params: list[Any] = [partner]
        if job is not None:
            query += " AND job = ?"
            params.append(job)
        return [_to_transfer(r) for r in self._rows(query + " ORDER BY id", params)]

    def by_state(self, state: OutboundState, partner: str | None = None) -> list[Transfer]:
        query, params = "SELECT * FROM transfers WHERE state = ?", [str(state)]
        if partner:
            query += " AND partner = ?"
            params.append(partner)
        return [_to_transfer(r) for r in self._rows(query + " ORDER BY id", params)]

    def recent(self, limit: int = 50, partner: str | None = None) -> list[Transfer]:
        query, params = "SELECT * FROM transfers", []
        if partner:
            query += " WHERE partner = ?"
            params.append(partner)
        query += " ORDER BY id DESC LIMIT ?"
        return [_to_transfer(r) for r in self._rows(query, [*params, limit])]

    def events(self, transfer_id: str) -> list[Event]:
        rows = self._rows("SELECT at, state, detail FROM events WHERE transfer_id = ? ORDER BY seq", (transfer_id,))
        return [Event(r["at"], r["state"], r["detail"]) for r in rows]

    def counts(self) -> dict[tuple[str, str], int]:
        rows = self._rows("SELECT partner, state, COUNT(*) AS n FROM transfers GROUP BY partner, state")
        return {(r["partner"], r["state"]): r["n"] for r in rows}

    # -- run locks: flock files beside the ledger (one machine) --------------------------------------------

    @asynccontextmanager
    async def turn(self, direction: str, key: str, *, shared: bool = False) -> AsyncIterator[None]:
        async with locks.turn(self.path.parent, direction, key, shared=shared):
            yield

    @asynccontextmanager
    async def turns(self, direction: str, keys: Iterable[str]) -> AsyncIterator[None]:
        async with locks.turns(self.path.parent, direction, keys):
            yield

    @contextmanager
    def try_turn(self, direction: str, key: str) -> Iterator[bool]:
        with locks.try_hold(locks.lock_path(self.path.parent, direction, key)) as held:
            yield held

    def integrity_ok(self) -> bool:
        return bool(self._rows("PRAGMA integrity_check")[0][0] == "ok")

    # -- audit feed (read by sftp_pipeline/audit.py) ---------------------------------------------------

    def _audit(
        self,
        db: sqlite3.Connection,
        kind: str,
        ref: str,
        at: str,
        state: str | None,
        detail: str | None,
        *,
        partner: str | None = None,
    ) -> None:
        """Append one audit_events row for ``kind``/``ref``, snapshotting its audited columns (same transaction)."""
        table, key, columns = _AUDITED[kind]
        where = f"{key} = ?" + (" AND partner = ?" if kind == "inbound" else "")
        params = (ref, partner) if kind == "inbound" else (ref,)
        row = db.execute(f"SELECT * FROM {table} WHERE {where}", params).fetchone()  # noqa: S608
        data = {c: row[c] for c in columns if row[c] is not None}
        present = set(row.keys())  # sqlite3.Row's ``in`` looks at values, not column names
        for blob in ("receipt_json", "receipt_sig"):
            if blob in present and row[blob] is not None:
                data[f"{blob}_sha256"] = hashlib.sha256(row[blob]).hexdigest()
        db.execute(
            "INSERT INTO audit_events (kind, ref, partner, at, state, detail, data) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (kind, ref, row["partner"], at, state or row["state"], detail, _canonical(data)),
        )

    def _audit_backfill(self) -> None:
        """Once per ledger: feed the audit log the history written before audit_events existed."""
        with self._tx() as db:
            if db.execute("SELECT 1 FROM meta WHERE key = 'audit_backfilled'").fetchone():
                return
            for event in db.execute("SELECT transfer_id, at, state, detail FROM events ORDER BY seq").fetchall():
                self._audit(db, "transfer", event["transfer_id"], event["at"], event["state"], event["detail"])
            for row in db.execute("SELECT partner, transfer_id, updated_at FROM inbound ORDER BY created_at"):
                self._audit(db, "inbound", row["transfer_id"], row["updated_at"], None, None, partner=row["partner"])
            for row in db.execute("SELECT seq, partner, verdict, reason, fetched_at FROM receipts ORDER BY seq"):
                self._audit(db, "receipt", str(row["seq"]), row["fetched_at"], row["verdict"], row["reason"])
            db.execute("INSERT INTO meta (key, value) VALUES ('audit_backfilled', '1')")

    def audit_events_after(self, seq: int, limit: int = 1000) -> list[AuditEvent]:
        rows = self._rows("SELECT * FROM audit_events WHERE seq > ? ORDER BY seq LIMIT ?", (seq, limit))
        return [AuditEvent(**{**dict(r), "data": json.loads(r["data"])}) for r in rows]

    def audit_last_seq(self) -> int:
        return int(self._rows("SELECT COALESCE(MAX(seq), 0) AS n FROM audit_events")[0]["n"])

    def inbound_by_id(self, transfer_id: str) -> list[Inbound]:
        """Inbound documents with this (sender's) transfer id, from any partner."""
        rows = self._rows("SELECT * FROM inbound WHERE transfer_id = ? ORDER BY partner", (transfer_id,))
        return [Inbound(*r) for r in rows]

    # -- read-only queries for the reconciliation: plain tuples of the columns asked for, no objects per row -----

    def reconcile_rows(
        self, out_columns: Sequence[str], in_columns: Sequence[str], since: str | None
    ) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
        """Outbound (without duplicates) and inbound rows a report for ``[since, now)`` may show — changed since then,
        or still open — as tuples of the named columns."""
        for table, asked, known in (("transfers", out_columns, _COLUMNS), ("inbound", in_columns, _INBOUND_COLUMNS)):
            unknown = set(asked) - set(known)
            if unknown:  # the names are written into the query: only the table's own columns may be
                raise LedgerError(f"unknown {table} columns: {', '.join(sorted(unknown))}")
        out_query = f"SELECT {', '.join(out_columns)} FROM transfers WHERE direction = 'out' AND state != 'duplicate'"  # noqa: S608
        in_query = f"SELECT {', '.join(in_columns)} FROM inbound"  # noqa: S608
        if since is None:
            return self._tuples(out_query), self._tuples(in_query)
        out_query += f""" AND (updated_at >= ? OR created_at >= ?
                         OR state IN ({_OPEN_STATES}))"""
        in_query += " WHERE updated_at >= ? OR state = 'received'"
        return self._tuples(out_query, (since, since)), self._tuples(in_query, (since,))

    def receipt_records_with(self, verdicts: Sequence[str], since: str | None) -> list[ReceiptRecord]:
        query = f"""SELECT seq, partner, name, transfer_id, verdict, reason, status, received_at, validated_at,
                           stored_path, NULL AS receipt_json, NULL AS receipt_sig, fetched_at FROM receipts
                    WHERE verdict IN ({", ".join("?" * len(verdicts))})"""  # noqa: S608
        params: tuple[str, ...] = tuple(verdicts)
        if since is not None:
            query += " AND fetched_at >= ?"
            params = (*params, since)
        return [ReceiptRecord(**dict(r)) for r in self._rows(query + " ORDER BY seq", params)]

    def _tuples(self, query: str, params: Any = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            try:
                cursor = self._db.cursor()
                cursor.row_factory = None  # plain tuples: a sqlite3.Row per row costs more than the query
                return cursor.execute(query, params).fetchall()
            except sqlite3.Error as exc:
                raise LedgerError(f"{self.where}: ledger read failed: {exc}") from exc


# Columns the audit line itself carries (id, partner, state, time), local paths and receipt bytes (hashed instead).
_NOT_AUDITED = frozenset({"id", "partner", "transfer_id", "state", "updated_at", "receipt_json", "receipt_sig"})
# What the audit log records of each kind of row: (table, key column, columns snapshotted when they are set).
_AUDITED: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "transfer": ("transfers", "id", tuple(c for c in _COLUMNS if c not in _NOT_AUDITED and not c.endswith("_path"))),
    "inbound": (
        "inbound",
        "transfer_id",
        tuple(c for c in _INBOUND_COLUMNS if c not in _NOT_AUDITED and not c.endswith("_path")),
    ),
    "receipt": (
        "receipts",
        "seq",
        ("name", "transfer_id", "verdict", "reason", "status", "received_at", "validated_at", "fetched_at"),
    ),
}


def _canonical(data: dict[str, Any]) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _to_transfer(row: sqlite3.Row) -> Transfer:
    # Positional: the table's columns are the dataclass's fields in order (checked when the ledger opens);
    # building by name cost 1.5 s per 100k rows in a reconciliation.
    return Transfer(*row)

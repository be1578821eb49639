"""Schema versions of the SQLite ledger, and the steps that upgrade an older ledger in place.

:data:`SCHEMA_VERSION` is what this release writes (``meta.schema_version``). Opening a ledger an earlier
release made upgrades it (:func:`upgrade`):

1. an online backup copy beside it first, ``<ledger>.schema<N>-<time>.bak`` (SQLite's backup API: a
   consistent copy even while another process writes);
2. then every registered step from its version to ours, in ONE transaction: a crash or an error mid-upgrade
   leaves the ledger exactly as it was, and the next open tries again. Two processes opening the same old
   ledger at once upgrade it once (the second finds it done under the write lock).

A ledger made by a later release is refused (this release cannot know what the later one changed); a new
ledger is made by the same steps from schema 1, so a new and an upgraded ledger are the same.

To change the schema: add a step for the next version to :data:`STEPS` (additive where possible: a new
column goes at the end of its table and of its row dataclass in :mod:`.rows`), bump :data:`SCHEMA_VERSION`,
and note it in CHANGELOG.md. ``tests/integration/test_ledger_upgrade.py`` opens the ledger release 0.1.0
wrote (``tests/fixtures/ledger-0.1.0``) and checks that nothing was lost.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path

from sftp_pipeline.errors import LedgerError

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2
VERSION_KEY = "schema_version"
# The backup's time stamp: sortable, and a valid file name everywhere.
BACKUP_STAMP = "%Y%m%dT%H%M%SZ"

# Schema 1, as release 0.1.0 made it; every later schema is this plus the steps below.
SCHEMA_1 = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS transfers (
    id TEXT PRIMARY KEY,
    direction TEXT NOT NULL CHECK (direction IN ('out', 'in')),
    partner TEXT NOT NULL,
    job TEXT,
    document_type TEXT NOT NULL,
    source_name TEXT NOT NULL,
    source_path TEXT,
    work_path TEXT,
    sealed_path TEXT,
    remote_name TEXT,
    state TEXT NOT NULL,
    plaintext_sha256 TEXT,
    plaintext_size INTEGER,
    ciphertext_sha256 TEXT,
    ciphertext_size INTEGER,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    ssh_kex TEXT,
    ssh_cipher TEXT,
    transport_pq INTEGER,
    pgp_algorithms TEXT,
    content_pq INTEGER,
    archive_path TEXT,
    archive_sealed_path TEXT,
    duplicate_of TEXT,
    created_at TEXT NOT NULL,
    claimed_at TEXT,
    sealed_at TEXT,
    uploaded_at TEXT,
    failed_at TEXT,
    archived_at TEXT,
    receipt_status TEXT,
    partner_received_at TEXT,
    partner_validated_at TEXT,
    receipted_at TEXT,
    rejected_at TEXT,
    mismatch_at TEXT,
    invalid_receipt_at TEXT,
    updated_at TEXT NOT NULL
);
-- The same name and content to the same partner is sent once: enforced here, race-free.
CREATE UNIQUE INDEX IF NOT EXISTS transfers_once
    ON transfers (partner, document_type, source_name, plaintext_sha256)
    WHERE direction = 'out' AND state NOT IN ('failed', 'duplicate') AND plaintext_sha256 IS NOT NULL;
CREATE INDEX IF NOT EXISTS transfers_state ON transfers (direction, partner, state);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    transfer_id TEXT NOT NULL REFERENCES transfers (id),
    at TEXT NOT NULL,
    state TEXT NOT NULL,
    detail TEXT
);
CREATE INDEX IF NOT EXISTS events_transfer ON events (transfer_id, seq);
-- Documents partners sent us. Keyed by (partner, transfer id): ids are the sender's, not ours.
CREATE TABLE IF NOT EXISTS inbound (
    partner TEXT NOT NULL,
    transfer_id TEXT NOT NULL,
    job TEXT,
    remote_name TEXT NOT NULL,
    document_type TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('received', 'accepted', 'rejected')),
    ciphertext_sha256 TEXT NOT NULL,
    ciphertext_size INTEGER NOT NULL,
    plaintext_sha256 TEXT,
    plaintext_size INTEGER,
    sender_key_fingerprint TEXT,
    status TEXT,
    detail TEXT,
    engine TEXT,
    received_at TEXT NOT NULL,
    validated_at TEXT,
    archive_path TEXT,
    delivered_path TEXT,
    receipt_json BLOB,
    receipt_sig BLOB,
    receipt_sent_at TEXT,
    source_removed_at TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (partner, transfer_id)
);
-- Receipts partners sent us for what we sent, with our verdict on each; kept whatever the verdict.
CREATE TABLE IF NOT EXISTS receipts (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    partner TEXT NOT NULL,
    name TEXT NOT NULL,
    transfer_id TEXT,
    verdict TEXT NOT NULL,
    reason TEXT,
    status TEXT,
    received_at TEXT,
    validated_at TEXT,
    stored_path TEXT,
    receipt_json BLOB,
    receipt_sig BLOB,
    fetched_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS receipts_transfer ON receipts (partner, transfer_id);
-- The feed of the audit log (sftp_pipeline/audit.py): one row per change of a transfer, an inbound document
-- or a received receipt, written in the same transaction as the change; ``seq`` orders all three kinds, and
-- ``data`` is a JSON snapshot of the row's hashes, sizes and timestamps at that moment.
CREATE TABLE IF NOT EXISTS audit_events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL CHECK (kind IN ('transfer', 'inbound', 'receipt')),
    ref TEXT NOT NULL,
    partner TEXT NOT NULL,
    at TEXT NOT NULL,
    state TEXT NOT NULL,
    detail TEXT,
    data TEXT NOT NULL
);
"""


def _v2(db: sqlite3.Connection) -> None:
    # Which transport carried a transfer ("sftp", "local" for a partner we host, "https" next) and the peer key
    # that connection verified (an SFTP host key's SHA256 fingerprint; a TLS certificate's): proof of whom we
    # delivered to, beside the key exchange already recorded.
    db.execute("ALTER TABLE transfers ADD COLUMN transport TEXT")
    db.execute("ALTER TABLE transfers ADD COLUMN peer_key TEXT")


Step = Callable[[sqlite3.Connection], None]
# version reached → (what changes, the step from the version before it)
STEPS: dict[int, tuple[str, Step]] = {
    2: ("transfers record the transport and the peer key they went over", _v2),
}


def statements(script: str) -> Iterator[str]:
    """The SQL statements of ``script`` one by one (``executescript`` would commit the open transaction)."""
    pending = ""
    for line in script.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            yield pending.strip()
            pending = ""
    if pending.strip():
        raise ValueError(f"incomplete SQL statement: {pending.strip()[:80]}")


def found_version(db: sqlite3.Connection) -> int:
    """The schema version ``db`` holds; 0 for a new, empty file."""
    if db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'").fetchone() is None:
        if db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table'").fetchone() is not None:
            raise LedgerError("it holds tables but no meta table: not a ledger of this program")
        return 0
    row = db.execute("SELECT value FROM meta WHERE key = ?", (VERSION_KEY,)).fetchone()
    if row is None:
        raise LedgerError("its meta table has no schema_version: not a ledger of this program")
    return int(row[0])


def backup(db: sqlite3.Connection, path: Path, version: int, now: datetime) -> Path:
    """An online copy of the whole ledger beside it, made before it is upgraded from ``version``."""
    target = path.with_name(f"{path.name}.schema{version}-{now.strftime(BACKUP_STAMP)}.bak")
    n = 1
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}.schema{version}-{now.strftime(BACKUP_STAMP)}-{n}.bak")
    copy = sqlite3.connect(target)
    try:
        db.backup(copy)
    finally:
        copy.close()
    target.chmod(path.stat().st_mode & 0o777)  # as private as the ledger itself
    return target


def upgrade(db: sqlite3.Connection, path: Path, clock: Callable[[], datetime]) -> Path | None:
    """Bring ``db`` (autocommit mode, at ``path``) to :data:`SCHEMA_VERSION`; the backup made, if any.

    Raises LedgerError for a ledger of a later release, or one that is not a ledger.
    """
    version = found_version(db)
    if version == SCHEMA_VERSION:
        return None
    if version > SCHEMA_VERSION:
        raise LedgerError(
            f"it was written by a later release of sftp-pipeline (schema {version}; this release knows up to "
            f"{SCHEMA_VERSION}): upgrade sftp-pipeline again, or go back to the backup made before that upgrade "
            f"({path.name}.schema{SCHEMA_VERSION}-*.bak beside it)"
        )
    copy = backup(db, path, version, clock()) if version else None
    db.execute("BEGIN IMMEDIATE")
    try:
        version = found_version(db)  # again, under the write lock: another process may have done it meanwhile
        if version == 0:
            for statement in statements(SCHEMA_1):
                db.execute(statement)
            db.execute("INSERT INTO meta (key, value) VALUES (?, '1')", (VERSION_KEY,))
            version = 1
        for target in range(version + 1, SCHEMA_VERSION + 1):
            STEPS[target][1](db)
        db.execute("UPDATE meta SET value = ? WHERE key = ?", (str(SCHEMA_VERSION), VERSION_KEY))
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    if copy is not None:
        changes = "; ".join(STEPS[v][0] for v in range(version + 1, SCHEMA_VERSION + 1))
        log.warning(
            "upgraded the ledger %s from schema %d to %d (%s); the ledger as it was is kept as %s",
            path, version, SCHEMA_VERSION, changes or "done by another process meanwhile", copy,
        )  # fmt: skip
    return copy
